// server/completion_service.cc — see completion_service.h. The two generation reactors share
// one pattern: the engine's sink (worker thread) locks the call's Link, converts the event
// and queues it; gRPC callbacks (OnWriteDone, OnCancel, OnDone) take the same lock. At most
// one write is in flight; Finish is called exactly once, after the queued chunks are written.
#include "server/completion_service.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "server/logging.h"
#include "server/status_map.h"

namespace specmoe::server {
namespace {

namespace v1 = ::specmoe::v1;
using Clock = std::chrono::steady_clock;

uint64_t RandomU64() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  return generator();
}

std::string NewRequestId() {
  static const uint64_t process_tag = RandomU64() & 0xffffffffu;
  static std::atomic<uint64_t> counter{0};
  return absl::StrFormat("cmpl-%08x-%d", process_tag, counter.fetch_add(1) + 1);
}

absl::Status InvalidField(const std::string& message) {
  return absl::InvalidArgumentError(message);
}

v1::FinishReason ToWire(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case engine::FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case engine::FinishReason::kNone:
      break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

const char* FinishName(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kLength:
      return "length";
    case engine::FinishReason::kStop:
      return "stop";
    case engine::FinishReason::kEos:
      return "eos";
    case engine::FinishReason::kCancelled:
      return "cancelled";
    case engine::FinishReason::kNone:
      break;
  }
  return "none";
}

void FillStats(const engine::GenerationEvent& event, v1::Usage* usage,
               v1::SpeculationStats* stats) {
  usage->set_prompt_tokens(event.prompt_tokens);
  usage->set_completion_tokens(event.completion_tokens);
  const engine::SpeculationStats& s = event.speculation;
  stats->set_verify_steps(s.verify_steps);
  stats->set_drafted_tokens(s.drafted_tokens);
  stats->set_accepted_tokens(s.accepted_tokens);
  stats->set_mean_tokens_per_step(s.mean_tokens_per_step);
  for (float rate : s.acceptance_by_depth) stats->add_acceptance_by_depth(rate);
}

// The log line of a generation request that reached the engine (DESIGN §7).
RequestLogLine FinishedLine(const char* rpc, const std::string& request_id,
                            const std::string& peer, const engine::GenerationEvent& event,
                            double seconds, double ttft_seconds) {
  RequestLogLine line;
  line.request_id = request_id;
  line.rpc = rpc;
  line.peer = peer;
  if (!event.status.ok()) {
    const grpc::Status status = ToGrpcStatus(event.status);
    line.status = GrpcCodeName(status.error_code());
    line.error = status.error_message();
  } else {
    line.status = event.finish_reason == engine::FinishReason::kCancelled ? "CANCELLED" : "OK";
    if (line.status != "OK") line.error = "cancelled";
  }
  line.prompt_tokens = event.prompt_tokens;
  line.completion_tokens = event.completion_tokens;
  line.finish = event.status.ok() ? FinishName(event.finish_reason) : "error";
  line.duration_ms = seconds * 1e3;
  line.ttft_ms = ttft_seconds >= 0 ? ttft_seconds * 1e3 : -1;
  line.tokens_per_s = seconds > 0 ? event.completion_tokens / seconds : 0.0;
  const engine::SpeculationStats& s = event.speculation;
  line.verify_steps = s.verify_steps;
  line.drafted_tokens = s.drafted_tokens;
  line.accepted_tokens = s.accepted_tokens;
  line.mean_tokens_per_step = s.mean_tokens_per_step;
  line.acceptance_by_depth = s.acceptance_by_depth;
  return line;
}

void LogRefused(Rpc rpc, const std::string& request_id, const std::string& peer,
                const grpc::Status& status) {
  static constexpr const char* kNames[] = {"Complete", "CompleteStream", "Tokenize",
                                           "GetModelInfo"};
  RequestLogLine line;
  line.request_id = request_id;
  line.rpc = kNames[static_cast<int>(rpc)];
  line.peer = peer;
  line.status = GrpcCodeName(status.error_code());
  line.error = status.error_message();
  line.refused = true;
  LogRequest(line);
}

// The status a call that gRPC cancelled answers: DEADLINE_EXCEEDED once its deadline has
// passed, CANCELLED otherwise (the client went away).
grpc::Status CancelledStatus(const grpc::CallbackServerContext* context) {
  if (context->deadline() <= std::chrono::system_clock::now()) {
    return ToGrpcStatus(absl::DeadlineExceededError("deadline exceeded"));
  }
  return ToGrpcStatus(absl::CancelledError("cancelled by the client"));
}

// What the engine's sink and a reactor share: the sink may outlive the reactor (the engine
// can deliver a last event after the call ended), so it reaches the reactor only through
// this link, which OnDone clears. `mu` also guards the reactor's own state.
// The request's log line is written here too, so requests whose call already ended
// (cancelled, deadline) are logged with the engine's final outcome.
template <typename Reactor>
struct Link {
  std::mutex mu;
  Reactor* reactor = nullptr;  // guarded by mu
};

// The sink also times the request for the metrics: time to the first token, the gap between
// consecutive token deliveries, and end to end (all from the call's arrival).
template <typename Reactor>
engine::EventSink MakeSink(std::shared_ptr<Link<Reactor>> link, const char* rpc,
                           std::string request_id, std::string peer, Metrics* metrics,
                           Clock::time_point start) {
  return [link = std::move(link), rpc, request_id = std::move(request_id),
          peer = std::move(peer), metrics, start, ttft_seconds = -1.0,
          last_tokens = Clock::time_point()](engine::GenerationEvent event) mutable {
    const Clock::time_point now = Clock::now();
    if (!event.token_ids.empty()) {
      if (ttft_seconds < 0) {
        ttft_seconds = std::chrono::duration<double>(now - start).count();
        metrics->ObserveTimeToFirstToken(ttft_seconds);
      } else {
        metrics->ObserveInterToken(std::chrono::duration<double>(now - last_tokens).count());
      }
      last_tokens = now;
    }
    if (event.finished || !event.status.ok()) {
      const double seconds = std::chrono::duration<double>(now - start).count();
      if (event.status.ok()) metrics->ObserveFinished(seconds, event);
      LogRequest(FinishedLine(rpc, request_id, peer, event, seconds, ttft_seconds));
    }
    std::lock_guard<std::mutex> lock(link->mu);
    if (link->reactor != nullptr) link->reactor->OnEventLocked(std::move(event));
  };
}

// Complete: accumulates the events into the response and finishes on the last one.
class CompleteReactor final : public grpc::ServerUnaryReactor {
 public:
  CompleteReactor(grpc::CallbackServerContext* context, v1::CompleteResponse* response,
                  Metrics* metrics)
      : context_(context),
        response_(response),
        metrics_(metrics),
        link_(std::make_shared<Link<CompleteReactor>>()) {
    link_->reactor = this;
  }

