// engine/serving/request_handle.h — the handle Engine::Submit returns: the transport cancels a
// request through it from any thread, the scheduler reads it at the start of each step.
#ifndef SPECMOE_ENGINE_SERVING_REQUEST_HANDLE_H_
#define SPECMOE_ENGINE_SERVING_REQUEST_HANDLE_H_

#include <atomic>

namespace specmoe::engine {

// A submitted request: cancel it from any thread.
class RequestHandle {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_REQUEST_HANDLE_H_
