// server/http_server.cc — see http_server.h. One generation request = one Call: n engine
// requests (choice i sampled with seed + i), whose sinks (engine worker thread) queue events
// into the Call and wake the handler's thread. A unary request waits for all choices; a
// stream's content provider drains the queue into SSE chunks ("data: {json}\n\n", one per
// engine event, i.e. per verify step; the engine's text deltas never split a UTF-8
// character), then the usage chunk when asked, then "data: [DONE]". A write that fails (the
// client hung up, or stalled past the write timeout) cancels every choice; while no token
// comes (queued, prefilling) an SSE comment is written each second, so a client that hangs
// up then is noticed too. A unary request polls its connection's socket for the hang-up.
#include "server/http_server.h"

#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/completion_service.h"
#include "server/openai_api.h"
#include "server/request_conversion.h"

namespace specmoe::server {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr auto kStreamPoll = std::chrono::milliseconds(100);
constexpr auto kHeartbeat = std::chrono::seconds(1);

// JSON text that stays valid for invalid UTF-8 (replacement characters).
std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

void SendError(httplib::Response& response, const ApiError& error) {
  response.status = error.http_status;
  if (error.http_status == 401) response.set_header("WWW-Authenticate", "Bearer");
  response.set_content(Dump(ErrorBody(error)), "application/json");
}

// The model id clients name: the target folder's base name.
std::string ModelId(const std::string& target_dir) {
  std::filesystem::path path(target_dir);
  if (!path.has_filename()) path = path.parent_path();
  return path.filename().string();
}

std::string Peer(const httplib::Request& request) {
  return absl::StrCat("http:", request.remote_addr, ":", request.remote_port);
}

// Constant-time comparison, so the key cannot be guessed byte by byte from timing.
bool SameSecret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// Counts a generation call from its arrival to its last byte (the drain waits for zero).
class ActiveCall {
 public:
  explicit ActiveCall(std::atomic<int>* counter) : counter_(counter) { counter_->fetch_add(1); }
  ~ActiveCall() { counter_->fetch_sub(1); }
  ActiveCall(const ActiveCall&) = delete;
  ActiveCall& operator=(const ActiveCall&) = delete;

 private:
  std::atomic<int>* counter_;
};

// What the engine's sinks and the handler share. Contract: `mu` guards everything but the
// handles, which are set before the handler reads events and only cancelled afterwards.
struct Call {
  struct Choice {
    std::shared_ptr<engine::RequestHandle> handle;
    std::deque<engine::GenerationEvent> events;  // not yet taken by the handler
    bool done = false;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Choice> choices;
  int remaining = 0;  // choices whose last event has not arrived