  // Validates and submits; finishes at once on an error.
  void Start(const v1::CompleteRequest& request, engine::Engine& engine,
             const ServiceLimits& limits) {
    const Clock::time_point start = Clock::now();
    absl::StatusOr<engine::GenerationRequest> generation =
        ToGenerationRequest(request, engine, limits);
    if (!generation.ok()) {
      const grpc::Status status = ToGrpcStatus(generation.status());
      LogRefused(Rpc::kComplete, request.request_id(), context_->peer(), status);
      FinishOnce(status);
      return;
    }
    request_id_ = generation->request_id;
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      response_->set_request_id(request_id_);
    }
    // The request may finish, and the call end (deleting this), before Submit returns:
    // afterwards touch members only while the link still points here.
    const std::shared_ptr<Link<CompleteReactor>> link = link_;
    absl::StatusOr<std::shared_ptr<engine::RequestHandle>> handle =
        engine.Submit(*std::move(generation), MakeSink(link, "Complete", request_id_,
                                                       context_->peer(), metrics_, start));
    std::lock_guard<std::mutex> lock(link->mu);
    if (link->reactor == nullptr) {
      if (handle.ok()) (*handle)->Cancel();  // the call is over; a no-op if finished
      return;
    }
    if (!handle.ok()) {
      const grpc::Status status = ToGrpcStatus(handle.status());
      LogRefused(Rpc::kComplete, request_id_, context_->peer(), status);
      FinishLocked(status);
      return;
    }
    handle_ = *std::move(handle);
    if (cancelled_) handle_->Cancel();
  }

