// tests/cpu_backend_test.cc — the CPU backend (kernels/cpu) against naive double-precision
// references written here, and bit-exact batch invariance of MatMul, Attention and
// MoeExperts (kernels/README.md, Batch invariance), the fused ops equal to the separate ones
// bit for bit; the forward's description (BeginForward,
// GatherRows), the MoE routing kept in backend buffers, and the logits reductions (ArgmaxRows,
// FindNonFinite, ProcessedDistribution, TopKIds) against scalar references. Label: cpu.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <limits>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/bandwidth.h"
#include "kernels/cpu/f16.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cpu/thread_pool.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace specmoe::kernels {
namespace {

// A weight stored at a deliberately odd address, with its exact values as doubles.
struct TestWeight {
  std::vector<uint8_t> storage;
  std::vector<double> values;  // [rows, cols], the stored values exactly
  Weight w;
};

// The data starts `offset` bytes into a vector (2: not even 4-byte aligned).
TestWeight MakeWeight(DType dtype, int64_t rows, int64_t cols, uint32_t seed, float stddev = 0.05f,
                      size_t offset = 2) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  TestWeight t;
  const size_t elem = DTypeBytes(dtype);
  t.storage.resize(offset + rows * cols * elem);
  t.values.resize(rows * cols);
  uint8_t* base = t.storage.data() + offset;
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float f = dist(rng);
    if (dtype == DType::kF32) {
      std::memcpy(base + i * 4, &f, 4);
      t.values[i] = f;
    } else {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16(f) : F32ToBf16(f);
      std::memcpy(base + i * 2, &h, 2);
      t.values[i] = dtype == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
    }
  }
  t.w = Weight{base, dtype, rows, cols};
  return t;
}

std::vector<float> RandomVector(size_t count, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(count);
  for (float& f : v) f = dist(rng);
  return v;
}

// y = x . W^T in double; also returns sum |w x| per output (the error scale).
void RefMatMul(const std::vector<float>& x, int n, const TestWeight& t, std::vector<double>* y,
               std::vector<double>* magnitude) {
  const int64_t out = t.w.rows, in = t.w.cols;
  y->assign(n * out, 0.0);
  magnitude->assign(n * out, 0.0);
  for (int r = 0; r < n; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0.0, m = 0.0;
      for (int64_t k = 0; k < in; ++k) {
        const double p = t.values[o * in + k] * static_cast<double>(x[r * in + k]);
        s += p;
        m += std::fabs(p);
      }
      (*y)[r * out + o] = s;
      (*magnitude)[r * out + o] = m;
    }
  }
}

// A description of n tokens with only the arrays an op reads set (the CPU backend keeps
// host pointers).
ForwardDesc TokensDesc(int n, const int32_t* tokens, const int32_t* positions,
                       const int32_t* slots) {
  ForwardDesc d;
  d.n_tokens = n;
  d.tokens = tokens;
  d.positions = positions;
  d.slots = slots;
  return d;
}

// MoE routing buffers for n tokens, k choices, e experts (host vectors: CPU backend memory).
struct Routing {
  std::vector<int32_t> idx, pairs, counts, offsets;
  std::vector<float> weight;
  MoeRouting r;
  Routing(int n, int k, int e)
      : idx(n * k, -7), pairs(n * k, -7), counts(e, -7), offsets(e + 1, -7), weight(n * k, NAN) {
    r = MoeRouting{idx.data(), weight.data(), counts.data(), offsets.data(), pairs.data()};
  }
};

class CpuBackendTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend_ = CreateCpuBackend(2);
};

// ---------------------------------------------------------------------------------------
// MatMul

struct MatMulCase {
  DType dtype;
  int64_t out;
  int64_t in;
  size_t offset = 2;  // byte offset of the weight data (4: f32 straight to sgemm)
};

TEST_F(CpuBackendTest, MatMulMatchesReference) {
  const MatMulCase cases[] = {
      {DType::kF32, 67, 4096 + 8},    {DType::kF16, 67, 4096 + 8}, {DType::kBF16, 67, 4096 + 8},
      {DType::kF32, 13, 301},         {DType::kF16, 5, 37},        {DType::kBF16, 9, 7},
      {DType::kF32, 67, 4096 + 8, 4}, {DType::kF32, 13, 301, 4},
  };
  for (const MatMulCase& c : cases) {
    const TestWeight t = MakeWeight(c.dtype, c.out, c.in, 7, 0.05f, c.offset);
    for (int n : {1, 2, 3, 4, 5, 8, 63, 64, 65, 130, 257}) {
      SCOPED_TRACE(std::string(DTypeName(c.dtype)) + " out=" + std::to_string(c.out) +
                   " in=" + std::to_string(c.in) + " n=" + std::to_string(n));
      const std::vector<float> x = RandomVector(n * c.in, 100 + n);
      std::vector<float> y(n * c.out, NAN);
      backend_->MatMul(x.data(), n, t.w, y.data());
      std::vector<double> ref, mag;
      RefMatMul(x, n, t, &ref, &mag);
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_NEAR(y[i], ref[i], 1e-5 * mag[i] + 1e-30) << "output " << i;
      }
    }
  }
}

// Every row count 1..300 (primes, and sizes on both sides of the kernels' blockings: row
// groups of 12 (AVX-512) and 6 (AVX2), several groups per panel) gives each row the bits it
// has alone on one thread; output counts cover partial panels of 32 outputs. (The order
// itself is checked against a scalar fmaf loop in tests/cpu_matmul_test.cc.)
TEST_F(CpuBackendTest, MatMulIsBatchInvariantForEveryRowCount) {
  const MatMulCase cases[] = {
      {DType::kF32, 67, 4096 + 8}, {DType::kF16, 67, 4096 + 8}, {DType::kBF16, 67, 4096 + 8},
      {DType::kF32, 13, 301},      {DType::kF16, 6, 37},        {DType::kBF16, 3, 1000},
      {DType::kF32, 25, 264, 4},   {DType::kBF16, 49, 520},
  };
  std::unique_ptr<Backend> one_thread = CreateCpuBackend(1);
  std::unique_ptr<Backend> three_threads = CreateCpuBackend(3);
  constexpr int kMax = 300;
  for (const MatMulCase& c : cases) {
    SCOPED_TRACE(std::string(DTypeName(c.dtype)) + " out=" + std::to_string(c.out) +
                 " in=" + std::to_string(c.in));
    const TestWeight t = MakeWeight(c.dtype, c.out, c.in, 11, 0.05f, c.offset);
    // Prepared once (as at load); the backends may share it.
    const Weight w = backend_->PrepareLinear(t.w);
    const std::vector<float> x = RandomVector(kMax * c.in, 12);
    const size_t row_bytes = c.out * sizeof(float);
    // Reference bits: every row alone on one thread.
    std::vector<float> alone(kMax * c.out);
    for (int r = 0; r < kMax; ++r) {
      one_thread->MatMul(x.data() + r * c.in, 1, w, alone.data() + r * c.out);
    }
    // Rows [0, n) together, for every n (the larger shapes at a sample of n around the
    // blockings and primes, to keep the test short).
    const bool every_n = c.in * c.out < 100000;
    for (int n = 1; n <= kMax; ++n) {
      const bool sampled = n < 12 || n % 4 == 3 || n % 4 == 1 || n == 16 || n == 128 ||
                           n == 129 || n == 256 || n == 257 || n == 300;
      if (!every_n && !sampled) continue;
      std::vector<float> y(n * c.out);
      backend_->MatMul(x.data(), n, w, y.data());
      ASSERT_EQ(std::memcmp(y.data(), alone.data(), n * row_bytes), 0) << "n=" << n;
    }
    // A window of rows starting elsewhere, on another thread count.
    for (int start : {1, 17, 40, 131}) {
      const int n = kMax - start;
      std::vector<float> y(n * c.out);
      three_threads->MatMul(x.data() + start * c.in, n, w, y.data());
      ASSERT_EQ(std::memcmp(y.data(), alone.data() + start * c.out, n * row_bytes), 0)
          << "start " << start;
    }
  }
}

