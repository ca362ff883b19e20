// client/bench.cc — see bench.h. Definitions follow vllm bench serve (benchmarks/serve.py):
// TTFT is the time to the first chunk carrying tokens; ITL is the gap between consecutive
// token-carrying chunks (a chunk with k tokens is one gap: k tokens arriving together);
// TPOT of a request is (E2EL - TTFT) / (output tokens - 1); percentiles interpolate
// linearly between order statistics (numpy's default); goodput counts the requests meeting
// every SLO. Speculation totals come from each request's last chunk.
#include "client/bench.h"

#include <httplib.h>
#include <unistd.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

namespace specmoe::client {
namespace {

namespace v1 = ::specmoe::v1;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

// One request of the dataset.
struct Job {
  std::string prompt;              // text prompt, or
  std::vector<int32_t> prompt_ids;  // token ids (random dataset)
  uint32_t max_tokens = 0;
};

// What one request measured.
struct Outcome {
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string error;
  double ttft = 0;                // seconds
  double e2el = 0;
  std::vector<double> itl;        // one gap per token-carrying chunk after the first
  int prompt_tokens = 0;
  int cached_prompt_tokens = 0;   // usage.cached_prompt_tokens: found in the prefix cache
  int output_tokens = 0;
  std::vector<int32_t> output_ids;  // the completion (a multi-turn conversation resends it)
  v1::SpeculationStats speculation;
  bool ok() const { return code == grpc::StatusCode::OK; }
};

// A run of one arm at one load: the outcomes and the wall time they took.
struct Arm {
  std::vector<Outcome> outcomes;
  double duration = 0;
};

// --- datasets -------------------------------------------------------------------------------

std::string DefaultJsonlPath() { return SPECMOE_SOURCE_DIR "/client/data/prompts.jsonl"; }

bool ReadJsonl(const std::string& path, uint32_t default_max_tokens, std::vector<Job>* jobs,
               std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "--dataset-path: cannot read " + path;
    return false;
  }
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json row = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const std::string where = path + ":" + std::to_string(number);
    if (!row.is_object() || !row.contains("prompt") || !row["prompt"].is_string() ||
        row["prompt"].get<std::string>().empty()) {
      *error = where + ": each line must be a JSON object with a non-empty \"prompt\" string";
      return false;
    }
    Job job;
    job.prompt = row["prompt"].get<std::string>();
    job.max_tokens = default_max_tokens;
    if (row.contains("max_tokens")) {
      if (!row["max_tokens"].is_number_unsigned()) {
        *error = where + ": \"max_tokens\" must be a non-negative integer";
        return false;
      }
      job.max_tokens = row["max_tokens"].get<uint32_t>();
    }
    jobs->push_back(std::move(job));
  }
  if (jobs->empty()) {
    *error = path + ": no prompts";
    return false;
  }
  return true;
}

// ShareGPT: a JSON array of {"conversations": [{"from": "human", "value": ...}, ...]}; the
// first human turn is the prompt. Entries without one are skipped.
bool ReadShareGpt(const std::string& path, uint32_t max_tokens, std::vector<Job>* jobs,
                  std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "--dataset-path: cannot read " + path;
    return false;
  }
  const json data = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!data.is_array()) {
    *error = path + ": a ShareGPT file is a JSON array of {\"conversations\": [...]}";
    return false;
  }
  for (const json& entry : data) {
    if (!entry.is_object() || !entry.contains("conversations") ||
        !entry["conversations"].is_array()) {
      continue;
    }
    for (const json& turn : entry["conversations"]) {
      if (turn.is_object() && turn.value("from", "") == "human" && turn.contains("value") &&
          turn["value"].is_string() && !turn["value"].get<std::string>().empty()) {
        jobs->push_back({turn["value"].get<std::string>(), {}, max_tokens});
        break;
      }
    }
  }
  if (jobs->empty()) {
    *error = path + ": no conversation with a human turn";
    return false;
  }
  return true;
}

// Random prompts: input_len ids drawn uniformly from [3, vocab) (0-2 are unk/bos/eos).
std::vector<Job> RandomJobs(int count, int input_len, uint32_t max_tokens, int vocab,
                            std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> token(3, std::max(3, vocab - 1));
  std::vector<Job> jobs(count);
  for (Job& job : jobs) {
    for (int i = 0; i < input_len; ++i) job.prompt_ids.push_back(token(rng));
    job.max_tokens = max_tokens;
  }
  return jobs;
}

// --- one request ----------------------------------------------------------------------------

// Sends one streaming request and times it. Contract: Run is thread-safe and blocks for the
// whole call; options outlive the runner.
class Runner {
 public:
  virtual ~Runner() = default;
  virtual Outcome Run(const Job& job, bool speculate) const = 0;
  // The server's token ids of `text` (no BOS); false with `error` set when it cannot say.
  virtual bool Tokenize(const std::string& text, std::vector<int32_t>* ids,
                        std::string* error) const = 0;
};

// specmoe's gRPC CompleteStream (a gRPC stub is thread-safe).
class GrpcRunner final : public Runner {
 public:
  GrpcRunner(const BenchOptions& options, std::shared_ptr<grpc::Channel> channel,
             std::string api_key)
      : options_(options), stub_(v1::Completion::NewStub(channel)), api_key_(std::move(api_key)) {}

  void Prepare(grpc::ClientContext* context) const {
    if (!api_key_.empty()) context->AddMetadata("authorization", "Bearer " + api_key_);
    if (options_.timeout_ms > 0) {
      context->set_deadline(std::chrono::system_clock::now() +
                            std::chrono::milliseconds(options_.timeout_ms));
    }
  }

  v1::Completion::Stub& stub() const { return *stub_; }

  bool Tokenize(const std::string& text, std::vector<int32_t>* ids,
                std::string* error) const override {
    grpc::ClientContext context;
    Prepare(&context);
    v1::TokenizeRequest request;
    request.set_text(text);
    v1::TokenizeResponse response;
    const grpc::Status status = stub_->Tokenize(&context, request, &response);
    if (!status.ok()) {
      *error = std::string("Tokenize failed: ") + CodeName(status.error_code()) + ": " +
               status.error_message();
      return false;
    }
    ids->assign(response.token_ids().begin(), response.token_ids().end());
    return true;
  }

