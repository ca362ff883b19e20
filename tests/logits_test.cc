// tests/logits_test.cc — engine/spec/logits.h, the speculation layer's only reader of a
// forward's logits, now a thin layer over the Backend's reductions: on the CPU backend each
// function gives exactly what the host sampler (sampler.h) gives on the same row, with the
// row offset applied (FindNonFinite reports rows of the whole block). Label: cpu.
#include "engine/spec/logits.h"

#include <cmath>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "engine/spec/sampler.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace specmoe::engine {
namespace {

class LogitsTest : public ::testing::Test {
 protected:
  static constexpr int kRows = 5, kVocab = 211;

  void SetUp() override {
    std::mt19937 rng(3);
    std::normal_distribution<float> dist(0.0f, 2.0f);
    data_.resize(kRows * kVocab);
    for (float& f : data_) f = dist(rng);
    data_[3 * kVocab + 7] = data_[3 * kVocab + 9] = 12.0f;  // a tie in row 3
    view_ = LogitsView{backend_.get(), data_.data(), kRows, kVocab};
  }
  const float* Row(int r) const { return data_.data() + r * kVocab; }

  std::unique_ptr<kernels::Backend> backend_ = kernels::CreateCpuBackend(1);
  std::vector<float> data_;
  LogitsView view_;
};

TEST_F(LogitsTest, ArgmaxTopKAndDistributionEqualTheHostSampler) {
  const std::vector<int32_t> context = {7, 7, 100, 5000};
  SamplingParams sampled;
  sampled.temperature = 0.8f;
  sampled.top_k = 30;
  sampled.top_p = 0.9f;
  sampled.repetition_penalty = 1.7f;
  for (int r = 0; r < kRows; ++r) {
    SCOPED_TRACE(r);
    for (float penalty : {1.0f, 1.7f}) {
      std::vector<float> host(Row(r), Row(r) + kVocab);
      ApplyRepetitionPenalty(host.data(), kVocab, penalty, context);
      EXPECT_EQ(RowArgmax(view_, r, penalty, context), Argmax(host.data(), kVocab));
      EXPECT_EQ(RowTopKIds(view_, r, 4, penalty, context), TopKIds(host.data(), kVocab, 4));
      std::vector<float> copied;
      RowPenalizedLogits(view_, r, penalty, context, &copied);
      EXPECT_EQ(copied, host);
    }
    std::vector<float> got, want;
    RowDistribution(view_, r, sampled, context, &got);
    ProcessLogits(Row(r), kVocab, sampled, context, &want);
    EXPECT_EQ(got, want);
  }
  EXPECT_EQ(RowArgmax(view_, 3, 1.0f, {}), 7);   // the tie: lower id
  EXPECT_EQ(RowArgmax(view_, 3, 1.7f, context), 9);  // 7 penalised
}

TEST_F(LogitsTest, ArgmaxRowsIsOneCallOverABlock) {
  const std::vector<int32_t> c0 = {}, c1 = {7}, c2 = {1, 2};
  const std::span<const int32_t> contexts[] = {c0, c1, c2};
  const float penalties[] = {1.0f, 3.0f, 1.2f};
  std::vector<int32_t> out(3, -1), plain(3, -1);
  ArgmaxRows(view_, 2, penalties, contexts, out);
  ArgmaxRows(view_, 2, {}, {}, plain);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(out[i], RowArgmax(view_, 2 + i, penalties[i], contexts[i])) << i;
    EXPECT_EQ(plain[i], RowArgmax(view_, 2 + i, 1.0f, {})) << i;
  }
  EXPECT_EQ(plain[1], 7);
  EXPECT_EQ(out[1], 9);
}

TEST_F(LogitsTest, FindNonFiniteReportsRowsOfTheWholeBlock) {
  EXPECT_FALSE(FindNonFinite(view_, 0, kRows).has_value());
  data_[4 * kVocab + 3] = INFINITY;
  data_[2 * kVocab + 50] = NAN;
  std::optional<NonFinite> found = FindNonFinite(view_, 1, 4);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->row, 2);
  EXPECT_EQ(found->token, 50);
  EXPECT_TRUE(found->nan);
  found = FindNonFinite(view_, 3, 2);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->row, 4);
  EXPECT_EQ(found->token, 3);
  EXPECT_FALSE(found->nan);
  EXPECT_FALSE(FindNonFinite(view_, 0, 2).has_value());
  EXPECT_FALSE(FindNonFinite(view_, 3, 0).has_value());
}

}  // namespace
}  // namespace specmoe::engine