// The fused form (q/k/v, gate/up) gives the bits of separate calls, for every dtype and on
// both kernels; matrices of different output sizes share the split.
TEST_F(CpuBackendTest, MatMulManyEqualsSeparateCalls) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const TestWeight a = MakeWeight(dtype, 67, 520, 21);
    const TestWeight b = MakeWeight(dtype, 13, 520, 22);
    const TestWeight c = MakeWeight(dtype, 25, 520, 23);
    const Weight ws[3] = {a.w, b.w, c.w};
    for (int n : {1, 2, 3, 4, 7, 64, 130}) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " n=" + std::to_string(n));
      const std::vector<float> x = RandomVector(n * 520, 24);
      std::vector<float> fused[3], alone[3];
      float* outs[3];
      for (int i = 0; i < 3; ++i) {
        fused[i].assign(n * ws[i].rows, NAN);
        alone[i].assign(n * ws[i].rows, NAN);
        outs[i] = fused[i].data();
        backend_->MatMul(x.data(), n, ws[i], alone[i].data());
      }
      backend_->MatMulMany(x.data(), n, ws, outs, 3);
      for (int i = 0; i < 3; ++i) {
        ASSERT_EQ(std::memcmp(fused[i].data(), alone[i].data(), fused[i].size() * sizeof(float)),
                  0)
            << "matrix " << i;
      }
    }
  }
}

// The fused ops of backend.h against their defaults (Backend::..., the separate ops run one
// after the other): bit for bit, for every dtype, row counts around the row groups and the
// K-blocks, raw and prepared weights, an odd output count (a partial panel).
TEST_F(CpuBackendTest, FusedOpsEqualTheSeparateOps) {
  const int in = 520, out = 67;
  Backend& be = *backend_;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const TestWeight a = MakeWeight(dtype, out, in, 31);
    const TestWeight b = MakeWeight(dtype, 2 * out, in, 32);
    const TestWeight norm = MakeWeight(dtype, 1, in, 33, 1.0f);
    const TestWeight c = MakeWeight(dtype, out, in, 34);
    for (bool prepared : {false, true}) {
      const Weight wa = prepared ? be.PrepareLinear(a.w) : a.w;
      const Weight wb = prepared ? be.PrepareLinear(b.w) : b.w;
      const Weight gate = a.w, up = c.w;
      for (int n : {1, 2, 5, 12, 13, 16, 24, 25, 64, 130, 300}) {
        SCOPED_TRACE(std::string(DTypeName(dtype)) + (prepared ? " prepared" : " raw") +
                     " n=" + std::to_string(n));
        const std::vector<float> x = RandomVector(static_cast<size_t>(n) * in, 35 + n);
        const auto same = [](const std::vector<float>& p, const std::vector<float>& q) {
          return p.size() == q.size() && std::memcmp(p.data(), q.data(), p.size() * 4) == 0;
        };
        // RmsNorm into q/k/v-like products.
        const Weight ws[2] = {wa, wb};
        std::vector<float> xb[2], y0[2], y1[2];
        for (int i = 0; i < 2; ++i) {
          xb[i].assign(static_cast<size_t>(n) * in, NAN);
          y0[i].assign(static_cast<size_t>(n) * out, NAN);
          y1[i].assign(static_cast<size_t>(n) * 2 * out, NAN);
        }
        float* const outs0[2] = {y0[0].data(), y1[0].data()};
        float* const outs1[2] = {y0[1].data(), y1[1].data()};
        be.RmsNormMatMulMany(x.data(), n, in, norm.w, 1e-5f, xb[0].data(), ws, outs0, 2);
        be.Backend::RmsNormMatMulMany(x.data(), n, in, norm.w, 1e-5f, xb[1].data(), ws, outs1, 2);
        ASSERT_TRUE(same(xb[0], xb[1]));
        ASSERT_TRUE(same(y0[0], y0[1]));
        ASSERT_TRUE(same(y1[0], y1[1]));
        // The residual add in the epilogue.
        std::vector<float> res[2], tmp(static_cast<size_t>(n) * out);
        res[0] = RandomVector(static_cast<size_t>(n) * out, 36);
        res[1] = res[0];
        be.MatMulAdd(x.data(), n, wa, tmp.data(), res[0].data());
        be.Backend::MatMulAdd(x.data(), n, wa, tmp.data(), res[1].data());
        ASSERT_TRUE(same(res[0], res[1]));
        // SiLU-mul in the epilogue of gate/up.
        std::vector<float> g[2], u(static_cast<size_t>(n) * out);
        for (int i = 0; i < 2; ++i) g[i].assign(static_cast<size_t>(n) * out, NAN);
        const Weight pg = prepared ? be.PrepareLinear(gate) : gate;
        const Weight pu = prepared ? be.PrepareLinear(up) : up;
        be.GateUpSiluMul(x.data(), n, pg, pu, g[0].data(), u.data());
        be.Backend::GateUpSiluMul(x.data(), n, pg, pu, g[1].data(), u.data());
        ASSERT_TRUE(same(g[0], g[1]));
      }
    }
  }
  // RoPE of q and k with the KV write, f32 and f16 caches.
  const int heads = 4, kv_heads = 2, head_dim = 64, row = kv_heads * head_dim;
  for (DType kv : {DType::kF32, DType::kF16}) {
    for (int n : {1, 3, 40, 300}) {
      SCOPED_TRACE(std::string(DTypeName(kv)) + " n=" + std::to_string(n));
      std::vector<int32_t> pos(n), slots(n);
      for (int t = 0; t < n; ++t) {
        pos[t] = 3 * t + 1;
        slots[t] = n - 1 - t;
      }
      const ForwardDesc* fwd = be.BeginForward(TokensDesc(n, nullptr, pos.data(), slots.data()));
      const std::vector<float> q0 = RandomVector(static_cast<size_t>(n) * heads * head_dim, 37);
      const std::vector<float> k0 = RandomVector(static_cast<size_t>(n) * row, 38);
      const std::vector<float> v = RandomVector(static_cast<size_t>(n) * row, 39);
      std::vector<float> q[2] = {q0, q0}, k[2] = {k0, k0};
      const size_t cache_bytes = static_cast<size_t>(n) * row * DTypeBytes(kv);
      std::vector<uint8_t> kc[2], vc[2];
      for (int i = 0; i < 2; ++i) {
        kc[i].assign(cache_bytes, 0xAB);
        vc[i].assign(cache_bytes, 0xCD);
      }
      const RopeScaling scaling{};
      be.RopeKvWrite(q[0].data(), k[0].data(), v.data(), *fwd, heads, kv_heads, head_dim,
                     10000.0f, scaling, kv, kc[0].data(), vc[0].data());
      be.Backend::RopeKvWrite(q[1].data(), k[1].data(), v.data(), *fwd, heads, kv_heads,
                              head_dim, 10000.0f, scaling, kv, kc[1].data(), vc[1].data());
      ASSERT_EQ(std::memcmp(q[0].data(), q[1].data(), q[0].size() * 4), 0);
      ASSERT_EQ(std::memcmp(k[0].data(), k[1].data(), k[0].size() * 4), 0);
      ASSERT_EQ(kc[0], kc[1]);
      ASSERT_EQ(vc[0], vc[1]);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Small ops

TEST_F(CpuBackendTest, EmbeddingConvertsRows) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const TestWeight t = MakeWeight(dtype, 50, 19, 3);
    const int32_t ids[] = {49, 0, 7, 7};
    std::vector<float> out(4 * 19);
    backend_->Embedding(*backend_->BeginForward(TokensDesc(4, ids, nullptr, nullptr)), t.w,
                        out.data());
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 19; ++j) {
        ASSERT_EQ(out[i * 19 + j], static_cast<float>(t.values[ids[i] * 19 + j]));
      }
    }
  }
}