  Outcome Run(const Job& job, bool speculate) const override {
    v1::CompleteRequest request;
    if (job.prompt_ids.empty()) {
      request.set_prompt(job.prompt);
    } else {
      request.mutable_prompt_token_ids()->Add(job.prompt_ids.begin(), job.prompt_ids.end());
    }
    request.set_max_tokens(job.max_tokens);
    request.set_ignore_eos(options_.ignore_eos);
    request.mutable_sampling()->set_temperature(options_.temperature);
    if (options_.temperature > 0) request.mutable_sampling()->set_seed(options_.seed + 1);
    if (options_.logprobs >= 0) {
      request.set_logprobs(true);
      request.set_top_logprobs(static_cast<uint32_t>(options_.logprobs));
    }
    if (!speculate) request.mutable_speculation()->set_disable(true);
    for (uint32_t k : options_.tree) request.mutable_speculation()->add_expansion(k);

    grpc::ClientContext context;
    Prepare(&context);
    Outcome outcome;
    const Clock::time_point start = Clock::now();
    Clock::time_point last;
    bool first = true;
    std::unique_ptr<grpc::ClientReader<v1::CompleteChunk>> reader =
        stub_->CompleteStream(&context, request);
    v1::CompleteChunk chunk;
    while (reader->Read(&chunk)) {
      const Clock::time_point now = Clock::now();
      if (chunk.token_ids_size() > 0) {
        if (first) {
          outcome.ttft = std::chrono::duration<double>(now - start).count();
          first = false;
        } else {
          outcome.itl.push_back(std::chrono::duration<double>(now - last).count());
        }
        last = now;
        outcome.output_tokens += chunk.token_ids_size();
        outcome.output_ids.insert(outcome.output_ids.end(), chunk.token_ids().begin(),
                                  chunk.token_ids().end());
      }
      if (chunk.has_usage()) {
        outcome.prompt_tokens = static_cast<int>(chunk.usage().prompt_tokens());
        outcome.cached_prompt_tokens = static_cast<int>(chunk.usage().cached_prompt_tokens());
      }
      if (chunk.has_speculation()) outcome.speculation = chunk.speculation();
    }
    const grpc::Status status = reader->Finish();
    outcome.e2el = std::chrono::duration<double>(Clock::now() - start).count();
    if (first) outcome.ttft = outcome.e2el;
    outcome.code = status.error_code();
    outcome.error = status.error_message();
    return outcome;
  }

 private:
  const BenchOptions& options_;
  std::unique_ptr<v1::Completion::Stub> stub_;
  const std::string api_key_;
};


// The gRPC code an HTTP status stands for (as specmoe-server counts its HTTP requests), so
// both backends report errors under the same names.
grpc::StatusCode CodeOfHttpStatus(int status) {
  switch (status) {
    case 200: return grpc::StatusCode::OK;
    case 400: case 422: return grpc::StatusCode::INVALID_ARGUMENT;
    case 401: case 403: return grpc::StatusCode::UNAUTHENTICATED;
    case 404: return grpc::StatusCode::NOT_FOUND;
    case 408: case 504: return grpc::StatusCode::DEADLINE_EXCEEDED;
    case 413: case 429: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case 499: return grpc::StatusCode::CANCELLED;
    case 503: return grpc::StatusCode::UNAVAILABLE;
    default: break;
  }
  return status < 500 ? grpc::StatusCode::INVALID_ARGUMENT : grpc::StatusCode::INTERNAL;
}

// "http(s)://HOST:PORT/PREFIX" -> scheme://host:port and /PREFIX (no trailing slash).
bool SplitBaseUrl(const std::string& url, std::string* origin, std::string* prefix) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) return false;
  const std::string kind = url.substr(0, scheme);
  if (kind != "http" && kind != "https") return false;
  const size_t path = url.find('/', scheme + 3);
  *origin = url.substr(0, path);
  *prefix = path == std::string::npos ? "" : url.substr(path);
  while (!prefix->empty() && prefix->back() == '/') prefix->pop_back();
  return origin->size() > scheme + 3;
}

// POST {base-url}/completions with stream: true and stream_options.include_usage, read as
// Server-Sent Events: TTFT and gaps from the chunks carrying text (or token ids), token counts
// from the usage chunk (counted chunks when a server sends none), cached prompt tokens from
// usage.prompt_tokens_details.cached_tokens, speculation statistics from specmoe's
// usage.speculation. One keep-alive connection per worker thread.
class OpenAiRunner final : public Runner {
 public:
  OpenAiRunner(const BenchOptions& options, std::string origin, std::string prefix,
               std::string model, std::string api_key)
      : options_(options),
        origin_(std::move(origin)),
        prefix_(std::move(prefix)),
        model_(std::move(model)),
        api_key_(std::move(api_key)) {}

  // The OpenAI API has no tokenizer endpoint.
  bool Tokenize(const std::string& text, std::vector<int32_t>* ids,
                std::string* error) const override {
    *error = "--backend openai cannot tokenize text prompts (the API has no tokenizer "
             "endpoint): use --dataset-name random with --shared-prefix-tokens or --multi-turn";
    return false;
  }

  httplib::Client& client() const {
    thread_local std::unique_ptr<httplib::Client> client;
    thread_local const OpenAiRunner* owner = nullptr;
    if (client == nullptr || owner != this) {
      client = std::make_unique<httplib::Client>(origin_);
      owner = this;
      if (!options_.tls_ca.empty()) client->set_ca_cert_path(options_.tls_ca.c_str());
      client->set_connection_timeout(std::chrono::milliseconds(options_.connect_timeout_ms));
      const auto timeout = options_.timeout_ms > 0
                               ? std::chrono::milliseconds(options_.timeout_ms)
                               : std::chrono::milliseconds(3600 * 1000);
      client->set_read_timeout(timeout);
      client->set_write_timeout(timeout);
      // A connection per request: a kept-alive one that the server closed while idle (as
      // llama-server does after its keep-alive timeout) fails the next request's read.
      client->set_keep_alive(false);
      client->set_tcp_nodelay(true);
      if (!api_key_.empty()) client->set_bearer_token_auth(api_key_.c_str());
    }
    return *client;
  }

  // GET {base-url}/models: the first model's id, and specmoe's metadata when present.
  bool Models(json* models, std::string* error) const {
    httplib::Result result = client().Get((prefix_ + "/models").c_str());
    if (!result) {
      *error = "cannot reach " + origin_ + ": " + httplib::to_string(result.error());
      return false;
    }
    const json body = json::parse(result->body, nullptr, false);
    if (result->status != 200 || !body.is_object() || !body.contains("data") ||
        !body["data"].is_array() || body["data"].empty()) {
      *error = "GET " + prefix_ + "/models answered " + std::to_string(result->status) + ": " +
               result->body.substr(0, 200);
      return false;
    }
    *models = body;
    return true;
  }