  void OnEventLocked(engine::GenerationEvent event) {
    if (finished_) return;
    response_->mutable_text()->append(event.text);
    response_->mutable_token_ids()->Add(event.token_ids.begin(), event.token_ids.end());
    if (!event.finished && event.status.ok()) return;
    if (!event.status.ok()) {
      FinishLocked(ToGrpcStatus(event.status));
      return;
    }
    response_->set_finish_reason(ToWire(event.finish_reason));
    FillStats(event, response_->mutable_usage(), response_->mutable_speculation());
    FinishLocked(grpc::Status::OK);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(link_->mu);
    cancelled_ = true;
    if (handle_ != nullptr) handle_->Cancel();
    FinishLocked(CancelledStatus(context_));
  }

  void OnDone() override {
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      link_->reactor = nullptr;
      if (handle_ != nullptr) handle_->Cancel();  // no-op for a finished request
    }
    delete this;
  }

 private:
  void FinishOnce(const grpc::Status& status) {
    std::lock_guard<std::mutex> lock(link_->mu);
    FinishLocked(status);
  }
  void FinishLocked(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    metrics_->CountRequest(Rpc::kComplete, status.error_code());
    Finish(status);
  }

  grpc::CallbackServerContext* const context_;
  v1::CompleteResponse* const response_;  // written under link_->mu until Finish
  Metrics* const metrics_;
  const std::shared_ptr<Link<CompleteReactor>> link_;
  std::string request_id_;
  std::shared_ptr<engine::RequestHandle> handle_;  // guarded by link_->mu
  bool cancelled_ = false;                         // guarded by link_->mu
  bool finished_ = false;                          // guarded by link_->mu
};

// CompleteStream: one chunk per engine event; the last chunk carries finish reason, usage
// and statistics.
class StreamReactor final : public grpc::ServerWriteReactor<v1::CompleteChunk> {
 public:
  StreamReactor(grpc::CallbackServerContext* context, Metrics* metrics)
      : context_(context), metrics_(metrics), link_(std::make_shared<Link<StreamReactor>>()) {
    link_->reactor = this;
  }

  void Start(const v1::CompleteRequest& request, engine::Engine& engine,
             const ServiceLimits& limits) {
    const Clock::time_point start = Clock::now();
    absl::StatusOr<engine::GenerationRequest> generation =
        ToGenerationRequest(request, engine, limits);
    if (!generation.ok()) {
      std::lock_guard<std::mutex> lock(link_->mu);
      final_status_ = ToGrpcStatus(generation.status());
      LogRefused(Rpc::kCompleteStream, request.request_id(), context_->peer(), *final_status_);
      PumpLocked();
      return;
    }
    request_id_ = generation->request_id;
    // As in CompleteReactor::Start: this may be deleted once Submit returns.
    const std::shared_ptr<Link<StreamReactor>> link = link_;
    absl::StatusOr<std::shared_ptr<engine::RequestHandle>> handle =
        engine.Submit(*std::move(generation),
                      MakeSink(link, "CompleteStream", request_id_, context_->peer(), metrics_,
                               start));
    std::lock_guard<std::mutex> lock(link->mu);
    if (link->reactor == nullptr) {
      if (handle.ok()) (*handle)->Cancel();
      return;
    }
    if (!handle.ok()) {
      final_status_ = ToGrpcStatus(handle.status());
      LogRefused(Rpc::kCompleteStream, request_id_, context_->peer(), *final_status_);
      PumpLocked();
      return;
    }
    handle_ = *std::move(handle);
    if (cancelled_) handle_->Cancel();
  }

  // Ends the call before anything was submitted.
  void FinishWith(const grpc::Status& status) {
    std::lock_guard<std::mutex> lock(link_->mu);
    final_status_ = status;
    PumpLocked();
  }

