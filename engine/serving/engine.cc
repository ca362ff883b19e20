// engine/serving/engine.cc — the worker thread and request queue around the Scheduler
// (engine/README.md, One request end to end).
//
// The transport calls Submit() from any thread: it validates, then pushes onto a bounded
// queue. The worker moves queued requests into the scheduler and runs one step of the
// whole running set at a time, each request's events going through its own sink.
#include "engine/serving/engine.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/serving/model_set.h"
#include "engine/serving/scheduler.h"
#include "engine/serving/sequence.h"

namespace specmoe::engine {
namespace {

class EngineImpl final : public Engine {
 public:
  EngineImpl(const EngineOptions& options, std::unique_ptr<ModelSet> models)
      : options_(options),
        models_(std::move(models)),
        scheduler_(models_.get(), options_, &stats_) {
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
    auto seq = std::make_unique<Sequence>(std::move(request), std::move(sink), handle,
                                          models_->tokenizer.get(), models_->draft != nullptr,
                                          options_.expansion);
    // engine/README.md, KV cache and preemption: a request that could never fit the KV cache is
    // refused now.
    const int need = seq->max_slots(models_->max_context, kTreeSlots);
    if (need > models_->kv_tokens()) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_tokens: the request needs ", need, " KV slots (prompt + max_tokens + ",
                       kTreeSlots, " for the tree), more than the whole cache (",
                       models_->kv_tokens(), ", --kv-cache-tokens)"));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::UnavailableError("the engine is shutting down");
      const int waiting =
          static_cast<int>(queue_.size()) + stats_.queue_depth.load(std::memory_order_relaxed);
      if (waiting >= options_.max_queue) {
        return absl::ResourceExhaustedError(
            absl::StrCat("request queue full (", options_.max_queue, " waiting)"));
      }
      queue_.push_back(std::move(seq));
    }
    cv_.notify_one();
    return handle;
  }

  absl::StatusOr<std::vector<int32_t>> Tokenize(std::string_view text,
                                                bool add_bos) const override {
    return TokenizeWithinLimits(text, add_bos, options_.limits, model_limits());
  }

  const Tokenizer& tokenizer() const override { return *models_->tokenizer; }
  int vocab_size() const override { return models_->target_config.vocab_size; }
  int max_context() const override { return models_->max_context; }
  const std::vector<int>& default_expansion() const override { return options_.expansion; }
  std::string target_name() const override { return options_.target_dir; }
  std::string draft_name() const override { return options_.draft_dir; }
  std::string device() const override { return models_->device; }
  std::string dtype() const override {
    return kernels::DTypeName(models_->target->weights().dtype);
  }
  const EngineStats& stats() const override { return stats_; }

 private:
  ModelLimits model_limits() const {
    return {models_->target_config.vocab_size, models_->max_context, models_->tokenizer.get()};
  }

  void Run() {
    while (true) {
      std::deque<std::unique_ptr<Sequence>> arrived;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty() || scheduler_.has_work(); });
        if (stopping_) break;
        arrived.swap(queue_);
      }
      for (auto& seq : arrived) scheduler_.Add(std::move(seq));
      scheduler_.Step();  // the scheduler publishes every gauge
    }
    // Shutting down: everything still queued or running ends as cancelled.
    std::deque<std::unique_ptr<Sequence>> arrived;
    {
      std::lock_guard<std::mutex> lock(mu_);
      arrived.swap(queue_);
    }
    for (auto& seq : arrived) scheduler_.Add(std::move(seq));
    scheduler_.CancelAll();
  }

  EngineOptions options_;
  std::unique_ptr<ModelSet> models_;
  EngineStats stats_;
  Scheduler scheduler_;  // worker thread only
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> queue_;  // guarded by mu_
  bool stopping_ = false;                        // guarded by mu_
  std::thread worker_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  absl::StatusOr<std::unique_ptr<ModelSet>> models = ModelSet::Create(options);
  if (!models.ok()) return models.status();
  return std::unique_ptr<Engine>(new EngineImpl(options, *std::move(models)));
}

}  // namespace specmoe::engine
