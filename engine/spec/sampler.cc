// engine/spec/sampler.cc — logits processing and sampling (see sampler.h for the contracts).
#include "engine/spec/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>

#include "kernels/check.h"

namespace specmoe::engine {
namespace {

constexpr double kFloatMax = std::numeric_limits<float>::max();

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

int32_t Argmax(const float* logits, int vocab) {
  SPECMOE_CHECK(vocab > 0, "Argmax: empty vocabulary");
  int32_t best = 0;
  for (int i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

std::vector<int32_t> TopKIds(const float* logits, int vocab, int k) {
  k = std::clamp(k, 0, vocab);
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  ids.resize(k);
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

void ApplyRepetitionPenalty(float* logits, int vocab, float penalty,
                            std::span<const int32_t> context) {
  if (penalty == 1.0f || context.empty()) return;
  std::vector<bool> done(vocab, false);  // each distinct token is penalised once
  for (int32_t t : context) {
    if (t < 0 || t >= vocab || done[t]) continue;
    done[t] = true;
    // In double, clamped to the float range: a tiny penalty would overflow a large logit
    // to +inf (and the softmax to NaN); finite inputs give finite outputs.
    const double l = logits[t];
    const double penalised = l > 0 ? l / penalty : l * penalty;
    logits[t] = static_cast<float>(std::clamp(penalised, -kFloatMax, kFloatMax));
  }
}

void ProcessLogits(const float* logits, int vocab, const SamplingParams& params,
                   std::span<const int32_t> context, std::vector<float>* probs) {
  SPECMOE_CHECK(vocab > 0, "ProcessLogits: empty vocabulary");
  // 1. Repetition penalty, on a copy of the row only when it changes something.
  std::vector<float> penalised;
  const float* l = logits;
  if (params.repetition_penalty != 1.0f && !context.empty()) {
    penalised.assign(logits, logits + vocab);
    ApplyRepetitionPenalty(penalised.data(), vocab, params.repetition_penalty, context);
    l = penalised.data();
  }

  probs->assign(vocab, 0.0f);
  // 2. Greedy: the distribution is a point mass at the argmax.
  if (params.greedy()) {
    (*probs)[Argmax(l, vocab)] = 1.0f;
    return;
  }

  // 3. Temperature, in double: z_i = l_i / T. `kept` holds the candidates still in play.
  struct Candidate {
    double value;  // z_i, then the softmax weight e_i
    int32_t id;
  };
  // Larger value first, ties lower id first: the order of top-k (on z) and top-p (on e).
  auto before = [](const Candidate& a, const Candidate& b) {
    return a.value > b.value || (a.value == b.value && a.id < b.id);
  };
  const double inv_temperature = 1.0 / static_cast<double>(params.temperature);
  std::vector<Candidate> kept(vocab);
  for (int i = 0; i < vocab; ++i) kept[i] = {static_cast<double>(l[i]) * inv_temperature, i};

  // 4. Top-k: exactly the first k candidates in that order.
  if (params.top_k > 0 && params.top_k < vocab) {
    std::nth_element(kept.begin(), kept.begin() + (params.top_k - 1), kept.end(), before);
    kept.resize(params.top_k);
  }

  // Softmax weights over the kept set: e_i = exp(z_i - max z), Z = sum e_i.
  double max_z = -INFINITY;
  for (const Candidate& c : kept) max_z = std::max(max_z, c.value);
  double total = 0.0;
  for (Candidate& c : kept) {
    c.value = std::exp(c.value - max_z);
    total += c.value;
  }

  // 5. Top-p: the smallest prefix, in the order of e (= of probability), with
  // sum e_i >= top_p * Z. The nucleus is usually small: select the heaviest `head`
  // candidates with nth_element (O(n)), growing head 4x until they hold enough mass, and
  // sort only those.
  if (params.top_p < 1.0f) {
    const double threshold = static_cast<double>(params.top_p) * total;
    size_t head = std::min<size_t>(64, kept.size());
    for (;;) {
      if (head < kept.size()) {
        std::nth_element(kept.begin(), kept.begin() + (head - 1), kept.end(), before);
      }
      double head_mass = 0.0;
      for (size_t i = 0; i < head; ++i) head_mass += kept[i].value;
      if (head_mass >= threshold || head == kept.size()) break;
      head = std::min(4 * head, kept.size());
    }
    std::sort(kept.begin(), kept.begin() + head, before);
    double cum = 0.0;
    size_t nucleus = 0;
    while (nucleus < head) {
      cum += kept[nucleus++].value;
      if (cum >= threshold) break;
    }
    kept.resize(nucleus);
    total = cum;
  }

  // 6. Normalise: p_i = e_i / Z over the final kept set.
  for (const Candidate& c : kept) (*probs)[c.id] = static_cast<float>(c.value / total);
}

int32_t SampleFrom(std::span<const float> probs, Rng& rng) {
  return InverseCdf(probs, rng.Uniform());
}

int32_t SampleFrom(std::span<const double> probs, Rng& rng) {
  return InverseCdf(probs, rng.Uniform());
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
