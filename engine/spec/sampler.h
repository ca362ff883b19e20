// engine/spec/sampler.h — logits processing and sampling, pure functions on the host.
//
// ProcessLogits turns one row of logits into the distribution a request samples from, in
// Hugging Face's default logits-processor order: repetition penalty (CTRL, Keskar et al.
// 2019), temperature, top-k, top-p (nucleus, Holtzman et al. 2019), softmax. The draft's
// q and the target's p of speculative sampling (engine/README.md, Verification) both come from it,
// so plain and speculative sampling process logits identically. Sampling uses the engine's Rng with
// one uniform per draw (inverse CDF), so a seed fixes the output on every platform.
// The maths is kernels/cpu/sampling.h (one implementation, also behind the backends'
// logits reductions); these functions are its host-side wrappers.
// Tested in tests/sampler_test.cc against hand-computed values.
#ifndef SPECMOE_ENGINE_SPEC_SAMPLER_H_
#define SPECMOE_ENGINE_SPEC_SAMPLER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "engine/spec/params.h"
#include "engine/spec/rng.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// The id of the largest logit; ties go to the lowest id. logits: [vocab].
int32_t Argmax(const float* logits, int vocab);

// The `k` ids with the largest logits, in descending order of logit, ties lower id first
// (greedy tree children, engine/README.md, Tree policy). Returns min(k, vocab) ids. logits:
// [vocab].
std::vector<int32_t> TopKIds(const float* logits, int vocab, int k);

// The `k` largest entries of probs ([vocab]), descending: min(k, vocab) values (zeros
// included when fewer are positive). What the tree policy reads at a sampled frontier
// node (LevelRequest::frontier_top_q) from the draft's processed distribution q.
std::vector<float> TopProbabilities(const float* probs, int vocab, int k);

// For greedy trees: the softmax (temperature 1, over the whole row, in double with the
// maximum subtracted) of logits ([vocab]) at the `k` largest logits, descending, i.e. the
// draft's own confidence in each of its TopKIds(logits, vocab, k) children, in that order.
// Returns min(k, vocab) values. O(vocab + k log k).
std::vector<float> TopSoftmaxProbabilities(const float* logits, int vocab, int k);

// CTRL / Hugging Face repetition penalty, in place: for each DISTINCT token t in `context`
// (ids outside [0, vocab) are ignored): logits[t] = logits[t] > 0 ? logits[t] / penalty
// : logits[t] * penalty, computed in double and clamped to +-FLT_MAX (so any finite
// penalty > 0 keeps finite logits finite). penalty 1 changes nothing. logits: [vocab].
void ApplyRepetitionPenalty(float* logits, int vocab, float penalty,
                            std::span<const int32_t> context);

// The kernels-level forms of a request's penalty (context: a view, not copied) and its
// processing controls, for kernels/cpu/sampling.h and the Backend's logits reductions.
kernels::RowPenalty PenaltyOf(float penalty, std::span<const int32_t> context);
kernels::LogitsProcessing ProcessingOf(const SamplingParams& params);

// The processed distribution of one position: *probs := [vocab] probabilities.
//   1. repetition penalty over `context` (prompt + tokens generated so far; for a tree node
//      the prompt plus the node's path);
//   2. greedy (temperature 0): a one-hot at the argmax of the penalised logits; done.
//   3. z = logits / temperature;
//   4. top-k (k > 0 and k < vocab): keep exactly the k largest z, ties lower id first
//      (HF keeps every token tied with the k-th; we keep exactly k so the set is unique);
//   5. top-p (top_p < 1): over the kept set, softmax, then keep the smallest prefix of
//      the tokens sorted by probability (descending, ties lower id first) whose
//      cumulative probability is >= top_p; always at least one token;
//   6. softmax over the kept set in double with the maximum subtracted; zeros elsewhere.
// The result sums to 1 (up to float rounding). Cost: O(vocab) plus a partial sort of the
// nucleus when top_p < 1.
void ProcessLogits(const float* logits, int vocab, const SamplingParams& params,
                   std::span<const int32_t> context, std::vector<float>* probs);

// One draw by inverse CDF with a single uniform u: the first id whose cumulative mass
// exceeds u * sum(probs). Never returns an id of zero mass; `probs` need not be
// normalised but must have positive mass. Deterministic for a given Rng state.
int32_t SampleFrom(std::span<const float> probs, Rng& rng);
int32_t SampleFrom(std::span<const double> probs, Rng& rng);

// The log-softmax of raw `logits` ([vocab]; no penalty, temperature or truncation) at
// `token`, and its `top` (clamped to [0, vocab]) largest entries, logprob descending, ties
// lower id first: lp(v) = (logits[v] - max) - log(sum_w exp(logits[w] - max)) in double,
// rounded to float. O(vocab + top log top).
TokenLogprob LogprobOf(const float* logits, int vocab, int32_t token, int top);

// k successive draws without replacement: each from `q` restricted to the ids not drawn
// yet, renormalised (one uniform per draw). Returns fewer than k ids when q has fewer
// than k ids of non-zero mass. The order of the result is the draw order.
std::vector<int32_t> SampleWithoutReplacement(std::span<const float> q, int k, Rng& rng);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_SAMPLER_H_