TEST_F(CpuBackendTest, RmsNormMatchesReference) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int d : {64, 4096, 13}) {
      const int n = 5;
      const TestWeight t = MakeWeight(dtype, 1, d, 4, 1.0f);
      const std::vector<float> x = RandomVector(n * d, 5, 3.0f);
      std::vector<float> y(n * d);
      backend_->RmsNorm(x.data(), n, d, t.w, 1e-6f, y.data());
      std::vector<float> in_place = x;
      backend_->RmsNorm(in_place.data(), n, d, t.w, 1e-6f, in_place.data());
      EXPECT_EQ(std::memcmp(in_place.data(), y.data(), y.size() * 4), 0);
      for (int r = 0; r < n; ++r) {
        double ss = 0;
        for (int i = 0; i < d; ++i) ss += static_cast<double>(x[r * d + i]) * x[r * d + i];
        const double inv = 1.0 / std::sqrt(ss / d + 1e-6);
        for (int i = 0; i < d; ++i) {
          const double ref = t.values[i] * x[r * d + i] * inv;
          ASSERT_NEAR(y[r * d + i], ref, 1e-5 * std::fabs(ref) + 1e-7) << d << " " << i;
        }
      }
    }
  }
}

TEST_F(CpuBackendTest, RopeMatchesHuggingFaceFormula) {
  const int n = 4, n_heads = 3;
  const int32_t pos[] = {0, 1, 17, 2047};
  for (int head_dim : {64, 10}) {
    for (float theta : {10000.0f, 500000.0f}) {
      std::vector<float> x = RandomVector(n * n_heads * head_dim, 6);
      const std::vector<float> original = x;
      backend_->Rope(x.data(), *backend_->BeginForward(TokensDesc(n, nullptr, pos, nullptr)),
                     n_heads, head_dim, theta, {});
      const int half = head_dim / 2;
      for (int t = 0; t < n; ++t) {
        for (int h = 0; h < n_heads; ++h) {
          const float* in = original.data() + (t * n_heads + h) * head_dim;
          const float* got = x.data() + (t * n_heads + h) * head_dim;
          for (int j = 0; j < half; ++j) {
            // transformers: inv_freq and the angle are fp32; cos/sin from that angle.
            const float inv_freq =
                1.0f / std::pow(theta, static_cast<float>(2 * j) / static_cast<float>(head_dim));
            const double angle = static_cast<float>(pos[t]) * inv_freq;
            const double c = std::cos(angle), s = std::sin(angle);
            const double r1 = in[j] * c - in[j + half] * s;
            const double r2 = in[j + half] * c + in[j] * s;
            ASSERT_NEAR(got[j], r1, 1e-5 * (std::fabs(in[j]) + std::fabs(in[j + half])));
            ASSERT_NEAR(got[j + half], r2, 1e-5 * (std::fabs(in[j]) + std::fabs(in[j + half])));
            if (pos[t] == 0) {
              ASSERT_EQ(got[j], in[j]);
              ASSERT_EQ(got[j + half], in[j + half]);
            }
          }
        }
      }
    }
  }
}

TEST_F(CpuBackendTest, SiluMulAddTanhMatchReference) {
  const int n = 3, d = 40000;  // large enough to run on both threads
  const std::vector<float> gate = RandomVector(n * d, 7, 4.0f);
  const std::vector<float> up = RandomVector(n * d, 8);
  std::vector<float> out(n * d);
  backend_->SiluMul(gate.data(), up.data(), n, d, out.data());
  for (int i = 0; i < n * d; ++i) {
    const double a = gate[i];
    const double ref = a / (1.0 + std::exp(-a)) * up[i];
    ASSERT_NEAR(out[i], ref, 1e-5 * std::fabs(ref) + 1e-30) << i;
  }
  std::vector<float> aliased = gate;
  backend_->SiluMul(aliased.data(), up.data(), n, d, aliased.data());
  EXPECT_EQ(std::memcmp(aliased.data(), out.data(), out.size() * 4), 0);

  std::vector<float> y = up;
  backend_->Add(gate.data(), y.size(), y.data());
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], up[i] + gate[i]);

  std::vector<float> t = gate;
  backend_->Tanh(t.data(), t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    ASSERT_NEAR(t[i], std::tanh(static_cast<double>(gate[i])), 1e-6) << i;
  }
}

