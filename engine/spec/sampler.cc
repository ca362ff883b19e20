// engine/spec/sampler.cc — logits processing and sampling (see sampler.h for the contracts).
// The logits maths lives once, in kernels/cpu/sampling.h; these are its host wrappers.
#include "engine/spec/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "kernels/check.h"
#include "kernels/cpu/sampling.h"

namespace specmoe::engine {
namespace {

// Inverse CDF over non-negative weights: the first id whose cumulative weight exceeds
// u * total. Zero-weight ids can never be returned (cum does not grow past them, and
// the comparison is strict).
template <typename T>
int32_t InverseCdf(std::span<const T> weights, double u) {
  double total = 0.0;
  for (T w : weights) total += w > 0 ? static_cast<double>(w) : 0.0;
  SPECMOE_CHECK(total > 0.0, "SampleFrom: the distribution has no positive mass");
  const double target = u * total;
  double cum = 0.0;
  int32_t last_positive = -1;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (!(weights[i] > 0)) continue;
    cum += static_cast<double>(weights[i]);
    last_positive = static_cast<int32_t>(i);
    if (cum > target) return last_positive;
  }
  // Only reachable through rounding when u * total lands on the final sum.
  return last_positive;
}

}  // namespace

int32_t Argmax(const float* logits, int vocab) { return kernels::ArgmaxRow(logits, vocab); }

std::vector<int32_t> TopKIds(const float* logits, int vocab, int k) {
  std::vector<int32_t> ids(std::clamp(k, 0, vocab));
  kernels::TopKRow(logits, vocab, k, ids.data());
  return ids;
}

std::vector<float> TopProbabilities(const float* probs, int vocab, int k) {
  k = std::clamp(k, 0, vocab);
  std::vector<float> top(k);
  std::partial_sort_copy(probs, probs + vocab, top.begin(), top.end(), std::greater<float>());
  return top;
}

std::vector<float> TopSoftmaxProbabilities(const float* logits, int vocab, int k) {
  SPECMOE_CHECK(vocab > 0, "TopSoftmaxProbabilities: empty vocabulary");
  k = std::clamp(k, 0, vocab);
  const float max_logit = logits[Argmax(logits, vocab)];
  double total = 0.0;
  for (int i = 0; i < vocab; ++i) {
    total += std::exp(static_cast<double>(logits[i]) - static_cast<double>(max_logit));
  }
  std::vector<float> top(k);
  std::partial_sort_copy(logits, logits + vocab, top.begin(), top.end(), std::greater<float>());
  for (float& value : top) {
    value = static_cast<float>(
        std::exp(static_cast<double>(value) - static_cast<double>(max_logit)) / total);
  }
  return top;
}

kernels::RowPenalty PenaltyOf(float penalty, std::span<const int32_t> context) {
  return kernels::RowPenalty{penalty, context.data(), static_cast<int>(context.size())};
}

kernels::LogitsProcessing ProcessingOf(const SamplingParams& params) {
  return kernels::LogitsProcessing{params.temperature, params.top_k, params.top_p};
}

void ApplyRepetitionPenalty(float* logits, int vocab, float penalty,
                            std::span<const int32_t> context) {
  kernels::ApplyRepetitionPenalty(logits, vocab, PenaltyOf(penalty, context));
}

void ProcessLogits(const float* logits, int vocab, const SamplingParams& params,
                   std::span<const int32_t> context, std::vector<float>* probs) {
  SPECMOE_CHECK(vocab > 0, "ProcessLogits: empty vocabulary");
  probs->resize(vocab);
  kernels::ProcessLogitsRow(logits, vocab, PenaltyOf(params.repetition_penalty, context),
                            ProcessingOf(params), probs->data());
}

int32_t SampleFrom(std::span<const float> probs, Rng& rng) {
  return InverseCdf(probs, rng.Uniform());
}

int32_t SampleFrom(std::span<const double> probs, Rng& rng) {
  return InverseCdf(probs, rng.Uniform());
}

TokenLogprob LogprobOf(const float* logits, int vocab, int32_t token, int top) {
  SPECMOE_CHECK(vocab > 0 && token >= 0 && token < vocab,
                "LogprobOf: token outside the vocabulary");
  const double max_logit = logits[Argmax(logits, vocab)];
  double total = 0.0;
  for (int v = 0; v < vocab; ++v) total += std::exp(static_cast<double>(logits[v]) - max_logit);
  const double log_total = std::log(total);
  auto logprob = [&](int v) {
    return static_cast<float>((static_cast<double>(logits[v]) - max_logit) - log_total);
  };
  TokenLogprob out;
  out.token_id = token;
  out.logprob = logprob(token);
  top = std::clamp(top, 0, vocab);
  if (top == 0) return out;
  std::vector<TopLogprob> all(vocab);
  for (int v = 0; v < vocab; ++v) all[v] = {v, logprob(v)};
  std::partial_sort(
      all.begin(), all.begin() + top, all.end(), [](const TopLogprob& a, const TopLogprob& b) {
        return a.logprob > b.logprob || (a.logprob == b.logprob && a.token_id < b.token_id);
      });
  out.top.assign(all.begin(), all.begin() + top);
  return out;
}

std::vector<int32_t> SampleWithoutReplacement(std::span<const float> q, int k, Rng& rng) {
  std::vector<double> remaining(q.begin(), q.end());  // q restricted to undrawn ids
  std::vector<int32_t> drawn;
  for (int draw = 0; draw < k; ++draw) {
    bool any = false;
    for (double w : remaining) any |= w > 0;
    if (!any) break;
    const int32_t x = SampleFrom(std::span<const double>(remaining), rng);
    drawn.push_back(x);
    remaining[x] = 0.0;
  }
  return drawn;
}

}  // namespace specmoe::engine
