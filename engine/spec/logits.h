// engine/spec/logits.h — reading a forward's logits where the model left them (DESIGN §5):
// the speculation layer asks only for reductions of a row (its argmax, its processed
// distribution, whether it is finite), never for the [rows, vocab] block on the host.
// The CPU backend's memory is host memory, so these read it in place; a device backend
// answers them with its own reduction ops and copies back only their results.
// Tested through tests/speculation_test.cc and tests/engine_test.cc.
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

// The penalised logits of `row` on the host ([vocab]): a greedy tree's children are their
// top-k (only the draft's frontier rows are read this way).
void RowPenalizedLogits(const LogitsView& logits, int row, float penalty,
                        std::span<const int32_t> context, std::vector<float>* out);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_LOGITS_H_