TEST_F(CpuBackendTest, KvWriteAndMove) {
  const int row = 6, slots_total = 10;
  std::vector<float> k_cache(slots_total * row, -1.0f), v_cache(slots_total * row, -2.0f);
  const std::vector<float> k = RandomVector(3 * row, 9), v = RandomVector(3 * row, 10);
  const int32_t slots[] = {7, 2, 9};
  const ForwardDesc* taken = backend_->BeginForward(TokensDesc(3, nullptr, nullptr, slots));
  backend_->KvWrite(k.data(), v.data(), *taken, row, DType::kF32, k_cache.data(), v_cache.data());
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < row; ++j) {
      ASSERT_EQ(k_cache[slots[i] * row + j], k[i * row + j]);
      ASSERT_EQ(v_cache[slots[i] * row + j], v[i * row + j]);
    }
  }
  ASSERT_EQ(k_cache[0], -1.0f);
  // A second layer holding other values: KvCompact moves every layer in one call.
  std::vector<float> k1_cache(k_cache.size()), v1_cache(v_cache.size());
  for (size_t i = 0; i < k_cache.size(); ++i) {
    k1_cache[i] = 10.0f + k_cache[i];
    v1_cache[i] = 20.0f + v_cache[i];
  }
  // In order: slot 2 -> 3, then 7 -> 2 (after the first move), then 9 -> 4.
  const int32_t src[] = {2, 7, 9};
  const int32_t dst[] = {3, 2, 4};
  void* const k_pools[] = {k_cache.data(), k1_cache.data()};
  void* const v_pools[] = {v_cache.data(), v1_cache.data()};
  backend_->KvCompact(src, dst, 3, row, DType::kF32, k_pools, v_pools, 2);
  for (int j = 0; j < row; ++j) {
    EXPECT_EQ(k_cache[3 * row + j], k[1 * row + j]);
    EXPECT_EQ(k_cache[2 * row + j], k[0 * row + j]);
    EXPECT_EQ(v_cache[4 * row + j], v[2 * row + j]);
    EXPECT_EQ(k1_cache[3 * row + j], 10.0f + k[1 * row + j]);
    EXPECT_EQ(k1_cache[2 * row + j], 10.0f + k[0 * row + j]);
    EXPECT_EQ(v1_cache[4 * row + j], 20.0f + v[2 * row + j]);
    EXPECT_EQ(v1_cache[9 * row + j], 20.0f + v[2 * row + j]);  // a source stays
  }
}

TEST_F(CpuBackendTest, TopKSoftmaxOrdersAndBreaksTiesByIndex) {
  const float logits[] = {0.5f,  2.0f,  -1.0f, 2.0f,  1.0f,  0.5f,  // row 0
                          -3.0f, -3.0f, -3.0f, -3.0f, -3.0f, -3.0f};
  Routing routing(2, 3, 6);
  backend_->TopKSoftmax(logits, 2, 6, 3, routing.r);
  const std::vector<int32_t>& idx = routing.idx;
  const std::vector<float>& weight = routing.weight;
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[1], 3);
  EXPECT_EQ(idx[2], 4);
  const double e1 = std::exp(-1.0);
  EXPECT_NEAR(weight[0], 1.0 / (2 + e1), 1e-7);
  EXPECT_NEAR(weight[1], 1.0 / (2 + e1), 1e-7);
  EXPECT_NEAR(weight[2], e1 / (2 + e1), 1e-7);
  EXPECT_EQ(idx[3], 0);
  EXPECT_EQ(idx[4], 1);
  EXPECT_EQ(idx[5], 2);
  EXPECT_FLOAT_EQ(weight[3], 1.0f / 3);
  // Pairs t * k + j grouped by expert: expert 0 <- pair 3, 1 <- 0 and 4, 2 <- 5, 3 <- 1,
  // 4 <- 2, 5 <- none.
  EXPECT_EQ(routing.counts, (std::vector<int32_t>{1, 2, 1, 1, 1, 0}));
  EXPECT_EQ(routing.offsets, (std::vector<int32_t>{0, 1, 3, 4, 5, 6, 6}));
  EXPECT_EQ(routing.pairs, (std::vector<int32_t>{3, 0, 4, 5, 1, 2}));
}

// NaN gate logits rank after every number (kernels/routing_order.h): every row routes to k
// distinct experts in a fixed order, and a row with a NaN among its choices gets NaN weights.
TEST_F(CpuBackendTest, TopKSoftmaxRanksNanLastAndPicksDistinctExperts) {
  const float nan = std::nanf("");
  const float inf = std::numeric_limits<float>::infinity();
  const int n = 5, e = 4, k = 3;
  const float logits[] = {nan,  1.0f, nan,  0.5f,   // NaN at experts 0 and 2
                          nan,  nan,  nan,  nan,    // all NaN
                          -inf, nan,  2.0f, -inf,   // -inf still before NaN
                          0.0f, 1.0f, 2.0f, 3.0f,   // no NaN
                          nan,  nan,  nan,  -1.0f};
  Routing routing(n, k, e);
  backend_->TopKSoftmax(logits, n, e, k, routing.r);
  EXPECT_EQ(routing.idx, (std::vector<int32_t>{1, 3, 0, 0, 1, 2, 2, 0, 3, 3, 2, 1, 3, 0, 1}));
  for (int t = 0; t < n; ++t) {
    const bool nan_chosen = t == 0 || t == 1 || t == 4;  // rows 2 and 3 choose only numbers
    for (int j = 0; j < k; ++j) {
      EXPECT_EQ(std::isnan(routing.weight[t * k + j]), nan_chosen) << t << " " << j;
    }
  }
  EXPECT_FLOAT_EQ(routing.weight[6], 1.0f);  // row 2: exp(2 - 2) against two exp(-inf)
  EXPECT_EQ(routing.weight[7], 0.0f);
  // Every expert's run holds its pairs; the counts cover all n * k pairs.
  EXPECT_EQ(routing.counts, (std::vector<int32_t>{4, 4, 3, 4}));
  EXPECT_EQ(routing.offsets[e], n * k);
}

// The routing of random gate logits against a scalar regrouping: every expert's run holds
// exactly its pairs, in increasing order.
TEST_F(CpuBackendTest, TopKSoftmaxGroupsPairsByExpert) {
  const int n = 37, k = 2, e = 5;
  const std::vector<float> logits = RandomVector(n * e, 33);
  Routing routing(n, k, e);
  backend_->TopKSoftmax(logits.data(), n, e, k, routing.r);
  ASSERT_EQ(routing.offsets[0], 0);
  for (int x = 0; x < e; ++x) {
    std::vector<int32_t> expected;
    for (int p = 0; p < n * k; ++p) {
      if (routing.idx[p] == x) expected.push_back(p);
    }
    ASSERT_EQ(routing.counts[x], static_cast<int>(expected.size())) << x;
    ASSERT_EQ(routing.offsets[x + 1] - routing.offsets[x], routing.counts[x]) << x;
    const std::vector<int32_t> got(routing.pairs.begin() + routing.offsets[x],
                                   routing.pairs.begin() + routing.offsets[x + 1]);
    ASSERT_EQ(got, expected) << x;
  }
}

// ---------------------------------------------------------------------------------------
// Attention

