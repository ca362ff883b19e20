// tests/cpu_matmul_test.cc — the CPU MatMul (kernels/cpu/matmul.h) bit for bit against a
// scalar fmaf loop in the documented order (one fp32 accumulator from +0.0, k = 0 .. K-1),
// for every row count 1..40 and a dense set up to 300 around the kernels' tiles, on 1 and 2
// threads, on each micro-kernel path this CPU has (scalar, AVX2, AVX-512, forced by the test
// hook), for f32/f16/bf16 weights with odd output and input sizes, through weights prepared
// by the backend (panels) and raw row-major ones. Also: the panel layout itself, the MoE
// experts on prepared weights, and the thread pool's shared MXCSR. Label: cpu.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/f16.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace specmoe::kernels {
namespace {

// A row-major weight with its exact values as floats.
struct HostWeight {
  std::vector<uint8_t> storage;
  std::vector<float> values;  // [rows, cols]
  Weight w;
};

// Data starts `offset` bytes into the storage (2: unaligned, as safetensors allows).
HostWeight MakeWeight(DType dtype, int64_t rows, int64_t cols, uint32_t seed, size_t offset = 2) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  HostWeight h;
  const size_t elem = DTypeBytes(dtype);
  h.storage.resize(offset + rows * cols * elem);
  h.values.resize(rows * cols);
  uint8_t* base = h.storage.data() + offset;
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float f = dist(rng);
    if (dtype == DType::kF32) {
      std::memcpy(base + i * 4, &f, 4);
      h.values[i] = f;
    } else {
      const uint16_t v = dtype == DType::kF16 ? F32ToF16(f) : F32ToBf16(f);
      std::memcpy(base + i * 2, &v, 2);
      h.values[i] = dtype == DType::kF16 ? F16ToF32(v) : Bf16ToF32(v);
    }
  }
  h.w = Weight{base, dtype, rows, cols};
  return h;
}

std::vector<float> RandomVector(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(count);
  for (float& f : v) f = dist(rng);
  return v;
}

// The documented order, written independently of the library.
std::vector<float> Reference(const std::vector<float>& x, int n, const HostWeight& h) {
  const int64_t out = h.w.rows, in = h.w.cols;
  std::vector<float> y(static_cast<size_t>(n) * out);
  for (int r = 0; r < n; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      float acc = 0.0f;
      for (int64_t k = 0; k < in; ++k) acc = std::fmaf(h.values[o * in + k], x[r * in + k], acc);
      y[r * out + o] = acc;
    }
  }
  return y;
}

std::vector<MatMulIsa> Paths() {
  std::vector<MatMulIsa> paths;
  for (MatMulIsa isa : {MatMulIsa::kScalar, MatMulIsa::kAvx2, MatMulIsa::kAvx512}) {
    if (MatMulIsaSupported(isa)) paths.push_back(isa);
  }
  return paths;
}

// Restores the automatic path when a test ends, even on failure.
struct IsaGuard {
  ~IsaGuard() { SetMatMulIsaForTesting(MatMulIsa::kAuto); }
};

// Every n in 1..40, then the sizes on both sides of the tiles (AVX-512 groups of 12, AVX2
// groups of 6, several groups per panel), primes, and 300.
std::vector<int> RowCounts() {
  std::vector<int> counts;
  for (int n = 1; n <= 40; ++n) counts.push_back(n);
  for (int n : {47, 48, 49, 59, 60, 61, 71, 72, 73, 95, 96, 97, 127, 131, 143, 144, 145, 179,
                191, 192, 193, 216, 251, 257, 288, 299, 300}) {
    counts.push_back(n);
  }
  return counts;
}

struct Shape {
  DType dtype;
  int64_t out;
  int64_t in;
};

