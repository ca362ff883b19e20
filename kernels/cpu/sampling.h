// kernels/cpu/sampling.h — the maths of turning one row of logits into a token or a
// distribution, as free functions on the kernels-level structs of backend.h (RowPenalty,
// LogitsProcessing). The ONE implementation: the CPU backend's reductions (ArgmaxRows,
// ProcessedDistribution, TopKIds) run it on their rows, and engine/spec/sampler.h wraps it
// for the host (so plain and speculative sampling, draft and target, process logits the
// same way). Order as in Hugging Face's default logits processors: repetition penalty
// (CTRL, Keskar et al. 2019), temperature, top-k, top-p (Holtzman et al. 2019), softmax.
// Tested by tests/sampler_test.cc (hand-computed values, through engine/spec/sampler.h) and
// tests/cpu_backend_test.cc (the backend ops against these functions).
#ifndef SPECMOE_KERNELS_CPU_SAMPLING_H_
#define SPECMOE_KERNELS_CPU_SAMPLING_H_

#include <cstdint>

#include "kernels/backend.h"

namespace specmoe::kernels {

// The id of the largest logit; ties go to the lowest id. logits: [vocab], vocab > 0.
int32_t ArgmaxRow(const float* logits, int vocab);

// ids[0, min(k, vocab)) := the ids of the k largest logits in descending order of logit,
// ties lower id first; returns that count (k < 0 counts as 0). logits: [vocab].
int TopKRow(const float* logits, int vocab, int k, int32_t* ids);

// CTRL / Hugging Face repetition penalty, in place: for each DISTINCT token t of
// penalty.context (ids outside [0, vocab) are ignored): logits[t] = logits[t] > 0 ?
// logits[t] / penalty : logits[t] * penalty, computed in double and clamped to +-FLT_MAX (so
// any finite penalty > 0 keeps finite logits finite). penalty 1 changes nothing.
void ApplyRepetitionPenalty(float* logits, int vocab, const RowPenalty& penalty);

// True when ApplyRepetitionPenalty would change something (penalty != 1, context not empty).
inline bool PenaltyApplies(const RowPenalty& penalty) {
  return penalty.penalty != 1.0f && penalty.context_size > 0;
}

// probs[vocab] := the processed distribution of one row:
//   1. repetition penalty (on a copy of the row);
//   2. greedy (temperature 0): a one-hot at the argmax of the penalised logits; done.
//   3. z = logits / temperature (in double);
//   4. top-k (k > 0 and k < vocab): keep exactly the k largest z, ties lower id first
//      (HF keeps every token tied with the k-th; we keep exactly k so the set is unique);
//   5. top-p (top_p < 1): over the kept set, softmax, then keep the smallest prefix of
//      the tokens sorted by probability (descending, ties lower id first) whose
//      cumulative probability is >= top_p; always at least one token;
//   6. softmax over the kept set in double with the maximum subtracted; zeros elsewhere.
// The result sums to 1 (up to float rounding). Cost: O(vocab) plus a partial sort of the
// nucleus when top_p < 1.
void ProcessLogitsRow(const float* logits, int vocab, const RowPenalty& penalty,
                      const LogitsProcessing& processing, float* probs);

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_CPU_SAMPLING_H_
