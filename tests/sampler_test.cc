// tests/sampler_test.cc — engine/spec/rng.h and engine/spec/sampler.h: the generator against the
// published xoshiro256** / splitmix64 algorithms, ProcessLogits against hand-computed
// distributions (temperature, top-k and top-p with ties, repetition penalty of both signs,
// greedy), the sampling helpers' determinism and distributions, the Gumbel noise of
// engine/spec/gumbel.h (a value from an independent Python splitmix64, the top-k order and
// its mass rules) and LogprobOf against hand-computed log-softmax values.
#include "engine/spec/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <map>
#include <vector>

#include "engine/serving/request.h"
#include "engine/spec/gumbel.h"
#include "engine/spec/rng.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace specmoe::engine {
namespace {

using ::testing::ElementsAre;

SamplingParams Sampling(float temperature, int top_k = 0, float top_p = 1.0f,
                        float repetition_penalty = 1.0f) {
  SamplingParams params;
  params.temperature = temperature;
  params.top_k = top_k;
  params.top_p = top_p;
  params.repetition_penalty = repetition_penalty;
  return params;
}

std::vector<float> Process(const std::vector<float>& logits, const SamplingParams& params,
                           const std::vector<int32_t>& context = {}) {
  std::vector<float> probs;
  ProcessLogits(logits.data(), static_cast<int>(logits.size()), params, context, &probs);
  return probs;
}

// Softmax of `z` restricted to the ids in `kept`, by the textbook formula.
std::vector<double> Softmax(const std::vector<double>& z, const std::vector<int>& kept) {
  std::vector<double> out(z.size(), 0.0);
  double total = 0.0;
  for (int id : kept) total += std::exp(z[id]);
  for (int id : kept) out[id] = std::exp(z[id]) / total;
  return out;
}

void ExpectProbs(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == 0.0) {
      EXPECT_EQ(got[i], 0.0f) << "id " << i;  // outside the kept set: exactly zero
    } else {
      EXPECT_NEAR(got[i], want[i], 1e-6) << "id " << i;
    }
  }
}

TEST(RngTest, MatchesTheReferenceAlgorithm) {
  // splitmix64 from seed 0 gives e220a8397b1dcdaf, 6e789e6aa1b965f4, 06c45d188009454f,
  // f88bb8a8724c81ec (the published reference sequence); xoshiro256** from that state:
  Rng zero(0);
  EXPECT_EQ(zero.Next(), 0x99ec5f36cb75f2b4ULL);
  EXPECT_EQ(zero.Next(), 0xbf6e1f784956452aULL);
  EXPECT_EQ(zero.Next(), 0x1a5f849d4933e6e0ULL);
  EXPECT_EQ(zero.Next(), 0x6aa594f1262d2d2cULL);
  Rng answer(42);
  EXPECT_EQ(answer.Next(), 0x15780b2e0c2ec716ULL);
  EXPECT_EQ(answer.Next(), 0x6104d9866d113a7eULL);
}

TEST(RngTest, UniformUsesTheTop53Bits) {
  Rng a(7), b(7);
  for (int i = 0; i < 1000; ++i) {
    const double u = a.Uniform();
    EXPECT_EQ(u, static_cast<double>(b.Next() >> 11) / 9007199254740992.0);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(RngTest, SplitGivesDistinctReproducibleStreams) {
  Rng parent(5);
  Rng draft = parent.Split(kDraftStream);
  Rng verify = parent.Split(kVerifyStream);
  Rng draft_again = parent.Split(kDraftStream);
  Rng untouched(5);
  EXPECT_EQ(parent.Next(), untouched.Next());  // Split does not advance the parent
  int equal = 0;
  for (int i = 0; i < 64; ++i) {
    const uint64_t d = draft.Next();
    EXPECT_EQ(d, draft_again.Next());
    equal += d == verify.Next();
  }
  EXPECT_EQ(equal, 0);
  // Different parent seeds give different streams of the same number.
  EXPECT_NE(Rng(5).Split(kDraftStream).Next(), Rng(6).Split(kDraftStream).Next());
}

TEST(SamplerTest, ArgmaxAndTopKBreakTiesByLowerId) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f, 3.0f};
  EXPECT_EQ(Argmax(logits.data(), 6), 1);
  EXPECT_THAT(TopKIds(logits.data(), 6, 4), ElementsAre(1, 3, 5, 0));
  EXPECT_THAT(TopKIds(logits.data(), 6, 1), ElementsAre(1));
  EXPECT_THAT(TopKIds(logits.data(), 6, 10), ElementsAre(1, 3, 5, 0, 4, 2));
}