TEST(CpuMatMulTest, BitIdenticalToScalarFmaLoopForEveryRowCountPathAndThreadCount) {
  IsaGuard guard;
  constexpr int kMax = 300;
  const Shape shapes[] = {
      {DType::kF32, 67, 301}, {DType::kF16, 67, 301}, {DType::kBF16, 67, 301},
      {DType::kF32, 5, 520},  {DType::kF16, 33, 37},  {DType::kBF16, 96, 7},
      {DType::kF32, 31, 1},
  };
  std::unique_ptr<Backend> backends[2] = {CreateCpuBackend(1), CreateCpuBackend(2)};
  for (const Shape& s : shapes) {
    const HostWeight h = MakeWeight(s.dtype, s.out, s.in, 7 + s.out);
    const std::vector<float> x = RandomVector(kMax * s.in, 11);
    const std::vector<float> ref = Reference(x, kMax, h);
    Weight prepared[2];
    for (int b = 0; b < 2; ++b) {
      prepared[b] = backends[b]->PrepareLinear(h.w);
      ASSERT_EQ(prepared[b].layout, WeightLayout::kPanels);
    }
    for (MatMulIsa isa : Paths()) {
      SetMatMulIsaForTesting(isa);
      for (int b = 0; b < 2; ++b) {
        for (int n : RowCounts()) {
          SCOPED_TRACE(std::string(DTypeName(s.dtype)) + " " + std::to_string(s.out) + "x" +
                       std::to_string(s.in) + " " + MatMulIsaName(isa) + " threads " +
                       std::to_string(b + 1) + " n " + std::to_string(n));
          std::vector<float> y(n * s.out, NAN);
          backends[b]->MatMul(x.data(), n, prepared[b], y.data());
          ASSERT_EQ(std::memcmp(y.data(), ref.data(), y.size() * sizeof(float)), 0);
          if (n % 16 == 1) {  // the raw row-major weight: repacked per call, the same bits
            std::vector<float> raw(n * s.out, NAN);
            backends[b]->MatMul(x.data(), n, h.w, raw.data());
            ASSERT_EQ(std::memcmp(raw.data(), ref.data(), raw.size() * sizeof(float)), 0);
          }
        }
      }
    }
  }
}

// A realistic input size (K = 4104: many K-blocks plus a tail) at a sample of row counts,
// and the fused form's split over several matrices of different sizes.
TEST(CpuMatMulTest, LongInputAndFusedMatricesMatchTheReference) {
  IsaGuard guard;
  std::unique_ptr<Backend> backend = CreateCpuBackend(2);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const HostWeight a = MakeWeight(dtype, 45, 4104, 21);
    const HostWeight b = MakeWeight(dtype, 13, 4104, 22);
    const HostWeight c = MakeWeight(dtype, 70, 4104, 23);
    const Weight ws[3] = {backend->PrepareLinear(a.w), backend->PrepareLinear(b.w),
                          backend->PrepareLinear(c.w)};
    const std::vector<float> x = RandomVector(30 * 4104, 24);
    const std::vector<float> refs[3] = {Reference(x, 30, a), Reference(x, 30, b),
                                        Reference(x, 30, c)};
    for (MatMulIsa isa : Paths()) {
      SetMatMulIsaForTesting(isa);
      for (int n : {1, 2, 7, 12, 13, 25, 30}) {
        SCOPED_TRACE(std::string(DTypeName(dtype)) + " " + MatMulIsaName(isa) + " n " +
                     std::to_string(n));
        std::vector<float> outs[3];
        float* ys[3];
        for (int i = 0; i < 3; ++i) {
          outs[i].assign(n * ws[i].rows, NAN);
          ys[i] = outs[i].data();
        }
        backend->MatMulMany(x.data(), n, ws, ys, 3);
        for (int i = 0; i < 3; ++i) {
          ASSERT_EQ(std::memcmp(outs[i].data(), refs[i].data(), outs[i].size() * sizeof(float)), 0)
              << "matrix " << i;
        }
      }
    }
  }
}

TEST(CpuMatMulTest, EmptyInputGivesPositiveZeros) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(2);
  const HostWeight h = MakeWeight(DType::kF32, 3, 0, 1);
  const Weight w = backend->PrepareLinear(h.w);
  std::vector<float> y(2 * 3, NAN);
  backend->MatMul(nullptr, 2, w, y.data());
  for (float v : y) EXPECT_TRUE(v == 0.0f && !std::signbit(v));
}

