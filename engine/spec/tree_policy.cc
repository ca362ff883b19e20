// engine/spec/tree_policy.cc — cost curves, live acceptance and the batch-wide marginal rule
// of the tree policy (see tree_policy.h for the contracts and the maths; engine/README.md, Tree
// policy).
#include "engine/spec/tree_policy.h"

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <utility>

#include "kernels/check.h"

namespace specmoe::engine {

// ---------------------------------------------------------------------------------------
// CostCurve

CostCurve::CostCurve(std::vector<std::pair<int, double>> points) {
  std::stable_sort(points.begin(), points.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& point : points) {
    if (!points_.empty() && points_.back().first == point.first) {
      points_.back() = point;
    } else {
      points_.push_back(point);
    }
  }
}

double CostCurve::Seconds(int tokens) const {
  if (points_.empty()) return 0.0;
  if (points_.size() == 1 || tokens <= points_.front().first) return points_.front().second;
  // The segment [i, i + 1] holding tokens, or the last one past the end.
  const auto upper = std::upper_bound(points_.begin(), points_.end(), tokens,
                                      [](int t, const auto& p) { return t < p.first; });
  const size_t i1 = upper == points_.end() ? points_.size() - 1
                                           : static_cast<size_t>(upper - points_.begin());
  const auto& [t0, s0] = points_[i1 - 1];
  const auto& [t1, s1] = points_[i1];
  const double w = static_cast<double>(tokens - t0) / static_cast<double>(t1 - t0);
  return std::max(0.0, s0 + w * (s1 - s0));
}

double CostCurve::Extra(int tokens, int extra) const {
  return std::max(0.0, Seconds(tokens + extra) - Seconds(tokens));
}

void CostCurve::Observe(int tokens, double seconds) {
  if (points_.empty()) return;
  const double step = kObserveWeight * (seconds - Seconds(tokens));
  auto move = [this](size_t i, double by) {
    points_[i].second = std::max(0.0, points_[i].second + by);
  };
  if (points_.size() == 1 || tokens <= points_.front().first) {
    move(0, step);
    return;
  }
  if (tokens >= points_.back().first) {
    move(points_.size() - 1, step);
    move(points_.size() - 2, step);
    return;
  }
  const auto upper = std::upper_bound(points_.begin(), points_.end(), tokens,
                                      [](int t, const auto& p) { return t < p.first; });
  const size_t i1 = static_cast<size_t>(upper - points_.begin());
  const double w = static_cast<double>(tokens - points_[i1 - 1].first) /
                   static_cast<double>(points_[i1].first - points_[i1 - 1].first);
  move(i1 - 1, (1.0 - w) * step);
  move(i1, w * step);
}

// ---------------------------------------------------------------------------------------
// AcceptanceModel

void AcceptanceModel::Record(const StepStats& stats, std::span<const float> first_q) {
  const size_t depths = std::min(stats.reached_by_depth.size(), stats.accepted_by_depth.size());
  if (rate_.size() < depths) {
    rate_.resize(depths, 0.0);
    mean_q_.resize(depths, 0.0);
    weight_.resize(depths, 0.0);
  }
  for (size_t d = 0; d < depths; ++d) {
    if (stats.reached_by_depth[d] <= 0) continue;
    weight_[d] = std::min(weight_[d] + 1.0, kMaxWeight);
    const double a = 1.0 / weight_[d];  // running mean, then EWMA of weight 1 / kMaxWeight
    const double accepted = stats.accepted_by_depth[d] > 0 ? 1.0 : 0.0;
    rate_[d] += a * (accepted - rate_[d]);
    if (d < first_q.size() && first_q[d] > 0.0f) {
      // The first observed q replaces the 0 it starts from, whatever the weight.
      const double b = mean_q_[d] > 0.0 ? a : 1.0;
      mean_q_[d] += b * (static_cast<double>(first_q[d]) - mean_q_[d]);
    }
  }
}

double AcceptanceModel::weight(int depth) const {
  return depth >= 1 && static_cast<size_t>(depth) <= weight_.size() ? weight_[depth - 1] : 0.0;
}

double AcceptanceModel::rate(int depth) const {
  return weight(depth) > 0.0 ? rate_[depth - 1] : 0.0;
}

double AcceptanceModel::mean_q(int depth) const {
  return weight(depth) > 0.0 ? mean_q_[depth - 1] : 0.0;
}

bool AcceptanceModel::Own(int depth, float q, double* out) const {
  if (weight(depth) <= 0.0) return false;
  const double rate = rate_[depth - 1];
  const double mean_q = mean_q_[depth - 1];
  const double own = mean_q > 0.0 ? static_cast<double>(q) * rate / mean_q : rate;
  *out = std::clamp(own, 0.0, 1.0);
  return true;
}

double AcceptanceModel::Calibrated(int depth, float q, const AcceptanceModel& prior) const {
  double prior_estimate = std::clamp(static_cast<double>(q), 0.0, 1.0);
  double prior_own;
  if (prior.Own(depth, q, &prior_own)) prior_estimate = prior_own;
  double own;
  if (!Own(depth, q, &own)) return prior_estimate;
  const double n = weight_[depth - 1];
  return (n * own + kPriorWeight * prior_estimate) / (n + kPriorWeight);
}

// ---------------------------------------------------------------------------------------
// TreePolicy

namespace {

// The seconds one more token adds to a forward that already holds `tokens`; a forward of
// no tokens is not run at all, so its first token pays the whole forward.
double OneMore(const CostCurve& curve, int tokens) {
  return tokens <= 0 ? curve.Seconds(1) : curve.Extra(tokens, 1);
}

struct Candidate {
  double value;
  int request;
  int frontier;
  int rank;  // position among the node's top-q's
};

}  // namespace

TreePolicy::TreePolicy(Kind kind, CostCurve target, CostCurve draft)
    : kind_(kind), target_(std::move(target)), draft_(std::move(draft)) {}

void TreePolicy::BeginStep(int base_tokens, int draft_base_tokens, int decoding,
                           int draft_fixed_tokens) {
  target_tokens_ = std::max(0, base_tokens);
  draft_fixed_tokens_ = std::clamp(draft_fixed_tokens, 0, std::max(0, draft_base_tokens));
  draft_tokens_ = std::max(draft_fixed_tokens_, draft_base_tokens);
  step_nodes_ = 0;
  expected_tokens_ = std::max(0, decoding);
  expected_seconds_ = (target_tokens_ > 0 ? target_.Seconds(target_tokens_) : 0.0) +
                      (draft_fixed_tokens_ > 0 ? draft_.Seconds(draft_fixed_tokens_) : 0.0) +
                      host_fixed_;
}

void TreePolicy::ObserveOverhead(double seconds, int tree_nodes) {
  const double a = kOverheadWeight;
  const double n = std::max(0, tree_nodes);
  const double s = std::max(0.0, seconds);
  host_n_ += a * (n - host_n_);
  host_nn_ += a * (n * n - host_nn_);
  host_s_ += a * (s - host_s_);
  host_ns_ += a * (n * s - host_ns_);
  const double variance = host_nn_ - host_n_ * host_n_;
  // With too little spread in n the whole time is fixed.
  host_per_node_ = variance > 1e-9 ? std::max(0.0, (host_ns_ - host_n_ * host_s_) / variance) : 0;
  host_fixed_ = std::max(0.0, host_s_ - host_per_node_ * host_n_);
}

int TreePolicy::Bucket(int decoding) {
  int b = 0;
  while ((2 << b) <= decoding) ++b;
  return b;
}

TreePolicy::LoadBucket& TreePolicy::At(int decoding) {
  const int b = Bucket(std::max(1, decoding));
  if (static_cast<int>(buckets_.size()) <= b) buckets_.resize(b + 1);
  return buckets_[b];
}

std::vector<int> TreePolicy::ArmShape(Arm arm) {
  switch (arm) {
    case Arm::kChain1:
      return {1};
    case Arm::kChain2:
      return {1, 1};
    case Arm::kChain3:
      return {1, 1, 1};
    case Arm::kFork:
      return {2, 1};
    case Arm::kModel:
    case Arm::kPlain:
      break;
  }
  return {};
}

TreePolicy::Arm TreePolicy::ChooseArm(int decoding) {
  arm_ = Arm::kModel;
  step_bucket_ = -1;
  if (kind_ != Kind::kDynamic || decoding <= 0) return arm_;
  LoadBucket& load = At(decoding);
  step_bucket_ = Bucket(decoding);
  auto rate = [](const ArmStats& a) { return a.seconds > 0 ? a.tokens / a.seconds : 0.0; };
  if (load.pending) {  // the drafting arm's first step after plain was not measured
    arm_ = load.last;
    return arm_;
  }
  for (int i = 0; i < kArms; ++i) {  // warm-up, in Arm order
    if (load.arms[i].samples < kWarmupSamples) {
      arm_ = static_cast<Arm>(i);
      return arm_;
    }
  }
  int best = 0;
  for (int i = 1; i < kArms; ++i) {
    if (rate(load.arms[i]) > rate(load.arms[best])) best = i;
  }
  const double best_rate = rate(load.arms[best]);
  int probe = best;
  double most_due = 1.0;
  for (int i = 0; i < kArms; ++i) {
    if (i == best) continue;
    // An arm measured few times is not trusted to be as bad as it looked (noisy steps).
    const double trust = std::min(1.0, load.arms[i].samples / kTrustedSamples);
    const double gap =
        best_rate > 0 ? trust * std::max(0.0, 1.0 - rate(load.arms[i]) / best_rate) : 0;
    const double grow = 1.0 + gap / kGapScale;
    const double interval = std::min<double>(kMaxInterval, kProbeEvery * grow * grow);
    // Measured in time, in units of the arm's own step (a slow arm's step is a long probe).
    const double due =
        (load.clock - load.arms[i].last_clock) / (interval * std::max(1e-9, load.arms[i].seconds));
    if (due >= most_due) {
      most_due = due;
      probe = i;
    }
  }
  arm_ = static_cast<Arm>(probe);
  return arm_;
}

std::vector<int> TreePolicy::RequestShape(std::vector<int> expansion, bool backing_off) const {
  if (kind_ != Kind::kDynamic) return expansion;
  if (arm_ == Arm::kModel) return backing_off ? std::vector<int>() : expansion;
  std::vector<int> shape = ArmShape(arm_);
  shape.resize(std::min(shape.size(), expansion.size()));
  for (size_t d = 0; d < shape.size(); ++d) shape[d] = std::min(shape[d], expansion[d]);
  return shape;
}

void TreePolicy::ObserveOutcome(int decoding, int emitted, double seconds, bool prompt_chunks) {
  const int bucket = step_bucket_;
  step_bucket_ = -1;
  if (bucket < 0 || decoding <= 0 || seconds <= 0) return;
  LoadBucket& load = buckets_[bucket];
  const bool after_plain = load.any && load.last == Arm::kPlain && !load.pending;
  load.pending = arm_ != Arm::kPlain && after_plain;
  load.last = arm_;
  load.any = true;
  if (prompt_chunks || load.pending) return;
  if (arm_ == Arm::kPlain && !draft_.empty()) {
    seconds += draft_.Extra(decoding, decoding);  // the catch-up it defers
  }
  ArmStats& a = load.arms[static_cast<int>(arm_)];
  a.samples = std::min<int>(a.samples + 1, static_cast<int>(kHorizon));
  const double w = 1.0 / a.samples;  // running mean, then an EWMA of weight 1 / kHorizon
  a.tokens += w * (emitted - a.tokens);
  a.seconds += w * (seconds - a.seconds);
  load.clock += seconds;
  a.last_clock = load.clock;
}

double TreePolicy::arm_rate(int decoding, Arm arm) const {
  const int b = Bucket(std::max(1, decoding));
  if (b >= static_cast<int>(buckets_.size())) return 0.0;
  const ArmStats& a = buckets_[b].arms[static_cast<int>(arm)];
  return a.seconds > 0 ? a.tokens / a.seconds : 0.0;
}

int TreePolicy::arm_samples(int decoding, Arm arm) const {
  const int b = Bucket(std::max(1, decoding));
  return b < static_cast<int>(buckets_.size()) ? buckets_[b].arms[static_cast<int>(arm)].samples
                                               : 0;
}

double TreePolicy::ChildValue(double parent_value, int depth, float q,
                              const AcceptanceModel& request) const {
  return parent_value * request.Calibrated(depth, q, server_);
}

std::vector<std::vector<int>> TreePolicy::Expand(std::span<const LevelRequest> level,
                                                 int token_room) {
  std::vector<std::vector<int>> children(level.size());
  for (size_t r = 0; r < level.size(); ++r) {
    SPECMOE_CHECK(level[r].frontier_value.size() == level[r].frontier_top_q.size(),
                  "TreePolicy::Expand: one top-q row per frontier node");
    children[r].assign(level[r].frontier_value.size(), 0);
  }

  int room = std::max(0, token_room);
  if (kind_ == Kind::kStatic || arm_ != Arm::kModel) {
    for (size_t r = 0; r < level.size(); ++r) {
      for (int& c : children[r]) {
        c = std::min(std::max(0, level[r].max_children), room);
        room -= c;
        target_tokens_ += c;
        step_nodes_ += c;
      }
    }
    return children;
  }

  std::vector<Candidate> candidates;
  for (size_t r = 0; r < level.size(); ++r) {
    const LevelRequest& req = level[r];
    const AcceptanceModel& acceptance = req.acceptance != nullptr ? *req.acceptance : server_;
    for (size_t f = 0; f < req.frontier_value.size(); ++f) {
      const std::vector<float>& top_q = req.frontier_top_q[f];
      const int ranks = std::min(std::max(0, req.max_children), static_cast<int>(top_q.size()));
      for (int j = 0; j < ranks && top_q[j] > 0.0f; ++j) {
        candidates.push_back({ChildValue(req.frontier_value[f], req.depth, top_q[j], acceptance),
                              static_cast<int>(r), static_cast<int>(f), j});
      }
    }
  }
  // Decreasing value; ties in (request, frontier node, rank) order, so a node's candidates
  // (non-increasing in value, as Calibrated is non-decreasing in q) come in rank order.
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.value != b.value) return a.value > b.value;
    if (a.request != b.request) return a.request < b.request;
    if (a.frontier != b.frontier) return a.frontier < b.frontier;
    return a.rank < b.rank;
  });

  // E_n / T_n of every prefix n of the ranking (each candidate's dT priced as if the
  // candidates before it were taken); the step takes the prefix of the best E_n / T_n,
  // the shortest among equals, n = 0 (nothing) included.
  const int limit = std::min<int>(static_cast<int>(candidates.size()), std::max(0, token_room));
  double e = expected_tokens_;
  double t = expected_seconds_;
  int target_tokens = target_tokens_;
  int level_drafted = 0;  // nodes of this level the next draft forward runs
  int best = 0;
  double best_e = e;
  double best_t = t;
  for (int n = 0; n < limit; ++n) {
    const Candidate& c = candidates[n];
    const bool drafted = !level[c.request].last_level;
    double dt = OneMore(target_, target_tokens) + host_per_node_;
    if (drafted) dt += OneMore(draft_, level_drafted);
    if (step_nodes_ + n == 0 && draft_tokens_ > draft_fixed_tokens_) {
      dt += draft_.Seconds(draft_tokens_) -
            (draft_fixed_tokens_ > 0 ? draft_.Seconds(draft_fixed_tokens_) : 0.0);
    }
    e += c.value;
    t += dt;
    ++target_tokens;
    if (drafted) ++level_drafted;
    // E_n / T_n > E_best / T_best, multiplied out (both T >= 0).
    if (e * best_t > best_e * t) {
      best = n + 1;
      best_e = e;
      best_t = t;
    }
  }
  for (int n = 0; n < best; ++n) ++children[candidates[n].request][candidates[n].frontier];
  step_nodes_ += best;
  target_tokens_ += best;
  expected_tokens_ = best_e;
  expected_seconds_ = best_t;
  room -= best;

  // Exploration: a request to probe that got nothing takes its best candidate (the first
  // in the ranking), counted like a chosen node.
  std::vector<bool> probed(level.size(), false);
  for (size_t r = 0; r < level.size(); ++r) {
    const std::vector<int>& c = children[r];
    probed[r] = !level[r].explore || std::any_of(c.begin(), c.end(), [](int n) { return n > 0; });
  }
  for (const Candidate& c : candidates) {
    if (room == 0) break;
    if (probed[c.request]) continue;
    probed[c.request] = true;
    ++children[c.request][c.frontier];
    --room;
    expected_tokens_ += c.value;
    expected_seconds_ += OneMore(target_, target_tokens_);
    ++target_tokens_;
    ++step_nodes_;
  }
  return children;
}

int TreePolicy::ExploreDepth(const AcceptanceModel& request, int max_depth,
                             bool backing_off) const {
  if (kind_ != Kind::kDynamic || arm_ != Arm::kModel) return 0;
  for (int d = 1; d <= max_depth; ++d) {
    if (server_.weight(d) < kExploreObservations) return d;
  }
  return max_depth >= 1 && (request.weight(1) < 1 || backing_off) ? 1 : 0;
}

void TreePolicy::ObserveTarget(int target_tokens, double seconds) {
  target_.Observe(target_tokens, seconds);
}

void TreePolicy::ObserveDraft(int draft_tokens, double seconds) {
  draft_.Observe(draft_tokens, seconds);
}

void TreePolicy::ObserveStep(const StepStats& stats, std::span<const float> first_q) {
  server_.Record(stats, first_q);
}

}  // namespace specmoe::engine
