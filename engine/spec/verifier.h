// engine/spec/verifier.h — token-tree verification (engine/README.md, Verification): which draft
// nodes the target accepts and the bonus token it adds, plus the per-request speculation
// statistics.
//
// Greedy and coupled sampling (the default, SampledVerification::kCoupled): one walk,
// VerifyByChoice: descend while a child equals the target's own choice at the node, else
// emit that choice and stop (SpecInfer's greedy verification, arXiv 2305.09781 §4, whose
// choice is the argmax; coupled sampling's is the Gumbel-max of engine/spec/gumbel.h, so
// the text equals plain seeded sampling for any tree and draft). Rejection mode
// (SampledVerification::kRejection): recursive rejection sampling over the children of each node in
// draw order (SpecInfer's multi-step speculative sampling; its without-replacement form is
// Jeon et al., "Recursive Speculative Decoding", arXiv 2402.14160), so the emitted tokens
// have exactly the target's distribution for ANY draft. Pure functions of their inputs and
// the Rng; tested in tests/verifier_test.cc (hand-built trees and edge cases) and
// tests/verifier_stat_test.cc (chi-square tests of exactness over 10^6 trials, which also
// show that three plausible wrong variants fail).
#ifndef SPECMOE_ENGINE_SPEC_VERIFIER_H_
#define SPECMOE_ENGINE_SPEC_VERIFIER_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "engine/spec/logits.h"
#include "engine/spec/params.h"
#include "engine/spec/rng.h"
#include "engine/spec/token_tree.h"

