// server/completion_service.cc — see completion_service.h. The two generation reactors share
// one pattern: the engine's sink (worker thread) locks the call's Link, converts the event
// and queues it; gRPC callbacks (OnWriteDone, OnCancel, OnDone) take the same lock. At most
// one write is in flight and at most one chunk waits behind it (later events merge into
// it), so a slow reader costs O(generated tokens); a write the client has not taken within
// --stream-stall-seconds (an alarm armed per write) cancels the call and the request. Finish is
// called exactly once, after the queued chunk is written.
#include "server/completion_service.h"

#include <grpc/grpc.h>
#include <grpcpp/alarm.h>
#include <grpcpp/support/proto_buffer_writer.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/serving/request_validator.h"
#include "server/logging.h"
#include "server/request_conversion.h"
#include "server/status_map.h"

namespace specmoe::server {
namespace {

namespace v1 = ::specmoe::v1;
using Clock = std::chrono::steady_clock;

// The id as logged for a refused request: an over-long id (itself the refusal) is cut.
std::string LoggedId(const std::string& id) {
  if (id.size() <= engine::kMaxRequestIdBytes) return id;
  return absl::StrCat(id.substr(0, 32), "...(", id.size(), " bytes)");
}

// One line per refused request (server/README.md, Logs): id, rpc, code, peer and the reason; never
// the key (no refusal message holds it).
// In JSON, rpc, peer, status and error are fields of their own too.
void LogRefused(const char* rpc, const std::string& request_id, const std::string& peer,
                const grpc::Status& status) {
  LogRequest(status.error_code() == grpc::StatusCode::UNAVAILABLE ? spdlog::level::info
                                                                   : spdlog::level::warn,
             LoggedId(request_id),
             absl::StrCat("rpc=", rpc, " refused code=", GrpcCodeName(status.error_code()),
                          " peer=", peer, " reason=", status.error_message()),
             {{"rpc", rpc},
              {"peer", peer},
              {"status", GrpcCodeName(status.error_code())},
              {"refused", true},
              {"error", status.error_message()}});
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
  usage->set_cached_prompt_tokens(event.cached_prompt_tokens);
  const engine::SpeculationStats& s = event.speculation;
  stats->set_verify_steps(s.verify_steps);
  stats->set_drafted_tokens(s.drafted_tokens);
  stats->set_accepted_tokens(s.accepted_tokens);
  stats->set_mean_tokens_per_step(s.mean_tokens_per_step);
  for (float rate : s.acceptance_by_depth) stats->add_acceptance_by_depth(rate);
}

// Appends the engine's per-token logprobs to a response's or chunk's repeated field.
void AppendLogprobs(const std::vector<engine::TokenLogprob>& logprobs,
                    google::protobuf::RepeatedPtrField<v1::TokenLogprob>* out) {
  for (const engine::TokenLogprob& lp : logprobs) {
    v1::TokenLogprob* entry = out->Add();
    entry->set_token_id(lp.token_id);
    entry->set_logprob(lp.logprob);
    for (const engine::TopLogprob& top : lp.top) {
      v1::TopLogprob* t = entry->add_top();
      t->set_token_id(top.token_id);
      t->set_logprob(top.logprob);
    }
  }
}

// Rounds to `digits` decimals, so that JSON shows 0.8182, not a float's 0.8181818127632141.
double Round(double value, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(value * scale) / scale;
}

// One line per finished request (server/README.md, Logs). `deadline`: the call's deadline ended it;
// `ttft_seconds` < 0: no token was generated. In JSON every figure is a field of its own.
void LogFinished(const std::string& rpc, const std::string& request_id, const std::string& peer,
                 const engine::GenerationEvent& event, double seconds, double ttft_seconds,
                 bool deadline) {
  const double tokens_per_second = seconds > 0 ? event.completion_tokens / seconds : 0.0;
  const engine::SpeculationStats& s = event.speculation;
  if (!event.status.ok()) {
    const grpc::Status status = ToGrpcStatus(event.status);
    LogRequest(spdlog::level::err, request_id,
               absl::StrFormat("rpc=%s failed: %s duration_ms=%.1f peer=%s", rpc,
                               event.status.ToString(), seconds * 1e3, peer),
               {{"rpc", rpc},
                {"peer", peer},
                {"status", GrpcCodeName(status.error_code())},
                {"error", status.error_message()},
                {"duration_ms", Round(seconds * 1e3, 3)}});
    return;
  }
  const char* finish = FinishName(event.finish_reason);
  const char* code = "OK";
  if (event.finish_reason == engine::FinishReason::kCancelled) {
    code = deadline ? "DEADLINE_EXCEEDED" : "CANCELLED";
    if (deadline) finish = "deadline";
  }
  std::vector<double> by_depth;
  for (float rate : s.acceptance_by_depth) by_depth.push_back(Round(rate, 4));
  LogRequest(
      spdlog::level::info, request_id,
      absl::StrFormat(
          "rpc=%s peer=%s status=%s prompt_tokens=%d cached_prompt_tokens=%d "
          "completion_tokens=%d finish=%s "
          "duration_ms=%.1f ttft_ms=%.1f tokens_per_s=%.1f verify_steps=%d drafted=%d "
          "accepted=%d mean_tokens_per_step=%.2f acceptance_by_depth=[%s]",
          rpc, peer, code, event.prompt_tokens, event.cached_prompt_tokens,
          event.completion_tokens, finish, seconds * 1e3,
          ttft_seconds * 1e3, tokens_per_second, s.verify_steps, s.drafted_tokens,
          s.accepted_tokens, s.mean_tokens_per_step,
          absl::StrJoin(s.acceptance_by_depth, ",", [](std::string* out, float r) {
            absl::StrAppendFormat(out, "%.3f", r);
          })),
      {{"rpc", rpc},
       {"peer", peer},
       {"status", code},
       {"prompt_tokens", event.prompt_tokens},
       {"cached_prompt_tokens", event.cached_prompt_tokens},
       {"completion_tokens", event.completion_tokens},
       {"finish", finish},
       {"duration_ms", Round(seconds * 1e3, 3)},
       {"ttft_ms", ttft_seconds >= 0 ? nlohmann::json(Round(ttft_seconds * 1e3, 3))
                                     : nlohmann::json(nullptr)},
       {"tokens_per_s", Round(tokens_per_second, 2)},
       {"verify_steps", s.verify_steps},
       {"drafted_tokens", s.drafted_tokens},
       {"accepted_tokens", s.accepted_tokens},
       {"mean_tokens_per_step", Round(s.mean_tokens_per_step, 4)},
       {"acceptance_by_depth", by_depth}});
}

// The wire bytes of `message`.
grpc::ByteBuffer Serialize(const google::protobuf::Message& message) {
  grpc::ByteBuffer bytes;
  bool own_buffer = false;
  (void)grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, &bytes,
                                                                        &own_buffer);
  return bytes;
}

// A cancellation counts as the deadline's when the deadline is at most kDeadlineSlack away:
// the client's own timer fires first and cancels the call (RST_STREAM) before the server's
// copy of the deadline (header receipt + grpc-timeout) has passed, by the transport's delay,
// which grows under load.
constexpr std::chrono::milliseconds kDeadlineSlack{250};

bool DeadlinePassed(const grpc::CallbackServerContext* context) {
  return context->deadline() <= std::chrono::system_clock::now() + kDeadlineSlack;
}

// The status a call that gRPC cancelled answers: DEADLINE_EXCEEDED once its deadline has
// passed, CANCELLED otherwise (the client went away).
grpc::Status CancelledStatus(const grpc::CallbackServerContext* context) {
  if (DeadlinePassed(context)) {
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
  std::atomic<bool> deadline_expired{false};  // set before the request is cancelled
};

// The sink also times the request for the metrics: time to the first token, the gap between
// consecutive token deliveries, and end to end.
template <typename Reactor>
engine::EventSink MakeSink(std::shared_ptr<Link<Reactor>> link, const char* rpc,
                           std::string request_id, std::string peer, Metrics* metrics) {
  return [link = std::move(link), rpc, request_id = std::move(request_id),
          peer = std::move(peer), metrics, start = Clock::now(), ttft_seconds = -1.0,
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
      LogFinished(rpc, request_id, peer, event, seconds, ttft_seconds,
                  link->deadline_expired.load());
    }
    std::lock_guard<std::mutex> lock(link->mu);
    if (link->reactor != nullptr) link->reactor->OnEventLocked(std::move(event));
  };
}

// Counts a generation call from creation to OnDone (the drain waits for zero).
class ActiveCall {
 public:
  explicit ActiveCall(std::atomic<int>* counter) : counter_(counter) { counter_->fetch_add(1); }
  ~ActiveCall() { counter_->fetch_sub(1); }