TEST(SamplerTest, RepetitionPenaltyBothSignsDistinctTokens) {
  std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f};
  // Token 1 appears twice but is penalised once; 9 is outside the vocabulary; 4 is zero.
  ApplyRepetitionPenalty(logits.data(), 5, 2.0f, std::vector<int32_t>{0, 1, 1, 9, 4});
  EXPECT_THAT(logits, ElementsAre(1.0f, -2.0f, 0.5f, 3.0f, 0.0f));
  ApplyRepetitionPenalty(logits.data(), 5, 1.0f, std::vector<int32_t>{0, 1});
  EXPECT_THAT(logits, ElementsAre(1.0f, -2.0f, 0.5f, 3.0f, 0.0f));
}

TEST(SamplerTest, TemperatureOnly) {
  // z = [1, 2, 3] / 0.5 = [2, 4, 6].
  ExpectProbs(Process({1.0f, 2.0f, 3.0f}, Sampling(0.5f)), Softmax({2, 4, 6}, {0, 1, 2}));
  ExpectProbs(Process({1.0f, 2.0f, 3.0f}, Sampling(1.0f)), Softmax({1, 2, 3}, {0, 1, 2}));
  ExpectProbs(Process({1.0f, 2.0f, 3.0f}, Sampling(2.0f)), Softmax({0.5, 1.0, 1.5}, {0, 1, 2}));
}

TEST(SamplerTest, TopKKeepsExactlyKWithLowerIdsOnTies) {
  // Three tokens tie at the top: k = 2 keeps ids 0 and 2.
  ExpectProbs(Process({3.0f, 1.0f, 3.0f, 3.0f}, Sampling(1.0f, 2)), {0.5, 0.0, 0.5, 0.0});
  // k = 2 of [1, 4, 2, 3] at T = 0.5: ids 1 and 3, z = 8 and 6.
  ExpectProbs(Process({1.0f, 4.0f, 2.0f, 3.0f}, Sampling(0.5f, 2)), Softmax({2, 8, 4, 6}, {1, 3}));
  // k >= vocab is no restriction.
  ExpectProbs(Process({1.0f, 2.0f}, Sampling(1.0f, 5)), Softmax({1, 2}, {0, 1}));
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // p = [0.5, 0.3, 0.2]: top_p 0.75 keeps {0, 1} -> [0.625, 0.375, 0].
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  ExpectProbs(Process(logits, Sampling(1.0f, 0, 0.75f)), {0.625, 0.375, 0.0});
  // top_p 0.45 keeps only the most likely token; a tiny top_p still keeps one.
  ExpectProbs(Process(logits, Sampling(1.0f, 0, 0.45f)), {1.0, 0.0, 0.0});
  ExpectProbs(Process(logits, Sampling(1.0f, 0, 1e-6f)), {1.0, 0.0, 0.0});
  // top_p 0.85 needs all three.
  ExpectProbs(Process(logits, Sampling(1.0f, 0, 0.85f)), {0.5, 0.3, 0.2});
}

TEST(SamplerTest, TopPTiesGoToLowerIds) {
  // Four equal tokens: cumulative 0.25, 0.5 (exact in binary) -> top_p 0.5 keeps ids 0, 1.
  ExpectProbs(Process({1.0f, 1.0f, 1.0f, 1.0f}, Sampling(1.0f, 0, 0.5f)), {0.5, 0.5, 0.0, 0.0});
  ExpectProbs(Process({1.0f, 1.0f, 1.0f, 1.0f}, Sampling(1.0f, 0, 0.6f)),
              {1.0 / 3, 1.0 / 3, 1.0 / 3, 0.0});
  // The tie is by id, not by position in the array: ids 1 and 3 tie above the rest.
  ExpectProbs(Process({0.0f, 2.0f, 0.0f, 2.0f}, Sampling(1.0f, 0, 0.3f)), {0.0, 1.0, 0.0, 0.0});
}