namespace specmoe::engine {

struct VerifyResult {
  std::vector<int> accepted_nodes;  // node indices along the accepted path, root excluded,
                                    // in depth order
  int32_t bonus_token = -1;         // the target's own token after the last accepted node
};

// The target's token at a node (its choice given the node's path), called for each node
// the walk visits, in walk order.
using TargetChoiceFn = std::function<int32_t(int node)>;

// From the root: x = target_choice(node); descend to the child holding x while one exists
// (children tried in order; at most one can match); else bonus = x and stop.
VerifyResult VerifyByChoice(const TokenTree& tree, const TargetChoiceFn& target_choice);

// target_argmax: [tree.size()], the target's argmax at each node (after the repetition
// penalty of the node's path, if the request has one; computed by the caller). From the
// root, descend to the child whose token equals the argmax at the current node while one
// exists (children tried in order; at most one can match); bonus = argmax at the last
// accepted node. Output equals plain greedy decoding of the target for any draft.
VerifyResult VerifyGreedy(const TokenTree& tree, std::span<const int32_t> target_argmax);

// p: [tree.size()] rows of [vocab], the target's processed distribution at each node
// (ProcessLogits with the request's params and the node's path: exactly what plain
// sampling would use). Only the rows of the nodes the walk visits are read, so rows of
// nodes below a rejection may be left empty.
// rng: the verification stream (kVerifyStream), independent of the stream that drew the
// children; it supplies the acceptance uniforms and then the bonus token's uniform.
//
// At the current node, with p its target distribution, q = tree.q[node] and children
// x_1..x_m in draw order:
//   for each x_i: accept with probability min(1, p(x_i) / q(x_i)) (u * q(x_i) < p(x_i));
//     on acceptance descend to x_i with p := p[x_i];
//     on rejection FIRST p := normalize(max(0, p - q)), with the q x_i was drawn from,
//     THEN q := q with x_i removed, renormalized;
//   if every child is rejected, or the node is a leaf, the bonus token is drawn from p.
// Why it is exact: x_i ~ q_i, so the step "accept else draw from the residual" is the
// speculative-sampling lemma (output ~ p_i); the residual step is replaced by the same
// test of x_{i+1} ~ q_{i+1} against p_{i+1} = residual, exact for any q_{i+1} by
// induction, and the bonus draw ends the recursion.
// Zero residual: sum max(0, p - q) = TV(p, q), which is also the probability of the
// rejection itself. It is 0 only when p == q, where a rejection has probability zero; it
// can still happen through float rounding, and then p is kept unchanged (p == q up to
// rounding, so any choice is exact to rounding and keeping p cannot create mass on tokens
// the target excludes).
VerifyResult VerifyStochastic(const TokenTree& tree, std::span<const std::vector<float>> p,
                              Rng& rng);

// The same walk with the target rows computed on demand: target_probs(node, &row) fills
// row ([vocab]) for each node the walk visits, in walk order.
using TargetProbsFn = std::function<void(int node, std::vector<float>* probs)>;
VerifyResult VerifyStochastic(const TokenTree& tree, const TargetProbsFn& target_probs, Rng& rng);

// Coupled sampled verification: VerifyByChoice with the target's choice at node n
// GumbelMax(p_n, seed, root_pos + depth(n) + 1), p_n from target_probs (called only for the
// nodes the walk visits). The emitted tokens equal plain Gumbel-max sampling of the target
// with the same seed, whatever the tree.
VerifyResult VerifyCoupled(const TokenTree& tree, const TargetProbsFn& target_probs, uint64_t seed,
                           int root_pos);

// The context whose repetition penalty applies at tree node `node`: the committed tokens
// plus the node's path (root excluded: the root is already the last token). Empty when no
// penalty applies, since nothing reads it then.
std::vector<int32_t> PathContext(std::span<const int32_t> tokens, const TokenTree& tree,
                                 int node, const SamplingParams& params);

// Verifies one sequence's tree against the target's logits rows [first_row, first_row +
// tree.size()) (one per node, in node order): greedy requests by the argmax of each row
// after its path's penalty, sampled ones over the processed rows the walk visits, by
// VerifyCoupled (params.seed; kCoupled) or VerifyStochastic (verify_rng; kRejection).
// tokens: the committed tokens (the root last, at position tokens.size() - 1).
VerifyResult VerifyTree(const LogitsView& logits, int first_row, const TokenTree& tree,
                        std::span<const int32_t> tokens, const SamplingParams& params,
                        SampledVerification mode, Rng& verify_rng);

// What one verify step did, per depth d = 1..max_depth (index d - 1):
//   reached_by_depth[d-1]  = 1 when the accepted path reached depth d-1 and that node had
//                            children (so a depth-d node was tested), else 0;
//   accepted_by_depth[d-1] = 1 when a depth-d node was accepted, else 0.
struct StepStats {
  int drafted = 0;   // tree nodes, root excluded
  int accepted = 0;  // accepted nodes (bonus excluded)
  std::vector<int> reached_by_depth;
  std::vector<int> accepted_by_depth;
};
StepStats ComputeStepStats(const TokenTree& tree, const VerifyResult& result);

// Accumulates one request's steps into engine::SpeculationStats (engine/README.md, Verification):
// acceptance_by_depth[d-1] = sum accepted_d / sum reached_d (0 where never reached),
// mean_tokens_per_step = emitted tokens / verify steps (bonus counted). Plain value type,
// not thread-safe; Record is O(depth).
class SpeculationCounter {
 public:
  // `emitted`: tokens actually delivered for this step (accepted + bonus, or fewer when
  // EOS, a stop string or max_tokens cut the path).
  void Record(const StepStats& step, int emitted);
  SpeculationStats Stats() const;

  const std::vector<int64_t>& reached_by_depth() const { return reached_by_depth_; }
  const std::vector<int64_t>& accepted_by_depth() const { return accepted_by_depth_; }

 private:
  int verify_steps_ = 0;
  int drafted_tokens_ = 0;
  int accepted_tokens_ = 0;
  int emitted_tokens_ = 0;
  std::vector<int64_t> reached_by_depth_;
  std::vector<int64_t> accepted_by_depth_;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_VERIFIER_H_