  void CancelAll() {
    for (Choice& choice : choices) {
      if (choice.handle != nullptr) choice.handle->Cancel();
    }
  }
};

// The sink of choice `index`: times the request for the metrics, logs its end, queues events.
engine::EventSink MakeSink(std::shared_ptr<Call> call, size_t index, std::string rpc,
                           std::string request_id, std::string peer, Metrics* metrics) {
  return [call = std::move(call), index, rpc = std::move(rpc), request_id = std::move(request_id),
          peer = std::move(peer), metrics, start = Clock::now(), last = Clock::time_point(),
          ttft = -1.0](engine::GenerationEvent event) mutable {
    const Clock::time_point now = Clock::now();
    if (!event.token_ids.empty()) {
      if (ttft < 0) {
        ttft = std::chrono::duration<double>(now - start).count();
        metrics->ObserveTimeToFirstToken(ttft);
      } else {
        metrics->ObserveInterToken(std::chrono::duration<double>(now - last).count());
      }
      last = now;
    }
    const bool final_event = event.finished || !event.status.ok();
    if (final_event) {
      const double seconds = std::chrono::duration<double>(now - start).count();
      if (event.status.ok()) metrics->ObserveFinished(seconds, event);
      LogFinishedRequest(rpc, request_id, peer, event, seconds, ttft);
    }
    std::lock_guard<std::mutex> lock(call->mu);
    Call::Choice& choice = call->choices[index];
    if (choice.done) return;
    choice.events.push_back(std::move(event));
    if (final_event) {
      choice.done = true;
      --call->remaining;
    }
    call->cv.notify_all();
  };
}

// A request converted and ready to submit: the engine request of choice 0, and what the
// response needs besides.
struct Prepared {
  OpenAiRequest request;
  std::string echo_text;     // the prompt as text, for echo
  TokenBytesFn token_bytes;  // the tokenizer's token texts, for logprobs
};

// Renders the chat into the generation request's prompt: one segment is a text prompt (the
// validator tokenizes it, BOS first); several are tokenized here and joined by EOS.
absl::Status ApplyChatTemplate(const HttpServerConfig& config, engine::Engine& engine,
                               OpenAiRequest& request) {
  absl::StatusOr<RenderedChat> rendered =
      config.custom_chat_template.has_value()
          ? RenderChat(*config.custom_chat_template, request.messages)
          : RenderChat(config.chat_template, request.messages);
  if (!rendered.ok()) return InvalidParam("messages", std::string(rendered.status().message()));
  engine::GenerationRequest& g = request.generation;
  for (std::string& stop : rendered->stop) g.stop.push_back(std::move(stop));
  if (rendered->segments.size() == 1 && rendered->bos) {
    g.prompt_text = rendered->segments[0];
    if (g.prompt_text.empty()) return InvalidParam("messages", "the messages are all empty");
    return absl::OkStatus();
  }
  for (size_t i = 0; i < rendered->segments.size(); ++i) {
    if (i > 0) g.prompt_ids.push_back(engine.tokenizer().eos_id());
    absl::StatusOr<std::vector<int32_t>> ids =
        engine.Tokenize(rendered->segments[i], i == 0 ? rendered->bos : rendered->bos_each_segment);
    if (!ids.ok()) return InvalidParam("messages", std::string(ids.status().message()));
    g.prompt_ids.insert(g.prompt_ids.end(), ids->begin(), ids->end());
  }
  if (g.prompt_ids.empty()) return InvalidParam("messages", "the messages are all empty");
  return absl::OkStatus();
}

// The object of one streamed chunk of choice `index` (choices: [] when index < 0).
json ChunkJson(const OpenAiRequest& r, const std::string& id, const std::string& model,
               int64_t created, int index, json delta_or_text, const char* finish_reason) {
  json chunk = {{"id", id},
                {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model}};
  json choices = json::array();
  if (index >= 0) {
    json choice = {{"index", index}};
    if (r.chat) {
      choice["delta"] = std::move(delta_or_text);
    } else {
      choice["text"] = std::move(delta_or_text);
    }
    choice["logprobs"] = nullptr;
    choice["finish_reason"] = finish_reason != nullptr ? json(finish_reason) : json(nullptr);
    choices.push_back(std::move(choice));
  }
  chunk["choices"] = std::move(choices);
  if (r.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

// Streams a Call's events as SSE. Contract: called by cpp-httplib on the handler's thread
// until it returns false (the write failed: the client is gone) or the stream is done.
class SseStream {
 public:
  SseStream(std::shared_ptr<Call> call, Prepared prepared, std::string id, std::string model,
            Rpc rpc, std::string request_id, std::string peer, Metrics* metrics,
            std::atomic<int>* active)
      : call_(std::move(call)),
        prepared_(std::move(prepared)),
        id_(std::move(id)),
        model_(std::move(model)),
        rpc_(rpc),
        request_id_(std::move(request_id)),
        peer_(std::move(peer)),
        metrics_(metrics),
        active_(active),
        results_(call_->choices.size()),
        text_offsets_(call_->choices.size(), 0),
        echoed_(call_->choices.size(), false),
        prompt_logprobs_(call_->choices.size()),
        created_(std::time(nullptr)),
        last_write_(Clock::now()) {}

  // One round: waits up to kStreamPoll for events and writes them.
  bool Pump(httplib::DataSink& sink) {
    const OpenAiRequest& r = prepared_.request;
    if (!opened_) {  // each choice's opening chunk: the role (chat) or the echoed prompt
      opened_ = true;
      for (size_t i = 0; i < results_.size(); ++i) {
        if (r.chat) {
          if (!Write(sink, ChunkJson(r, id_, model_, created_, static_cast<int>(i),
                                     {{"role", "assistant"}, {"content", ""}}, nullptr))) {
            return Fail();
          }
        } else if (r.echo && !r.generation.prompt_logprobs) {
          if (!Write(sink, ChunkJson(r, id_, model_, created_, static_cast<int>(i),
                                     prepared_.echo_text, nullptr))) {
            return Fail();
          }
        }
      }
    }
    std::vector<std::pair<size_t, engine::GenerationEvent>> events;
    bool all_done = false;
    {
      std::unique_lock<std::mutex> lock(call_->mu);
      auto ready = [&] {
        if (call_->remaining == 0) return true;
        for (const Call::Choice& c : call_->choices) {
          if (!c.events.empty()) return true;
        }
        return false;
      };
      call_->cv.wait_for(lock, kStreamPoll, ready);
      for (size_t i = 0; i < call_->choices.size(); ++i) {
        for (engine::GenerationEvent& e : call_->choices[i].events) {
          events.emplace_back(i, std::move(e));
        }
        call_->choices[i].events.clear();
      }
      all_done = call_->remaining == 0;
    }
    for (auto& [index, event] : events) {
      if (!event.status.ok()) {  // a failed choice ends the stream with an error event
        call_->CancelAll();
        const ApiError error = ToApiError(event.status);
        status_ = error.http_status;
        Write(sink, ErrorBody(error));
        WriteRaw(sink, "data: [DONE]\n\n");
        sink.done();
        return true;
      }
      ChoiceResult& result = results_[index];
      if (r.echo && r.generation.prompt_logprobs && !echoed_[index]) {
        // The echo waits for the prompt's entries (all before the first generated token).
        std::vector<engine::TokenLogprob>& prompt = prompt_logprobs_[index];
        prompt.insert(prompt.end(), event.prompt_logprobs.begin(), event.prompt_logprobs.end());
        if (event.token_ids.empty() && !event.finished) continue;
        echoed_[index] = true;
        json chunk = ChunkJson(r, id_, model_, created_, static_cast<int>(index),
                               prepared_.echo_text, nullptr);
        chunk["choices"][0]["logprobs"] =
            LogprobsJson(false, prompt, prepared_.token_bytes, &text_offsets_[index]);
        if (!Write(sink, chunk)) return Fail();
      }
      json logprobs = nullptr;
      if (r.logprobs.enabled && !event.logprobs.empty()) {
        logprobs = LogprobsJson(r.chat, event.logprobs, prepared_.token_bytes,
                                &text_offsets_[index]);
      }
      result.text += event.text;
      result.token_ids.insert(result.token_ids.end(), event.token_ids.begin(),
                              event.token_ids.end());
      const char* finish = nullptr;
      if (event.finished) {
        result.finish_reason = event.finish_reason;
        result.prompt_tokens = event.prompt_tokens;
        result.completion_tokens = event.completion_tokens;
        result.cached_prompt_tokens = event.cached_prompt_tokens;
        result.seed = event.seed;
        result.speculation = event.speculation;
        finish = OpenAiFinishReason(event.finish_reason);
      }
      if (event.text.empty() && event.token_ids.empty() && finish == nullptr) continue;
      json delta = r.chat ? json(event.text.empty() && finish != nullptr
                                     ? json::object()
                                     : json{{"content", event.text}})
                          : json(event.text);
      json chunk = ChunkJson(r, id_, model_, created_, static_cast<int>(index),
                             std::move(delta), finish);
      chunk["choices"][0]["logprobs"] = std::move(logprobs);
      if (r.return_token_ids) chunk["choices"][0]["token_ids"] = event.token_ids;
      if (finish != nullptr) chunk["specmoe"] = {{"seed", result.seed}};
      if (!Write(sink, chunk)) return Fail();
    }
    if (all_done) {
      if (r.include_usage) {
        json usage = ChunkJson(r, id_, model_, created_, -1, nullptr, nullptr);
        usage["usage"] = UsageJson(results_);
        usage["specmoe"] = SpecmoeJson(results_);
        if (!Write(sink, usage)) return Fail();
      }
      if (!WriteRaw(sink, "data: [DONE]\n\n")) return Fail();
      sink.done();
      return true;
    }
    if (Clock::now() - last_write_ >= kHeartbeat && !WriteRaw(sink, ": keep-alive\n\n")) {
      return Fail();
    }
    return true;
  }

  // After the last Pump: cancels what still runs (a client that left) and counts the call.
  void Release(bool success) {
    if (!success && status_ == 200) status_ = 499;
    call_->CancelAll();
    metrics_->CountRequest(rpc_, CodeOfHttpStatus(status_));
    if (status_ == 499) {
      spdlog::info("request {} {}: the client closed the stream; request cancelled",
                   request_id_, peer_);
    }
  }

 private:
  bool Write(httplib::DataSink& sink, const json& value) {
    return WriteRaw(sink, absl::StrCat("data: ", Dump(value), "\n\n"));
  }
  bool WriteRaw(httplib::DataSink& sink, const std::string& text) {
    last_write_ = Clock::now();
    return sink.write(text.data(), text.size());
  }
  bool Fail() {
    status_ = 499;
    call_->CancelAll();
    return false;
  }

  const std::shared_ptr<Call> call_;
  const Prepared prepared_;
  const std::string id_;
  const std::string model_;
  const Rpc rpc_;
  const std::string request_id_;
  const std::string peer_;
  Metrics* const metrics_;
  ActiveCall active_;
  std::vector<ChoiceResult> results_;
  std::vector<int64_t> text_offsets_;  // per choice: the completions logprobs' text_offset
  // Per choice, for an echo with logprobs: whether the echo chunk went out, and the prompt
  // entries gathered until it does.
  std::vector<bool> echoed_;
  std::vector<std::vector<engine::TokenLogprob>> prompt_logprobs_;
  const int64_t created_;
  Clock::time_point last_write_;
  bool opened_ = false;
  int status_ = 200;
};

// The numeric host and the port of a socket address.
std::pair<std::string, int> HostAndPort(const sockaddr_storage& address, socklen_t length) {
  char host[NI_MAXHOST] = "";
  char port[NI_MAXSERV] = "";
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&address), length, host, sizeof(host), port,
                  sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return {"", -1};
  }
  return {host, std::atoi(port)};
}

// The TCP socket of `request`'s connection, or -1. cpp-httplib 0.11 does not hand a handler
// its socket, and a unary request writes nothing while it waits, so this is how a client
// that hung up is noticed: the socket of this process whose peer is the request's remote
// address and port and whose local port is the request's. It stays open (the same fd) while
// the handler runs: cpp-httplib closes it only afterwards.
int FindConnectionSocket(const httplib::Request& request) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    int fd = -1;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &fd)) continue;
    sockaddr_storage peer{};
    socklen_t peer_length = sizeof(peer);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_length) != 0) continue;
    sockaddr_storage local{};
    socklen_t local_length = sizeof(local);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length) != 0) continue;
    if (HostAndPort(peer, peer_length) == std::make_pair(request.remote_addr, request.remote_port) &&
        HostAndPort(local, local_length).second == request.local_port) {
      return fd;
    }
  }
  return -1;
}

