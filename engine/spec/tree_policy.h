// engine/spec/tree_policy.h — dynamic, load-adaptive token trees (engine/README.md,
// Tree policy): how many children each frontier node of each speculating request gets, level by
// level, so that the whole batch maximises expected emitted tokens per second.
//
// value(node) = product along its path of the calibrated acceptance of each node, where a
// node drafted with draft probability q at depth d is calibrated by the request's live
// acceptance at d (EWMA of accepted_d / reached_d divided by the EWMA of the q of the first
// child tested at d, with the server-wide rates as prior): EAGLE-2's confidence-driven
// tree made batch-aware. A candidate child is added while its value pays for its cost:
// with E the step's expected emitted tokens and T its expected seconds so far, a node of
// value v and marginal cost dT is worth adding iff (E + v) / (T + dT) > E / T, applied to
// whole prefixes of the batch's ranking so that a forward's fixed cost can be shared (see
// Expand). dT comes from the cost curves (target forward and draft forward vs total tokens),
// measured at start-up and refreshed from live step times, so trees shrink smoothly to plain
// decoding as the batch grows and the target's forward turns compute-bound.
//
// Exactness: the number of children is decided from what is known before they are drawn
// (the parent's value and the draft's top probabilities at the parent), and the drafter
// never drops a drawn child, so sampled requests keep the target's distribution.
// Tested by tests/tree_policy_test.cc (pure function) and tests/verifier_stat_test.cc.
#ifndef SPECMOE_ENGINE_SPEC_TREE_POLICY_H_
#define SPECMOE_ENGINE_SPEC_TREE_POLICY_H_

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "engine/spec/verifier.h"

namespace specmoe::engine {

// Seconds of one forward as a function of its token count: piecewise linear between
// measured points (tokens ascending, at least one), constant below the first point and
// extended along the last segment's slope past the last one (never below 0). An empty
// curve costs 0 everywhere. Plain value type; Seconds is O(log points).
class CostCurve {
 public:
  // Weight of one live measurement in Observe (an EWMA of about 8 steps).
  static constexpr double kObserveWeight = 0.125;

  CostCurve() = default;
  // Sorts the points by tokens; of points with equal tokens the last one is kept.
  explicit CostCurve(std::vector<std::pair<int, double>> points);
  double Seconds(int tokens) const;
  // Seconds(tokens + extra) - Seconds(tokens), never negative.
  double Extra(int tokens, int extra) const;
  // A live measurement: the points around `tokens` move toward it (EWMA), so the curve
  // follows the machine's load without forgetting its shape. With e = seconds -
  // Seconds(tokens) and a = kObserveWeight: between points i and i+1 at fraction w, point
  // i moves by a (1 - w) e and point i+1 by a w e (so Seconds(tokens) moves by
  // a ((1-w)^2 + w^2) e: toward the measurement, never past it); below the first point
  // (or with one point) the first point moves by a e; past the last point the last two
  // move by a e, which keeps the slope there. Seconds stay >= 0. No-op on an empty curve.
  void Observe(int tokens, double seconds);
  const std::vector<std::pair<int, double>>& points() const { return points_; }
  bool empty() const { return points_.empty(); }

 private:
  std::vector<std::pair<int, double>> points_;
};

// Live acceptance of one request by depth (or, as the prior, of the whole server).
// Per depth d (1-based) it keeps rate_d, an average of accepted_d / reached_d over the
// steps that reached d, and mean_q_d, the average draft probability of the first child
// tested at d, both running means over the first kMaxWeight observations and EWMAs of
// weight 1 / kMaxWeight after that. Plain value type; Record is O(depth).
class AcceptanceModel {
 public:
  static constexpr double kMaxWeight = 32;   // the EWMA's horizon, in observations
  static constexpr double kPriorWeight = 4;  // observations worth as much as the prior

  // Updates from one verify step: stats.reached_by_depth / accepted_by_depth, and
  // first_q[d-1], the draft probability of the first child tested at depth d (0 where
  // none was tested; mean_q_d is updated only where it is > 0).
  void Record(const StepStats& stats, std::span<const float> first_q);
  // The estimated probability that a node at `depth` drafted with probability q is
  // accepted given its parent was, in [0, 1]; `prior` (the server-wide model) is used
  // where this one has few observations:
  //   own(d, q)   = clamp(q * rate_d / mean_q_d, 0, 1)   (rate_d when mean_q_d is 0)
  //   prior(d, q) = the prior's own(d, q), or clamp(q, 0, 1) when it has no data at d
  //   result      = (n own + kPriorWeight prior) / (n + kPriorWeight), n = weight_d.
  // With no data at all the draft's own probability q is the estimate.
  double Calibrated(int depth, float q, const AcceptanceModel& prior) const;
  // Observations recorded at `depth` (saturating at kMaxWeight), 0 beyond the data.
  double weight(int depth) const;
  // rate_d and mean_q_d (0 where there is no data).
  double rate(int depth) const;
  double mean_q(int depth) const;

