// kernels/cpu/sampling.cc — see sampling.h for the contracts and the order of operations.
#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/check.h"

namespace specmoe::kernels {
namespace {

constexpr double kFloatMax = std::numeric_limits<float>::max();

}  // namespace

int32_t ArgmaxRow(const float* logits, int vocab) {
  SPECMOE_CHECK(vocab > 0, "Argmax: empty vocabulary");
  int32_t best = 0;
  for (int i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

int TopKRow(const float* logits, int vocab, int k, int32_t* ids) {
  k = std::clamp(k, 0, vocab);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::copy(order.begin(), order.begin() + k, ids);
  return k;
}

void ApplyRepetitionPenalty(float* logits, int vocab, const RowPenalty& penalty) {
  if (!PenaltyApplies(penalty)) return;
  std::vector<bool> done(vocab, false);  // each distinct token is penalised once
  for (int i = 0; i < penalty.context_size; ++i) {
    const int32_t t = penalty.context[i];
    if (t < 0 || t >= vocab || done[t]) continue;
    done[t] = true;
    // In double, clamped to the float range: a tiny penalty would overflow a large logit
    // to +inf (and the softmax to NaN); finite inputs give finite outputs.
    const double l = logits[t];
    const double penalised = l > 0 ? l / penalty.penalty : l * penalty.penalty;
    logits[t] = static_cast<float>(std::clamp(penalised, -kFloatMax, kFloatMax));
  }
}

void ProcessLogitsRow(const float* logits, int vocab, const RowPenalty& penalty,
                      const LogitsProcessing& processing, float* probs) {
  SPECMOE_CHECK(vocab > 0, "ProcessLogits: empty vocabulary");
  // 1. Repetition penalty, on a copy of the row only when it changes something.
  std::vector<float> penalised;
  const float* l = logits;
  if (PenaltyApplies(penalty)) {
    penalised.assign(logits, logits + vocab);
    ApplyRepetitionPenalty(penalised.data(), vocab, penalty);
    l = penalised.data();
  }

  std::fill(probs, probs + vocab, 0.0f);
  // 2. Greedy: the distribution is a point mass at the argmax.
  if (processing.temperature == 0.0f) {
    probs[ArgmaxRow(l, vocab)] = 1.0f;
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
  const double inv_temperature = 1.0 / static_cast<double>(processing.temperature);
  std::vector<Candidate> kept(vocab);
  for (int i = 0; i < vocab; ++i) kept[i] = {static_cast<double>(l[i]) * inv_temperature, i};

  // 4. Top-k: exactly the first k candidates in that order.
  if (processing.top_k > 0 && processing.top_k < vocab) {
    std::nth_element(kept.begin(), kept.begin() + (processing.top_k - 1), kept.end(), before);
    kept.resize(processing.top_k);
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
  if (processing.top_p < 1.0f) {
    const double threshold = static_cast<double>(processing.top_p) * total;
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
  for (const Candidate& c : kept) probs[c.id] = static_cast<float>(c.value / total);
}

}  // namespace specmoe::kernels