  void OnEventLocked(engine::GenerationEvent event) {
    if (final_status_.has_value()) return;
    if (!event.status.ok()) {
      final_status_ = ToGrpcStatus(event.status);
      PumpLocked();
      return;
    }
    v1::CompleteChunk chunk;
    chunk.set_request_id(request_id_);
    chunk.set_text(std::move(event.text));
    chunk.mutable_token_ids()->Add(event.token_ids.begin(), event.token_ids.end());
    if (event.finished) {
      chunk.set_finish_reason(ToWire(event.finish_reason));
      FillStats(event, chunk.mutable_usage(), chunk.mutable_speculation());
      final_status_ = grpc::Status::OK;
    }
    pending_.push_back(std::move(chunk));
    PumpLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(link_->mu);
    write_in_flight_ = false;
    if (!ok) {  // the stream broke: the client is gone
      pending_.clear();
      if (handle_ != nullptr) handle_->Cancel();
      if (!final_status_.has_value()) final_status_ = CancelledStatus(context_);
    }
    PumpLocked();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(link_->mu);
    cancelled_ = true;
    if (handle_ != nullptr) handle_->Cancel();
    pending_.clear();
    if (!final_status_.has_value() || final_status_->ok()) {
      final_status_ = CancelledStatus(context_);
    }
    PumpLocked();
  }

  void OnDone() override {
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      link_->reactor = nullptr;
      if (handle_ != nullptr) handle_->Cancel();
    }
    delete this;
  }

 private:
  // Starts the next write, or finishes once nothing is queued and the outcome is known.
  void PumpLocked() {
    if (write_in_flight_ || finished_) return;
    if (!pending_.empty()) {
      writing_ = std::move(pending_.front());
      pending_.pop_front();
      write_in_flight_ = true;
      StartWrite(&writing_);
      return;
    }
    if (final_status_.has_value()) {
      finished_ = true;
      metrics_->CountRequest(Rpc::kCompleteStream, final_status_->error_code());
      Finish(*final_status_);
    }
  }

  grpc::CallbackServerContext* const context_;
  Metrics* const metrics_;
  const std::shared_ptr<Link<StreamReactor>> link_;
  std::string request_id_;
  // Guarded by link_->mu:
  std::shared_ptr<engine::RequestHandle> handle_;
  std::deque<v1::CompleteChunk> pending_;
  v1::CompleteChunk writing_;  // the chunk of the write in flight
  bool write_in_flight_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
  std::optional<grpc::Status> final_status_;  // set when no more chunks will be queued
};