  Outcome Run(const Job& job, bool speculate) const override {
    json body = {{"model", model_},
                 {"max_tokens", job.max_tokens},
                 {"temperature", options_.temperature},
                 {"stream", true},
                 {"stream_options", {{"include_usage", true}}}};
    if (options_.logprobs >= 0) body["logprobs"] = options_.logprobs;  // the completions form
    if (job.prompt_ids.empty()) {
      body["prompt"] = job.prompt;
    } else {
      body["prompt"] = job.prompt_ids;
    }
    if (options_.ignore_eos) body["ignore_eos"] = true;
    if (options_.temperature > 0) body["seed"] = options_.seed + 1;
    if (!speculate || !options_.tree.empty()) {  // specmoe's extension, only when asked
      json speculation = json::object();
      if (!speculate) speculation["disable"] = true;
      if (!options_.tree.empty()) speculation["expansion"] = options_.tree;
      body["speculation"] = speculation;
    }

    Outcome outcome;
    std::string buffer;   // bytes not yet split into events
    std::string error_body;
    bool first = true;
    bool usage_seen = false;
    int chunk_tokens = 0;
    Clock::time_point last;
    const Clock::time_point start = Clock::now();
    bool done = false;
    auto on_event = [&](const std::string& data) {
      if (data == "[DONE]") {
        done = true;
        return;
      }
      const json chunk = json::parse(data, nullptr, false);
      if (!chunk.is_object()) return;
      if (chunk.contains("error")) {
        error_body = data;
        return;
      }
      const Clock::time_point now = Clock::now();
      if (chunk.contains("choices") && chunk["choices"].is_array() && !chunk["choices"].empty()) {
        const json& choice = chunk["choices"][0];
        const bool has_text = choice.contains("text") && choice["text"].is_string() &&
                              !choice["text"].get<std::string>().empty();
        const int ids = choice.contains("token_ids") && choice["token_ids"].is_array()
                            ? static_cast<int>(choice["token_ids"].size())
                            : 0;
        if (has_text || ids > 0) {
          if (first) {
            outcome.ttft = std::chrono::duration<double>(now - start).count();
            first = false;
          } else {
            outcome.itl.push_back(std::chrono::duration<double>(now - last).count());
          }
          last = now;
          chunk_tokens += ids > 0 ? ids : 1;
        }
      }
      if (chunk.contains("usage") && chunk["usage"].is_object()) {
        const json& usage = chunk["usage"];
        usage_seen = true;
        outcome.prompt_tokens = usage.value("prompt_tokens", 0);
        outcome.output_tokens = usage.value("completion_tokens", 0);
        // OpenAI's field (specmoe, vLLM with prefix caching): prompt tokens served from cache.
        if (usage.contains("prompt_tokens_details") && usage["prompt_tokens_details"].is_object()) {
          const json& details = usage["prompt_tokens_details"];
          if (details.contains("cached_tokens") && details["cached_tokens"].is_number_integer()) {
            outcome.cached_prompt_tokens = details["cached_tokens"].get<int>();
          }
        }
        if (usage.contains("speculation") && usage["speculation"].is_object()) {
          const json& sp = usage["speculation"];
          outcome.speculation.set_verify_steps(sp.value("verify_steps", 0));
          outcome.speculation.set_drafted_tokens(sp.value("drafted_tokens", 0));
          outcome.speculation.set_accepted_tokens(sp.value("accepted_tokens", 0));
          outcome.speculation.set_mean_tokens_per_step(sp.value("mean_tokens_per_step", 0.0f));
          if (sp.contains("acceptance_by_depth") && sp["acceptance_by_depth"].is_array()) {
            for (const json& rate : sp["acceptance_by_depth"]) {
              outcome.speculation.add_acceptance_by_depth(rate.get<float>());
            }
          }
        }
      }
    };
    httplib::Request request;
    request.method = "POST";
    request.path = prefix_ + "/completions";
    request.set_header("Accept", "text/event-stream");
    request.set_header("Content-Type", "application/json");
    request.body = body.dump();
    int status = 0;
    request.response_handler = [&](const httplib::Response& response) {
      status = response.status;
      return true;
    };
    request.content_receiver = [&](const char* data, size_t length, uint64_t, uint64_t) {
      buffer.append(data, length);
      if (status != 200) return true;  // an error body: kept whole
      size_t end;
      while ((end = buffer.find("\n\n")) != std::string::npos) {
        const std::string event = buffer.substr(0, end);
        buffer.erase(0, end + 2);
        std::istringstream lines(event);
        std::string line;
        while (std::getline(lines, line)) {
          if (!line.empty() && line.back() == '\r') line.pop_back();
          if (line.rfind("data:", 0) == 0) {
            on_event(line.substr(line.size() > 5 && line[5] == ' ' ? 6 : 5));
          }
        }
      }
      return true;
    };
    httplib::Result result = client().send(request);
    outcome.e2el = std::chrono::duration<double>(Clock::now() - start).count();
    if (first) outcome.ttft = outcome.e2el;
    if (!usage_seen) outcome.output_tokens = chunk_tokens;
    if (!result) {
      outcome.code = grpc::StatusCode::UNAVAILABLE;
      outcome.error = "HTTP request failed: " + httplib::to_string(result.error());
      return outcome;
    }
    status = result->status;
    if (status == 200 && error_body.empty() && !done) {
      outcome.code = grpc::StatusCode::UNAVAILABLE;
      outcome.error = "the stream ended before data: [DONE]";
      return outcome;
    }
    if (status != 200 || !error_body.empty()) {
      const std::string text = status != 200 ? buffer : error_body;
      const json parsed = json::parse(text, nullptr, false);
      outcome.code = CodeOfHttpStatus(status != 200 ? status : 500);
      outcome.error = text.substr(0, 300);
      if (parsed.is_object() && parsed.contains("error") && parsed["error"].is_object() &&
          parsed["error"].contains("message") && parsed["error"]["message"].is_string()) {
        outcome.error = parsed["error"]["message"].get<std::string>();
      }
    }
    return outcome;
  }

 private:
  const BenchOptions& options_;
  const std::string origin_;
  const std::string prefix_;
  const std::string model_;
  const std::string api_key_;
};

// --- load -----------------------------------------------------------------------------------

// Counters the progress bar shows.
struct Progress {
  std::atomic<int> done{0};
  std::atomic<int> failed{0};
  int total = 0;
};