// A paged cache with a scrambled block table, a prefill sequence and a tree sequence.
struct AttentionSetup {
  static constexpr int kHeads = 4, kKvHeads = 2, kBlock = 4, kMaxBlocks = 6, kBlocks = 12;
  int head_dim;
  std::vector<float> k_cache, v_cache;
  std::vector<int32_t> block_tables;  // [2, kMaxBlocks]
  std::vector<float> q;               // [tokens, heads, head_dim]
  std::vector<int32_t> token_seq, visible_prefix, tree_start;
  std::vector<uint64_t> tree_mask;
  ForwardDesc fwd;  // the tables above, taken (pointers kept by the CPU backend)

  explicit AttentionSetup(int d) : head_dim(d) {
    const int slots = kBlocks * kBlock;
    k_cache = RandomVector(slots * kKvHeads * d, 20);
    v_cache = RandomVector(slots * kKvHeads * d, 21);
    block_tables = {5, 2,  9, 0, 7, 11,  // seq 0
                    3, 10, 1, 8, 4, 6};  // seq 1
    // Seq 0: causal prefill of 11 tokens (token t sees [0, t]).
    for (int t = 0; t < 11; ++t) {
      token_seq.push_back(0);
      visible_prefix.push_back(t + 1);
      tree_mask.push_back(0);
    }
    // Seq 1: 9 committed tokens, then a tree at logical slots 9..13:
    // node 0 (root) <- 1 <- 3, node 0 <- 2 <- 4. Each node sees itself and its ancestors.
    const uint64_t masks[] = {0b00001, 0b00011, 0b00101, 0b01011, 0b10101};
    for (uint64_t m : masks) {
      token_seq.push_back(1);
      visible_prefix.push_back(9);
      tree_mask.push_back(m);
    }
    tree_start = {1000, 9};  // seq 0 has no tree bits set
    q = RandomVector(token_seq.size() * kHeads * d, 22);
  }

  int tokens() const { return static_cast<int>(token_seq.size()); }

  // The description of tokens [first, first + n) (all of them by default).
  ForwardDesc Desc(int first = 0, int n = -1) const {
    ForwardDesc d;
    d.n_tokens = n < 0 ? tokens() : n;
    d.n_seqs = 2;
    d.max_blocks_per_seq = kMaxBlocks;
    d.token_seq = token_seq.data() + first;
    d.visible_prefix = visible_prefix.data() + first;
    d.tree_mask = tree_mask.data() + first;
    d.tree_start = tree_start.data();
    d.block_tables = block_tables.data();
    return d;
  }

  // Arguments over the description `taken` (from BeginForward).
  AttentionArgs Args(float* out, const ForwardDesc* taken) const {
    AttentionArgs a;
    a.fwd = taken;
    a.q = q.data();
    a.out = out;
    a.k_cache = k_cache.data();
    a.v_cache = v_cache.data();
    a.n_heads = kHeads;
    a.n_kv_heads = kKvHeads;
    a.head_dim = head_dim;
    a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    a.block_size = kBlock;
    return a;
  }

  // out[t, h, :] in double, keys enumerated by brute force over all logical slots.
  std::vector<double> Reference() const {
    const int d = head_dim;
    std::vector<double> out(tokens() * kHeads * d, 0.0);
    for (int t = 0; t < tokens(); ++t) {
      const int s = token_seq[t];
      for (int h = 0; h < kHeads; ++h) {
        const int g = h / (kHeads / kKvHeads);
        std::vector<double> scores;
        std::vector<int64_t> phys;
        for (int logical = 0; logical < kMaxBlocks * kBlock; ++logical) {
          const int j = logical - tree_start[s];
          const bool visible =
              logical < visible_prefix[t] || (j >= 0 && j < 64 && ((tree_mask[t] >> j) & 1));
          if (!visible) continue;
          const int64_t p =
              block_tables[s * kMaxBlocks + logical / kBlock] * kBlock + logical % kBlock;
          double dot = 0;
          for (int i = 0; i < d; ++i) {
            dot += static_cast<double>(q[(t * kHeads + h) * d + i]) *
                   k_cache[(p * kKvHeads + g) * d + i];
          }
          scores.push_back(dot / std::sqrt(static_cast<double>(d)));
          phys.push_back(p);
        }
        const double m = *std::max_element(scores.begin(), scores.end());
        double sum = 0;
        for (double& sc : scores) sum += (sc = std::exp(sc - m));
        for (size_t i = 0; i < phys.size(); ++i) {
          for (int e = 0; e < d; ++e) {
            out[(t * kHeads + h) * d + e] +=
                scores[i] / sum * v_cache[(phys[i] * kKvHeads + g) * d + e];
          }
        }
      }
    }
    return out;
  }
};

TEST_F(CpuBackendTest, AttentionMatchesReferenceForPrefillAndTree) {
  for (int d : {64, 12}) {
    AttentionSetup setup(d);
    std::vector<float> out(setup.q.size(), NAN);
    backend_->Attention(setup.Args(out.data(), backend_->BeginForward(setup.Desc())));
    const std::vector<double> ref = setup.Reference();
    for (size_t i = 0; i < out.size(); ++i)
      ASSERT_NEAR(out[i], ref[i], 1e-5) << "d=" << d << " " << i;
  }
}

// An f16 cache (written by KvWrite) gives the bits of the f32 path over the same K/V rounded
// to f16 and widened back, for head sizes with and without an 8-lane tail.
TEST_F(CpuBackendTest, AttentionOverAnF16CacheEqualsF32OverTheRoundedValues) {
  for (int d : {64, 12}) {
    AttentionSetup setup(d);
    const int row = AttentionSetup::kKvHeads * d;
    const int slots = AttentionSetup::kBlocks * AttentionSetup::kBlock;
    std::vector<int32_t> all(slots);
    for (int i = 0; i < slots; ++i) all[i] = i;
    std::vector<uint16_t> k16(setup.k_cache.size()), v16(setup.v_cache.size());
    backend_->KvWrite(setup.k_cache.data(), setup.v_cache.data(),
                      *backend_->BeginForward(TokensDesc(slots, nullptr, nullptr, all.data())),
                      row, DType::kF16, k16.data(), v16.data());
    for (size_t i = 0; i < k16.size(); ++i) {
      ASSERT_EQ(k16[i], F32ToF16(setup.k_cache[i])) << i;
      ASSERT_EQ(v16[i], F32ToF16(setup.v_cache[i])) << i;
      setup.k_cache[i] = F16ToF32(k16[i]);
      setup.v_cache[i] = F16ToF32(v16[i]);
    }
    std::vector<float> out32(setup.q.size(), NAN), out16(setup.q.size(), NAN);
    const ForwardDesc* taken = backend_->BeginForward(setup.Desc());
    backend_->Attention(setup.Args(out32.data(), taken));
    AttentionArgs a = setup.Args(out16.data(), taken);
    a.k_cache = k16.data();
    a.v_cache = v16.data();
    a.kv_dtype = DType::kF16;
    backend_->Attention(a);
    ASSERT_EQ(std::memcmp(out16.data(), out32.data(), out16.size() * sizeof(float)), 0)
        << "d=" << d;
    // KvCompact moves f16 rows whole.
    const int32_t src[] = {3}, dst[] = {7};
    void* const k_pools[] = {k16.data()};
    void* const v_pools[] = {v16.data()};
    backend_->KvCompact(src, dst, 1, row, DType::kF16, k_pools, v_pools, 1);
    EXPECT_EQ(std::memcmp(k16.data() + 7 * row, k16.data() + 3 * row, row * 2), 0);
    EXPECT_EQ(std::memcmp(v16.data() + 7 * row, v16.data() + 3 * row, row * 2), 0);
  }
}

