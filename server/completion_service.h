// server/completion_service.h — the specmoe.v1.Completion service on gRPC's callback API
// (grpc::CallbackService reactors, as in gRPC's route_guide_callback_server.cc): request
// validation and defaults (DESIGN §6), engine events -> CompleteChunk / CompleteResponse,
// cancellation and deadlines -> RequestHandle::Cancel(), API-key check, one log line and one
// metrics count per finished or refused request. Tested by tests/server_e2e_test.cc and
// tests/metrics_e2e_test.py against the real binary.
#ifndef SPECMOE_SERVER_COMPLETION_SERVICE_H_
#define SPECMOE_SERVER_COMPLETION_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "server/metrics.h"
#include "specmoe/v1/completion.grpc.pb.h"

namespace specmoe::server {

// Request limits the service enforces before the engine sees a request.
struct ServiceLimits {
  int default_max_tokens = 128;  // max_tokens 0 means this
  int max_tokens_limit = 4096;   // larger max_tokens is INVALID_ARGUMENT
  int max_prompt_tokens = 0;     // 0: only the context bounds the prompt
};

// Validates a wire request and applies the defaults of DESIGN §6 (top_p 0 -> 1,
// repetition_penalty 0 -> 1, max_tokens 0 -> default, seed 0 -> random, a text prompt is
// tokenized with BOS first). INVALID_ARGUMENT names the offending field.
absl::StatusOr<engine::GenerationRequest> ToGenerationRequest(
    const specmoe::v1::CompleteRequest& request, const engine::Engine& engine,
    const ServiceLimits& limits);

// Contract: owned by main and outlives the grpc::Server it is registered with. All methods
// are thread-safe; RPCs before SetEngine() (models loading) or after StartDraining() get
// UNAVAILABLE. RPC handlers never block: engine events arrive on the engine's worker thread
// and are queued into the call's reactor.
class CompletionService final : public specmoe::v1::Completion::CallbackService {
 public:
  // `api_key` empty: no authentication. `metrics` (not owned) must outlive the service and
  // the engine (the engine's sinks report to it).
  CompletionService(ServiceLimits limits, std::string api_key, Metrics* metrics);

  // Makes the service ready once the engine is loaded.
  void SetEngine(std::shared_ptr<engine::Engine> engine);
  // New RPCs get UNAVAILABLE from now on; in-flight ones continue.
  void StartDraining();

  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context,
                                     const specmoe::v1::CompleteRequest* request,
                                     specmoe::v1::CompleteResponse* response) override;
  grpc::ServerWriteReactor<specmoe::v1::CompleteChunk>* CompleteStream(
      grpc::CallbackServerContext* context,
      const specmoe::v1::CompleteRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const specmoe::v1::TokenizeRequest* request,
                                     specmoe::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const specmoe::v1::GetModelInfoRequest* request,
                                         specmoe::v1::ModelInfo* response) override;

 private:
  // Checks the API key and readiness; on success stores the engine in *engine.
  grpc::Status Admit(grpc::CallbackServerContext* context,
                     std::shared_ptr<engine::Engine>* engine) const;
  // Counts and logs a call refused before it reached the engine, and finishes it.
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context, Rpc rpc,
                                   const grpc::Status& status) const;

  const ServiceLimits limits_;
  const std::string api_key_;
  Metrics* const metrics_;
  mutable std::mutex mu_;
  std::shared_ptr<engine::Engine> engine_;  // guarded by mu_; null while loading
  std::atomic<bool> draining_{false};
};

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_COMPLETION_SERVICE_H_
