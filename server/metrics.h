// server/metrics.h — Prometheus metrics of specmoe-server (server/README.md, Metrics): a fixed set
// of counters, gauges and histograms updated with atomics from the RPC handlers and the engine's
// worker thread, rendered in the Prometheus text exposition format (0.0.4), and served at
// /metrics by cpp-httplib. Names follow Prometheus' naming guide (specmoe_ prefix, _total
// counters, _seconds histograms); labels are bounded (rpc, gRPC code, phase, depth).
// Tested by tests/metrics_e2e_test.py (exact counter deltas, promtool, a real Prometheus).
#ifndef SPECMOE_SERVER_METRICS_H_
#define SPECMOE_SERVER_METRICS_H_

#include <grpcpp/grpcpp.h>

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include "absl/strings/string_view.h"
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "engine/serving/engine.h"
#include "engine/serving/engine_stats.h"
#include "engine/serving/step_report.h"

namespace httplib {
class Server;
}

namespace specmoe::server {

// A Prometheus histogram with fixed upper bounds. Contract: Observe is lock-free and
// thread-safe; Render reads a consistent-enough snapshot (each atomic read once).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  // Appends the _bucket/_sum/_count lines; `labels` is "" or `key="value"`.
  void Render(absl::string_view name, absl::string_view labels, std::string* out) const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1 (+Inf), not cumulative
  std::atomic<double> sum_{0.0};
  std::atomic<uint64_t> count_{0};
};

// "OK", "INVALID_ARGUMENT", ...: the gRPC code's canonical name.
const char* GrpcCodeName(grpc::StatusCode code);

// The RPCs of specmoe.v1.Completion (transport="grpc") and the HTTP front's endpoints
// (transport="http": Completions, ChatCompletions, Models), for the requests counter's `rpc`
// label.
enum class Rpc {
  kComplete = 0,
  kCompleteStream = 1,
  kTokenize = 2,
  kGetModelInfo = 3,
  kHttpCompletions = 4,
  kHttpChatCompletions = 5,
  kHttpModels = 6,
};

// The gRPC code an HTTP status counts as (200 OK, 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED,
// 404 NOT_FOUND, 413 and 429 RESOURCE_EXHAUSTED, 499 CANCELLED, 503 UNAVAILABLE,
// 504 DEADLINE_EXCEEDED, other 5xx INTERNAL), so one `code` label serves both transports.
grpc::StatusCode CodeOfHttpStatus(int http_status);

// Contract: one per server, outliving the service and the engine that report to it; every
// method is thread-safe and never blocks on the engine (gauges are read from
// engine::EngineStats atomics at render time).
class Metrics final : public engine::EngineObserver {
 public:
  static constexpr int kMaxDepth = 16;  // acceptance-by-depth series beyond this are folded in

  Metrics();

  // The engine whose gauges are rendered; null until the models are loaded.
  void SetEngine(std::shared_ptr<const engine::Engine> engine);

  // Every finished or refused RPC, once.
  void CountRequest(Rpc rpc, grpc::StatusCode code);
  // Generation timings, from the engine's events.
  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterToken(double seconds);
  // The final event of a generation request (also cancelled ones): tokens and speculation.
  void ObserveFinished(double e2e_seconds, const engine::GenerationEvent& event);

  // engine::EngineObserver (worker thread).
  void OnQueueWait(double seconds) override;
  void OnStep(const engine::StepReport& step) override;

  // The Prometheus text exposition of every series.
  std::string Render() const;

 private:
  static constexpr int kRpcs = 7;
  static constexpr int kCodes = 17;
  std::array<std::array<std::atomic<uint64_t>, kCodes>, kRpcs> requests_{};
  std::atomic<uint64_t> prompt_tokens_{0};
  std::atomic<uint64_t> generation_tokens_{0};
  std::atomic<uint64_t> drafted_tokens_{0};
  std::atomic<uint64_t> accepted_tokens_{0};
  std::atomic<uint64_t> verify_steps_{0};
  Histogram ttft_;
  Histogram itl_;
  Histogram e2e_;
  Histogram queue_wait_;
  Histogram tokens_per_step_;
  Histogram tree_tokens_;
  std::array<Histogram, 3> step_phase_;  // draft, target, verify
  std::vector<std::unique_ptr<Histogram>> acceptance_;  // depth 1..kMaxDepth
  mutable std::mutex engine_mu_;
  std::shared_ptr<const engine::Engine> engine_;  // guarded by engine_mu_
};

// Serves GET /metrics over HTTP on its own thread. Contract: Start once, Stop (or the
// destructor) joins the thread; Metrics must outlive it.
class MetricsHttpServer {
 public:
  explicit MetricsHttpServer(const Metrics* metrics);
  ~MetricsHttpServer();

  // `listen` is HOST:PORT or PORT (the loopback, 127.0.0.1; port 0: a free one); `api_key` empty:
  // no authentication, else requests need 'Authorization: Bearer <key>'. UNAVAILABLE when the port
  // cannot be bound.
  absl::Status Start(const std::string& listen, const std::string& api_key);
  int port() const { return port_; }
  void Stop();

 private:
  const Metrics* const metrics_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_METRICS_H_