 private:
  std::atomic<int>* counter_;
};

// Complete: accumulates the events into the response and finishes on the last one.
class CompleteReactor final : public grpc::ServerUnaryReactor {
 public:
  CompleteReactor(grpc::CallbackServerContext* context, grpc::ByteBuffer* wire_response,
                  std::atomic<int>* active, Metrics* metrics)
      : context_(context),
        wire_response_(wire_response),
        metrics_(metrics),
        link_(std::make_shared<Link<CompleteReactor>>()),
        active_(active) {
    link_->reactor = this;
  }

  // Submits (the engine validates); finishes at once on an error.
  void Start(engine::GenerationRequest request, engine::Engine& engine) {
    request_id_ = request.request_id;
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      response_->set_request_id(request_id_);
    }
    // The request may finish, and the call end (deleting this), before Submit returns:
    // afterwards touch members only while the link still points here.
    const std::shared_ptr<Link<CompleteReactor>> link = link_;
    const std::string request_id = request_id_;
    const std::string peer = context_->peer();
    absl::StatusOr<std::shared_ptr<engine::RequestHandle>> handle =
        engine.Submit(std::move(request), MakeSink(link, "Complete", request_id, peer, metrics_));
    if (!handle.ok()) LogRefused("Complete", request_id, peer, ToGrpcStatus(handle.status()));
    std::lock_guard<std::mutex> lock(link->mu);
    if (link->reactor == nullptr) {
      if (handle.ok()) (*handle)->Cancel();  // the call is over; a no-op if finished
      return;
    }
    if (!handle.ok()) {
      FinishLocked(ToGrpcStatus(handle.status()));
      return;
    }
    handle_ = *std::move(handle);
    if (cancelled_) handle_->Cancel();
  }