 private:
  // own(depth, q) into *out when there is data at depth; false otherwise.
  bool Own(int depth, float q, double* out) const;

  std::vector<double> rate_;   // [depth] EWMA of accepted_d / reached_d
  std::vector<double> mean_q_;  // [depth] EWMA of the first child's q
  std::vector<double> weight_;  // [depth] observations so far (saturating)
};

// One speculating request at one level of the step's drafting.
struct LevelRequest {
  int max_children = 0;                 // the step shape's limit at this depth (k_d)
  int depth = 0;                        // the depth being added (1-based)
  std::span<const double> frontier_value;  // [frontier] value of each frontier node
  // [frontier][max_children] the draft's largest probabilities at each frontier node,
  // descending: TopProbabilities(q) for sampled requests, TopSoftmaxProbabilities(logits)
  // for greedy ones (engine/spec/sampler.h).
  std::span<const std::vector<float>> frontier_top_q;
  const AcceptanceModel* acceptance = nullptr;  // the request's own model (null: the
                                                // server-wide one alone)
  // True when `depth` is the request's last (its step shape's depth): the new nodes are leaves
  // and are not run through the draft, so they cost no draft-forward time.
  bool last_level = false;
  // Exploration (see TreePolicy::ExploreDepth): when the ranking gives none of this
  // request's frontier nodes a child, the one of highest value gets its first candidate,
  // if the room allows.
  bool explore = false;
};

// Contract: owned by the engine's worker thread; not thread-safe. Expand is
// O(candidates log candidates) per level. Per step: ChooseArm (dynamic), RequestShape per
// request, BeginStep, then one Expand per draft level (each request's depths 1..m, in
// order), then the Observe* calls.
class TreePolicy {
 public:
  enum class Kind { kStatic, kDynamic };
  TreePolicy(Kind kind, CostCurve target, CostCurve draft);

  // Starts a step whose target forward holds `base_tokens` tokens before any tree node
  // (every decoding request's root and the prompt chunks) and whose draft catch-up forward
  // holds `draft_base_tokens`; `decoding` requests each emit at least one token.
  // `draft_fixed_tokens` of the catch-up forward run whether or not anything is drafted
  // (the draft's prompt chunks, if the drafter puts them there); the rest is catch-up that
  // only speculation needs. E := decoding, T := target(base_tokens) + draft(fixed), i.e.
  // plain decoding; the first node taken in the step also pays the catch-up,
  // draft(draft_base_tokens) - draft(fixed). So a step's tree is never below plain
  // decoding's E / T: every level's choice in Expand raises E / T or takes nothing.
  void BeginStep(int base_tokens, int draft_base_tokens, int decoding,
                 int draft_fixed_tokens = 0);
  // The children of every frontier node of every request at this level:
  // result[r][f] in [0, level[r].max_children], and never more than `token_room` nodes in
  // all (the step budget left for trees: the one place every node of a step, chosen or
  // forced, is counted against it). Static, and dynamic under a fixed-shape arm:
  // max_children for every node, in request order while the room lasts (E and T are left as
  // they are; the scheduler plans a static tree in full or not at all). Dynamic under
  // kModel: the candidates of the whole batch in decreasing value,
  // taken while they pay, then the exploration nodes (LevelRequest::explore) while room
  // is left. Updates E and T.
  // Cost: O(C log C) for C candidates.
  // Dynamic, exactly: the candidates of frontier node f are its first
  // min(max_children, frontier_top_q[f].size()) top probabilities with q > 0, of value
  // ChildValue(frontier_value[f], depth, q). Ranked in decreasing value (ties: request,
  // frontier node, rank; a node's candidates thus come in rank order), the n-th one adds
  // v_n to E and to T
  //   dT_n = target(k + 1) - target(k)                   k: the target's tokens before it
  //        + draft(m + 1) - draft(m)  unless last_level  m: this level's drafted nodes
  //        + the catch-up (see BeginStep) if it is the step's first node
  // (draft(0) := 0: a level's first drafted node pays the whole level forward). The level
  // takes the first N candidates, N <= token_room, with N maximising
  // E_N / T_N = (E + v_1 + .. + v_N) / (T + dT_1 + .. + dT_N), the smallest such N
  // (N = 0 when nothing beats E / T). Where v_n / dT_n does not increase along the ranking
  // (convex curves, no fixed cost) this is exactly the marginal rule "add v while
  // (E + v) / (T + dT) > E / T"; unlike that rule applied one node at a time, it also sees
  // that a forward's fixed cost (the catch-up, a level's draft forward), which no single
  // node may pay for alone, pays when many nodes share it. Then E := E_N,
  // T := T_N. result[r][f] is the number of f's candidates taken: a prefix of its top-q's,
  // decided before any child is drawn. With empty cost curves T stays 0 and nothing is
  // taken (plain decoding) but exploration.
  std::vector<std::vector<int>> Expand(std::span<const LevelRequest> level, int token_room);
  // The depth up to which a request's tree is explored this step (LevelRequest::explore at
  // depths <= it; 0: none): the first depth of `max_depth` the server has fewer than
  // kExploreObservations observations at (its rates are every request's prior), else depth
  // 1 for a request with no observation of its own or retrying after a back-off. The
  // acceptance models learn only from drafted nodes, so a depth with too little data is
  // probed with one node instead of never being drafted again. Dynamic only.
  int ExploreDepth(const AcceptanceModel& request, int max_depth, bool backing_off) const;
  static constexpr double kExploreObservations = 4;
  // The value of a child with draft probability q at `depth` under `parent_value`.
  double ChildValue(double parent_value, int depth, float q,
                    const AcceptanceModel& request) const;

