// server/completion_service.h — the specmoe.v1.Completion service on gRPC's callback API
// (grpc::CallbackService reactors, as in gRPC's route_guide_callback_server.cc): wire
// messages -> engine requests (server/request_conversion.h; the engine validates), engine
// events -> CompleteChunk / CompleteResponse, cancellation and deadlines ->
// RequestHandle::Cancel(), the API key (also in front of reflection), one log line and one
// metrics count per finished AND per refused request. Tested by tests/server_e2e_test.cc
// and tests/metrics_e2e_test.py against the real binary.
#ifndef SPECMOE_SERVER_COMPLETION_SERVICE_H_
#define SPECMOE_SERVER_COMPLETION_SERVICE_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "engine/serving/engine.h"
#include "server/metrics.h"
#include "specmoe/v1/completion.grpc.pb.h"

namespace specmoe::server {

// OK when `api_key` is empty or the metadata holds "authorization: Bearer <api_key>" (the
// scheme case-insensitive, RFC 6750); UNAUTHENTICATED otherwise (never echoing the key).
grpc::Status CheckApiKey(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                         const std::string& api_key);

// The request log lines (server/README.md), shared with the HTTP front (server/http_server.h): one
// per refused request, one per finished generation request (`ttft_seconds` < 0: no token).
void LogRefusedRequest(const std::string& rpc, const std::string& request_id,
                       const std::string& peer, const absl::Status& status);
void LogFinishedRequest(const std::string& rpc, const std::string& request_id,
                        const std::string& peer, const engine::GenerationEvent& event,
                        double seconds, double ttft_seconds);

// Puts the API key in front of server reflection (registered by gRPC's plugin, so the
// service cannot check it itself): a call without the key is cancelled before it is
// answered, and logged as refused.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeReflectionAuthInterceptorFactory(std::string api_key);

// The service's base: Complete, CompleteStream and Tokenize take their request as bytes and
// parse it themselves, so a request gRPC could not parse (invalid UTF-8 in a string field,
// garbage) is answered INVALID_ARGUMENT naming the problem, and logged, instead of
// gRPC's bare UNIMPLEMENTED.
using CompletionServiceBase = specmoe::v1::Completion::WithRawCallbackMethod_Complete<
    specmoe::v1::Completion::WithRawCallbackMethod_CompleteStream<
        specmoe::v1::Completion::WithRawCallbackMethod_Tokenize<
            specmoe::v1::Completion::WithCallbackMethod_GetModelInfo<
                specmoe::v1::Completion::Service>>>>;

// Parses `bytes` as a `Message`; INVALID_ARGUMENT naming the message and, where protobuf
// says, the field and the problem.
template <typename Message>
grpc::Status ParseRequest(const grpc::ByteBuffer& bytes, Message* message);

// Contract: owned by main and outlives the grpc::Server it is registered with. All methods
// are thread-safe; RPCs before SetEngine() (models loading) or after StartDraining() get
// UNAVAILABLE. RPC handlers never block: engine events arrive on the engine's worker thread
// and are queued into the call's reactor (a stream keeps at most one merged chunk queued
// behind gRPC's flow control).
class CompletionService final : public CompletionServiceBase {
 public:
  // `api_key` empty: no authentication. `metrics` (not owned) must outlive the service and
  // the engine (the engine's sinks report to it). A stream whose client has not taken a
  // write for `stream_stall_limit` is cancelled and logged.
  CompletionService(std::string api_key, Metrics* metrics,
                    std::chrono::seconds stream_stall_limit = std::chrono::seconds(30));

  // Makes the service ready once the engine is loaded.
  void SetEngine(std::shared_ptr<engine::Engine> engine);
  // New RPCs get UNAVAILABLE from now on; in-flight ones continue.
  void StartDraining();
  // Complete / CompleteStream calls not yet done (the drain waits for them).
  int active_calls() const { return active_calls_.load(); }

  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* CompleteStream(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const specmoe::v1::GetModelInfoRequest* request,
                                         specmoe::v1::ModelInfo* response) override;

 private:
  // Checks the API key and readiness; on success stores the engine in *engine.
  grpc::Status Admit(grpc::CallbackServerContext* context,
                     std::shared_ptr<engine::Engine>* engine) const;

  const std::string api_key_;
  Metrics* const metrics_;
  const std::chrono::seconds stream_stall_limit_;
  mutable std::mutex mu_;
  std::shared_ptr<engine::Engine> engine_;  // guarded by mu_; null while loading
  std::atomic<bool> draining_{false};
  std::atomic<int> active_calls_{0};
};

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_COMPLETION_SERVICE_H_
