// engine/spec/verifier.cc — greedy and stochastic token-tree verification (see verifier.h).
#include "engine/spec/verifier.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include "engine/spec/gumbel.h"
#include "engine/spec/sampler.h"
#include "kernels/check.h"

namespace specmoe::engine {
namespace {

// dst := src / sum(src) in double. Returns false (dst unset) when src has no mass.
bool NormalizedCopy(std::span<const float> src, std::vector<double>* dst) {
  double total = 0.0;
  for (float v : src) total += v;
  if (!(total > 0.0)) return false;
  dst->resize(src.size());
  for (size_t i = 0; i < src.size(); ++i) (*dst)[i] = static_cast<double>(src[i]) / total;
  return true;
}

}  // namespace

VerifyResult VerifyByChoice(const TokenTree& tree, const TargetChoiceFn& target_choice) {
  VerifyResult result;
  int node = 0;
  for (;;) {
    const int32_t x = target_choice(node);
    int next = -1;
    for (int child : tree.Children(node)) {
      if (tree.token[child] == x) {
        next = child;
        break;
      }
    }
    if (next < 0) {
      result.bonus_token = x;
      return result;
    }
    result.accepted_nodes.push_back(next);
    node = next;
  }
}

VerifyResult VerifyGreedy(const TokenTree& tree, std::span<const int32_t> target_argmax) {
  SPECMOE_CHECK(target_argmax.size() == static_cast<size_t>(tree.size()),
          "VerifyGreedy: one target argmax per tree node");
  return VerifyByChoice(tree, [target_argmax](int node) { return target_argmax[node]; });
}

VerifyResult VerifyCoupled(const TokenTree& tree, const TargetProbsFn& target_probs, uint64_t seed,
                           int root_pos) {
  std::vector<float> p;  // [vocab] the target's processed distribution at the current node
  return VerifyByChoice(tree, [&](int node) {
    target_probs(node, &p);
    return GumbelMax(p, seed, static_cast<int64_t>(root_pos) + tree.depth[node] + 1);
  });
}

VerifyResult VerifyStochastic(const TokenTree& tree, std::span<const std::vector<float>> p,
                              Rng& rng) {
  SPECMOE_CHECK(p.size() == static_cast<size_t>(tree.size()),
          "VerifyStochastic: one target row per tree node");
  return VerifyStochastic(
      tree, [p](int node, std::vector<float>* row) { *row = p[node]; }, rng);
}

VerifyResult VerifyStochastic(const TokenTree& tree, const TargetProbsFn& target_probs, Rng& rng) {
  VerifyResult result;
  std::vector<float> row;
  std::vector<double> p;  // [vocab] the current target distribution (residual after rejections)
  std::vector<double> q;  // [vocab] the current draft distribution (drawn children removed)
  int node = 0;
  target_probs(node, &row);
  SPECMOE_CHECK(NormalizedCopy(row, &p), "VerifyStochastic: a target row has no mass");
  for (;;) {
    const std::vector<int> children = tree.Children(node);
    if (children.empty()) break;  // a leaf: the bonus comes from p at the leaf
    SPECMOE_CHECK(NormalizedCopy(tree.q[node], &q),
            "VerifyStochastic: a node with children has no stored draft distribution");
    SPECMOE_CHECK(q.size() == p.size(), "VerifyStochastic: draft and target vocabularies differ");
    int accepted = -1;
    for (int child : children) {
      const int32_t x = tree.token[child];
      SPECMOE_CHECK(x >= 0 && static_cast<size_t>(x) < q.size() && q[x] > 0.0,
              "VerifyStochastic: a child the stored q could not have drawn");
      // Accept with probability min(1, p(x) / q(x)): u ~ U[0,1), accept iff u q(x) < p(x).
      if (rng.Uniform() * q[x] < p[x]) {
        accepted = child;
        break;
      }
      // Rejected. FIRST the residual with the q that x was drawn from:
      //   p := max(0, p - q) / sum max(0, p - q).
      // Its mass is TV(p, q) > 0 unless p == q (then a rejection has probability 0 and
      // can only come from rounding: keep p).
      double residual_mass = 0.0;
      for (size_t v = 0; v < p.size(); ++v) residual_mass += std::max(0.0, p[v] - q[v]);
      if (residual_mass > 0.0) {
        for (size_t v = 0; v < p.size(); ++v) p[v] = std::max(0.0, p[v] - q[v]) / residual_mass;
      }
      // THEN x leaves q (the next child was drawn from q without x):
      //   q := q with q(x) = 0, renormalised by 1 - q(x).
      q[x] = 0.0;
      double q_mass = 0.0;
      for (double v : q) q_mass += v;
      if (q_mass > 0.0) {
        for (double& v : q) v /= q_mass;
      }
    }
    if (accepted < 0) break;  // every child rejected: the bonus comes from the residual
    result.accepted_nodes.push_back(accepted);
    node = accepted;
    target_probs(node, &row);
    SPECMOE_CHECK(NormalizedCopy(row, &p), "VerifyStochastic: a target row has no mass");
  }
  result.bonus_token = SampleFrom(std::span<const double>(p), rng);
  return result;
}

StepStats ComputeStepStats(const TokenTree& tree, const VerifyResult& result) {
  StepStats stats;
  const int depth = tree.max_depth();
  stats.drafted = tree.size() - 1;
  stats.accepted = static_cast<int>(result.accepted_nodes.size());
  stats.reached_by_depth.assign(depth, 0);
  stats.accepted_by_depth.assign(depth, 0);
  // The accepted path visits depths 0..a; at each visited node that has children the
  // next depth was tested; the nodes at depths 1..a were accepted.
  int node = 0;
  for (int d = 1; d <= depth; ++d) {
    if (tree.Children(node).empty()) break;
    stats.reached_by_depth[d - 1] = 1;
    if (d > stats.accepted) break;
    stats.accepted_by_depth[d - 1] = 1;
    node = result.accepted_nodes[d - 1];
  }
  return stats;
}

void SpeculationCounter::Record(const StepStats& step, int emitted) {
  ++verify_steps_;
  drafted_tokens_ += step.drafted;
  accepted_tokens_ += std::min(step.accepted, emitted);
  emitted_tokens_ += emitted;
  const size_t depth = step.reached_by_depth.size();
  if (reached_by_depth_.size() < depth) {
    reached_by_depth_.resize(depth, 0);
    accepted_by_depth_.resize(depth, 0);
  }
  for (size_t d = 0; d < depth; ++d) {
    reached_by_depth_[d] += step.reached_by_depth[d];
    accepted_by_depth_[d] += step.accepted_by_depth[d];
  }
}

SpeculationStats SpeculationCounter::Stats() const {
  SpeculationStats stats;
  stats.verify_steps = verify_steps_;
  stats.drafted_tokens = drafted_tokens_;
  stats.accepted_tokens = accepted_tokens_;
  stats.mean_tokens_per_step =
      verify_steps_ > 0 ? static_cast<float>(emitted_tokens_) / static_cast<float>(verify_steps_)
                        : 0.0f;
  stats.acceptance_by_depth.resize(reached_by_depth_.size(), 0.0f);
  for (size_t d = 0; d < reached_by_depth_.size(); ++d) {
    if (reached_by_depth_[d] > 0) {
      stats.acceptance_by_depth[d] = static_cast<float>(static_cast<double>(accepted_by_depth_[d]) /
                                                        static_cast<double>(reached_by_depth_[d]));
    }
  }
  return stats;
}

std::vector<int32_t> PathContext(std::span<const int32_t> tokens, const TokenTree& tree,
                                 int node, const SamplingParams& params) {
  if (params.repetition_penalty == 1.0f) return {};
  std::vector<int32_t> context(tokens.begin(), tokens.end());
  for (int i : tree.Path(node)) context.push_back(tree.token[i]);
  return context;
}

VerifyResult VerifyTree(const LogitsView& logits, int first_row, const TokenTree& tree,
                        std::span<const int32_t> tokens, const SamplingParams& params,
                        SampledVerification mode, Rng& verify_rng) {
  if (params.greedy()) {
    // Every node's argmax in ONE backend op (on a device: the tree's ids come back in one
    // copy), each row penalised over its own path: the zero-noise choice.
    const int n = tree.size();
    std::vector<float> penalties;
    std::vector<std::vector<int32_t>> contexts;
    std::vector<std::span<const int32_t>> views;
    if (params.repetition_penalty != 1.0f) {
      penalties.assign(n, params.repetition_penalty);
      contexts.resize(n);
      for (int i = 0; i < n; ++i) contexts[i] = PathContext(tokens, tree, i, params);
      views.assign(contexts.begin(), contexts.end());
    }
    std::vector<int32_t> argmax(n);
    ArgmaxRows(logits, first_row, penalties, views, argmax);
    return VerifyGreedy(tree, argmax);
  }
  // The target's processed distribution, computed only at the nodes the walk visits.
  auto target_probs = [&](int node, std::vector<float>* probs) {
    RowDistribution(logits, first_row + node, params, PathContext(tokens, tree, node, params),
                    probs);
  };
  if (mode == SampledVerification::kCoupled) {
    return VerifyCoupled(tree, target_probs, params.seed, static_cast<int>(tokens.size()) - 1);
  }
  return VerifyStochastic(tree, target_probs, verify_rng);
}

}  // namespace specmoe::engine