TEST(SamplerTest, TopPWithALargeNucleus) {
  // 1000 equal tokens, top_p 0.9: the nucleus is 900 tokens, the first 900 ids (the
  // partial sort has to grow its head past 64 and 256).
  const std::vector<float> logits(1000, 0.25f);
  std::vector<double> want(1000, 0.0);
  for (int i = 0; i < 900; ++i) want[i] = 1.0 / 900;
  ExpectProbs(Process(logits, Sampling(0.7f, 0, 0.9f)), want);
}

TEST(SamplerTest, TopPNucleusOfAFewHundredTokens) {
  // l_i = 0.01 i over 1000 ids: the heaviest tokens are 999, 998, ...; the nucleus at
  // top_p 0.5 is the smallest n with sum_{j<n} e^{-0.01 j} >= 0.5 Z (n = 70 here, so the
  // selection grows its head from 64 to 256 and sorts only that).
  std::vector<float> logits(1000);
  for (int i = 0; i < 1000; ++i) logits[i] = 0.01f * static_cast<float>(i);
  std::vector<double> z(1000);
  for (int i = 0; i < 1000; ++i) z[i] = static_cast<double>(logits[i]);
  double total = 0.0;
  for (int i = 0; i < 1000; ++i) total += std::exp(z[i] - z[999]);
  std::vector<int> nucleus;
  double cum = 0.0;
  for (int id = 999; cum < 0.5 * total; --id) {
    cum += std::exp(z[id] - z[999]);
    nucleus.push_back(id);
  }
  EXPECT_EQ(nucleus.size(), 70u);
  ExpectProbs(Process(logits, Sampling(1.0f, 0, 0.5f)), Softmax(z, nucleus));
}

TEST(SamplerTest, TopKThenTopP) {
  // HF order: top-k first (keeps ids 3, 1, 2 of [0, 2, 1, 3, -1]), then top-p over the
  // renormalised three: p = softmax([2, 1, 3]) = [0.245, 0.090, 0.665]; top_p 0.8 keeps
  // ids 3 and 1.
  const std::vector<float> logits = {0.0f, 2.0f, 1.0f, 3.0f, -1.0f};
  const std::vector<double> z = {0, 2, 1, 3, -1};
  ExpectProbs(Process(logits, Sampling(1.0f, 3, 0.8f)), Softmax(z, {1, 3}));
  // 0.665 + 0.245 = 0.909 < 0.95: top_p 0.95 keeps all three of the top-k.
  ExpectProbs(Process(logits, Sampling(1.0f, 3, 0.95f)), Softmax(z, {1, 2, 3}));
}

TEST(SamplerTest, RepetitionPenaltyInsideProcessLogits) {
  // [2, -1, 0, 1] with penalty 2 over {0, 1}: [1, -2, 0, 1], then T = 1.
  ExpectProbs(Process({2.0f, -1.0f, 0.0f, 1.0f}, Sampling(1.0f, 0, 1.0f, 2.0f), {0, 1, 0}),
              Softmax({1, -2, 0, 1}, {0, 1, 2, 3}));
  // The penalty comes before temperature: T = 0.5 doubles the penalised logits.
  ExpectProbs(Process({2.0f, -1.0f, 0.0f, 1.0f}, Sampling(0.5f, 0, 1.0f, 2.0f), {0, 1}),
              Softmax({2, -4, 0, 2}, {0, 1, 2, 3}));
  // ... and before top-k: at penalty 8 token 0 (2 -> 0.25) drops out of the top 2.
  ExpectProbs(Process({2.0f, -1.0f, 0.5f, 1.5f}, Sampling(1.0f, 2, 1.0f, 2.0f), {0}),
              Softmax({1, -1, 0.5, 1.5}, {0, 3}));
  ExpectProbs(Process({2.0f, -1.0f, 0.5f, 1.5f}, Sampling(1.0f, 2, 1.0f, 8.0f), {0}),
              Softmax({0.25, -1, 0.5, 1.5}, {2, 3}));
}

TEST(SamplerTest, GreedyIsOneHotAfterThePenalty) {
  ExpectProbs(Process({2.0f, 1.5f, -3.0f}, Sampling(0.0f)), {1.0, 0.0, 0.0});
  ExpectProbs(Process({2.0f, 1.5f, -3.0f}, Sampling(0.0f, 0, 1.0f, 2.0f), {0}), {0.0, 1.0, 0.0});
  // top-k / top-p cannot remove the argmax, so they change nothing.
  ExpectProbs(Process({2.0f, 1.5f, 2.0f}, Sampling(0.0f, 1, 0.1f)), {1.0, 0.0, 0.0});
}