TEST_F(CpuBackendTest, AttentionIsBatchInvariant) {
  AttentionSetup setup(64);
  std::vector<float> batch(setup.q.size());
  backend_->Attention(setup.Args(batch.data(), backend_->BeginForward(setup.Desc())));
  const int row = AttentionSetup::kHeads * 64;
  std::unique_ptr<Backend> one_thread = CreateCpuBackend(1);
  for (int t = 0; t < setup.tokens(); ++t) {
    // The same query alone: one-token arrays, same cache and block tables.
    std::vector<float> out(row);
    AttentionArgs a = setup.Args(out.data(), one_thread->BeginForward(setup.Desc(t, 1)));
    a.q = setup.q.data() + t * row;
    one_thread->Attention(a);
    ASSERT_EQ(std::memcmp(out.data(), batch.data() + t * row, row * sizeof(float)), 0) << t;
  }
  // Without a tree mask, prefix-only tokens give the same bits as with an empty mask.
  std::vector<float> no_tree(11 * row);
  ForwardDesc prefix_only = setup.Desc(0, 11);
  prefix_only.tree_mask = nullptr;
  prefix_only.tree_start = nullptr;
  backend_->Attention(setup.Args(no_tree.data(), backend_->BeginForward(prefix_only)));
  EXPECT_EQ(std::memcmp(no_tree.data(), batch.data(), no_tree.size() * sizeof(float)), 0);
}

// ---------------------------------------------------------------------------------------
// MoE

TEST_F(CpuBackendTest, MoeExpertsMatchReferenceAndAreBatchInvariant) {
  const int hidden = 40, size = 24, num_experts = 4, k = 2, n = 70;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    std::vector<TestWeight> store;
    for (int e = 0; e < num_experts; ++e) {
      store.push_back(MakeWeight(dtype, size, hidden, 30 + e, 0.2f));
      store.push_back(MakeWeight(dtype, size, hidden, 40 + e, 0.2f));
      store.push_back(MakeWeight(dtype, hidden, size, 50 + e, 0.2f));
    }
    std::vector<ExpertWeights> experts(num_experts);
    for (int e = 0; e < num_experts; ++e) {
      experts[e] = {store[3 * e].w, store[3 * e + 1].w, store[3 * e + 2].w};
    }
    const std::vector<float> x = RandomVector(n * hidden, 31);
    const std::vector<float> logits = RandomVector(n * num_experts, 32);
    Routing routing(n, k, num_experts);
    backend_->TopKSoftmax(logits.data(), n, num_experts, k, routing.r);
    const std::vector<int32_t>& idx = routing.idx;
    const std::vector<float>& weight = routing.weight;
    const float scale = 1.5f;
    std::vector<float> y(n * hidden, NAN);
    backend_->MoeExperts(x.data(), n, hidden, routing.r, k, experts.data(), num_experts, scale,
                         y.data());
    for (int t = 0; t < n; ++t) {
      std::vector<double> ref(hidden, 0.0);
      for (int j = 0; j < k; ++j) {
        const int e = idx[t * k + j];
        std::vector<double> h(size);
        for (int i = 0; i < size; ++i) {
          double g = 0, u = 0;
          for (int c = 0; c < hidden; ++c) {
            g += store[3 * e].values[i * hidden + c] * x[t * hidden + c];
            u += store[3 * e + 1].values[i * hidden + c] * x[t * hidden + c];
          }
          h[i] = g / (1 + std::exp(-g)) * u;
        }
        for (int o = 0; o < hidden; ++o) {
          double s = 0;
          for (int i = 0; i < size; ++i) s += store[3 * e + 2].values[o * size + i] * h[i];
          ref[o] += weight[t * k + j] * s;
        }
      }
      for (int o = 0; o < hidden; ++o) {
        ASSERT_NEAR(y[t * hidden + o], scale * ref[o], 1e-5) << t << " " << o;
      }
    }
    // Each token alone, and a middle slice, routed on their own, give the same bits as in
    // the batch of 70.
    for (int t = 0; t < n; ++t) {
      std::vector<float> alone(hidden);
      Routing one(1, k, num_experts);
      backend_->TopKSoftmax(logits.data() + t * num_experts, 1, num_experts, k, one.r);
      backend_->MoeExperts(x.data() + t * hidden, 1, hidden, one.r, k, experts.data(),
                           num_experts, scale, alone.data());
      ASSERT_EQ(std::memcmp(alone.data(), y.data() + t * hidden, hidden * sizeof(float)), 0) << t;
    }
    std::vector<float> slice(20 * hidden);
    Routing middle(20, k, num_experts);
    backend_->TopKSoftmax(logits.data() + 30 * num_experts, 20, num_experts, k, middle.r);
    backend_->MoeExperts(x.data() + 30 * hidden, 20, hidden, middle.r, k, experts.data(),
                         num_experts, scale, slice.data());
    EXPECT_EQ(std::memcmp(slice.data(), y.data() + 30 * hidden, slice.size() * sizeof(float)), 0);
  }
}

// ---------------------------------------------------------------------------------------
// The forward's description

TEST_F(CpuBackendTest, BeginForwardKeepsTheHostArraysAndGatherRowsPicksLogitRows) {
  const int32_t tokens[] = {4, 5, 6, 7, 8};
  const int32_t rows[] = {1, 3, 4};
  ForwardDesc host = TokensDesc(5, tokens, nullptr, nullptr);
  host.logit_rows = rows;
  host.n_logit_rows = 3;
  const ForwardDesc* taken = backend_->BeginForward(host);
  ASSERT_NE(taken, nullptr);
  EXPECT_EQ(taken->tokens, tokens);  // CPU: no copy
  EXPECT_EQ(taken->n_logit_rows, 3);
  const int cols = 3;
  const std::vector<float> x = RandomVector(5 * cols, 34);
  std::vector<float> out(3 * cols, NAN);
  backend_->GatherRows(x.data(), *taken, cols, out.data());
  for (int i = 0; i < 3; ++i) {
    for (int c = 0; c < cols; ++c) ASSERT_EQ(out[i * cols + c], x[rows[i] * cols + c]) << i;
  }
  std::vector<float> in_place = x;
  backend_->GatherRows(in_place.data(), *taken, cols, in_place.data());
  EXPECT_EQ(std::memcmp(in_place.data(), out.data(), out.size() * sizeof(float)), 0);
}