  // Live feedback after a step: the measured seconds of the target forward over
  // `target_tokens` tokens and of each draft forward, and each request's step stats.
  void ObserveTarget(int target_tokens, double seconds);
  void ObserveDraft(int draft_tokens, double seconds);
  // ObserveStep records into the server-wide model (the prior); each request's own model
  // is the caller's (AcceptanceModel::Record with the same arguments).
  void ObserveStep(const StepStats& stats, std::span<const float> first_q);
  // The step's time outside the forwards (verification, sampling, compaction, emission)
  // with `tree_nodes` tree nodes verified: fitted as fixed + per_node * nodes (EWMA least
  // squares); BeginStep adds the fixed part to T and every candidate in Expand its per-node
  // part, so E / T is the step's real throughput.
  void ObserveOverhead(double seconds, int tree_nodes = 0);
  // Learning from outcomes: a bandit over the ways a step's trees can be made (arms), per
  // load (decoding requests, in powers of two). ChooseArm, at the start of every step
  // (before the budget), picks the step's arm for its load; RequestShape gives each
  // request's tree shape under it; ObserveOutcome, after the step, records the step's
  // realised emitted tokens per second for that arm. Dynamic only (a static policy keeps
  // kModel, where Expand gives every request its full shape).
  enum class Arm { kModel, kChain2, kChain3, kFork, kChain1, kPlain };
  static constexpr int kArms = 6;
  // kModel: the request's expansion, grown by the cost model (Expand, ExploreDepth and the
  // scheduler's back-off). kPlain: no tree and no draft work. The fixed shapes <1,1>,
  // <1,1,1>, <2,1> and <1>: every node of the shape, each depth and child count capped by
  // the request's expansion (the most a tree may hold), within the room like a static tree.
  static std::vector<int> ArmShape(Arm arm);
  // The step's arm at a load of `decoding` decoding requests: (1) while a drafting arm's
  // first step after a plain one is pending (not measured: it pays the draft's catch-up of
  // the plain steps), that arm again; (2) during the warm-up, the first arm in Arm order with
  // fewer than kWarmupSamples measured steps; (3) else an overdue probe: the arm i of the
  // largest (c - c_i) / (interval_i seconds_i) >= 1, where c is the load's clock (the
  // seconds of its measured steps), c_i the clock at arm i's last measured step, seconds_i
  // its mean step seconds and, with gap_i = 1 - rate_i / rate_best scaled by
  // min(1, samples_i / kTrustedSamples) (an arm measured once may have met a noisy step),
  //   interval_i = min(kMaxInterval, kProbeEvery (1 + gap_i / kGapScale)^2),
  // so probes of arm i take at most 1 / interval_i of the load's time: at most
  // 1 / kProbeEvery for an arm as good as the best, rarely a clearly worse one; once
  // trusted, the expected loss of probing arm i, gap_i / interval_i, is at most
  // kGapScale / (4 kProbeEvery) (0.08 %) of the best rate, twice that with the unmeasured
  // first step after plain; (4) else the arm of the best rate.
  // Returns it (also arm()). Static: kModel.
  Arm ChooseArm(int decoding);
  // The shape a request drafts with this step under arm(): `expansion` for a static policy;
  // under kModel the expansion, or nothing while the request backs off; under kPlain
  // nothing; else ArmShape(arm()) capped by `expansion` (depth and children per depth). An
  // empty shape means the request skips the draft this step (no catch-up).
  std::vector<int> RequestShape(std::vector<int> expansion, bool backing_off) const;
  // A finished step that emitted `emitted` tokens in `seconds` (draft, target and host
  // work) for `decoding` decoding requests, under arm(), at the load ChooseArm was given
  // (a no-op without a ChooseArm since the last call). Recorded in the arm's rate (EWMAs
  // of tokens and of seconds, running means over the first kHorizon steps, their ratio the
  // rate) unless the step carried prompt chunks (their work is not the arm's) or was a
  // drafting arm's first step after a plain one. A plain step is charged the draft's
  // catch-up it defers: draft(2 decoding) - draft(decoding) seconds from the draft's cost
  // curve (each speculating request has one more token to catch up later).
  void ObserveOutcome(int decoding, int emitted, double seconds, bool prompt_chunks);
  // The step's arm, and whether the scheduler's back-off applies to it (kModel, dynamic).
  Arm arm() const { return arm_; }
  bool backs_off() const { return kind_ == Kind::kDynamic && arm_ == Arm::kModel; }
  // The measured rate (tokens/s) of `arm` at a load of `decoding` (0: not measured yet),
  // and its measured steps.
  double arm_rate(int decoding, Arm arm) const;
  int arm_samples(int decoding, Arm arm) const;
  static constexpr int kWarmupSamples = 1;
  static constexpr int kProbeEvery = 16;
  static constexpr double kGapScale = 0.05;
  static constexpr int kMaxInterval = 512;
  static constexpr double kTrustedSamples = 4;
  static constexpr double kHorizon = 16;
  double host_fixed_seconds() const { return host_fixed_; }
  double host_per_node_seconds() const { return host_per_node_; }

