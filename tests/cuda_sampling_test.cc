// tests/cuda_sampling_test.cc — the device logits reductions (kernels/cuda/sampling.h:
// argmax_rows.cu, find_non_finite.cu, processed_distribution.cu, top_k_ids.cu) against the
// CPU backend (kernels/cpu/sampling.cc through CreateCpuBackend), label cuda; skips when no
// CUDA device is visible.
//
// Rows are random normal logits, some quantised to steps of 0.25 so that many values tie,
// with and without repetition penalties (> 1 and < 1, contexts with duplicate and
// out-of-range ids). Ids must match exactly (argmax, top-k, the first non-finite value);
// probabilities within |gpu - cpu| <= 1e-6 * cpu + 1e-12 with the same support: both sides
// compute in double and round once to f32, only the order of the double sums differs.
// ProcessedDistribution's cases cover both of its sampling paths: top-k 0 with top-p 1
// (whole vocabulary: no sort, one reduction) and every other combination (sorted).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/sampling.h"

namespace specmoe::kernels {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

class CudaSamplingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::DeviceName();
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    ctx_ = std::make_unique<cuda::CudaContext>();
    ctx_->stream = stream_;
    cpu_ = CreateCpuBackend(1);
  }
  void TearDown() override {
    if (device_ != nullptr) cudaFree(device_);
    ctx_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Copies `host` to a device buffer owned by the fixture (valid until the next call).
  const float* Upload(const std::vector<float>& host) {
    if (device_ != nullptr) cudaFree(device_);
    device_ = nullptr;
    EXPECT_EQ(cudaMalloc(&device_, host.size() * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(device_, host.data(), host.size() * sizeof(float),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // a pageable copy may still be in flight
    return static_cast<const float*>(device_);
  }

  // rows x vocab random normal logits; quantised rows tie often.
  static std::vector<float> Logits(int rows, int vocab, bool quantised, std::mt19937& gen) {
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<float> x(static_cast<size_t>(rows) * vocab);
    for (float& v : x) v = quantised ? std::round(normal(gen) * 4.0f) / 4.0f : normal(gen);
    return x;
  }

  // A context of `size` ids with duplicates and a few out-of-range ids.
  static std::vector<int32_t> Context(int size, int vocab, std::mt19937& gen) {
    std::uniform_int_distribution<int32_t> id(0, vocab - 1);
    std::vector<int32_t> c;
    for (int i = 0; i < size; ++i) {
      const int32_t t = id(gen);
      c.push_back(t);
      if (i % 3 == 0) c.push_back(t);  // duplicate: penalised once
    }
    c.push_back(-1);
    c.push_back(vocab);
    c.push_back(vocab + 1000);
    return c;
  }

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::CudaContext> ctx_;
  std::unique_ptr<Backend> cpu_;
  void* device_ = nullptr;
};

TEST_F(CudaSamplingTest, ArgmaxRowsMatchesCpu) {
  std::mt19937 gen(11);
  for (int vocab : {1, 7, 1000, 32000}) {
    for (int rows : {1, 5, 64}) {
      for (bool quantised : {false, true}) {
        std::vector<float> x = Logits(rows, vocab, quantised, gen);
        const float* d = Upload(x);
        std::vector<std::vector<int32_t>> contexts(rows);
        std::vector<RowPenalty> penalties(rows);
        std::vector<int32_t> want(rows), got(rows, -1);
        for (int r = 0; r < rows; ++r) {
          // Penalise the row's own argmax (repeated) so the penalty changes the answer.
          const int32_t top = ArgmaxRow(x.data() + static_cast<size_t>(r) * vocab, vocab);
          contexts[r] = Context(r % 4 == 0 ? 0 : 20 + r, vocab, gen);
          contexts[r].push_back(top);
          contexts[r].push_back(top);
          const float factor = r % 4 == 1 ? 1.0f : (r % 4 == 2 ? 1.3f : 0.7f);
          penalties[r] = RowPenalty{factor, contexts[r].data(),
                                    static_cast<int>(contexts[r].size())};
        }
        SCOPED_TRACE("vocab " + std::to_string(vocab) + " rows " + std::to_string(rows) +
                     (quantised ? " quantised" : ""));
        cpu_->ArgmaxRows(x.data(), rows, vocab, nullptr, want.data());
        cuda::ArgmaxRows(d, rows, vocab, nullptr, got.data(), *ctx_);
        EXPECT_EQ(got, want) << "without penalties";
        cpu_->ArgmaxRows(x.data(), rows, vocab, penalties.data(), want.data());
        cuda::ArgmaxRows(d, rows, vocab, penalties.data(), got.data(), *ctx_);
        EXPECT_EQ(got, want) << "with penalties";
      }
    }
  }
}

TEST_F(CudaSamplingTest, ArgmaxRowsNonFiniteRules) {
  const int vocab = 1000;
  std::mt19937 gen(12);
  std::vector<float> x = Logits(6, vocab, false, gen);
  x[0 * vocab + 0] = kNaN;  // NaN first: the CPU keeps id 0
  x[1 * vocab + 10] = kNaN;  // NaN later: skipped
  x[1 * vocab + 11] = 50.0f;
  x[2 * vocab + 400] = kInf;  // +inf twice: the first
  x[2 * vocab + 20] = kInf;
  for (int i = 0; i < vocab; ++i) x[3 * vocab + i] = -kInf;  // all -inf: id 0
  for (int i = 0; i < vocab; ++i) x[4 * vocab + i] = i % 2 ? kNaN : -kInf;
  x[5 * vocab + 999] = 1e30f;  // the last id
  const float* d = Upload(x);
  std::vector<int32_t> want(6), got(6, -1);
  cpu_->ArgmaxRows(x.data(), 6, vocab, nullptr, want.data());
  cuda::ArgmaxRows(d, 6, vocab, nullptr, got.data(), *ctx_);
  EXPECT_EQ(got, want);
  EXPECT_EQ(want, (std::vector<int32_t>{0, 11, 20, 0, 0, 999}));
}

TEST_F(CudaSamplingTest, FindNonFiniteMatchesCpu) {
  std::mt19937 gen(13);
  struct Poison {
    size_t index;
    float value;
  };
  const int rows = 256, vocab = 32000;
  const size_t last = static_cast<size_t>(rows) * vocab - 1;
  const std::vector<std::vector<Poison>> cases = {
      {},
      {{0, -kInf}},
      {{last, kInf}},
      {{last, kNaN}},
      {{3 * vocab + 17, kNaN}, {3 * vocab + 18, kInf}, {200 * vocab, kNaN}},
      {{100 * vocab + 5, kInf}, {99 * vocab + 31999, -kInf}},
  };
  std::vector<float> clean = Logits(rows, vocab, false, gen);
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    std::vector<float> x = clean;
    for (const Poison& p : cases[c]) x[p.index] = p.value;
    const float* d = Upload(x);
    NonFiniteValue want{-1, -1, false}, got{-1, -1, false};
    const bool want_found = cpu_->FindNonFinite(x.data(), rows, vocab, &want);
    const bool got_found = cuda::FindNonFinite(d, rows, vocab, &got, *ctx_);
    ASSERT_EQ(got_found, want_found);
    EXPECT_EQ(got_found, !cases[c].empty());
    if (!want_found) continue;
    EXPECT_EQ(got.row, want.row);
    EXPECT_EQ(got.index, want.index);
    EXPECT_EQ(got.nan, want.nan);
  }
  // Small blocks: one row, odd sizes.
  for (int v : {1, 3, 999}) {
    std::vector<float> x = Logits(2, v, false, gen);
    x[v + v / 2] = kNaN;
    const float* d = Upload(x);
    NonFiniteValue want, got;
    ASSERT_TRUE(cpu_->FindNonFinite(x.data(), 2, v, &want));
    ASSERT_TRUE(cuda::FindNonFinite(d, 2, v, &got, *ctx_));
    EXPECT_EQ(got.row, want.row);
    EXPECT_EQ(got.index, want.index);
    EXPECT_EQ(got.nan, want.nan);
    EXPECT_FALSE(cuda::FindNonFinite(d, 1, v, &got, *ctx_));
  }
}

TEST_F(CudaSamplingTest, TopKIdsMatchesCpu) {
  std::mt19937 gen(14);
  for (int vocab : {1, 7, 1000, 32000}) {
    for (bool quantised : {false, true}) {
      std::vector<float> x = Logits(1, vocab, quantised, gen);
      if (vocab > 5) {
        x[2] = -0.0f;  // -0 and +0 tie: lower id first
        x[5] = 0.0f;
      }
      const float* d = Upload(x);
      std::vector<int32_t> context = Context(50, vocab, gen);
      for (float factor : {1.0f, 1.3f, 0.7f}) {
        const RowPenalty penalty{factor, context.data(), static_cast<int>(context.size())};
        for (int k : {0, 1, 2, 8, 40, vocab - 1, vocab, vocab + 3}) {
          if (k < 0) continue;
          SCOPED_TRACE("vocab " + std::to_string(vocab) + " k " + std::to_string(k) +
                       " penalty " + std::to_string(factor) + (quantised ? " quantised" : ""));
          const int n = std::min(k, vocab);
          std::vector<int32_t> want(n + 1, -7), got(n + 1, -7);
          cpu_->TopKIds(x.data(), vocab, k, penalty, want.data());
          cuda::TopKIds(d, vocab, k, penalty, got.data(), *ctx_);
          EXPECT_EQ(got, want);
          EXPECT_EQ(got[n], -7) << "wrote past min(k, vocab)";
        }
      }
    }
  }
}

TEST_F(CudaSamplingTest, ProcessedDistributionMatchesCpu) {
  std::mt19937 gen(15);
  for (int vocab : {1, 1000, 32000}) {
    for (bool quantised : {false, true}) {
      std::vector<float> x = Logits(1, vocab, quantised, gen);
      const float* d = Upload(x);
      std::vector<int32_t> context = Context(200, vocab, gen);
      for (float factor : {1.0f, 1.3f}) {
        const RowPenalty penalty{factor, context.data(), static_cast<int>(context.size())};
        for (float temperature : {0.0f, 0.5f, 1.0f, 1.7f}) {
          for (int top_k : {0, 1, 40, vocab - 1}) {
            for (float top_p : {1.0f, 0.9f, 0.3f, 0.0f}) {
              SCOPED_TRACE("vocab " + std::to_string(vocab) + " penalty " +
                           std::to_string(factor) + " T " + std::to_string(temperature) +
                           " top_k " + std::to_string(top_k) + " top_p " +
                           std::to_string(top_p) + (quantised ? " quantised" : ""));
              const LogitsProcessing processing{temperature, top_k, top_p};
              std::vector<float> want(vocab), got(vocab, -1.0f);
              cpu_->ProcessedDistribution(x.data(), vocab, penalty, processing, want.data());
              cuda::ProcessedDistribution(d, vocab, penalty, processing, got.data(), *ctx_);
              for (int i = 0; i < vocab; ++i) {
                ASSERT_EQ(got[i] > 0.0f, want[i] > 0.0f) << "support differs at " << i;
                ASSERT_LE(std::fabs(got[i] - want[i]), 1e-6f * want[i] + 1e-12f)
                    << "at " << i << ": gpu " << got[i] << " cpu " << want[i];
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace specmoe::kernels