// A bar on stderr, redrawn every 200 ms while a terminal is attached; silent otherwise.
// Contract: owns its drawing thread, joined by the destructor; `progress` outlives it.
class ProgressBar {
 public:
  explicit ProgressBar(Progress* progress) : progress_(progress) {
    if (!isatty(STDERR_FILENO)) return;
    thread_ = std::thread([this] {
      const Clock::time_point start = Clock::now();
      std::unique_lock<std::mutex> lock(mu_);
      while (true) {
        Draw(std::chrono::duration<double>(Clock::now() - start).count());
        if (cv_.wait_for(lock, std::chrono::milliseconds(200), [this] { return stop_; })) break;
      }
      Draw(std::chrono::duration<double>(Clock::now() - start).count());
      std::fprintf(stderr, "\n");
    });
  }
  ~ProgressBar() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Draw(double seconds) const {
    constexpr int kWidth = 30;
    const int done = progress_->done.load();
    const int total = std::max(1, progress_->total);
    const int filled = done * kWidth / total;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r[%s] %d/%d requests, %d failed, %.1f s", bar.c_str(), done,
                 progress_->total, progress_->failed.load(), seconds);
    std::fflush(stderr);
  }

  Progress* progress_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// Sends `jobs` (job i with speculation `speculate[i]`) with at most `concurrency` in flight
// (<= 0: unbounded, i.e. up to 1024 worker threads) and, with a rate, gamma-distributed gaps
// of mean 1/rate and shape `burstiness` (1: Poisson arrivals). The calling thread dispatches
// arrivals into a queue that a fixed pool of workers drains. Returns the outcomes in job
// order and the wall time.
Arm RunLoad(const Runner& runner, const std::vector<const Job*>& jobs,
            const std::vector<bool>& speculate, int concurrency, double rate, double burstiness,
            std::mt19937_64& rng, Progress* progress) {
  Arm arm;
  arm.outcomes.resize(jobs.size());
  const size_t workers = std::min<size_t>(
      jobs.size(), concurrency > 0 ? static_cast<size_t>(concurrency) : 1024);
  std::mutex mu;
  std::condition_variable cv;
  std::deque<size_t> arrived;  // guarded by mu
  bool closed = false;         // guarded by mu
  std::vector<std::thread> pool;
  const Clock::time_point start = Clock::now();
  for (size_t w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      while (true) {
        size_t i = 0;
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return closed || !arrived.empty(); });
          if (arrived.empty()) return;
          i = arrived.front();
          arrived.pop_front();
        }
        arm.outcomes[i] = runner.Run(*jobs[i], speculate[i]);
        if (progress != nullptr) {
          if (!arm.outcomes[i].ok()) progress->failed.fetch_add(1);
          progress->done.fetch_add(1);
        }
      }
    });
  }
  std::gamma_distribution<double> gap(burstiness, rate > 0 ? 1.0 / (rate * burstiness) : 1.0);
  Clock::time_point next = start;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (rate > 0) {
      std::this_thread::sleep_until(next);
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      arrived.push_back(i);
    }
    cv.notify_one();
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    closed = true;
  }
  cv.notify_all();
  for (std::thread& thread : pool) thread.join();
  arm.duration = std::chrono::duration<double>(Clock::now() - start).count();
  return arm;
}

// Multi-turn load: conversation i starts with jobs[i]; turn k + 1 resends turn k's prompt and
// completion followed by the next user message, user[(i + k) % user.size()]. At most
// `concurrency` conversations run at once, each one turn at a time. Outcome i * turns + k is
// conversation i's turn k.
Arm RunConversations(const Runner& runner, const std::vector<const Job*>& jobs,
                     const std::vector<std::vector<int32_t>>& user, int turns, bool speculate,
                     int concurrency, Progress* progress) {
  Arm arm;
  arm.outcomes.resize(jobs.size() * turns);
  const size_t workers =
      std::min<size_t>(jobs.size(), concurrency > 0 ? static_cast<size_t>(concurrency) : 1024);
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  const Clock::time_point start = Clock::now();
  for (size_t w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      for (size_t i = next.fetch_add(1); i < jobs.size(); i = next.fetch_add(1)) {
        Job turn = *jobs[i];
        for (int k = 0; k < turns; ++k) {
          Outcome& outcome = arm.outcomes[i * turns + k];
          outcome = runner.Run(turn, speculate);
          if (progress != nullptr) {
            if (!outcome.ok()) progress->failed.fetch_add(1);
            progress->done.fetch_add(1);
          }
          const std::vector<int32_t>& message = user[(i + k) % user.size()];
          turn.prompt_ids.insert(turn.prompt_ids.end(), outcome.output_ids.begin(),
                                 outcome.output_ids.end());
          turn.prompt_ids.insert(turn.prompt_ids.end(), message.begin(), message.end());
        }
      }
    });
  }
  for (std::thread& thread : pool) thread.join();
  arm.duration = std::chrono::duration<double>(Clock::now() - start).count();
  return arm;
}

// --- statistics -----------------------------------------------------------------------------

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double position = p / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lower = static_cast<size_t>(std::floor(position));
  const size_t upper = std::min(lower + 1, values.size() - 1);
  return values[lower] + (values[upper] - values[lower]) * (position - lower);
}

double Mean(const std::vector<double>& values) {
  if (values.empty()) return 0;
  return std::accumulate(values.begin(), values.end(), 0.0) / values.size();
}

double StdDev(const std::vector<double>& values) {
  if (values.empty()) return 0;
  const double mean = Mean(values);
  double sum = 0;
  for (double v : values) sum += (v - mean) * (v - mean);
  return std::sqrt(sum / values.size());
}

// "<prefix><name><suffix>" (a function rather than operator+ chains, which trip GCC 12's
// false -Wrestrict positive, GCC bug 105329).
std::string Key(const std::string& prefix, const std::string& name, const std::string& suffix) {
  std::string key;
  key.reserve(prefix.size() + name.size() + suffix.size());
  key.append(prefix).append(name).append(suffix);
  return key;
}

std::string PercentileKey(double p) {
  std::ostringstream out;
  out << p;  // 99.9 -> "99.9", 50 -> "50", as vllm's f"p{p:g}"
  return out.str();
}

