// engine/spec/gumbel.cc — counter-based Gumbel noise and Gumbel-max choices (gumbel.h).
#include "engine/spec/gumbel.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "kernels/check.h"

namespace specmoe::engine {
namespace {

// The splitmix64 finaliser (Steele, Lea & Flood, 2014) after a golden-ratio increment.
uint64_t Mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

double NoiseUniform(uint64_t seed, int64_t position, int32_t token) {
  const uint64_t h = Mix(Mix(Mix(seed) ^ static_cast<uint64_t>(position)) ^
                         static_cast<uint64_t>(static_cast<uint32_t>(token)));
  return (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;
}

double GumbelNoise(uint64_t seed, int64_t position, int32_t token) {
  return -std::log(-std::log(NoiseUniform(seed, position, token)));
}

std::vector<int32_t> GumbelTopK(std::span<const float> probs, int k, uint64_t seed,
                                int64_t position) {
  std::vector<std::pair<double, int32_t>> scored;  // (score, id) of the ids with mass
  for (size_t v = 0; v < probs.size(); ++v) {
    if (!(probs[v] > 0.0f)) continue;
    const int32_t id = static_cast<int32_t>(v);
    scored.emplace_back(std::log(static_cast<double>(probs[v])) + GumbelNoise(seed, position, id),
                        id);
  }
  const size_t n = std::min(scored.size(), static_cast<size_t>(std::max(k, 0)));
  auto higher = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  std::partial_sort(scored.begin(), scored.begin() + n, scored.end(), higher);
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = scored[i].second;
  return ids;
}

int32_t GumbelMax(std::span<const float> probs, uint64_t seed, int64_t position) {
  double best = 0.0;
  int32_t best_id = -1;
  for (size_t v = 0; v < probs.size(); ++v) {
    if (!(probs[v] > 0.0f)) continue;
    const int32_t id = static_cast<int32_t>(v);
    const double score =
        std::log(static_cast<double>(probs[v])) + GumbelNoise(seed, position, id);
    if (best_id < 0 || score > best) {  // ties keep the lower id
      best = score;
      best_id = id;
    }
  }
  SPECMOE_CHECK(best_id >= 0, "GumbelMax: the distribution has no positive mass");
  return best_id;
}

}  // namespace specmoe::engine
