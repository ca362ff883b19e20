// engine/serving/engine.cc — the worker thread and request queue around the Generator (DESIGN §1-2).
//
// The transport calls Submit() from any thread: it validates, then pushes onto a bounded
// queue. The worker admits queued requests while the KV cache has room, and steps every
// running request in turn (one verify step each), delivering events through each request's
// sink. Cancelled requests are finished at their next step and their KV blocks freed.
#include "engine/serving/engine.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/serving/generator.h"
#include "spdlog/spdlog.h"

namespace specmoe::engine {
namespace {

struct Pending {
  std::chrono::steady_clock::time_point queued_at;
  GenerationRequest request;
  EventSink sink;
  std::shared_ptr<RequestHandle> handle;
};

struct Running {
  std::unique_ptr<Sequence> seq;
  EventSink sink;
  std::shared_ptr<RequestHandle> handle;
};

class EngineImpl final : public Engine {
 public:
  EngineImpl(const EngineOptions& options, std::unique_ptr<Generator> generator)
      : options_(options), generator_(std::move(generator)) {
    PublishKvStats();
    worker_ = std::thread([this] { Run(); });
  }

  ~EngineImpl() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest request,
                                                        EventSink sink) override {
    absl::Status valid = PrepareRequest(request, options_.limits, model_limits());
    if (!valid.ok()) return valid;
    auto handle = std::make_shared<RequestHandle>();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::UnavailableError("the engine is shutting down");
      if (static_cast<int>(queue_.size()) >= options_.max_queue) {
        return absl::ResourceExhaustedError(
            absl::StrCat("request queue full (", options_.max_queue, " waiting)"));
      }
      queue_.push_back({std::chrono::steady_clock::now(), std::move(request), std::move(sink),
                        handle});
      stats_.queue_depth.store(static_cast<int>(queue_.size()), std::memory_order_relaxed);
    }
    cv_.notify_one();
    return handle;
  }

  absl::StatusOr<std::vector<int32_t>> Tokenize(std::string_view text,
                                                bool add_bos) const override {
    return TokenizeWithinLimits(text, add_bos, options_.limits, model_limits());
  }

  const Tokenizer& tokenizer() const override { return generator_->tokenizer(); }
  int vocab_size() const override { return generator_->target_config().vocab_size; }
  int max_context() const override { return generator_->max_context(); }
  const std::vector<int>& default_expansion() const override {
    return generator_->default_expansion();
  }
  std::string target_name() const override { return options_.target_dir; }
  std::string draft_name() const override { return options_.draft_dir; }
  std::string device() const override { return "cpu"; }
  std::string dtype() const override {
    return kernels::DTypeName(generator_->target().weights().dtype);
  }
  const EngineStats& stats() const override { return stats_; }

 private:
  // Stores the gauges the worker owns (running set and KV cache).
  void PublishKvStats() {
    const KvCache& cache = generator_->target_cache();
    stats_.running.store(static_cast<int>(running_.size()), std::memory_order_relaxed);
    stats_.kv_blocks_free.store(cache.free_blocks(), std::memory_order_relaxed);
    stats_.kv_blocks_used.store(cache.num_blocks() - cache.free_blocks(),
                                std::memory_order_relaxed);
  }

  ModelLimits model_limits() const {
    return {generator_->target_config().vocab_size, generator_->max_context(),
            &generator_->tokenizer()};
  }

  // Delivers the final event of a finished sequence.
  void FinishEvent(Running& r, GenerationEvent event) {
    event.finished = true;
    event.finish_reason = r.seq->finish;
    event.prompt_tokens = r.seq->prompt_len;
    event.completion_tokens = r.seq->completion_tokens();
    event.speculation = generator_->Stats(*r.seq);
    r.sink(std::move(event));
  }

  // Moves queued requests into the running set while the KV cache has room.
  void Admit() {
    while (static_cast<int>(running_.size()) < options_.max_batch) {
      Pending p;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (queue_.empty()) return;
        p = std::move(queue_.front());
        queue_.pop_front();
        stats_.queue_depth.store(static_cast<int>(queue_.size()), std::memory_order_relaxed);
      }
      if (p.handle->cancelled()) {
        GenerationEvent event;
        event.finished = true;
        event.finish_reason = FinishReason::kCancelled;
        event.prompt_tokens = static_cast<int>(p.request.prompt_ids.size());
        p.sink(std::move(event));
        continue;
      }
      absl::StatusOr<std::unique_ptr<Sequence>> seq = generator_->Start(p.request);
      if (absl::IsResourceExhausted(seq.status()) && !running_.empty()) {
        // No KV room now: wait at the head of the queue for a running request to finish.
        std::lock_guard<std::mutex> lock(mu_);
        queue_.push_front(std::move(p));
        stats_.queue_depth.store(static_cast<int>(queue_.size()), std::memory_order_relaxed);
        return;
      }
      if (!seq.ok()) {
        GenerationEvent event;
        event.finished = true;
        event.status = seq.status();
        p.sink(std::move(event));
        continue;
      }
      if (options_.observer != nullptr) {
        options_.observer->OnQueueWait(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - p.queued_at)
                .count());
      }
      running_.push_back({*std::move(seq), std::move(p.sink), std::move(p.handle)});
      PublishKvStats();
    }
  }

  void Run() {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty() || !running_.empty(); });
        if (stopping_) break;
      }
      Admit();
      for (size_t i = 0; i < running_.size();) {
        Running& r = running_[i];
        if (r.handle->cancelled()) {
          generator_->Finish(*r.seq, FinishReason::kCancelled);
          FinishEvent(r, {});
        } else {
          StepOutput out = generator_->Step(*r.seq);
          if (options_.observer != nullptr) {
            options_.observer->OnStep(out.draft_seconds, out.target_seconds,
                                      out.verify_seconds, out.tree_tokens);
          }
          GenerationEvent event;
          event.token_ids = std::move(out.token_ids);
          event.text = std::move(out.text);
          event.status = std::move(out.status);
          if (out.finished) {
            FinishEvent(r, std::move(event));
          } else {
            r.sink(std::move(event));
            ++i;
            continue;
          }
        }
        running_.erase(running_.begin() + static_cast<long>(i));
        PublishKvStats();
      }
    }
    // Shutting down: everything still queued or running ends as cancelled.
    for (Running& r : running_) {
      generator_->Finish(*r.seq, FinishReason::kCancelled);
      FinishEvent(r, {});
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (Pending& p : queue_) {
      GenerationEvent event;
      event.finished = true;
      event.finish_reason = FinishReason::kCancelled;
      p.sink(std::move(event));
    }
    queue_.clear();
  }

  EngineOptions options_;
  std::unique_ptr<Generator> generator_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;    // guarded by mu_
  bool stopping_ = false;        // guarded by mu_
  std::vector<Running> running_;  // worker thread only
  EngineStats stats_;
  std::thread worker_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  if (options.device != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device ", options.device, ": only the cpu backend is built so far"));
  }
  absl::StatusOr<std::unique_ptr<Generator>> generator = Generator::Create(options);
  if (!generator.ok()) return generator.status();
  return std::unique_ptr<Engine>(new EngineImpl(options, *std::move(generator)));
}

}  // namespace specmoe::engine