  void OnEventLocked(engine::GenerationEvent event) {
    if (finished_) return;
    response_->mutable_text()->append(event.text);
    response_->mutable_token_ids()->Add(event.token_ids.begin(), event.token_ids.end());
    AppendLogprobs(event.prompt_logprobs, response_->mutable_prompt_logprobs());
    AppendLogprobs(event.logprobs, response_->mutable_logprobs());
    if (!event.finished && event.status.ok()) return;
    if (!event.status.ok()) {
      FinishLocked(ToGrpcStatus(event.status));
      return;
    }
    response_->set_finish_reason(ToWire(event.finish_reason));
    response_->set_seed(event.seed);
    FillStats(event, response_->mutable_usage(), response_->mutable_speculation());
    FinishLocked(grpc::Status::OK);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(link_->mu);
    cancelled_ = true;
    if (DeadlinePassed(context_)) link_->deadline_expired.store(true);
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
  void FinishLocked(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    if (status.ok()) *wire_response_ = Serialize(*response_);
    metrics_->CountRequest(Rpc::kComplete, status.error_code());
    Finish(status);
  }

  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const wire_response_;
  Metrics* const metrics_;
  // Guarded by link_->mu until Finish:
  std::unique_ptr<v1::CompleteResponse> response_ = std::make_unique<v1::CompleteResponse>();
  const std::shared_ptr<Link<CompleteReactor>> link_;
  ActiveCall active_;
  std::string request_id_;
  std::shared_ptr<engine::RequestHandle> handle_;  // guarded by link_->mu
  bool cancelled_ = false;                         // guarded by link_->mu
  bool finished_ = false;                          // guarded by link_->mu
};

// CompleteStream: one chunk per engine event while the client keeps up (events arriving
// during a write merge into one queued chunk); the last chunk carries finish reason, usage
// and statistics.
class StreamReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  StreamReactor(grpc::CallbackServerContext* context, std::atomic<int>* active,
                Metrics* metrics, std::chrono::seconds stall_limit)
      : context_(context),
        metrics_(metrics),
        stall_limit_(stall_limit),
        link_(std::make_shared<Link<StreamReactor>>()),
        active_(active) {
    link_->reactor = this;
  }

