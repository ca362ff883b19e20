// server/metrics.cc — see metrics.h. The exposition format is Prometheus' text format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/): # HELP / # TYPE, then one
// sample per line; histograms as cumulative _bucket{le=...} plus _sum and _count.
#include "server/metrics.h"

#include <httplib.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace specmoe::server {
namespace {

constexpr const char* kRpcNames[] = {"Complete",    "CompleteStream",  "Tokenize",
                                     "GetModelInfo", "Completions",    "ChatCompletions",
                                     "Models"};
// Rpc values from kFirstHttpRpc on are the HTTP front's.
constexpr int kFirstHttpRpc = static_cast<int>(Rpc::kHttpCompletions);
constexpr const char* kCodeNames[] = {
    "OK",        "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED", "NOT_FOUND",  "ALREADY_EXISTS",    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL",       "UNAVAILABLE",       "DATA_LOSS",
    "UNAUTHENTICATED"};
constexpr const char* kPhaseNames[] = {"draft", "target", "verify"};

// Latency buckets: TTFT, queue wait and end-to-end reach minutes (a long prompt behind a
// full queue on a CPU); inter-token gaps start at 1 ms; step phases at 0.5 ms.
const std::vector<double> kTtftBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                          2.5,   5,    10,    20,   30,  60,   120, 300};
const std::vector<double> kItlBuckets = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06,
                                         0.08,  0.1,    0.15,  0.25, 0.5,  1,    2.5};
const std::vector<double> kE2eBuckets = {0.05, 0.1, 0.25, 0.5, 1,   2.5, 5,   10,
                                         20,   30,  60,   120, 300, 600, 1200};
const std::vector<double> kStepBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                          0.05,   0.1,   0.25,   0.5,   1,    2.5};
const std::vector<double> kTokensPerStepBuckets = {1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 8};
const std::vector<double> kTreeBuckets = {1, 2, 4, 8, 16, 24, 32, 64, 128, 256, 512};
const std::vector<double> kRateBuckets = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1};

std::string FormatValue(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.17g", value);
  return buffer;
}

void Header(absl::string_view name, absl::string_view type, absl::string_view help,
            std::string* out) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

void Scalar(absl::string_view name, absl::string_view type, absl::string_view help, double value,
            std::string* out) {
  Header(name, type, help, out);
  absl::StrAppend(out, name, " ", FormatValue(value), "\n");
}

}  // namespace

const char* GrpcCodeName(grpc::StatusCode code) {
  const int c = static_cast<int>(code);
  return c >= 0 && c < static_cast<int>(std::size(kCodeNames)) ? kCodeNames[c] : "UNKNOWN";
}

