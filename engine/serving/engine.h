// engine/serving/engine.h — the engine as the transport sees it: load models, take requests,
// deliver results through per-request channels (engine/README.md, One request end to end).
//
// One worker thread owns the backend, the models and the KV caches and runs the step loop;
// Submit() and Cancel() only touch a bounded request queue and an atomic flag, so the
// transport never waits on the step loop (llama.cpp's server_queue / server_response split).
#ifndef SPECMOE_ENGINE_SERVING_ENGINE_H_
#define SPECMOE_ENGINE_SERVING_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/serving/engine_options.h"
#include "engine/serving/engine_stats.h"
#include "engine/serving/request.h"
#include "engine/serving/request_handle.h"
#include "engine/text/tokenizer.h"

namespace specmoe::engine {

// Contract: Create() loads and checks both models (errors name file and tensor) and starts
// the worker. Submit/Cancel/accessors are thread-safe. Destruction stops the worker after
// finishing each queued request with CANCELLED.
class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  virtual ~Engine() = default;

  // Checks and completes the request (PrepareRequest: the one validator; a text prompt is
  // tokenized here, on the caller's thread, within the byte and token limits) and queues it;
  // the sink receives its events on the worker thread. Errors: INVALID_ARGUMENT naming the
  // field, RESOURCE_EXHAUSTED (queue full), UNAVAILABLE (shutting down). A request that
  // later fails on the models' data (a NaN logit) ends with an INTERNAL event.
  virtual absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest request,
                                                                EventSink sink) = 0;
  // The Tokenize RPC: `text` within the same byte and token limits as a prompt.
  virtual absl::StatusOr<std::vector<int32_t>> Tokenize(std::string_view text,
                                                        bool add_bos) const = 0;

  virtual const Tokenizer& tokenizer() const = 0;
  virtual int vocab_size() const = 0;
  virtual int max_context() const = 0;
  virtual const std::vector<int>& default_expansion() const = 0;
  virtual std::string target_name() const = 0;
  virtual std::string draft_name() const = 0;  // empty without a draft
  virtual std::string device() const = 0;
  virtual std::string dtype() const = 0;  // of the target's weights
  // Live gauges; valid for the engine's lifetime.
  virtual const EngineStats& stats() const = 0;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_ENGINE_H_
