// tests/scheduler_driver.h — the scheduler on the test's thread, for the tests that compare
// whole requests run in many ways (tests/scheduler_test.cc, tests/prefix_cache_test.cc):
// Add() queues a request whose events land in a DriverResult, Step() runs one scheduler
// step, RunAll() steps until nothing is left. No worker thread and no queue (the engine's
// are tested by tests/engine_test.cc).
#ifndef SPECMOE_TESTS_SCHEDULER_DRIVER_H_
#define SPECMOE_TESTS_SCHEDULER_DRIVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/serving/engine_options.h"
#include "engine/serving/engine_stats.h"
#include "engine/serving/model_set.h"
#include "engine/serving/request.h"
#include "engine/serving/request_handle.h"
#include "engine/serving/scheduler.h"
#include "engine/serving/step_report.h"

namespace specmoe::engine {

// One request's events, merged.
struct DriverResult {
  std::vector<int32_t> ids;
  std::string text;
  bool finished = false;
  FinishReason finish = FinishReason::kNone;
  int prompt_tokens = 0;
  int cached_prompt_tokens = 0;
  SpeculationStats speculation;
  absl::Status status;
  int events = 0;
};

// Contract: owns the models and the scheduler; a DriverResult passed to Add must outlive the
// request. Failures (models that do not load, a request the validator refuses) are reported
// as gtest failures.
class SchedulerDriver {
 public:
  // check_each_step: after every step, the prefix cache's invariants over the running
  // requests' blocks, and no waiting request holds a block.
  explicit SchedulerDriver(EngineOptions options, bool check_each_step = false);

  // Validates and queues `request`; its events go into *out.
  std::shared_ptr<RequestHandle> Add(GenerationRequest request, DriverResult* out);
  StepReport Step();
  void RunAll();
  // `request` alone, from submission to its last event.
  DriverResult Alone(GenerationRequest request);
  // Nothing runs: every block of both caches is free or cached, and the gauges say so.
  void ExpectAllReturned();

  Scheduler& scheduler() { return *scheduler_; }
  const Tokenizer& tokenizer() const { return *models_->tokenizer; }
  const KvCache& target_cache() const { return *models_->target_cache; }
  const EngineStats& stats() const { return stats_; }

 private:
  EngineOptions options_;
  bool check_each_step_;
  std::unique_ptr<ModelSet> models_;
  EngineStats stats_;
  std::unique_ptr<Scheduler> scheduler_;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_TESTS_SCHEDULER_DRIVER_H_