// Adds mean/median/std/p<X> of `values_s` (seconds) in milliseconds as vllm names them:
// mean_<name>_ms, median_<name>_ms, std_<name>_ms, p99_<name>_ms.
void AddLatency(const std::string& name, const std::vector<double>& values_s,
                const std::vector<double>& percentiles, json* out) {
  std::vector<double> ms;
  ms.reserve(values_s.size());
  for (double v : values_s) ms.push_back(v * 1e3);
  (*out)[Key("mean_", name, "_ms")] = Mean(ms);
  (*out)[Key("median_", name, "_ms")] = Percentile(ms, 50);
  (*out)[Key("std_", name, "_ms")] = StdDev(ms);
  for (double p : percentiles) {
    (*out)[Key(Key("p", PercentileKey(p), "_"), name, "_ms")] = Percentile(ms, p);
  }
}

double Tpot(const Outcome& o) {
  return o.output_tokens > 1 ? (o.e2el - o.ttft) / (o.output_tokens - 1) : 0.0;
}

// The result object of one arm: vllm's field names where the concept is the same.
json Summarize(const Arm& arm, const BenchOptions& options) {
  json out;
  std::vector<double> ttfts, tpots, itls, e2els;
  int completed = 0, input_tokens = 0, output_tokens = 0, good = 0, cached_tokens = 0;
  std::map<std::string, int> errors_by_code;
  double steps = 0, emitted = 0, drafted = 0, accepted = 0;
  std::vector<double> depth_sum, depth_weight;
  json input_lens = json::array(), output_lens = json::array(), ttft_list = json::array(),
       itl_list = json::array(), e2el_list = json::array(), errors = json::array(),
       codes = json::array();
  for (const Outcome& o : arm.outcomes) {
    codes.push_back(CodeName(o.code));
    errors.push_back(o.ok() ? "" : std::string(CodeName(o.code)) + ": " + o.error);
    input_lens.push_back(o.prompt_tokens);
    output_lens.push_back(o.output_tokens);
    ttft_list.push_back(o.ok() ? o.ttft : 0.0);
    itl_list.push_back(o.itl);
    e2el_list.push_back(o.e2el);
    if (!o.ok()) {
      ++errors_by_code[CodeName(o.code)];
      continue;
    }
    ++completed;
    input_tokens += o.prompt_tokens;
    cached_tokens += o.cached_prompt_tokens;
    output_tokens += o.output_tokens;
    ttfts.push_back(o.ttft);
    if (o.output_tokens > 1) tpots.push_back(Tpot(o));
    itls.insert(itls.end(), o.itl.begin(), o.itl.end());
    e2els.push_back(o.e2el);
    bool meets = true;
    for (const auto& [key, limit_ms] : options.slo_ms) {
      double value_ms = 0;
      if (key == "ttft") value_ms = o.ttft * 1e3;
      if (key == "tpot") value_ms = Tpot(o) * 1e3;
      if (key == "e2el") value_ms = o.e2el * 1e3;
      if (key == "itl") value_ms = o.itl.empty() ? 0 : *std::max_element(o.itl.begin(), o.itl.end()) * 1e3;
      meets = meets && value_ms <= limit_ms;
    }
    good += meets ? 1 : 0;
    const v1::SpeculationStats& s = o.speculation;
    steps += s.verify_steps();
    emitted += s.mean_tokens_per_step() * s.verify_steps();
    drafted += s.drafted_tokens();
    accepted += s.accepted_tokens();
    for (int d = 0; d < s.acceptance_by_depth_size(); ++d) {
      if (depth_sum.size() <= static_cast<size_t>(d)) {
        depth_sum.push_back(0);
        depth_weight.push_back(0);
      }
      depth_sum[d] += s.acceptance_by_depth(d) * s.verify_steps();
      depth_weight[d] += s.verify_steps();
    }
  }
  const double duration = arm.duration > 0 ? arm.duration : 1e-9;
  out["duration"] = arm.duration;
  out["completed"] = completed;
  out["failed"] = static_cast<int>(arm.outcomes.size()) - completed;
  out["num_prompts"] = arm.outcomes.size();
  out["total_input_tokens"] = input_tokens;
  out["total_output_tokens"] = output_tokens;
  out["total_cached_prompt_tokens"] = cached_tokens;
  out["prefix_cache_hit_rate"] =
      input_tokens > 0 ? static_cast<double>(cached_tokens) / input_tokens : 0.0;
  out["request_throughput"] = completed / duration;
  out["request_goodput"] = options.slo_ms.empty() ? json(nullptr) : json(good / duration);
  out["output_throughput"] = output_tokens / duration;
  out["total_token_throughput"] = (input_tokens + output_tokens) / duration;
  AddLatency("ttft", ttfts, options.percentiles, &out);
  AddLatency("tpot", tpots, options.percentiles, &out);
  AddLatency("itl", itls, options.percentiles, &out);
  AddLatency("e2el", e2els, options.percentiles, &out);
  out["errors_by_code"] = errors_by_code;
  out["mean_tokens_per_step"] = steps > 0 ? emitted / steps : 0.0;
  out["total_verify_steps"] = steps;
  out["total_drafted_tokens"] = drafted;
  out["total_accepted_tokens"] = accepted;
  out["acceptance_rate"] = drafted > 0 ? accepted / drafted : 0.0;
  std::vector<double> by_depth;
  for (size_t d = 0; d < depth_sum.size(); ++d) by_depth.push_back(depth_sum[d] / depth_weight[d]);
  out["acceptance_by_depth"] = by_depth;
  out["input_lens"] = input_lens;
  out["output_lens"] = output_lens;
  out["ttfts"] = ttft_list;
  out["itls"] = itl_list;
  out["e2els"] = e2el_list;
  out["status_codes"] = codes;
  out["errors"] = errors;
  return out;
}

// Ratios spec on / spec off of the headline numbers.
json Ratios(const json& on, const json& off) {
  json out;
  for (const char* key : {"request_throughput", "output_throughput", "total_token_throughput",
                          "mean_ttft_ms", "median_ttft_ms", "median_tpot_ms", "median_itl_ms",
                          "p99_itl_ms", "median_e2el_ms", "p99_e2el_ms"}) {
    if (!on.contains(key) || !off.contains(key) || !on[key].is_number() || !off[key].is_number()) continue;
    const double denominator = off[key].get<double>();
    out[key] = denominator != 0 ? json(on[key].get<double>() / denominator) : json(nullptr);
  }
  return out;
}

// --- table ----------------------------------------------------------------------------------

std::string Number(const json& value, int decimals = 2) {
  if (!value.is_number()) return "-";
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value.get<double>());
  return buffer;
}