TEST(SamplerTest, SampleFromIsDeterministicAndSkipsZeroMass) {
  const std::vector<float> probs = {0.0f, 0.2f, 0.0f, 0.5f, 0.3f, 0.0f};
  Rng a(99), b(99);
  std::vector<int> counts(6, 0);
  for (int i = 0; i < 100000; ++i) {
    const int32_t x = SampleFrom(probs, a);
    EXPECT_EQ(x, SampleFrom(probs, b));
    ++counts[x];
  }
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[2], 0);
  EXPECT_EQ(counts[5], 0);
  // Binomial sd at n = 1e5 is <= 158; 6 sd bounds on a fixed seed.
  EXPECT_NEAR(counts[1], 20000, 950);
  EXPECT_NEAR(counts[3], 50000, 950);
  EXPECT_NEAR(counts[4], 30000, 950);
}

TEST(SamplerTest, SampleFromIsTheInverseCdfOfOneUniform) {
  // The uniform u picks the first id whose cumulative mass exceeds u.
  const std::vector<float> probs = {0.25f, 0.0f, 0.5f, 0.25f};
  Rng rng(3), copy(3);
  for (int i = 0; i < 1000; ++i) {
    const double u = copy.Uniform();
    const int32_t want = u < 0.25 ? 0 : (u < 0.75 ? 2 : 3);
    EXPECT_EQ(SampleFrom(probs, rng), want);
  }
  // Unnormalised weights are scaled by their sum.
  const std::vector<double> weights = {1.0, 3.0};
  Rng r1(8), r2(8);
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(SampleFrom(weights, r1), r2.Uniform() < 0.25 ? 0 : 1);
  }
}

TEST(SamplerTest, SampleWithoutReplacementDistribution) {
  // q = [0.5, 0.3, 0.2], k = 2: P(a, b) = q(a) q(b) / (1 - q(a)).
  const std::vector<float> q = {0.5f, 0.3f, 0.2f, 0.0f};
  Rng rng(2024);
  std::map<std::pair<int, int>, int> counts;
  constexpr int kTrials = 200000;
  for (int i = 0; i < kTrials; ++i) {
    const std::vector<int32_t> drawn = SampleWithoutReplacement(q, 2, rng);
    ASSERT_EQ(drawn.size(), 2u);
    ASSERT_NE(drawn[0], drawn[1]);
    ++counts[{drawn[0], drawn[1]}];
  }
  const double qd[3] = {0.5, 0.3, 0.2};
  for (int a = 0; a < 3; ++a) {
    for (int b = 0; b < 3; ++b) {
      if (a == b) continue;
      const double want = kTrials * qd[a] * qd[b] / (1.0 - qd[a]);
      const double sd = std::sqrt(want);
      EXPECT_NEAR((counts[{a, b}]), want, 6 * sd) << a << "," << b;
    }
  }
  EXPECT_EQ(counts.size(), 6u);  // token 3 (zero mass) never drawn
}

TEST(SamplerTest, SampleWithoutReplacementStopsAtTheSupport) {
  const std::vector<float> q = {0.0f, 0.6f, 0.0f, 0.4f};
  Rng rng(1);
  for (int i = 0; i < 100; ++i) {
    std::vector<int32_t> drawn = SampleWithoutReplacement(q, 3, rng);
    std::sort(drawn.begin(), drawn.end());
    EXPECT_THAT(drawn, ElementsAre(1, 3));
  }
  EXPECT_TRUE(SampleWithoutReplacement(q, 0, rng).empty());
}

TEST(SamplerTest, TopProbabilitiesAreTheLargestDescending) {
  const std::vector<float> q = {0.1f, 0.0f, 0.4f, 0.2f, 0.3f};
  EXPECT_THAT(TopProbabilities(q.data(), 5, 3), ElementsAre(0.4f, 0.3f, 0.2f));
  EXPECT_THAT(TopProbabilities(q.data(), 5, 9), ElementsAre(0.4f, 0.3f, 0.2f, 0.1f, 0.0f));
  EXPECT_TRUE(TopProbabilities(q.data(), 5, 0).empty());
}