  void Start(engine::GenerationRequest request, engine::Engine& engine) {
    request_id_ = request.request_id;
    // As in CompleteReactor::Start: this may be deleted once Submit returns.
    const std::shared_ptr<Link<StreamReactor>> link = link_;
    const std::string request_id = request_id_;
    const std::string peer = context_->peer();
    absl::StatusOr<std::shared_ptr<engine::RequestHandle>> handle =
        engine.Submit(std::move(request),
                      MakeSink(link, "CompleteStream", request_id, peer, metrics_));
    if (!handle.ok()) {
      LogRefused("CompleteStream", request_id, peer, ToGrpcStatus(handle.status()));
    }
    std::lock_guard<std::mutex> lock(link->mu);
    if (link->reactor == nullptr) {
      if (handle.ok()) (*handle)->Cancel();
      return;
    }
    if (!handle.ok()) {
      final_status_ = ToGrpcStatus(handle.status());
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
      pending_.reset();
      PumpLocked();
      return;
    }
    if (!pending_.has_value()) {
      pending_.emplace();
      pending_->set_request_id(request_id_);
    }
    v1::CompleteChunk& chunk = *pending_;
    chunk.mutable_text()->append(event.text);
    chunk.mutable_token_ids()->Add(event.token_ids.begin(), event.token_ids.end());
    AppendLogprobs(event.prompt_logprobs, chunk.mutable_prompt_logprobs());
    AppendLogprobs(event.logprobs, chunk.mutable_logprobs());
    if (event.finished) {
      chunk.set_finish_reason(ToWire(event.finish_reason));
      chunk.set_seed(event.seed);
      FillStats(event, chunk.mutable_usage(), chunk.mutable_speculation());
      final_status_ = grpc::Status::OK;
    }
    PumpLocked();
  }