  Kind kind() const { return kind_; }
  // The step so far: E (expected emitted tokens), T (expected seconds), the target's
  // tokens (base + nodes taken) and the nodes taken.
  double expected_tokens() const { return expected_tokens_; }
  double expected_seconds() const { return expected_seconds_; }
  int target_tokens() const { return target_tokens_; }
  int step_nodes() const { return step_nodes_; }
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
  int draft_tokens_ = 0;  // the catch-up forward's tokens
  int draft_fixed_tokens_ = 0;
  int step_nodes_ = 0;
  double expected_tokens_ = 0;
  double expected_seconds_ = 0;
  static constexpr double kOverheadWeight = 0.125;
  // Host work, fitted from (tree nodes, seconds): EWMAs of n, n^2, s and n s.
  double host_n_ = 0, host_nn_ = 0, host_s_ = 0, host_ns_ = 0;
  double host_fixed_ = 0;     // seconds per step
  double host_per_node_ = 0;  // seconds per tree node
  // The bandit's state per load bucket (floor(log2(decoding))).
  struct ArmStats {
    double tokens = 0, seconds = 0;  // EWMAs per measured step
    int samples = 0;                 // measured steps (saturating at kHorizon)
    double last_clock = 0;           // the bucket's clock at the last one
  };
  struct LoadBucket {
    ArmStats arms[kArms];
    double clock = 0;        // measured seconds at this load
    Arm last = Arm::kModel;  // the arm of the last step at this load
    bool any = false;        // a step at this load has run
    bool pending = false;    // last was a drafting arm's unmeasured first step after plain
  };
  static int Bucket(int decoding);
  LoadBucket& At(int decoding);
  std::vector<LoadBucket> buckets_;
  Arm arm_ = Arm::kModel;  // this step's arm
  int step_bucket_ = -1;   // this step's load bucket (ChooseArm); -1: none
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_TREE_POLICY_H_