// Prints rows "label  col1  col2 ..." for one or more result objects (vllm's layout).
void PrintTable(const std::vector<std::string>& headers, const std::vector<json>& columns,
                const BenchOptions& options) {
  auto row = [&](const std::string& label, const std::string& key, int decimals = 2) {
    std::printf("%-40s", label.c_str());
    for (const json& c : columns) {
      std::printf(" %14s", c.contains(key) ? Number(c[key], decimals).c_str() : "-");
    }
    std::printf("\n");
  };
  auto section = [&](const std::string& title) {
    const int width = 40 + 15 * static_cast<int>(columns.size());
    const int pad = std::max(0, width - static_cast<int>(title.size())) / 2;
    std::printf("%s%s%s\n", std::string(pad, '-').c_str(), title.c_str(),
                std::string(std::max(0, width - pad - static_cast<int>(title.size())), '-').c_str());
  };
  std::printf("%s\n", std::string(40 + 15 * columns.size(), '=').c_str());
  if (headers.size() > 1) {
    std::printf("%-40s", "");
    for (const std::string& h : headers) std::printf(" %14s", h.c_str());
    std::printf("\n");
  }
  row("Successful requests:", "completed", 0);
  row("Failed requests:", "failed", 0);
  row("Benchmark duration (s):", "duration");
  row("Total input tokens:", "total_input_tokens", 0);
  row("Total generated tokens:", "total_output_tokens", 0);
  row("Cached prompt tokens:", "total_cached_prompt_tokens", 0);
  row("Prefix cache hit rate:", "prefix_cache_hit_rate", 3);
  row("Request throughput (req/s):", "request_throughput");
  if (!options.slo_ms.empty()) row("Request goodput (req/s):", "request_goodput");
  row("Output token throughput (tok/s):", "output_throughput");
  row("Total Token throughput (tok/s):", "total_token_throughput");
  const std::pair<const char*, const char*> metrics[] = {
      {"ttft", "Time to First Token"}, {"tpot", "Time per Output Token (excl. 1st token)"},
      {"itl", "Inter-token Latency"}, {"e2el", "End-to-end Latency"}};
  for (const auto& [key, title] : metrics) {
    section(title);
    std::string upper(key);
    for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    row(Key("Mean ", upper, " (ms):"), Key("mean_", key, "_ms"));
    row(Key("Median ", upper, " (ms):"), Key("median_", key, "_ms"));
    for (double p : options.percentiles) {
      if (p == 50) continue;  // the median
      row(Key(Key("P", PercentileKey(p), " "), upper, " (ms):"),
          Key(Key("p", PercentileKey(p), "_"), key, "_ms"));
    }
  }
  section("Speculation");
  row("Mean tokens per step:", "mean_tokens_per_step");
  row("Acceptance rate (accepted/drafted):", "acceptance_rate", 3);
  size_t depths = 0;
  for (const json& c : columns) {
    if (c.contains("acceptance_by_depth")) depths = std::max(depths, c["acceptance_by_depth"].size());
  }
  for (size_t d = 0; d < depths; ++d) {
    std::printf("%-40s", ("Acceptance at depth " + std::to_string(d + 1) + ":").c_str());
    for (const json& c : columns) {
      const json& a = c.contains("acceptance_by_depth") ? c["acceptance_by_depth"] : json();
      std::printf(" %14s", a.is_array() && d < a.size() ? Number(a[d], 3).c_str() : "-");
    }
    std::printf("\n");
  }
  std::map<std::string, bool> codes;
  for (const json& c : columns) {
    if (c.contains("errors_by_code")) {
      for (const auto& [code, n] : c["errors_by_code"].items()) codes[code] = true;
    }
  }
  if (!codes.empty()) {
    section("Errors by gRPC code");
    for (const auto& [code, unused] : codes) {
      std::printf("%-40s", (code + ":").c_str());
      for (const json& c : columns) {
        const json& e = c.contains("errors_by_code") ? c["errors_by_code"] : json();
        std::printf(" %14s", e.is_object() && e.contains(code) ? std::to_string(e[code].get<int>()).c_str() : "0");
      }
      std::printf("\n");
    }
  }
  std::printf("%s\n", std::string(40 + 15 * columns.size(), '=').c_str());
}

void PrintSweep(const json& sweep, bool ab) {
  if (!ab) {
    std::printf("%6s %9s %11s %10s %10s %10s %10s %11s %9s %7s\n", "conc", "req/s", "out tok/s",
                "p50 TTFT", "p99 TTFT", "p50 ITL", "p99 ITL", "p99 E2EL", "tok/step", "errors");
    for (const json& r : sweep) {
      std::printf("%6d %9s %11s %10s %10s %10s %10s %11s %9s %7d\n",
                  r["max_concurrency"].get<int>(), Number(r["request_throughput"]).c_str(),
                  Number(r["output_throughput"]).c_str(), Number(r["median_ttft_ms"], 1).c_str(),
                  Number(r["p99_ttft_ms"], 1).c_str(), Number(r["median_itl_ms"], 1).c_str(),
                  Number(r["p99_itl_ms"], 1).c_str(), Number(r["p99_e2el_ms"], 1).c_str(),
                  Number(r["mean_tokens_per_step"]).c_str(), r["failed"].get<int>());
    }
    return;
  }
  std::printf("%6s | %22s %6s | %18s | %18s | %20s | %13s\n", "", "out tok/s (on / off)", "ratio",
              "p50 ITL ms on/off", "p99 ITL ms on/off", "p99 E2EL ms on/off", "errors on/off");
  for (const json& r : sweep) {
    const json& on = r["spec_on"];
    const json& off = r["spec_off"];
    std::printf("%6d | %10s / %9s %6s | %8s / %7s | %8s / %7s | %9s / %8s | %6d / %4d\n",
                r["max_concurrency"].get<int>(), Number(on["output_throughput"]).c_str(),
                Number(off["output_throughput"]).c_str(),
                Number(r["ratio"]["output_throughput"]).c_str(),
                Number(on["median_itl_ms"], 1).c_str(), Number(off["median_itl_ms"], 1).c_str(),
                Number(on["p99_itl_ms"], 1).c_str(), Number(off["p99_itl_ms"], 1).c_str(),
                Number(on["p99_e2el_ms"], 0).c_str(), Number(off["p99_e2el_ms"], 0).c_str(),
                on["failed"].get<int>(), off["failed"].get<int>());
  }
}

std::string NowIso() {
  const std::time_t now = std::time(nullptr);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y%m%d-%H%M%S", std::gmtime(&now));
  return buffer;
}

