// tests/scheduler_driver.cc — the scheduler on the test's thread (scheduler_driver.h).
#include "tests/scheduler_driver.h"

#include <utility>

#include "engine/serving/request_validator.h"
#include "engine/serving/sequence.h"
#include "gtest/gtest.h"

namespace specmoe::engine {

SchedulerDriver::SchedulerDriver(EngineOptions options, bool check_each_step)
    : options_(std::move(options)), check_each_step_(check_each_step) {
  absl::StatusOr<std::unique_ptr<ModelSet>> models = ModelSet::Create(options_);
  EXPECT_TRUE(models.ok()) << models.status();
  models_ = *std::move(models);
  scheduler_ = std::make_unique<Scheduler>(models_.get(), options_, &stats_);
}

std::shared_ptr<RequestHandle> SchedulerDriver::Add(GenerationRequest request, DriverResult* out) {
  EXPECT_TRUE(PrepareRequest(request, options_.limits,
                             {models_->target_config.vocab_size, models_->max_context,
                              models_->tokenizer.get()})
                  .ok());
  auto sink = [out](GenerationEvent e) {
    out->ids.insert(out->ids.end(), e.token_ids.begin(), e.token_ids.end());
    out->text += e.text;
    ++out->events;
    if (e.finished) {
      out->finished = true;
      out->finish = e.finish_reason;
      out->prompt_tokens = e.prompt_tokens;
      out->cached_prompt_tokens = e.cached_prompt_tokens;
      out->speculation = e.speculation;
      out->status = e.status;
    }
  };
  auto handle = std::make_shared<RequestHandle>();
  scheduler_->Add(std::make_unique<Sequence>(std::move(request), sink, handle,
                                             models_->tokenizer.get(), models_->draft != nullptr,
                                             options_.expansion));
  return handle;
}

StepReport SchedulerDriver::Step() {
  const StepReport report = scheduler_->Step();
  if (!check_each_step_) return report;
  std::vector<const SequenceBlocks*> t, d;
  for (const auto& seq : scheduler_->running()) {
    t.push_back(&seq->target_blocks);
    d.push_back(&seq->draft_blocks);
  }
  for (const auto& seq : scheduler_->waiting()) {
    EXPECT_TRUE(seq->target_blocks.blocks.empty() && seq->draft_blocks.blocks.empty());
  }
  const absl::Status ok = scheduler_->prefix_cache().CheckInvariants(t, d);
  EXPECT_TRUE(ok.ok()) << ok;
  return report;
}

void SchedulerDriver::RunAll() {
  for (int guard = 0; guard < 100000 && scheduler_->has_work(); ++guard) Step();
  ASSERT_FALSE(scheduler_->has_work());
}

DriverResult SchedulerDriver::Alone(GenerationRequest request) {
  DriverResult r;
  Add(std::move(request), &r);
  RunAll();
  return r;
}

void SchedulerDriver::ExpectAllReturned() {
  const PrefixCache& cache = scheduler_->prefix_cache();
  EXPECT_TRUE(cache.CheckInvariants({}, {}).ok()) << cache.CheckInvariants({}, {});
  EXPECT_EQ(models_->target_cache->free_blocks() + cache.cached_blocks(),
            models_->target_cache->num_blocks());
  EXPECT_EQ(stats_.kv_blocks_free.load(), models_->target_cache->num_blocks());
  EXPECT_EQ(stats_.prefix_cache_blocks.load(), cache.cached_blocks());
}

}  // namespace specmoe::engine
