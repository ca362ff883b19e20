// engine/spec/logits.h — reading a forward's logits where the model left them (kernels/README.md):
// the speculation layer asks only for reductions of a row (its argmax, its processed
// distribution, whether it is finite), never for the [rows, vocab] block on the host.
// Each is one Backend reduction op (kernels/backend.h) run where the logits are; only its
// result (ids, one [vocab] distribution, one position) comes back to the host. The maths is
// kernels/cpu/sampling.h, the same as sampler.h's.
// Tested by tests/logits_test.cc (each function equals the host sampler on the same row);
// the backend ops themselves in tests/cpu_backend_test.cc.
#ifndef SPECMOE_ENGINE_SPEC_LOGITS_H_
#define SPECMOE_ENGINE_SPEC_LOGITS_H_

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "engine/spec/params.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// The logits of one forward: [rows, vocab] f32 in backend memory. A non-owning view,
// valid until the model's next forward.
struct LogitsView {
  kernels::Backend* backend = nullptr;
  const float* data = nullptr;
  int rows = 0;
  int vocab = 0;
};

// Where rows [first, first + count) hold a NaN or an infinite value: the first such
// (row, token id), or nullopt when all are finite.
struct NonFinite {
  int row = 0;
  int token = 0;
  bool nan = false;
};
std::optional<NonFinite> FindNonFinite(const LogitsView& logits, int first, int count);

// The argmax of `row` after the repetition penalty over `context` (ties: lowest id).
int32_t RowArgmax(const LogitsView& logits, int row, float penalty,
                  std::span<const int32_t> context);

// The processed distribution of `row` (sampler.h ProcessLogits: penalty over `context`,
// temperature, top-k, top-p): *probs := [vocab] host probabilities.
void RowDistribution(const LogitsView& logits, int row, const SamplingParams& params,
                     std::span<const int32_t> context, std::vector<float>* probs);

// The penalised logits of `row` on the host ([vocab]): a COPY of the row (on a device, a
// device-to-host transfer of vocab floats); prefer RowTopKIds for a greedy tree's children.
void RowPenalizedLogits(const LogitsView& logits, int row, float penalty,
                        std::span<const int32_t> context, std::vector<float>* out);

// The k largest ids of `row` after the repetition penalty over `context`, descending, ties
// lower id first (sampler.h TopKIds of the penalised row): a greedy tree's children,
// reduced where the logits are.
std::vector<int32_t> RowTopKIds(const LogitsView& logits, int row, int k, float penalty,
                                std::span<const int32_t> context);

// sampler.h LogprobOf of the RAW `row` (a copy of the row to the host): the target's own
// log-softmax at `token` and its `top` most likely tokens, for a request's logprobs.
TokenLogprob RowLogprob(const LogitsView& logits, int row, int32_t token, int top);

// out[i] = RowArgmax of row first + i with penalties[i] over contexts[i], for
// i < out.size(), as ONE backend op (greedy verification of a whole batch: n ints back).
// penalties empty: no penalty (contexts then unused); else both have out.size() entries.
void ArgmaxRows(const LogitsView& logits, int first, std::span<const float> penalties,
                std::span<const std::span<const int32_t>> contexts, std::span<int32_t> out);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_LOGITS_H_
