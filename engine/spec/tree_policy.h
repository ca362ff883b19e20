// engine/spec/tree_policy.h — dynamic, load-adaptive token trees (DESIGN §4, the tree
// policy): how many children each frontier node of each speculating request gets, level by
// level, so that the whole batch maximises expected emitted tokens per second.
//
// value(node) = product along its path of the calibrated acceptance of each node, where a
// node drafted with draft probability q at depth d is calibrated by the request's live
// acceptance at d (EWMA of accepted_d / reached_d divided by the EWMA of the q of the first
// child tested at d, with the server-wide rates as prior): EAGLE-2's confidence-driven
// tree made batch-aware. A candidate child is added while its value pays for its cost:
// with E the step's expected emitted tokens and T its expected seconds so far, a node of
// value v and marginal cost dT is worth adding iff (E + v) / (T + dT) > E / T. dT comes from
// the cost curves (target forward and draft forward vs total tokens), measured at start-up
// and refreshed from live step times, so trees shrink smoothly to plain decoding as the
// batch grows and the target's forward turns compute-bound.
//
// Exactness: the number of children is decided from what is known before they are drawn
// (the parent's value and the draft's top probabilities at the parent), and the drafter
// never drops a drawn child, so sampled requests keep the target's distribution.
// Tested by tests/tree_policy_test.cc (pure function) and tests/verifier_stat_test.cc.
#ifndef SPECMOE_ENGINE_SPEC_TREE_POLICY_H_
#define SPECMOE_ENGINE_SPEC_TREE_POLICY_H_

#include <span>
#include <utility>
#include <vector>

#include "engine/spec/verifier.h"

namespace specmoe::engine {

// Seconds of one forward as a function of its token count: piecewise linear between
// measured points (tokens ascending, at least one), constant below the first point and
// extended along the last segment's slope past the last one. Plain value type.
class CostCurve {
 public:
  CostCurve() = default;
  explicit CostCurve(std::vector<std::pair<int, double>> points);
  double Seconds(int tokens) const;
  // Seconds(tokens + extra) - Seconds(tokens), never negative.
  double Extra(int tokens, int extra) const;
  // A live measurement: the points around `tokens` move toward it (EWMA), so the curve
  // follows the machine's load without forgetting its shape.
  void Observe(int tokens, double seconds);
  const std::vector<std::pair<int, double>>& points() const { return points_; }
  bool empty() const { return points_.empty(); }

 private:
  std::vector<std::pair<int, double>> points_;
};

// Live acceptance of one request by depth (or, as the prior, of the whole server).
// Plain value type; Record is O(depth).
class AcceptanceModel {
 public:
  // Updates from one verify step: stats.reached_by_depth / accepted_by_depth, and
  // first_q[d-1], the draft probability of the first child tested at depth d (0 where
  // none was tested).
  void Record(const StepStats& stats, std::span<const float> first_q);
  // The estimated probability that a node at `depth` drafted with probability q is
  // accepted given its parent was, in [0, 1]; `prior` (the server-wide model) is used
  // where this one has few observations.
  double Calibrated(int depth, float q, const AcceptanceModel& prior) const;

 private:
  std::vector<double> rate_;   // [depth] EWMA of accepted_d / reached_d
  std::vector<double> mean_q_;  // [depth] EWMA of the first child's q
  std::vector<double> weight_;  // [depth] observations so far (saturating)
};

// One speculating request at one level of the step's drafting.
struct LevelRequest {
  int max_children = 0;                 // the request's shape limit at this depth (k_d)
  int depth = 0;                        // the depth being added (1-based)
  std::span<const double> frontier_value;  // [frontier] value of each frontier node
  // [frontier][max_children] the draft's largest probabilities at each frontier node,
  // descending (for greedy requests the probabilities of its top-k tokens).
  std::span<const std::vector<float>> frontier_top_q;
  const AcceptanceModel* acceptance = nullptr;  // the request's own model
};

// Contract: owned by the engine's worker thread; not thread-safe. Expand is
// O(candidates log candidates) per level.
class TreePolicy {
 public:
  enum class Kind { kStatic, kDynamic };
  TreePolicy(Kind kind, CostCurve target, CostCurve draft);

  // Starts a step whose target forward holds `base_tokens` tokens before any tree node
  // (every decoding request's root and the prompt chunks) and whose draft catch-up forward
  // holds `draft_base_tokens`; `decoding` requests each emit at least one token.
  void BeginStep(int base_tokens, int draft_base_tokens, int decoding);
  // The children of every frontier node of every request at this level:
  // result[r][f] in [0, level[r].max_children]. Static: always max_children. Dynamic:
  // the candidates of the whole batch in decreasing value, taken while they pay (and never
  // more than `token_room` nodes in all, the step budget left). Updates E and T.
  std::vector<std::vector<int>> Expand(std::span<const LevelRequest> level, int token_room);
  // The value of a child with draft probability q at `depth` under `parent_value`.
  double ChildValue(double parent_value, int depth, float q,
                    const AcceptanceModel& request) const;

  // Live feedback after a step: the measured seconds of the target forward over
  // `target_tokens` tokens and of each draft forward, and each request's step stats.
  void ObserveTarget(int target_tokens, double seconds);
  void ObserveDraft(int draft_tokens, double seconds);
  void ObserveStep(const StepStats& stats, std::span<const float> first_q);

  Kind kind() const { return kind_; }
  const AcceptanceModel& server_acceptance() const { return server_; }
  const CostCurve& target_cost() const { return target_; }
  const CostCurve& draft_cost() const { return draft_; }

 private:
  Kind kind_;
  CostCurve target_;
  CostCurve draft_;
  AcceptanceModel server_;
  // The step so far.
  int target_tokens_ = 0;
  int draft_tokens_ = 0;
  double expected_tokens_ = 0;
  double expected_seconds_ = 0;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_TREE_POLICY_H_