TEST(SamplerTest, TopSoftmaxProbabilitiesFollowTopKIds) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 2.0f};
  double total = 0.0;
  for (float l : logits) total += std::exp(static_cast<double>(l));
  const std::vector<float> top = TopSoftmaxProbabilities(logits.data(), 4, 3);
  const std::vector<int32_t> ids = TopKIds(logits.data(), 4, 3);
  ASSERT_EQ(top.size(), 3u);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_NEAR(top[i], std::exp(static_cast<double>(logits[ids[i]])) / total, 1e-7) << i;
  }
  EXPECT_EQ(TopSoftmaxProbabilities(logits.data(), 4, 7).size(), 4u);
}

TEST(SamplerTest, SameSeedSameDraws) {
  std::vector<float> probs;
  ProcessLogits(std::vector<float>{0.1f, 1.2f, -0.3f, 0.8f, 2.0f}.data(), 5,
                Sampling(0.9f, 4, 0.95f, 1.1f), std::vector<int32_t>{1, 4}, &probs);
  Rng a(77), b(77), c(78);
  std::vector<int32_t> da, db, dc;
  for (int i = 0; i < 200; ++i) {
    for (int32_t x : SampleWithoutReplacement(probs, 3, a)) da.push_back(x);
    for (int32_t x : SampleWithoutReplacement(probs, 3, b)) db.push_back(x);
    for (int32_t x : SampleWithoutReplacement(probs, 3, c)) dc.push_back(x);
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
}

// A tiny penalty divides a positive logit past FLT_MAX; the result must stay
// finite (clamped), so the distribution is a valid one instead of NaN.
TEST(SamplerTest, TinyRepetitionPenaltyKeepsTheDistributionFinite) {
  const std::vector<float> logits = {5.0f, 3.0f, -2.0f, 1.0f};
  const std::vector<int32_t> context = {0, 2};
  std::vector<float> penalised = logits;
  ApplyRepetitionPenalty(penalised.data(), 4, 1e-38f, context);
  EXPECT_EQ(penalised[0], std::numeric_limits<float>::max());
  EXPECT_FLOAT_EQ(penalised[2], -2e-38f);
  for (float huge_penalty : {1e-38f, 1e-45f, 3e38f}) {
    SamplingParams params;
    params.temperature = 1.0f;
    params.repetition_penalty = huge_penalty;
    std::vector<float> probs;
    ProcessLogits(logits.data(), 4, params, context, &probs);
    double sum = 0;
    for (float p : probs) {
      EXPECT_TRUE(std::isfinite(p)) << huge_penalty;
      sum += p;
    }
    EXPECT_NEAR(sum, 1.0, 1e-6) << huge_penalty;
    Rng rng(7);
    const int32_t token = SampleFrom(probs, rng);
    EXPECT_GE(token, 0);
    EXPECT_LT(token, 4);
  }
}

TEST(GumbelTest, NoiseIsTheChainedSplitMix64OfSeedPositionAndToken) {
  // From an independent Python implementation of the chained splitmix64 finaliser
  // (mix(mix(mix(42) ^ 7) ^ 3), top 53 bits, + 0.5 ulp): pins the noise, hence every seeded
  // text, across platforms and releases.
  EXPECT_DOUBLE_EQ(NoiseUniform(42, 7, 3), 0.958469529829377);
  EXPECT_DOUBLE_EQ(GumbelNoise(42, 7, 3), -std::log(-std::log(0.958469529829377)));
  EXPECT_NE(NoiseUniform(42, 8, 3), NoiseUniform(42, 7, 3));
  EXPECT_NE(NoiseUniform(42, 7, 4), NoiseUniform(42, 7, 3));
  EXPECT_NE(NoiseUniform(43, 7, 3), NoiseUniform(42, 7, 3));
  for (int t = 0; t < 1000; ++t) {
    const double u = NoiseUniform(0, t, t);
    EXPECT_GT(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(GumbelTest, TopKOrdersByPerturbedLogProbabilityAndSkipsZeroMass) {
  const std::vector<float> q = {0.1f, 0.0f, 0.3f, 0.2f, 0.0f, 0.4f};
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    const std::vector<int32_t> top = GumbelTopK(q, 6, seed, 9);
    ASSERT_EQ(top.size(), 4u);  // only the ids of positive mass
    for (size_t i = 1; i < top.size(); ++i) {
      EXPECT_GE(std::log(q[top[i - 1]]) + GumbelNoise(seed, 9, top[i - 1]),
                std::log(q[top[i]]) + GumbelNoise(seed, 9, top[i]));
    }
    for (int32_t id : top) EXPECT_GT(q[id], 0.0f);
    EXPECT_EQ(GumbelMax(q, seed, 9), top[0]);
    EXPECT_THAT(GumbelTopK(q, 2, seed, 9), ElementsAre(top[0], top[1]));
    EXPECT_TRUE(GumbelTopK(q, 0, seed, 9).empty());
  }
  // A one-hot (greedy) distribution: its id whatever the noise.
  EXPECT_EQ(GumbelMax(std::vector<float>{0, 0, 1, 0}, 7, 3), 2);
  // Unnormalised weights give the same choice as normalised ones (a constant log shift).
  const std::vector<float> scaled = {0.2f, 0.0f, 0.6f, 0.4f, 0.0f, 0.8f};
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    EXPECT_EQ(GumbelMax(scaled, seed, 4), GumbelMax(q, seed, 4));
  }
}

TEST(GumbelTest, GumbelMaxSamplesTheDistribution) {
  // 200000 seeds: each frequency within 5 sigma of its probability.
  const std::vector<float> p = {0.1f, 0.2f, 0.3f, 0.4f};
  constexpr int kDraws = 200000;
  std::vector<int> counts(p.size(), 0);
  for (int s = 0; s < kDraws; ++s) ++counts[GumbelMax(p, 1000 + s, 12)];
  for (size_t v = 0; v < p.size(); ++v) {
    const double sigma = std::sqrt(kDraws * p[v] * (1 - p[v]));
    EXPECT_NEAR(counts[v], kDraws * p[v], 5 * sigma) << v;
  }
}

TEST(LogprobTest, IsTheLogSoftmaxOfTheRawLogitsWithSortedAlternatives) {
  // softmax([0, ln 3]) = [1/4, 3/4].
  const std::vector<float> two = {0.0f, static_cast<float>(std::log(3.0))};
  TokenLogprob lp = LogprobOf(two.data(), 2, 0, 2);
  EXPECT_EQ(lp.token_id, 0);
  EXPECT_NEAR(lp.logprob, std::log(0.25), 1e-6);
  ASSERT_EQ(lp.top.size(), 2u);
  EXPECT_EQ(lp.top[0].token_id, 1);
  EXPECT_NEAR(lp.top[0].logprob, std::log(0.75), 1e-6);
  EXPECT_EQ(lp.top[1].token_id, 0);
  EXPECT_EQ(lp.top[1].logprob, lp.logprob);
  // Ties: lower id first; top clamps to the vocabulary; 0 gives none.
  const std::vector<float> flat = {2.0f, 5.0f, 2.0f, 5.0f, 5.0f};
  lp = LogprobOf(flat.data(), 5, 2, 4);
  ASSERT_EQ(lp.top.size(), 4u);
  EXPECT_EQ(lp.top[0].token_id, 1);
  EXPECT_EQ(lp.top[1].token_id, 3);
  EXPECT_EQ(lp.top[2].token_id, 4);
  EXPECT_EQ(lp.top[3].token_id, 0);
  const double lse = 5.0 + std::log(3.0 + 2.0 * std::exp(-3.0));
  EXPECT_NEAR(lp.top[0].logprob, 5.0 - lse, 1e-6);
  EXPECT_NEAR(lp.logprob, 2.0 - lse, 1e-6);
  EXPECT_EQ(LogprobOf(flat.data(), 5, 2, 9).top.size(), 5u);
  EXPECT_TRUE(LogprobOf(flat.data(), 5, 2, 0).top.empty());
  // Large logits stay finite (the maximum is subtracted).
  const std::vector<float> big = {1e30f, 0.0f};
  lp = LogprobOf(big.data(), 2, 1, 1);
  EXPECT_EQ(lp.top[0].logprob, 0.0f);
  EXPECT_EQ(lp.logprob, -1e30f);
}

}  // namespace
}  // namespace specmoe::engine
