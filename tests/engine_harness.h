// tests/engine_harness.h — the scheduler driven step by step from a test or a benchmark:
// the models (ModelSet) and a Scheduler on the caller's thread, no worker and no queue.
// Start() admits a request and runs the steps that prefill it; Step() runs one scheduler
// step (for every running request) and returns what one request got from it.
#ifndef SPECMOE_TESTS_ENGINE_HARNESS_H_
#define SPECMOE_TESTS_ENGINE_HARNESS_H_

#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/serving/model_set.h"
#include "engine/serving/request_validator.h"
#include "engine/serving/scheduler.h"
#include "engine/serving/sequence.h"

namespace specmoe::engine {

// One request's events of one step, merged.
struct HarnessOutput {
  std::vector<int32_t> token_ids;
  std::string text;
  bool finished = false;
  GenerationEvent final_event;  // valid when finished
};

class Harness {
 public:
  static absl::StatusOr<std::unique_ptr<Harness>> Create(const EngineOptions& options) {
    absl::StatusOr<std::unique_ptr<ModelSet>> models = ModelSet::Create(options);
    if (!models.ok()) return models.status();
    return std::unique_ptr<Harness>(new Harness(options, *std::move(models)));
  }

  // Validates and admits `request`, running steps until it has been prefilled; the
  // sequence is owned by the scheduler and lives until it finishes.
  absl::StatusOr<Sequence*> Start(GenerationRequest request) {
    absl::Status valid = PrepareRequest(
        request, options_.limits,
        {models_->target_config.vocab_size, models_->max_context, models_->tokenizer.get()});
    if (!valid.ok()) return valid;
    auto handle = std::make_shared<RequestHandle>();
    const int id = next_id_++;
    auto seq = std::make_unique<Sequence>(
        std::move(request), [this, id](GenerationEvent e) { events_[id].push_back(e); },
        handle, models_->tokenizer.get(), models_->draft != nullptr, options_.expansion);
    Sequence* s = seq.get();
    ids_[s] = id;
    handles_[s] = handle;
    scheduler_->Add(std::move(seq));
    while (!Finished(id) && (!Admitted(s) || s->prefilling())) scheduler_->Step();
    return s;
  }

  // Runs one scheduler step (unless `seq` already has undelivered events) and returns
  // seq's events.
  HarnessOutput Step(Sequence& seq) {
    const int id = ids_.at(&seq);
    if (events_[id].empty()) scheduler_->Step();
    HarnessOutput out;
    for (GenerationEvent& e : events_[id]) {
      out.token_ids.insert(out.token_ids.end(), e.token_ids.begin(), e.token_ids.end());
      out.text += e.text;
      if (e.finished) {
        out.finished = true;
        out.final_event = e;
      }
    }
    events_[id].clear();
    if (out.finished) Forget(&seq);
    return out;
  }

  // Takes KV blocks for everything seq can ever hold in both caches (benchmarks that run
  // their own forwards past its prompt).
  absl::Status Hold(Sequence& seq) {
    const int slots = seq.max_slots(models_->max_context, kTreeSlots);
    absl::Status room = models_->target_cache->Reserve(seq.target_blocks, slots);
    if (room.ok() && seq.speculating()) room = models_->draft_cache->Reserve(seq.draft_blocks, slots);
    return room;
  }

  // Cancels a running request and runs the step that releases its blocks.
  void Cancel(Sequence& seq) {
    handles_.at(&seq)->Cancel();
    scheduler_->Step();
    Forget(&seq);
  }

  Model& target() { return *models_->target; }
  KvCache& target_cache() { return *models_->target_cache; }
  Model* draft() { return models_->draft.get(); }
  KvCache* draft_cache() { return models_->draft_cache.get(); }
  const Tokenizer& tokenizer() const { return *models_->tokenizer; }
  int max_context() const { return models_->max_context; }
  Scheduler& scheduler() { return *scheduler_; }
  ModelSet& models() { return *models_; }

 private:
  Harness(const EngineOptions& options, std::unique_ptr<ModelSet> models)
      : options_(options), models_(std::move(models)) {
    scheduler_ = std::make_unique<Scheduler>(models_.get(), options_, &stats_);
  }
  bool Admitted(const Sequence* s) const {
    for (const auto& r : scheduler_->running()) {
      if (r.get() == s) return true;
    }
    return false;
  }
  bool Finished(int id) const {
    auto it = events_.find(id);
    return it != events_.end() && !it->second.empty() && it->second.back().finished;
  }
  void Forget(Sequence* s) {
    events_.erase(ids_.at(s));
    ids_.erase(s);
    handles_.erase(s);
  }

  EngineOptions options_;
  std::unique_ptr<ModelSet> models_;
  EngineStats stats_;
  std::unique_ptr<Scheduler> scheduler_;
  int next_id_ = 0;
  std::map<const Sequence*, int> ids_;
  std::map<const Sequence*, std::shared_ptr<RequestHandle>> handles_;
  std::map<int, std::vector<GenerationEvent>> events_;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_TESTS_ENGINE_HARNESS_H_