// The documented panel layout: element (o, k) at ((o / 32) * cols + k) * 32 + o % 32, the
// last panel's padding outputs zero, 64-byte aligned; from aligned and unaligned sources.
TEST(CpuMatMulTest, PanelLayoutIsTheDocumentedOne) {
  ThreadPool pool(2);
  const DType dtypes[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (size_t offset : {2, 4, 5}) {
    for (DType dtype : dtypes) {
      SCOPED_TRACE("offset " + std::to_string(offset));
      const HostWeight h = MakeWeight(dtype, 37, 9, 5, offset);
      const size_t bytes = PanelBytes(dtype, 37, 9);
      ASSERT_EQ(bytes, 2u * 9 * kPanelWidth * DTypeBytes(dtype));
      void* out = std::aligned_alloc(64, bytes);
      std::memset(out, 0xAB, bytes);
      const Weight p = PackPanels(h.w, out, pool);
      EXPECT_EQ(p.layout, WeightLayout::kPanels);
      EXPECT_EQ(p.rows, 37);
      EXPECT_EQ(p.cols, 9);
      const size_t elem = DTypeBytes(dtype);
      for (int64_t o = 0; o < 2 * kPanelWidth; ++o) {
        for (int64_t k = 0; k < 9; ++k) {
          const size_t at = ((o / kPanelWidth) * 9 + k) * kPanelWidth + o % kPanelWidth;
          uint8_t expected[4] = {0, 0, 0, 0};
          if (o < 37) {
            std::memcpy(expected, static_cast<const uint8_t*>(h.w.data) + (o * 9 + k) * elem,
                        elem);
          }
          ASSERT_EQ(std::memcmp(static_cast<const uint8_t*>(out) + at * elem, expected, elem), 0)
              << DTypeName(dtype) << " o " << o << " k " << k;
        }
      }
      std::free(out);
    }
  }
}

// The MoE experts run the same kernels: prepared experts give the bits of raw ones, and a
// token's output is the same alone or with others.
TEST(CpuMatMulTest, MoeExpertsOnPreparedWeightsMatchRawWeights) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(2);
  constexpr int kHidden = 40, kSize = 24, kExperts = 4, kTop = 2, kTokens = 19;
  std::vector<HostWeight> hosts;
  std::vector<ExpertWeights> raw(kExperts), prepared(kExperts);
  for (int e = 0; e < kExperts; ++e) {
    hosts.push_back(MakeWeight(DType::kBF16, kSize, kHidden, 100 + 3 * e));
    hosts.push_back(MakeWeight(DType::kBF16, kSize, kHidden, 101 + 3 * e));
    hosts.push_back(MakeWeight(DType::kBF16, kHidden, kSize, 102 + 3 * e));
  }
  for (int e = 0; e < kExperts; ++e) {
    raw[e] = {hosts[3 * e].w, hosts[3 * e + 1].w, hosts[3 * e + 2].w};
    prepared[e] = {backend->PrepareLinear(raw[e].gate), backend->PrepareLinear(raw[e].up),
                   backend->PrepareLinear(raw[e].down)};
  }
  const std::vector<float> x = RandomVector(kTokens * kHidden, 3);
  const std::vector<float> logits = RandomVector(kTokens * kExperts, 4);
  std::vector<int32_t> idx(kTokens * kTop), pairs(kTokens * kTop), counts(kExperts),
      offsets(kExperts + 1);
  std::vector<float> weight(kTokens * kTop);
  const MoeRouting routing{idx.data(), weight.data(), counts.data(), offsets.data(), pairs.data()};
  backend->TopKSoftmax(logits.data(), kTokens, kExperts, kTop, routing);
  std::vector<float> y_raw(kTokens * kHidden), y_prep(kTokens * kHidden);
  backend->MoeExperts(x.data(), kTokens, kHidden, routing, kTop, raw.data(), kExperts, 1.5f,
                      y_raw.data());
  backend->MoeExperts(x.data(), kTokens, kHidden, routing, kTop, prepared.data(), kExperts, 1.5f,
                      y_prep.data());
  ASSERT_EQ(std::memcmp(y_raw.data(), y_prep.data(), y_raw.size() * sizeof(float)), 0);
  // Token 5 alone.
  backend->TopKSoftmax(logits.data() + 5 * kExperts, 1, kExperts, kTop, routing);
  std::vector<float> alone(kHidden);
  backend->MoeExperts(x.data() + 5 * kHidden, 1, kHidden, routing, kTop, prepared.data(), kExperts,
                      1.5f, alone.data());
  ASSERT_EQ(std::memcmp(alone.data(), y_prep.data() + 5 * kHidden, kHidden * sizeof(float)), 0);
}

#if defined(__x86_64__)
// Every chunk of a loop runs under the caller's MXCSR control bits (here: flush-to-zero and
// round-toward-zero set by the caller), whichever thread runs it.
TEST(CpuMatMulTest, PoolThreadsTakeTheCallersMxcsr) {
  ThreadPool pool(2);
  const unsigned saved = _mm_getcsr();
  for (unsigned control : {saved & ~0x3Fu, (saved & ~0x3Fu) | 0x8000u | 0x6000u}) {
    _mm_setcsr(control);
    std::vector<unsigned> seen(64, 0);
    pool.ParallelFor(64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) seen[i] = _mm_getcsr() & ~0x3Fu;
    });
    _mm_setcsr(saved);
    for (unsigned s : seen) EXPECT_EQ(s, control & ~0x3Fu);
  }
}
#endif

}  // namespace
}  // namespace specmoe::kernels