grpc::StatusCode CodeOfHttpStatus(int http_status) {
  switch (http_status) {
    case 200: return grpc::StatusCode::OK;
    case 400: return grpc::StatusCode::INVALID_ARGUMENT;
    case 401: return grpc::StatusCode::UNAUTHENTICATED;
    case 404: return grpc::StatusCode::NOT_FOUND;
    case 413:
    case 429: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case 499: return grpc::StatusCode::CANCELLED;
    case 503: return grpc::StatusCode::UNAVAILABLE;
    case 504: return grpc::StatusCode::DEADLINE_EXCEEDED;
    default: break;
  }
  return http_status < 400 ? grpc::StatusCode::OK
                           : (http_status < 500 ? grpc::StatusCode::INVALID_ARGUMENT
                                                : grpc::StatusCode::INTERNAL);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {}

void Histogram::Observe(double value) {
  const size_t index =
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  buckets_[index].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

void Histogram::Render(absl::string_view name, absl::string_view labels, std::string* out) const {
  const std::string prefix = labels.empty() ? "" : absl::StrCat(labels, ",");
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    const std::string le = i < bounds_.size() ? FormatValue(bounds_[i]) : "+Inf";
    absl::StrAppend(out, name, "_bucket{", prefix, "le=\"", le, "\"} ", cumulative, "\n");
  }
  const std::string braces = labels.empty() ? "" : absl::StrCat("{", labels, "}");
  absl::StrAppend(out, name, "_sum", braces, " ",
                  FormatValue(sum_.load(std::memory_order_relaxed)), "\n");
  // _count equals the +Inf bucket, as Prometheus requires.
  absl::StrAppend(out, name, "_count", braces, " ", cumulative, "\n");
}

Metrics::Metrics()
    : ttft_(kTtftBuckets),
      itl_(kItlBuckets),
      e2e_(kE2eBuckets),
      queue_wait_(kTtftBuckets),
      tokens_per_step_(kTokensPerStepBuckets),
      tree_tokens_(kTreeBuckets),
      step_phase_{Histogram(kStepBuckets), Histogram(kStepBuckets), Histogram(kStepBuckets)} {
  acceptance_.reserve(kMaxDepth);
  for (int d = 0; d < kMaxDepth; ++d) acceptance_.push_back(std::make_unique<Histogram>(kRateBuckets));
}

void Metrics::SetEngine(std::shared_ptr<const engine::Engine> engine) {
  std::lock_guard<std::mutex> lock(engine_mu_);
  engine_ = std::move(engine);
}

void Metrics::CountRequest(Rpc rpc, grpc::StatusCode code) {
  const int c = static_cast<int>(code);
  requests_[static_cast<int>(rpc)][c >= 0 && c < kCodes ? c : 2].fetch_add(
      1, std::memory_order_relaxed);
}

void Metrics::ObserveTimeToFirstToken(double seconds) { ttft_.Observe(seconds); }
void Metrics::ObserveInterToken(double seconds) { itl_.Observe(seconds); }

void Metrics::ObserveFinished(double e2e_seconds, const engine::GenerationEvent& event) {
  e2e_.Observe(e2e_seconds);
  prompt_tokens_.fetch_add(event.prompt_tokens, std::memory_order_relaxed);
  generation_tokens_.fetch_add(event.completion_tokens, std::memory_order_relaxed);
  const engine::SpeculationStats& s = event.speculation;
  drafted_tokens_.fetch_add(s.drafted_tokens, std::memory_order_relaxed);
  accepted_tokens_.fetch_add(s.accepted_tokens, std::memory_order_relaxed);
  verify_steps_.fetch_add(s.verify_steps, std::memory_order_relaxed);
  if (s.verify_steps > 0) tokens_per_step_.Observe(s.mean_tokens_per_step);
  const int depths = std::min<int>(static_cast<int>(s.acceptance_by_depth.size()), kMaxDepth);
  for (int d = 0; d < depths; ++d) acceptance_[d]->Observe(s.acceptance_by_depth[d]);
}

void Metrics::OnQueueWait(double seconds) { queue_wait_.Observe(seconds); }

void Metrics::OnStep(const engine::StepReport& step) {
  // Steps that only prefilled are not verify steps: their time shows in the target phase
  // of the next verify step they share, or in the time to first token.
  if (step.decoding == 0) return;
  if (step.draft_seconds > 0) step_phase_[0].Observe(step.draft_seconds);
  step_phase_[1].Observe(step.target_seconds);
  step_phase_[2].Observe(step.verify_seconds);
  tree_tokens_.Observe(step.tree_tokens);
}

std::string Metrics::Render() const {
  std::string out;
  out.reserve(16384);
  Header("specmoe_requests_total", "counter",
         "Finished and refused requests by transport (grpc: specmoe.v1.Completion's RPCs; "
         "http: the OpenAI-compatible endpoints), RPC or endpoint and gRPC status code.",
         &out);
  for (int r = 0; r < kRpcs; ++r) {
    for (int c = 0; c < kCodes; ++c) {
      const uint64_t value = requests_[r][c].load(std::memory_order_relaxed);
      if (value == 0 && c != 0) continue;  // OK is always present; other codes once seen
      absl::StrAppend(&out, "specmoe_requests_total{rpc=\"", kRpcNames[r], "\",code=\"",
                      kCodeNames[c], "\",transport=\"", r >= kFirstHttpRpc ? "http" : "grpc",
                      "\"} ", value, "\n");
    }
  }
  auto load = [](const std::atomic<uint64_t>& v) {
    return static_cast<double>(v.load(std::memory_order_relaxed));
  };
  Scalar("specmoe_prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
         load(prompt_tokens_), &out);
  Scalar("specmoe_generation_tokens_total", "counter",
         "Completion tokens generated by finished requests.", load(generation_tokens_), &out);
  Scalar("specmoe_drafted_tokens_total", "counter",
         "Draft tokens proposed to the target (tree nodes below the root).",
         load(drafted_tokens_), &out);
  Scalar("specmoe_accepted_tokens_total", "counter",
         "Draft tokens the target accepted (bonus tokens excluded).", load(accepted_tokens_),
         &out);
  Scalar("specmoe_verify_steps_total", "counter",
         "Target verify steps of speculating requests.", load(verify_steps_), &out);

  engine::EngineStats zero;
  std::shared_ptr<const engine::Engine> engine;
  {
    std::lock_guard<std::mutex> lock(engine_mu_);
    engine = engine_;
  }
  const engine::EngineStats& stats = engine != nullptr ? engine->stats() : zero;
  auto gauge = [](const std::atomic<int>& v) {
    return static_cast<double>(v.load(std::memory_order_relaxed));
  };
  Scalar("specmoe_queue_depth", "gauge", "Requests waiting for admission.",
         gauge(stats.queue_depth), &out);
  Scalar("specmoe_running_requests", "gauge", "Requests generating.", gauge(stats.running),
         &out);
  Scalar("specmoe_preempted_requests", "gauge",
         "Requests preempted (KV blocks given back) and waiting to resume.",
         gauge(stats.preempted), &out);
  Scalar("specmoe_preemptions_total", "counter",
         "Preemptions since start (a request recomputed from its tokens when room returns).",
         static_cast<double>(stats.preemptions_total.load(std::memory_order_relaxed)), &out);
  Scalar("specmoe_kv_cache_used_blocks", "gauge", "Target KV cache blocks in use.",
         gauge(stats.kv_blocks_used), &out);
  Scalar("specmoe_kv_cache_free_blocks", "gauge",
         "Target KV cache blocks free (prefix-cached blocks no request holds included).",
         gauge(stats.kv_blocks_free), &out);
  Scalar("specmoe_prefix_cache_queries_total", "counter",
         "Prompt tokens looked up in the prefix cache (each request once, at admission).",
         static_cast<double>(stats.prefix_cache_queries_total.load(std::memory_order_relaxed)),
         &out);
  Scalar("specmoe_prefix_cache_hits_total", "counter",
         "Prompt tokens found in the prefix cache (their KV reused, not computed).",
         static_cast<double>(stats.prefix_cache_hits_total.load(std::memory_order_relaxed)),
         &out);
  Scalar("specmoe_prefix_cache_blocks", "gauge",
         "Prefix-cached target KV blocks no request holds (evicted, least recent first, when "
         "room is needed).",
         gauge(stats.prefix_cache_blocks), &out);

  Header("specmoe_time_to_first_token_seconds", "histogram",
         "Time from the request's arrival to its first generated token.", &out);
  ttft_.Render("specmoe_time_to_first_token_seconds", "", &out);
  Header("specmoe_inter_token_latency_seconds", "histogram",
         "Gap between consecutive deliveries of tokens (one per verify step).", &out);
  itl_.Render("specmoe_inter_token_latency_seconds", "", &out);
  Header("specmoe_request_duration_seconds", "histogram",
         "End-to-end time of generation requests, arrival to last token.", &out);
  e2e_.Render("specmoe_request_duration_seconds", "", &out);
  Header("specmoe_queue_wait_seconds", "histogram",
         "Time a request waited in the queue before admission.", &out);
  queue_wait_.Render("specmoe_queue_wait_seconds", "", &out);
  Header("specmoe_step_duration_seconds", "histogram",
         "Time of one step of the running set by phase (draft, target, verify); steps that "
         "verified at least one request.", &out);
  for (int p = 0; p < 3; ++p) {
    step_phase_[p].Render("specmoe_step_duration_seconds",
                          absl::StrCat("phase=\"", kPhaseNames[p], "\""), &out);
  }
  Header("specmoe_tokens_per_step", "histogram",
         "Mean tokens emitted per verify step, one observation per speculating request.", &out);
  tokens_per_step_.Render("specmoe_tokens_per_step", "", &out);
  Header("specmoe_tree_tokens_per_step", "histogram",
         "Roots and tree nodes of all requests the target scored in one step.", &out);
  tree_tokens_.Render("specmoe_tree_tokens_per_step", "", &out);
  Header("specmoe_acceptance_rate", "histogram",
         "Per-request acceptance rate at each tree depth (accepted / reached).", &out);
  for (int d = 0; d < kMaxDepth; ++d) {
    acceptance_[d]->Render("specmoe_acceptance_rate", absl::StrCat("depth=\"", d + 1, "\""),
                          &out);
  }
  return out;
}

MetricsHttpServer::MetricsHttpServer(const Metrics* metrics) : metrics_(metrics) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::Status MetricsHttpServer::Start(const std::string& listen, const std::string& api_key) {
  // A bare PORT means the loopback: 127.0.0.1:PORT.
  const std::string address =
      listen.find(':') == std::string::npos ? absl::StrCat("127.0.0.1:", listen) : listen;
  const size_t colon = address.rfind(':');
  int port = -1;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535 ||
      colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen: '", listen, "' is not HOST:PORT or PORT"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  http_ = std::make_unique<httplib::Server>();
  const Metrics* metrics = metrics_;
  http_->Get("/metrics", [metrics, api_key](const httplib::Request& request,
                                            httplib::Response& response) {
    if (!api_key.empty()) {
      const std::string expected = "Bearer " + api_key;
      const std::string given = request.get_header_value("Authorization");
      unsigned char diff = given.size() == expected.size() ? 0 : 1;
      for (size_t i = 0; i < given.size() && i < expected.size(); ++i) {
        diff |= static_cast<unsigned char>(given[i] ^ expected[i]);
      }
      if (diff != 0) {
        response.status = 401;
        response.set_header("WWW-Authenticate", "Bearer");
        response.set_content("missing or invalid 'Authorization: Bearer <key>'\n",
                             "text/plain");
        return;
      }
    }
    response.set_content(metrics->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (port == 0) {
    port_ = http_->bind_to_any_port(host);
  } else {
    port_ = http_->bind_to_port(host, port) ? port : -1;
  }
  if (port_ <= 0) {
    http_.reset();
    return absl::UnavailableError(absl::StrCat("--metrics-listen: cannot listen on ", listen));
  }
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return absl::OkStatus();
}

void MetricsHttpServer::Stop() {
  if (http_ != nullptr) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace specmoe::server