// Runs client/plot_bench.py (or $SPECMOE_PLOT_SCRIPT) on the JSON report, with Debian's
// /usr/bin/python3 (where python3-matplotlib is installed) when present.
int Plot(const std::string& json_path, const std::string& png_path) {
  const char* env = std::getenv("SPECMOE_PLOT_SCRIPT");
  const std::string script = env != nullptr ? env : SPECMOE_SOURCE_DIR "/client/plot_bench.py";
  const char* python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
  const pid_t pid = fork();
  if (pid == 0) {
    execlp(python, python, script.c_str(), json_path.c_str(), png_path.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0) {
    std::cerr << "specmoe-cli bench: --plot: " << script << " failed (needs python3 and "
              << "python3-matplotlib)\n";
    return 1;
  }
  std::cerr << "wrote " << png_path << "\n";
  return 0;
}

}  // namespace

std::string ParseSlo(const std::string& text, std::map<std::string, double>* slo) {
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    const size_t colon = part.find(':');
    const std::string key = part.substr(0, colon);
    if (colon == std::string::npos ||
        (key != "ttft" && key != "tpot" && key != "itl" && key != "e2el")) {
      return "--slo: '" + part + "' is not KEY:MS with KEY one of ttft, tpot, itl, e2el";
    }
    char* end = nullptr;
    const std::string value = part.substr(colon + 1);
    const double ms = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || !(ms > 0)) {
      return "--slo: '" + part + "' needs a positive number of milliseconds";
    }
    (*slo)[key] = ms;
  }
  if (slo->empty()) return "--slo: empty";
  return "";
}