// True once the peer of `fd` closed or reset the connection (a client waiting for its
// response does not half-close).
bool PeerClosed(int fd) {
  pollfd entry{fd, POLLRDHUP, 0};
  return poll(&entry, 1, 0) > 0 && (entry.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

// HOST:PORT or PORT (the loopback) -> host and port; port 0: any.
absl::Status ParseListen(const std::string& listen, std::string* host, int* port) {
  const std::string address =
      listen.find(':') == std::string::npos ? absl::StrCat("127.0.0.1:", listen) : listen;
  const size_t colon = address.rfind(':');
  if (colon == 0 || !absl::SimpleAtoi(address.substr(colon + 1), port) || *port < 0 ||
      *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http-listen: '", listen, "' is not HOST:PORT or PORT"));
  }
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return absl::OkStatus();
}

}  // namespace

OpenAiHttpServer::OpenAiHttpServer(HttpServerConfig config, Metrics* metrics)
    : config_(std::move(config)), metrics_(metrics) {}

OpenAiHttpServer::~OpenAiHttpServer() { Stop(); }

void OpenAiHttpServer::SetEngine(std::shared_ptr<engine::Engine> engine) {
  std::lock_guard<std::mutex> lock(mu_);
  engine_ = std::move(engine);
}

void OpenAiHttpServer::StartDraining() { draining_.store(true); }

absl::Status OpenAiHttpServer::Admit(const httplib::Request& request,
                                     std::shared_ptr<engine::Engine>* engine) const {
  if (!config_.api_key.empty()) {
    const std::string value = request.get_header_value("Authorization");
    constexpr absl::string_view kBearer = "bearer ";
    if (value.empty()) {
      return absl::UnauthenticatedError("missing 'Authorization: Bearer <key>' header");
    }
    if (value.size() < kBearer.size() ||
        !absl::EqualsIgnoreCase(absl::string_view(value).substr(0, kBearer.size()), kBearer) ||
        !SameSecret(std::string_view(value).substr(kBearer.size()), config_.api_key)) {
      return absl::UnauthenticatedError("invalid API key");
    }
  }
  if (draining_.load()) return absl::UnavailableError("the server is shutting down");
  std::lock_guard<std::mutex> lock(mu_);
  if (engine_ == nullptr) return absl::UnavailableError("the models are still loading");
  *engine = engine_;
  return absl::OkStatus();
}

void OpenAiHttpServer::HandleHealth(httplib::Response& response) const {
  std::string state = "serving";
  if (draining_.load()) {
    state = "draining";
  } else {
    std::lock_guard<std::mutex> lock(mu_);
    if (engine_ == nullptr) state = "loading";
  }
  response.status = state == "serving" ? 200 : 503;
  response.set_content(Dump(json{{"status", state}}), "application/json");
}

void OpenAiHttpServer::HandleModels(const httplib::Request& request,
                                    httplib::Response& response) {
  std::shared_ptr<engine::Engine> engine;
  if (absl::Status status = Admit(request, &engine); !status.ok()) {
    LogRefusedRequest("http/models", NewRequestId(), Peer(request), status);
    const ApiError error = ToApiError(status);
    metrics_->CountRequest(Rpc::kHttpModels, CodeOfHttpStatus(error.http_status));
    SendError(response, error);
    return;
  }
  json model = {
      {"id", ModelId(engine->target_name())},
      {"object", "model"},
      {"created", static_cast<int64_t>(std::time(nullptr))},
      {"owned_by", "specmoe"},
      {"root", engine->target_name()},
      {"max_model_len", engine->max_context()},
      {"specmoe",
       {{"draft", engine->draft_name().empty() ? json(nullptr) : json(engine->draft_name())},
        {"vocab_size", engine->vocab_size()},
        {"device", engine->device()},
        {"dtype", engine->dtype()},
        {"default_expansion", engine->default_expansion()},
        {"chat_template", config_.custom_chat_template.has_value()
                              ? config_.custom_chat_template->path
                              : ChatTemplateName(config_.chat_template)}}}};
  response.set_content(Dump(json{{"object", "list"}, {"data", json::array({model})}}),
                       "application/json");
  metrics_->CountRequest(Rpc::kHttpModels, grpc::StatusCode::OK);
}

void OpenAiHttpServer::HandleGeneration(bool chat, const httplib::Request& request,
                                        httplib::Response& response) {
  const Rpc rpc = chat ? Rpc::kHttpChatCompletions : Rpc::kHttpCompletions;
  const std::string rpc_name = chat ? "http/chat/completions" : "http/completions";
  const std::string peer = Peer(request);
  const std::string request_id = NewRequestId();
  auto active = std::make_unique<ActiveCall>(&active_calls_);
  auto refuse = [&](const absl::Status& status, std::string code = "") {
    LogRefusedRequest(rpc_name, request_id, peer, status);
    ApiError error = ToApiError(status);
    if (!code.empty()) error.code = std::move(code);
    metrics_->CountRequest(rpc, CodeOfHttpStatus(error.http_status));
    SendError(response, error);
  };

  std::shared_ptr<engine::Engine> engine;
  if (absl::Status status = Admit(request, &engine); !status.ok()) return refuse(status);
  const json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return refuse(InvalidParam("", "the request body is not valid JSON"));
  }
  absl::StatusOr<OpenAiRequest> parsed = chat ? ParseChatRequest(body)
                                              : ParseCompletionRequest(body);
  if (!parsed.ok()) return refuse(parsed.status());
  const std::string model_id = ModelId(engine->target_name());
  if (!parsed->model.empty() && parsed->model != model_id &&
      parsed->model != engine->target_name()) {
    return refuse(absl::NotFoundError(absl::StrCat("the model '", parsed->model,
                                                   "' does not exist (this server serves '",
                                                   model_id, "')")),
                  "model_not_found");
  }
  if (chat) {
    if (absl::Status status = ApplyChatTemplate(config_, *engine, *parsed); !status.ok()) {
      return refuse(status);
    }
  }
  const engine::Tokenizer* tokenizer = &engine->tokenizer();
  Prepared prepared{*std::move(parsed), "",
                    [engine, tokenizer](int32_t id) { return tokenizer->TokenBytes(id); }};
  OpenAiRequest& r = prepared.request;
  r.generation.request_id = request_id;
  if (r.echo) {
    prepared.echo_text = !r.generation.prompt_text.empty()
                             ? r.generation.prompt_text
                             : engine->tokenizer().Decode(r.generation.prompt_ids);
  }

  // Submit the n choices; the first refusal (the validator's, a full queue) answers.
  auto call = std::make_shared<Call>();
  call->choices.resize(r.n);
  call->remaining = r.n;
  for (int i = 0; i < r.n; ++i) {
    engine::GenerationRequest generation = r.generation;
    const std::string choice_id = r.n == 1 ? request_id : absl::StrCat(request_id, "-", i);
    generation.request_id = choice_id;
    if (generation.sampling.seed != 0) generation.sampling.seed += static_cast<uint64_t>(i);
    absl::StatusOr<std::shared_ptr<engine::RequestHandle>> handle = engine->Submit(
        std::move(generation), MakeSink(call, i, rpc_name, choice_id, peer, metrics_));
    if (!handle.ok()) {
      call->CancelAll();
      absl::Status status = handle.status();
      if (chat && status.code() == absl::StatusCode::kInvalidArgument &&
          absl::StartsWith(status.message(), "prompt")) {
        status = InvalidParam("messages", std::string(status.message()));
      }
      return refuse(status);
    }
    std::lock_guard<std::mutex> lock(call->mu);
    call->choices[i].handle = *std::move(handle);
  }

  // NewRequestId's "cmpl-..." becomes "chatcmpl-..." for chat, as OpenAI names them.
  const std::string id = chat ? absl::StrCat("chat", request_id) : request_id;
  if (r.stream) {
    auto stream = std::make_shared<SseStream>(call, std::move(prepared), id, model_id, rpc,
                                              request_id, peer, metrics_, &active_calls_);
    active.reset();  // the stream counts itself from here
    response.set_header("Cache-Control", "no-cache");
    response.set_header("X-Accel-Buffering", "no");
    response.set_chunked_content_provider(
        "text/event-stream",
        [stream](size_t /*offset*/, httplib::DataSink& sink) { return stream->Pump(sink); },
        [stream](bool success) { stream->Release(success); });
    return;
  }

  // Unary: wait for every choice, then answer at once.
  std::vector<ChoiceResult> results(r.n);
  std::vector<std::vector<engine::TokenLogprob>> logprobs(r.n);
  absl::Status failure;
  {
    std::unique_lock<std::mutex> lock(call->mu);
    int socket = -2;  // -2: not looked for yet; -1: not found
    while (!call->cv.wait_for(lock, kStreamPoll, [&] { return call->remaining == 0; })) {
      if (stopping_.load()) {  // closing after the drain's grace period: give up
        call->CancelAll();
        failure = absl::UnavailableError("the server is shutting down");
        break;
      }
      if (socket == -2) socket = FindConnectionSocket(request);
      if (socket >= 0 && PeerClosed(socket)) {  // the client is gone: cancel
        call->CancelAll();
        failure = absl::CancelledError("the client closed the connection");
        spdlog::info("request {} {}: the client closed the connection; request cancelled",
                     request_id, peer);
        break;
      }
    }
    for (int i = 0; i < r.n && failure.ok(); ++i) {
      for (engine::GenerationEvent& event : call->choices[i].events) {
        if (!event.status.ok()) {
          failure = event.status;
          continue;
        }
        results[i].text += event.text;
        results[i].token_ids.insert(results[i].token_ids.end(), event.token_ids.begin(),
                                    event.token_ids.end());
        // An echo's prompt entries all arrive before the first generated token's.
        logprobs[i].insert(logprobs[i].end(), event.prompt_logprobs.begin(),
                           event.prompt_logprobs.end());
        logprobs[i].insert(logprobs[i].end(), event.logprobs.begin(), event.logprobs.end());
        if (event.finished) {
          results[i].finish_reason = event.finish_reason;
          results[i].prompt_tokens = event.prompt_tokens;
          results[i].completion_tokens = event.completion_tokens;
          results[i].cached_prompt_tokens = event.cached_prompt_tokens;
          results[i].seed = event.seed;
          results[i].speculation = event.speculation;
        }
      }
    }
  }
  if (!failure.ok()) {
    const ApiError error = ToApiError(failure);
    metrics_->CountRequest(rpc, CodeOfHttpStatus(error.http_status));
    SendError(response, error);
    return;
  }
  json choices = json::array();
  for (int i = 0; i < r.n; ++i) {
    json choice = {{"index", i}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", results[i].text}};
    } else {
      choice["text"] = r.echo ? prepared.echo_text + results[i].text : results[i].text;
    }
    json choice_logprobs = nullptr;
    if (r.logprobs.enabled) {
      int64_t text_offset = 0;
      choice_logprobs = LogprobsJson(chat, logprobs[i], prepared.token_bytes, &text_offset);
    }
    choice["logprobs"] = std::move(choice_logprobs);
    choice["finish_reason"] = OpenAiFinishReason(results[i].finish_reason);
    if (r.return_token_ids) choice["token_ids"] = results[i].token_ids;
    choices.push_back(std::move(choice));
  }
  const json answer = {{"id", id},
                       {"object", chat ? "chat.completion" : "text_completion"},
                       {"created", static_cast<int64_t>(std::time(nullptr))},
                       {"model", model_id},
                       {"choices", std::move(choices)},
                       {"usage", UsageJson(results)},
                       {"specmoe", SpecmoeJson(results)}};
  response.set_content(Dump(answer), "application/json");
  metrics_->CountRequest(rpc, grpc::StatusCode::OK);
}

