// engine/spec/logits.cc — row reductions of a forward's logits (see logits.h), each one
// Backend op on the logits where they are; only the op's result comes to the host.
#include "engine/spec/logits.h"

#include <algorithm>

#include "engine/spec/sampler.h"

namespace specmoe::engine {
namespace {

const float* Row(const LogitsView& logits, int row) {
  return logits.data + static_cast<size_t>(row) * logits.vocab;
}

}  // namespace

std::optional<NonFinite> FindNonFinite(const LogitsView& logits, int first, int count) {
  kernels::NonFiniteValue found;
  if (count <= 0 || !logits.backend->FindNonFinite(Row(logits, first), count, logits.vocab,
                                                   &found)) {
    return std::nullopt;
  }
  return NonFinite{first + found.row, found.index, found.nan};
}

int32_t RowArgmax(const LogitsView& logits, int row, float penalty,
                  std::span<const int32_t> context) {
  const kernels::RowPenalty p = PenaltyOf(penalty, context);
  int32_t id = 0;
  logits.backend->ArgmaxRows(Row(logits, row), 1, logits.vocab, &p, &id);
  return id;
}

void RowDistribution(const LogitsView& logits, int row, const SamplingParams& params,
                     std::span<const int32_t> context, std::vector<float>* probs) {
  probs->resize(logits.vocab);
  logits.backend->ProcessedDistribution(Row(logits, row), logits.vocab,
                                        PenaltyOf(params.repetition_penalty, context),
                                        ProcessingOf(params), probs->data());
}

void RowPenalizedLogits(const LogitsView& logits, int row, float penalty,
                        std::span<const int32_t> context, std::vector<float>* out) {
  out->resize(logits.vocab);
  logits.backend->CopyToHost(out->data(), Row(logits, row), logits.vocab * sizeof(float));
  ApplyRepetitionPenalty(out->data(), logits.vocab, penalty, context);
}

std::vector<int32_t> RowTopKIds(const LogitsView& logits, int row, int k, float penalty,
                                std::span<const int32_t> context) {
  std::vector<int32_t> ids(std::clamp(k, 0, logits.vocab));
  logits.backend->TopKIds(Row(logits, row), logits.vocab, k, PenaltyOf(penalty, context),
                          ids.data());
  return ids;
}

TokenLogprob RowLogprob(const LogitsView& logits, int row, int32_t token, int top) {
  std::vector<float> host(logits.vocab);  // [vocab]
  logits.backend->CopyToHost(host.data(), Row(logits, row), logits.vocab * sizeof(float));
  return LogprobOf(host.data(), logits.vocab, token, top);
}

void ArgmaxRows(const LogitsView& logits, int first, std::span<const float> penalties,
                std::span<const std::span<const int32_t>> contexts, std::span<int32_t> out) {
  std::vector<kernels::RowPenalty> p(out.size());
  for (size_t i = 0; i < out.size(); ++i) {
    p[i] = penalties.empty() ? kernels::RowPenalty{} : PenaltyOf(penalties[i], contexts[i]);
  }
  logits.backend->ArgmaxRows(Row(logits, first), static_cast<int>(out.size()), logits.vocab,
                             p.data(), out.data());
}

}  // namespace specmoe::engine