// ---------------------------------------------------------------------------------------
// Logits reductions, against scalar references written here

// The repetition penalty, scalar: each distinct in-range context id once, in double.
std::vector<float> RefPenalized(const float* row, int vocab, float penalty,
                                const std::vector<int32_t>& context) {
  std::vector<float> out(row, row + vocab);
  std::vector<int32_t> distinct;
  for (int32_t t : context) {
    if (t < 0 || t >= vocab) continue;
    if (std::find(distinct.begin(), distinct.end(), t) != distinct.end()) continue;
    distinct.push_back(t);
    const double l = row[t];
    const double p = l > 0 ? l / penalty : l * penalty;
    out[t] = static_cast<float>(std::clamp<double>(p, -FLT_MAX, FLT_MAX));
  }
  return out;
}

int32_t RefArgmax(const std::vector<float>& row) {
  int32_t best = 0;
  for (size_t i = 0; i < row.size(); ++i) {
    if (row[i] > row[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

// Ids sorted by value descending, ties lower id first (a full sort).
template <typename T>
std::vector<int32_t> RefOrder(const std::vector<T>& v) {
  std::vector<int32_t> ids(v.size());
  for (size_t i = 0; i < v.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return v[a] > v[b]; });
  return ids;
}

// The processed distribution, scalar: penalty, /T, top-k by a full sort, softmax, top-p by a
// full sort, renormalised.
std::vector<double> RefDistribution(const float* row, int vocab, float penalty,
                                    const std::vector<int32_t>& context,
                                    const LogitsProcessing& p) {
  const std::vector<float> l = RefPenalized(row, vocab, penalty, context);
  std::vector<double> out(vocab, 0.0);
  if (p.temperature == 0.0f) {
    out[RefArgmax(l)] = 1.0;
    return out;
  }
  std::vector<double> z(vocab);
  for (int i = 0; i < vocab; ++i) z[i] = static_cast<double>(l[i]) * (1.0 / p.temperature);
  std::vector<int32_t> kept = RefOrder(z);
  if (p.top_k > 0 && p.top_k < vocab) kept.resize(p.top_k);
  double m = -INFINITY;
  for (int32_t id : kept) m = std::max(m, z[id]);
  std::vector<double> e(vocab, 0.0);
  double total = 0.0;
  for (int32_t id : kept) total += (e[id] = std::exp(z[id] - m));
  if (p.top_p < 1.0f) {
    std::vector<int32_t> by_e = RefOrder(e);
    double cum = 0.0;
    std::vector<int32_t> nucleus;
    for (int32_t id : by_e) {
      if (e[id] <= 0.0 && !nucleus.empty()) break;
      nucleus.push_back(id);
      cum += e[id];
      if (cum >= p.top_p * total) break;
    }
    kept = nucleus;
    total = cum;
  }
  for (int32_t id : kept) out[id] = e[id] / total;
  return out;
}

TEST_F(CpuBackendTest, ArgmaxRowsWithAndWithoutPenaltyMatchScalarReference) {
  const int rows = 6, vocab = 301;
  std::vector<float> logits = RandomVector(rows * vocab, 35);
  logits[2 * vocab + 17] = logits[2 * vocab + 200] = 9.0f;  // a tie: the lower id wins
  const std::vector<int32_t> context[rows] = {{}, {5, 5, -1, 999}, {17}, {0, 1, 2}, {}, {3}};
  const float penalty[rows] = {1.0f, 5.0f, 2.0f, 0.5f, 3.0f, 1.0f};
  // Make the penalty decide rows 1 and 2: their best id is in the context.
  logits[1 * vocab + 5] = 8.0f;
  std::vector<RowPenalty> pens(rows);
  for (int r = 0; r < rows; ++r) {
    pens[r] = RowPenalty{penalty[r], context[r].data(), static_cast<int>(context[r].size())};
  }
  std::vector<int32_t> got(rows, -1), plain(rows, -1);
  backend_->ArgmaxRows(logits.data(), rows, vocab, pens.data(), got.data());
  backend_->ArgmaxRows(logits.data(), rows, vocab, nullptr, plain.data());
  for (int r = 0; r < rows; ++r) {
    const float* row = logits.data() + r * vocab;
    EXPECT_EQ(got[r], RefArgmax(RefPenalized(row, vocab, penalty[r], context[r]))) << r;
    EXPECT_EQ(plain[r], RefArgmax(std::vector<float>(row, row + vocab))) << r;
  }
  EXPECT_EQ(plain[2], 17);
  EXPECT_EQ(got[2], 200);  // 17 penalised below 200
  EXPECT_EQ(plain[1], 5);
  EXPECT_NE(got[1], 5);
}

TEST_F(CpuBackendTest, FindNonFiniteReturnsTheFirstInRowMajorOrder) {
  const int rows = 4, vocab = 50;
  std::vector<float> logits = RandomVector(rows * vocab, 36);
  NonFiniteValue found{-1, -1, false};
  EXPECT_FALSE(backend_->FindNonFinite(logits.data(), rows, vocab, &found));
  logits[3 * vocab + 1] = NAN;
  logits[2 * vocab + 40] = -INFINITY;
  ASSERT_TRUE(backend_->FindNonFinite(logits.data(), rows, vocab, &found));
  EXPECT_EQ(found.row, 2);
  EXPECT_EQ(found.index, 40);
  EXPECT_FALSE(found.nan);
  ASSERT_TRUE(backend_->FindNonFinite(logits.data() + 3 * vocab, 1, vocab, &found));
  EXPECT_EQ(found.row, 0);
  EXPECT_EQ(found.index, 1);
  EXPECT_TRUE(found.nan);
  EXPECT_FALSE(backend_->FindNonFinite(logits.data(), 2, vocab, &found));
}

TEST_F(CpuBackendTest, ProcessedDistributionMatchesScalarReference) {
  const int vocab = 1000;
  const std::vector<float> logits = RandomVector(vocab, 37, 3.0f);
  const std::vector<int32_t> context = {3, 3, 999, 12, -4, 4000};
  const LogitsProcessing cases[] = {
      {0.0f, 0, 1.0f},  {1.0f, 0, 1.0f},  {0.7f, 40, 1.0f},  {1.3f, 0, 0.9f},
      {0.8f, 50, 0.5f}, {2.0f, 1, 1.0f},  {1.0f, 0, 1e-6f},  {0.5f, vocab, 0.99f},
  };
  for (float penalty : {1.0f, 1.5f}) {
    for (const LogitsProcessing& p : cases) {
      SCOPED_TRACE("T=" + std::to_string(p.temperature) + " k=" + std::to_string(p.top_k) +
                   " p=" + std::to_string(p.top_p) + " penalty=" + std::to_string(penalty));
      const RowPenalty pen{penalty, context.data(), static_cast<int>(context.size())};
      std::vector<float> got(vocab, NAN), direct(vocab, NAN);
      backend_->ProcessedDistribution(logits.data(), vocab, pen, p, got.data());
      ProcessLogitsRow(logits.data(), vocab, pen, p, direct.data());
      ASSERT_EQ(std::memcmp(got.data(), direct.data(), vocab * sizeof(float)), 0);
      const std::vector<double> ref = RefDistribution(logits.data(), vocab, penalty, context, p);
      for (int i = 0; i < vocab; ++i) {
        ASSERT_EQ(got[i] > 0.0f, ref[i] > 0.0) << "support differs at " << i;
        ASSERT_NEAR(got[i], ref[i], 1e-6) << i;
      }
    }
  }
}

// Ties at the top-k boundary and inside the nucleus go to the lower id.
TEST_F(CpuBackendTest, ProcessedDistributionBreaksTiesByLowerId) {
  const float logits[] = {1.0f, 3.0f, 3.0f, 0.0f, 3.0f, 2.0f, -1.0f, 3.0f};
  const RowPenalty none;
  std::vector<float> probs(8);
  backend_->ProcessedDistribution(logits, 8, none, LogitsProcessing{1.0f, 2, 1.0f}, probs.data());
  EXPECT_EQ(probs, (std::vector<float>{0, 0.5f, 0.5f, 0, 0, 0, 0, 0}));
  // Four tied at the top hold 4 e / Z; top_p = 0.3 of Z needs two of them: ids 1 and 2.
  backend_->ProcessedDistribution(logits, 8, none, LogitsProcessing{1.0f, 0, 0.3f}, probs.data());
  EXPECT_EQ(probs, (std::vector<float>{0, 0.5f, 0.5f, 0, 0, 0, 0, 0}));
  backend_->ProcessedDistribution(logits, 8, none, LogitsProcessing{0.0f, 0, 1.0f}, probs.data());
  EXPECT_EQ(probs, (std::vector<float>{0, 1, 0, 0, 0, 0, 0, 0}));
}

TEST_F(CpuBackendTest, TopKIdsWithPenaltyMatchScalarReference) {
  const int vocab = 257;
  std::vector<float> logits = RandomVector(vocab, 38);
  logits[10] = logits[20] = logits[30] = 5.0f;
  const std::vector<int32_t> context = {20, 100};
  for (float penalty : {1.0f, 4.0f}) {
    for (int k : {1, 3, 8, vocab, vocab + 5}) {
      const RowPenalty pen{penalty, context.data(), static_cast<int>(context.size())};
      std::vector<int32_t> got(std::min(k, vocab), -1);
      backend_->TopKIds(logits.data(), vocab, k, pen, got.data());
      std::vector<int32_t> ref = RefOrder(RefPenalized(logits.data(), vocab, penalty, context));
      ref.resize(std::min(k, vocab));
      ASSERT_EQ(got, ref) << "penalty " << penalty << " k " << k;
    }
  }
  std::vector<int32_t> top3(3);
  backend_->TopKIds(logits.data(), vocab, 3, RowPenalty{}, top3.data());
  EXPECT_EQ(top3, (std::vector<int32_t>{10, 20, 30}));
}

// ---------------------------------------------------------------------------------------
// Helpers: conversions, thread pool, bandwidth, memory

TEST(F16Test, HalfRoundTripsAndMatchesHardware) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToF16(f), h) << h;
#if defined(__F16C__)
    ASSERT_EQ(F32ToBits(f), F32ToBits(_cvtsh_ss(static_cast<uint16_t>(h)))) << h;
#endif
  }
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-70000.0f, 70000.0f);
  for (int i = 0; i < 100000; ++i) {
    const float f = dist(rng) * (i % 2 ? 1e-6f : 1.0f);
#if defined(__F16C__)
    ASSERT_EQ(F32ToF16(f), _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)) << f;
