// engine/serving/step_report.h — what one scheduler step did (engine/README.md, The step) and
// the observer that receives it with the queue waits: for the metrics and the tests.
#ifndef SPECMOE_ENGINE_SERVING_STEP_REPORT_H_
#define SPECMOE_ENGINE_SERVING_STEP_REPORT_H_

namespace specmoe::engine {

// What one scheduler step did (engine/README.md, The step): for the observer, the metrics and the
// tests.
struct StepReport {
  int decoding = 0;    // requests that verified a tree (or decoded one token)
  int prefilling = 0;  // requests that prefilled a prompt chunk
  int prefill_tokens = 0;
  int tree_tokens = 0;        // target tokens of roots and trees
  int preempted = 0;          // requests preempted by this step
  int admitted = 0;           // requests admitted by this step (0 whenever preempted > 0)
  double draft_seconds = 0;   // the draft's catch-up and level forwards
  double target_seconds = 0;  // the one target forward
  double verify_seconds = 0;  // verification, K/V compaction and emission
};

// Called on the worker thread after events it times; must not block (the server's metrics
// implement it with atomic histogram updates).
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  // A request left the queue for the running set after `seconds` of waiting.
  virtual void OnQueueWait(double seconds) = 0;
  // One step of the whole running set.
  virtual void OnStep(const StepReport& step) = 0;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_STEP_REPORT_H_