int RunBench(const BenchOptions& options, std::shared_ptr<grpc::Channel> channel,
             const std::string& api_key) {
  if (options.num_requests < 1) {
    std::cerr << "specmoe-cli bench: --num-requests must be at least 1\n";
    return 2;
  }
  if (options.ab && options.no_speculation) {
    std::cerr << "specmoe-cli bench: --ab already runs with speculation off; drop "
                 "--no-speculation\n";
    return 2;
  }
  if (options.multi_turn > 1 && (options.ab || options.request_rate > 0)) {
    std::cerr << "specmoe-cli bench: --multi-turn runs conversations at a concurrency, one arm: "
                 "drop --ab and --request-rate\n";
    return 2;
  }
  if (options.multi_turn > 1 && options.backend == "openai") {
    std::cerr << "specmoe-cli bench: --multi-turn resends each turn's token ids, which needs "
                 "the specmoe backend\n";
    return 2;
  }
  std::unique_ptr<Runner> runner;
  v1::ModelInfo info;
  if (options.backend == "openai") {
    std::string origin, prefix;
    if (!SplitBaseUrl(options.base_url, &origin, &prefix)) {
      std::cerr << "specmoe-cli bench: --backend openai needs --base-url "
                   "http(s)://HOST:PORT/v1, got '" << options.base_url << "'\n";
      return 2;
    }
    json models;
    std::string error;
    if (!OpenAiRunner(options, origin, prefix, "", api_key).Models(&models, &error)) {
      std::cerr << "specmoe-cli bench: " << error << "\n";
      return 1;
    }
    const json& first = models["data"][0];
    const std::string model =
        !options.model.empty() ? options.model : first.value("id", std::string());
    info.set_target(model);
    if (first.contains("specmoe") && first["specmoe"].is_object()) {
      const json& meta = first["specmoe"];
      if (meta.contains("draft") && meta["draft"].is_string()) {
        info.set_draft(meta["draft"].get<std::string>());
      }
      info.set_vocab_size(meta.value("vocab_size", 0));
    }
    // llama.cpp's llama-server gives its vocabulary as meta.n_vocab.
    if (info.vocab_size() == 0 && first.contains("meta") && first["meta"].is_object() &&
        first["meta"].contains("n_vocab") && first["meta"]["n_vocab"].is_number_integer()) {
      info.set_vocab_size(first["meta"]["n_vocab"].get<int>());
    }
    if (info.vocab_size() == 0) {
      info.set_vocab_size(32000);  // LLaMA's; the server does not say
      if (options.dataset_name == "random") {
        std::cerr << "specmoe-cli bench: the server does not give its vocabulary size; random "
                     "prompts use ids below 32000\n";
      }
    }
    runner = std::make_unique<OpenAiRunner>(options, origin, prefix, model, api_key);
  } else {
    // Reach the server first, with a bound, so an unreachable address is an error, not a hang.
    if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                   std::chrono::milliseconds(options.connect_timeout_ms))) {
      std::cerr << "specmoe-cli bench: cannot reach the server at " << options.server
                << " within " << options.connect_timeout_ms / 1000.0
                << " s (is it running? see --server)\n";
      return 1;
    }
    auto grpc_runner = std::make_unique<GrpcRunner>(options, channel, api_key);
    grpc::ClientContext context;
    grpc_runner->Prepare(&context);
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(options.connect_timeout_ms));
    const grpc::Status status =
        grpc_runner->stub().GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!status.ok()) {
      std::cerr << "specmoe-cli bench: GetModelInfo failed: " << CodeName(status.error_code())
                << ": " << status.error_message() << "\n";
      return 1;
    }
    runner = std::move(grpc_runner);
  }

  std::mt19937_64 rng(options.seed);
  std::vector<Job> dataset;
  std::string error;
  const uint32_t output_len = static_cast<uint32_t>(options.output_len);
  bool read = true;
  if (options.dataset_name == "random") {
    dataset = RandomJobs(options.num_requests, options.input_len, output_len,
                         static_cast<int>(info.vocab_size()), rng);
  } else if (options.dataset_name == "sharegpt") {
    if (options.dataset_path.empty()) {
      std::cerr << "specmoe-cli bench: --dataset-name sharegpt needs --dataset-path\n";
      return 2;
    }
    read = ReadShareGpt(options.dataset_path, output_len, &dataset, &error);
  } else if (options.dataset_name == "jsonl") {
    read = ReadJsonl(options.dataset_path.empty() ? DefaultJsonlPath() : options.dataset_path,
                     output_len, &dataset, &error);
  } else {
    std::cerr << "specmoe-cli bench: --dataset-name must be jsonl, sharegpt or random\n";
    return 2;
  }
  if (!read) {
    std::cerr << "specmoe-cli bench: " << error << "\n";
    return 1;
  }
  if (options.shared_prefix_tokens > 0 || options.multi_turn > 1) {
    // Token ids throughout: text prompts are tokenized by the server (without BOS, which
    // the shared prefix would otherwise sit in front of).
    std::vector<int32_t> prefix;
    std::uniform_int_distribution<int32_t> token(3, std::max<int32_t>(3, info.vocab_size() - 1));
    for (int i = 0; i < options.shared_prefix_tokens; ++i) prefix.push_back(token(rng));
    for (Job& job : dataset) {
      if (job.prompt_ids.empty() && !runner->Tokenize(job.prompt, &job.prompt_ids, &error)) {
        std::cerr << "specmoe-cli bench: " << error << "\n";
        return 1;
      }
      job.prompt_ids.insert(job.prompt_ids.begin(), prefix.begin(), prefix.end());
    }
  }
  // N requests in file order, cycling when the file is shorter (a seed shuffles nothing, so
  // that a dataset's injected lines stay where they are).
  std::vector<const Job*> jobs;
  for (int i = 0; i < options.num_requests; ++i) jobs.push_back(&dataset[i % dataset.size()]);

  const std::vector<int> loads =
      options.sweep_concurrency.empty() ? std::vector<int>{options.concurrency}
                                        : options.sweep_concurrency;
  json report;
  report["date"] = NowIso();
  report["backend"] = options.backend == "openai" ? "openai" : "specmoe-grpc";
  report["server"] = options.backend == "openai" ? options.base_url : options.server;
  report["model_id"] = info.target();
  report["draft_id"] = info.draft();
  report["tokenizer_id"] = info.target();
  report["dataset_name"] = options.dataset_name;
  report["num_prompts"] = options.num_requests;
  report["request_rate"] = options.request_rate > 0 ? json(options.request_rate) : json("inf");
  report["burstiness"] = options.burstiness;
  report["seed"] = options.seed;
  report["shared_prefix_tokens"] = options.shared_prefix_tokens;
  report["multi_turn"] = options.multi_turn;
  report["ab"] = options.ab;
  report["percentiles"] = options.percentiles;
  json sweep = json::array();
  std::vector<std::string> headers;
  std::vector<json> columns;
  for (const int load : loads) {
    const int concurrency = load > 0 ? load : (options.request_rate > 0 ? 0 : 1);
    if (options.warmup > 0) {
      std::vector<const Job*> warm;
      for (int i = 0; i < options.warmup; ++i) warm.push_back(&dataset[i % dataset.size()]);
      RunLoad(*runner, warm, std::vector<bool>(warm.size(), !options.no_speculation),
              concurrency, options.request_rate, options.burstiness, rng, nullptr);
    }
    Progress progress;
    progress.total = options.num_requests * (options.ab ? 2 : 1) * options.multi_turn;
    json entry;
    {
      ProgressBar bar(&progress);
      if (options.multi_turn > 1) {
        std::vector<std::vector<int32_t>> user;
        for (const Job& job : dataset) {
          user.emplace_back(job.prompt_ids.begin() + options.shared_prefix_tokens,
                            job.prompt_ids.end());
        }
        entry = Summarize(RunConversations(*runner, jobs, user, options.multi_turn,
                                           !options.no_speculation, concurrency, &progress),
                          options);
      } else if (!options.ab) {
        const Arm arm = RunLoad(*runner, jobs, std::vector<bool>(jobs.size(), !options.no_speculation),
                                concurrency, options.request_rate, options.burstiness, rng,
                                &progress);
        entry = Summarize(arm, options);
      } else {
        // Interleaved rounds: the same slice of requests with speculation on, then off (the
        // order alternating per round), so both arms see the same load and machine drift.
        const size_t round = static_cast<size_t>(concurrency > 0 ? 2 * concurrency : 16);
        Arm on, off;
        for (size_t begin = 0, r = 0; begin < jobs.size(); begin += round, ++r) {
          const std::vector<const Job*> slice(jobs.begin() + begin,
                                              jobs.begin() + std::min(jobs.size(), begin + round));
          for (int k = 0; k < 2; ++k) {
            const bool speculate = (k == 0) == (r % 2 == 0);
            Arm part = RunLoad(*runner, slice, std::vector<bool>(slice.size(), speculate),
                               concurrency, options.request_rate, options.burstiness, rng,
                               &progress);
            Arm& target = speculate ? on : off;
            target.duration += part.duration;
            target.outcomes.insert(target.outcomes.end(), part.outcomes.begin(),
                                   part.outcomes.end());
          }
        }
        entry["spec_on"] = Summarize(on, options);
        entry["spec_off"] = Summarize(off, options);
        entry["ratio"] = Ratios(entry["spec_on"], entry["spec_off"]);
      }
    }
    entry["max_concurrency"] = concurrency > 0 ? json(concurrency) : json(nullptr);
    if (options.sweep_concurrency.empty()) {
      report["max_concurrency"] = entry["max_concurrency"];
      if (options.ab) {
        report["spec_on"] = entry["spec_on"];
        report["spec_off"] = entry["spec_off"];
        report["ratio"] = entry["ratio"];
        headers = {"spec on", "spec off", "on/off"};
        columns = {entry["spec_on"], entry["spec_off"], entry["ratio"]};
      } else {
        report.update(entry);
        headers = {""};
        columns = {entry};
      }
    } else {
      sweep.push_back(entry);
    }
  }
  report["speculation"] = options.no_speculation ? "off" : (options.ab ? "ab" : "on");
  if (!options.sweep_concurrency.empty()) {
    report["sweep"] = sweep;
    PrintSweep(sweep, options.ab);
  } else {
    PrintTable(headers, columns, options);
  }

  std::string json_path = options.json_path;
  if (json_path.empty() && !options.plot_path.empty()) {
    json_path = (std::filesystem::temp_directory_path() /
                 ("specmoe-bench-" + std::to_string(getpid()) + ".json")).string();
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << report.dump(2) << "\n";
    if (!out) {
      std::cerr << "specmoe-cli bench: --json: cannot write " << json_path << "\n";
      return 1;
    }
  }
  if (!options.plot_path.empty()) return Plot(json_path, options.plot_path);
  return 0;
}

const char* CodeName(grpc::StatusCode code) {
  static constexpr const char* kNames[] = {
      "OK",           "CANCELLED",        "UNKNOWN",           "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",   "ALREADY_EXISTS",    "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",  "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",        "UNAVAILABLE",       "DATA_LOSS",
      "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  return c >= 0 && c < static_cast<int>(std::size(kNames)) ? kNames[c] : "UNKNOWN";
}

}  // namespace specmoe::client