#endif
    ASSERT_TRUE(std::isfinite(f));
  }
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);
  EXPECT_EQ(F32ToF16(65519.0f), 0x7bff);
}

TEST(F16Test, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBf16(BitsToF32(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(F32ToBf16(BitsToF32(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(F32ToBf16(BitsToF32(0x3f808001u)), 0x3f81);
  EXPECT_EQ(Bf16ToF32(0xc000), -2.0f);
}

TEST(ThreadPoolTest, ParallelForCoversEachIndexOnce) {
  ThreadPool pool(3);
  EXPECT_EQ(pool.num_threads(), 3);
  for (int64_t n : {1, 2, 3, 7, 100, 1001}) {
    std::vector<std::atomic<int>> hits(n);
    pool.ParallelFor(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
      // Inside a loop split over several threads, a nested loop runs serially.
      if (n >= 2) pool.ParallelFor(4, [&](int64_t b, int64_t e) { EXPECT_EQ(e - b, 4); });
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << i;
  }
  std::atomic<int> calls{0};
  pool.ParallelFor(
      10,
      [&](int64_t begin, int64_t end) {
        EXPECT_EQ(end - begin, 10);
        calls.fetch_add(1);
      },
      64);
  EXPECT_EQ(calls.load(), 1);
}

// CPU time of this process in seconds (all threads).
double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

// The team hands loops over back to back (workers polling) and after they have gone to
// sleep (woken through the condition variable); every loop covers each index once, and an
// idle team sleeps instead of polling (CPU time over 200 ms idle well below 200 ms).
TEST(ThreadPoolTest, BackToBackAndAfterSleepAndIdleCostsNoCpu) {
  ThreadPool pool(2);
  std::vector<int64_t> sums(8, 0);
  auto add = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) sums[i] += i;
  };
  for (int round = 0; round < 20000; ++round) pool.ParallelFor(8, add);
  for (int64_t i = 0; i < 8; ++i) ASSERT_EQ(sums[i], 20000 * i);
  for (int round = 0; round < 20; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // past the polling bound
    std::vector<std::atomic<int>> hits(100);
    pool.ParallelFor(100, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    });
    for (int i = 0; i < 100; ++i) ASSERT_EQ(hits[i].load(), 1) << round << " " << i;
  }
  const double cpu_before = ProcessCpuSeconds();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_LT(ProcessCpuSeconds() - cpu_before, 0.05);
}

TEST(BandwidthTest, MeasuresAPositiveFiniteRate) {
  const double gbs = MeasureReadBandwidthGBs(size_t{32} << 20, 2);
  EXPECT_GT(gbs, 0.1);
  EXPECT_LT(gbs, 1e5);
}

TEST_F(CpuBackendTest, AllocIsAlignedAndCopiesWork) {
  void* p = backend_->Alloc(100);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  const char src[100] = "hello";
  backend_->CopyFromHost(p, src, 100);
  void* q = backend_->Alloc(100);
  backend_->Copy(q, p, 100);
  char dst[100];
  backend_->CopyToHost(dst, q, 100);
  EXPECT_STREQ(dst, "hello");
  backend_->Free(p);
  backend_->Free(q);
  EXPECT_EQ(backend_->name(), "cpu");
}

}  // namespace
}  // namespace specmoe::kernels