  // The alarm of write number `write` went off: if that write is still in flight, the
  // client has not read for stall_limit_; the request and the call are cancelled. gRPC may
  // run OnCancel inside TryCancel, so the lock is released around it; `stall_cancelling_`
  // holds Finish back meanwhile, so the reactor (deleted only after Finish) stays alive.
  void OnStallAlarm(std::unique_lock<std::mutex>& lock, uint64_t write) {
    if (!write_in_flight_ || write != writes_started_ || finished_) return;
    if (handle_ != nullptr) handle_->Cancel();
    pending_.reset();
    final_status_ = ToGrpcStatus(absl::CancelledError(absl::StrCat(
        "the stream was not read for ", stall_limit_.count(), " s; request cancelled")));
    LogRequest(spdlog::level::warn, request_id_,
               absl::StrCat("rpc=CompleteStream cancelled: the client did not read the stream "
                            "for ", stall_limit_.count(), " s (--stream-stall-seconds), peer=",
                            context_->peer()));
    stall_cancelling_ = true;
    lock.unlock();
    context_->TryCancel();
    lock.lock();
    stall_cancelling_ = false;
    PumpLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(link_->mu);
    write_in_flight_ = false;
    if (!ok) {  // the stream broke: the client is gone
      pending_.reset();
      if (handle_ != nullptr) handle_->Cancel();
      if (!final_status_.has_value()) final_status_ = CancelledStatus(context_);
    }
    PumpLocked();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(link_->mu);
    cancelled_ = true;
    if (DeadlinePassed(context_)) link_->deadline_expired.store(true);
    if (handle_ != nullptr) handle_->Cancel();
    pending_.reset();
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
    if (write_in_flight_ || finished_ || stall_cancelling_) return;
    if (pending_.has_value()) {
      writing_ = Serialize(*pending_);
      pending_.reset();
      write_in_flight_ = true;
      const uint64_t write = ++writes_started_;
      // Replacing the previous alarm cancels it (its callback then gets ok = false).
      stall_alarm_ = std::make_unique<grpc::Alarm>();
      stall_alarm_->Set(std::chrono::system_clock::now() + stall_limit_,
                        [link = link_, write](bool ok) {
                          if (!ok) return;  // cancelled: a later write or the call's end
                          std::unique_lock<std::mutex> lock(link->mu);
                          if (link->reactor != nullptr) link->reactor->OnStallAlarm(lock, write);
                        });
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
  const std::chrono::seconds stall_limit_;  // --stream-stall-seconds
  const std::shared_ptr<Link<StreamReactor>> link_;
  ActiveCall active_;
  std::string request_id_;
  // Guarded by link_->mu:
  std::shared_ptr<engine::RequestHandle> handle_;
  std::optional<v1::CompleteChunk> pending_;  // events not yet written, merged
  grpc::ByteBuffer writing_;                  // the chunk of the write in flight
  bool write_in_flight_ = false;
  uint64_t writes_started_ = 0;            // numbers the writes for their stall alarms
  std::unique_ptr<grpc::Alarm> stall_alarm_;  // armed for the write in flight
  bool stall_cancelling_ = false;          // TryCancel of a stalled write is under way
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

// Ends reflection calls that lack the API key with UNAUTHENTICATED before the handler sees a
// message (see MakeReflectionAuthInterceptorFactory).
class ReflectionAuthInterceptor final : public grpc::experimental::Interceptor {
 public:
  ReflectionAuthInterceptor(grpc::experimental::ServerRpcInfo* info, const std::string* api_key)
      : info_(info), api_key_(api_key) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      const grpc::Status status = CheckApiKey(*methods->GetRecvInitialMetadata(), *api_key_);
      if (!status.ok()) {
        LogRefused(info_->method(), NewRequestId(), info_->server_context()->peer(), status);
        // ServerContext::TryCancel could only answer CANCELLED; gRPC core's cancel with a
        // status sends that status to the client as the call's trailers.
        grpc_call_cancel_with_status(info_->server_context()->c_call(),
                                     static_cast<grpc_status_code>(status.error_code()),
                                     status.error_message().c_str(), nullptr);
      }
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  const std::string* api_key_;
};

class ReflectionAuthFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ReflectionAuthFactory(std::string api_key) : api_key_(std::move(api_key)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (api_key_.empty() || std::string_view(info->method()).rfind("/grpc.reflection.", 0) != 0) {
      return nullptr;
    }
    return new ReflectionAuthInterceptor(info, &api_key_);
  }

 private:
  const std::string api_key_;
};

}  // namespace

void LogRefusedRequest(const std::string& rpc, const std::string& request_id,
                       const std::string& peer, const absl::Status& status) {
  LogRefused(rpc.c_str(), request_id, peer, ToGrpcStatus(status));
}

void LogFinishedRequest(const std::string& rpc, const std::string& request_id,
                        const std::string& peer, const engine::GenerationEvent& event,
                        double seconds, double ttft_seconds) {
  LogFinished(rpc, request_id, peer, event, seconds, ttft_seconds, /*deadline=*/false);
}

grpc::Status CheckApiKey(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                         const std::string& api_key) {
  if (api_key.empty()) return grpc::Status::OK;
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return ToGrpcStatus(
        absl::UnauthenticatedError("missing 'authorization: Bearer <key>' metadata"));
  }
  const std::string_view value(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "bearer ";
  if (value.size() < kBearer.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(value.data(), kBearer.size()),
                              absl::string_view(kBearer.data(), kBearer.size())) ||
      !SameSecret(value.substr(kBearer.size()), api_key)) {
    return ToGrpcStatus(absl::UnauthenticatedError("invalid API key"));
  }
  return grpc::Status::OK;
}

template <typename Message>
grpc::Status ParseRequest(const grpc::ByteBuffer& bytes, Message* message) {
  std::vector<grpc::Slice> slices;
  if (!bytes.Dump(&slices).ok()) {
    return ToGrpcStatus(absl::InvalidArgumentError("the request could not be read"));
  }
  std::string wire;
  for (const grpc::Slice& slice : slices) {
    wire.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  ProtobufErrorCapture capture;
  if (message->ParseFromString(wire)) return grpc::Status::OK;
  const std::string why = capture.errors().empty()
                              ? "malformed protobuf encoding"
                              : capture.errors();
  return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
      "the request is not a valid ", message->GetTypeName(), ": ", why)));
}
template grpc::Status ParseRequest(const grpc::ByteBuffer&, v1::CompleteRequest*);
template grpc::Status ParseRequest(const grpc::ByteBuffer&, v1::TokenizeRequest*);

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeReflectionAuthInterceptorFactory(std::string api_key) {
  return std::make_unique<ReflectionAuthFactory>(std::move(api_key));
}

