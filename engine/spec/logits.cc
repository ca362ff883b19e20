// engine/spec/logits.cc — row reductions of a forward's logits (see logits.h). The CPU
// backend's memory is host memory: every reduction reads its row in place.
#include "engine/spec/logits.h"

#include <cmath>

#include "engine/spec/sampler.h"

namespace specmoe::engine {
namespace {

const float* Row(const LogitsView& logits, int row) {
  return logits.data + static_cast<size_t>(row) * logits.vocab;
}

}  // namespace

std::optional<NonFinite> FindNonFinite(const LogitsView& logits, int first, int count) {
  for (int r = first; r < first + count; ++r) {
    const float* row = Row(logits, r);
    for (int t = 0; t < logits.vocab; ++t) {
      if (!std::isfinite(row[t])) return NonFinite{r, t, std::isnan(row[t])};
    }
  }
  return std::nullopt;
}

int32_t RowArgmax(const LogitsView& logits, int row, float penalty,
                  std::span<const int32_t> context) {
  if (penalty == 1.0f) return Argmax(Row(logits, row), logits.vocab);
  std::vector<float> penalized;
  RowPenalizedLogits(logits, row, penalty, context, &penalized);
  return Argmax(penalized.data(), logits.vocab);
}

void RowDistribution(const LogitsView& logits, int row, const SamplingParams& params,
                     std::span<const int32_t> context, std::vector<float>* probs) {
  ProcessLogits(Row(logits, row), logits.vocab, params, context, probs);
}

void RowPenalizedLogits(const LogitsView& logits, int row, float penalty,
                        std::span<const int32_t> context, std::vector<float>* out) {
  const float* src = Row(logits, row);
  out->assign(src, src + logits.vocab);
  ApplyRepetitionPenalty(out->data(), logits.vocab, penalty, context);
}

}  // namespace specmoe::engine