absl::Status OpenAiHttpServer::Start() {
  std::string host;
  int port = 0;
  if (absl::Status status = ParseListen(config_.listen, &host, &port); !status.ok()) {
    return status;
  }
  if (config_.tls_cert.empty()) {
    http_ = std::make_unique<httplib::Server>();
  } else {
    auto tls = std::make_unique<httplib::SSLServer>(
        config_.tls_cert.c_str(), config_.tls_key.c_str(),
        config_.tls_client_ca.empty() ? nullptr : config_.tls_client_ca.c_str());
    if (!tls->is_valid()) {
      return absl::InvalidArgumentError(
          "--http-listen: cannot set up TLS from --tls-cert/--tls-key/--tls-client-ca");
    }
    http_ = std::move(tls);
  }
  const int threads = std::max(config_.threads, 1);
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_tcp_nodelay(true);  // each SSE chunk leaves at once (no Nagle + delayed ACK)
  http_->set_payload_max_length(config_.max_body_bytes);
  http_->set_write_timeout(config_.stream_stall_limit);
  http_->set_read_timeout(std::chrono::seconds(30));
  http_->Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& s) {
    HandleGeneration(/*chat=*/false, q, s);
  });
  http_->Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& s) {
    HandleGeneration(/*chat=*/true, q, s);
  });
  http_->Get("/v1/models", [this](const httplib::Request& q, httplib::Response& s) {
    HandleModels(q, s);
  });
  http_->Get("/health", [this](const httplib::Request&, httplib::Response& s) {
    HandleHealth(s);
  });
  // cpp-httplib's own refusals (no such route, a body over the limit, a malformed request)
  // get OpenAI error bodies too; the handlers' own errors already have theirs.
  http_->set_error_handler([](const httplib::Request& request, httplib::Response& response) {
    if (!response.body.empty()) return;
    std::string message = absl::StrCat("HTTP ", response.status);
    if (response.status == 404) {
      message = absl::StrCat("no such endpoint: ", request.method, " ", request.path);
    } else if (response.status == 413) {
      message = "the request body is over the server's limit (--max-message-bytes)";
    }
    SendError(response, MakeApiError(response.status, message));
  });
  port_ = port == 0 ? http_->bind_to_any_port(host) : (http_->bind_to_port(host, port) ? port : -1);
  if (port_ <= 0) {
    http_.reset();
    return absl::UnavailableError(absl::StrCat("--http-listen: cannot listen on ", config_.listen));
  }
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return absl::OkStatus();
}

void OpenAiHttpServer::Stop() {
  stopping_.store(true);
  if (http_ != nullptr) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace specmoe::server