grpc::ServerUnaryReactor* FinishedUnary(grpc::CallbackServerContext* context,
                                        const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// Constant-time comparison, so the key cannot be guessed byte by byte from timing.
bool SameSecret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

absl::StatusOr<engine::GenerationRequest> ToGenerationRequest(const v1::CompleteRequest& request,
                                                              const engine::Engine& engine,
                                                              const ServiceLimits& limits) {
  engine::GenerationRequest out;
  const int vocab = engine.vocab_size();
  const bool has_text = !request.prompt().empty();
  const bool has_ids = request.prompt_token_ids_size() > 0;
  if (has_text == has_ids) {
    return InvalidField(absl::StrCat("exactly one of prompt / prompt_token_ids must be set (",
                                     has_text ? "both are" : "neither is", ")"));
  }
  const char* prompt_field = has_text ? "prompt" : "prompt_token_ids";
  if (has_text) {
    out.prompt_ids = engine.tokenizer().Encode(request.prompt(), /*add_bos=*/true);
  } else {
    for (int i = 0; i < request.prompt_token_ids_size(); ++i) {
      const int32_t id = request.prompt_token_ids(i);
      if (id < 0 || id >= vocab) {
        return InvalidField(absl::StrCat("prompt_token_ids[", i, "] = ", id,
                                         " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    out.prompt_ids.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  }
  const int prompt_tokens = static_cast<int>(out.prompt_ids.size());
  if (prompt_tokens + 1 > engine.max_context()) {
    return InvalidField(absl::StrCat(prompt_field, " is ", prompt_tokens,
                                     " tokens; the context holds ", engine.max_context(),
                                     " (prompt plus at least one generated token)"));
  }
  if (limits.max_prompt_tokens > 0 && prompt_tokens > limits.max_prompt_tokens) {
    return InvalidField(absl::StrCat(prompt_field, " is ", prompt_tokens,
                                     " tokens; the server's limit is ", limits.max_prompt_tokens,
                                     " (--max-prompt-tokens)"));
  }

  if (request.max_tokens() > static_cast<uint32_t>(limits.max_tokens_limit)) {
    return InvalidField(absl::StrCat("max_tokens ", request.max_tokens(),
                                     " exceeds the server's limit of ", limits.max_tokens_limit,
                                     " (--max-tokens-limit)"));
  }
  out.max_tokens = request.max_tokens() == 0 ? limits.default_max_tokens
                                             : static_cast<int>(request.max_tokens());

  const v1::Sampling& sampling = request.sampling();
  if (!(sampling.temperature() >= 0.0f) || std::isinf(sampling.temperature())) {
    return InvalidField(absl::StrCat("sampling.temperature must be finite and >= 0 (got ",
                                     sampling.temperature(), ")"));
  }
  if (!(sampling.top_p() >= 0.0f && sampling.top_p() <= 1.0f)) {
    return InvalidField(
        absl::StrCat("sampling.top_p must be in [0, 1] (got ", sampling.top_p(), ")"));
  }
  if (!(sampling.repetition_penalty() >= 0.0f) || std::isinf(sampling.repetition_penalty())) {
    return InvalidField(absl::StrCat("sampling.repetition_penalty must be finite and >= 0 (got ",
                                     sampling.repetition_penalty(), ")"));
  }
  out.sampling.temperature = sampling.temperature();
  out.sampling.top_p = sampling.top_p() == 0.0f ? 1.0f : sampling.top_p();
  out.sampling.top_k = static_cast<int>(std::min<uint32_t>(sampling.top_k(), vocab));
  out.sampling.seed = sampling.seed() != 0 ? sampling.seed() : RandomU64() | 1;
  out.sampling.repetition_penalty =
      sampling.repetition_penalty() == 0.0f ? 1.0f : sampling.repetition_penalty();

  for (int i = 0; i < request.stop_size(); ++i) {
    if (request.stop(i).empty()) return InvalidField(absl::StrCat("stop[", i, "] is empty"));
    out.stop.push_back(request.stop(i));
  }
  for (int i = 0; i < request.stop_token_ids_size(); ++i) {
    const int32_t id = request.stop_token_ids(i);
    if (id < 0 || id >= vocab) {
      return InvalidField(absl::StrCat("stop_token_ids[", i, "] = ", id,
                                       " is outside the vocabulary [0, ", vocab, ")"));
    }
    out.stop_token_ids.push_back(id);
  }
  out.ignore_eos = request.ignore_eos();

  out.speculation.disable = request.speculation().disable();
  for (int i = 0; i < request.speculation().expansion_size(); ++i) {
    const uint32_t k = request.speculation().expansion(i);
    if (k == 0 || k > static_cast<uint32_t>(vocab)) {
      return InvalidField(absl::StrCat("speculation.expansion[", i, "] = ", k,
                                       " must be between 1 and the vocabulary size"));
    }
    out.speculation.expansion.push_back(static_cast<int>(k));
  }
  out.request_id = request.request_id().empty() ? NewRequestId() : request.request_id();
  return out;
}

CompletionService::CompletionService(ServiceLimits limits, std::string api_key,
                                     Metrics* metrics)
    : limits_(limits), api_key_(std::move(api_key)), metrics_(metrics) {}

grpc::ServerUnaryReactor* CompletionService::Refuse(grpc::CallbackServerContext* context,
                                                    Rpc rpc, const grpc::Status& status) const {
  LogRefused(rpc, "", context->peer(), status);
  metrics_->CountRequest(rpc, status.error_code());
  return FinishedUnary(context, status);
}

void CompletionService::SetEngine(std::shared_ptr<engine::Engine> engine) {
  std::lock_guard<std::mutex> lock(mu_);
  engine_ = std::move(engine);
}

void CompletionService::StartDraining() { draining_.store(true); }

grpc::Status CompletionService::Admit(grpc::CallbackServerContext* context,
                                      std::shared_ptr<engine::Engine>* engine) const {
  if (!api_key_.empty()) {
    const auto& metadata = context->client_metadata();
    const auto it = metadata.find("authorization");
    if (it == metadata.end()) {
      return ToGrpcStatus(
          absl::UnauthenticatedError("missing 'authorization: Bearer <key>' metadata"));
    }
    const std::string_view value(it->second.data(), it->second.size());
    constexpr std::string_view kBearer = "Bearer ";
    if (value.substr(0, kBearer.size()) != kBearer ||
        !SameSecret(value.substr(kBearer.size()), api_key_)) {
      return ToGrpcStatus(absl::UnauthenticatedError("invalid API key"));
    }
  }
  if (draining_.load()) {
    return ToGrpcStatus(absl::UnavailableError("the server is shutting down"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (engine_ == nullptr) {
    return ToGrpcStatus(absl::UnavailableError("the models are still loading"));
  }
  *engine = engine_;
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* CompletionService::Complete(grpc::CallbackServerContext* context,
                                                      const v1::CompleteRequest* request,
                                                      v1::CompleteResponse* response) {
  std::shared_ptr<engine::Engine> engine;
  if (grpc::Status status = Admit(context, &engine); !status.ok()) {
    return Refuse(context, Rpc::kComplete, status);
  }
  auto* reactor = new CompleteReactor(context, response, metrics_);
  reactor->Start(*request, *engine, limits_);
  return reactor;
}

grpc::ServerWriteReactor<v1::CompleteChunk>* CompletionService::CompleteStream(
    grpc::CallbackServerContext* context, const v1::CompleteRequest* request) {
  std::shared_ptr<engine::Engine> engine;
  grpc::Status status = Admit(context, &engine);
  auto* reactor = new StreamReactor(context, metrics_);
  if (status.ok()) {
    reactor->Start(*request, *engine, limits_);
  } else {
    LogRefused(Rpc::kCompleteStream, request->request_id(), context->peer(), status);
    reactor->FinishWith(status);  // a write reactor has no DefaultReactor
  }
  return reactor;
}

grpc::ServerUnaryReactor* CompletionService::Tokenize(grpc::CallbackServerContext* context,
                                                      const v1::TokenizeRequest* request,
                                                      v1::TokenizeResponse* response) {
  std::shared_ptr<engine::Engine> engine;
  if (grpc::Status status = Admit(context, &engine); !status.ok()) {
    return Refuse(context, Rpc::kTokenize, status);
  }
  const engine::Tokenizer& tokenizer = engine->tokenizer();
  for (int32_t id : tokenizer.Encode(request->text(), request->add_bos())) {
    response->add_token_ids(id);
    response->add_pieces(tokenizer.piece(id));
  }
  metrics_->CountRequest(Rpc::kTokenize, grpc::StatusCode::OK);
  return FinishedUnary(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* CompletionService::GetModelInfo(
    grpc::CallbackServerContext* context, const v1::GetModelInfoRequest* /*request*/,
    v1::ModelInfo* response) {
  std::shared_ptr<engine::Engine> engine;
  if (grpc::Status status = Admit(context, &engine); !status.ok()) {
    return Refuse(context, Rpc::kGetModelInfo, status);
  }
  response->set_target(engine->target_name());
  response->set_draft(engine->draft_name());
  response->set_vocab_size(engine->vocab_size());
  response->set_max_context(engine->max_context());
  for (int k : engine->default_expansion()) response->add_default_expansion(k);
  response->set_device(engine->device());
  response->set_dtype(engine->dtype());
  metrics_->CountRequest(Rpc::kGetModelInfo, grpc::StatusCode::OK);
  return FinishedUnary(context, grpc::Status::OK);
}

}  // namespace specmoe::server