CompletionService::CompletionService(std::string api_key, Metrics* metrics,
                                     std::chrono::seconds stream_stall_limit)
    : api_key_(std::move(api_key)), metrics_(metrics), stream_stall_limit_(stream_stall_limit) {}

void CompletionService::SetEngine(std::shared_ptr<engine::Engine> engine) {
  std::lock_guard<std::mutex> lock(mu_);
  engine_ = std::move(engine);
}

void CompletionService::StartDraining() { draining_.store(true); }

grpc::Status CompletionService::Admit(grpc::CallbackServerContext* context,
                                      std::shared_ptr<engine::Engine>* engine) const {
  if (grpc::Status key = CheckApiKey(context->client_metadata(), api_key_); !key.ok()) {
    return key;
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
                                                      const grpc::ByteBuffer* request_bytes,
                                                      grpc::ByteBuffer* response) {
  v1::CompleteRequest request;
  grpc::Status status = ParseRequest(*request_bytes, &request);
  engine::GenerationRequest generation = ToGenerationRequest(request);
  std::shared_ptr<engine::Engine> engine;
  if (status.ok()) status = Admit(context, &engine);
  if (!status.ok()) {
    LogRefused("Complete", generation.request_id, context->peer(), status);
    metrics_->CountRequest(Rpc::kComplete, status.error_code());
    return FinishedUnary(context, status);
  }
  auto* reactor = new CompleteReactor(context, response, &active_calls_, metrics_);
  reactor->Start(std::move(generation), *engine);
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* CompletionService::CompleteStream(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes) {
  v1::CompleteRequest request;
  grpc::Status status = ParseRequest(*request_bytes, &request);
  engine::GenerationRequest generation = ToGenerationRequest(request);
  std::shared_ptr<engine::Engine> engine;
  if (status.ok()) status = Admit(context, &engine);
  auto* reactor = new StreamReactor(context, &active_calls_, metrics_, stream_stall_limit_);
  if (status.ok()) {
    reactor->Start(std::move(generation), *engine);
  } else {
    LogRefused("CompleteStream", generation.request_id, context->peer(), status);
    reactor->FinishWith(status);  // a write reactor has no DefaultReactor
  }
  return reactor;
}

grpc::ServerUnaryReactor* CompletionService::Tokenize(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request_bytes,
                                                      grpc::ByteBuffer* response_bytes) {
  v1::TokenizeRequest request;
  grpc::Status status = ParseRequest(*request_bytes, &request);
  std::shared_ptr<engine::Engine> engine;
  if (status.ok()) status = Admit(context, &engine);
  if (status.ok()) {
    absl::StatusOr<std::vector<int32_t>> ids = engine->Tokenize(request.text(),
                                                                request.add_bos());
    if (ids.ok()) {
      v1::TokenizeResponse response;
      for (int32_t id : *ids) {
        response.add_token_ids(id);
        response.add_pieces(engine->tokenizer().piece(id));
      }
      *response_bytes = Serialize(response);
    }
    status = ToGrpcStatus(ids.status());
  }
  if (!status.ok()) LogRefused("Tokenize", NewRequestId(), context->peer(), status);
  metrics_->CountRequest(Rpc::kTokenize, status.error_code());
  return FinishedUnary(context, status);
}

grpc::ServerUnaryReactor* CompletionService::GetModelInfo(
    grpc::CallbackServerContext* context, const v1::GetModelInfoRequest* /*request*/,
    v1::ModelInfo* response) {
  std::shared_ptr<engine::Engine> engine;
  if (grpc::Status status = Admit(context, &engine); !status.ok()) {
    LogRefused("GetModelInfo", NewRequestId(), context->peer(), status);
    metrics_->CountRequest(Rpc::kGetModelInfo, status.error_code());
    return FinishedUnary(context, status);
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
