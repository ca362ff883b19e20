// tests/cuda_moe_test.cc — the CUDA MoE ops (kernels/cuda/moe.h) against the CPU backend
// (label cuda; skips at run time when no CUDA device is visible, kernels/README.md).
//
// TopKSoftmax: idx, counts, offsets and pairs exactly equal to the CPU's, weights within
// 1e-6 relative (expf may differ from glibc's in the last ulp), over n in {1, 3, 8, 33, 128,
// 300, 600}, e in {8, 16}, k in {1, 2}, with random and heavily tied logits, and one
// 3000 x 64 x top-4 case whose 12000 pairs span many chunks of the grouping kernel.
// MoeExperts, fused and sequential, against the CPU (f16 and bf16 expert weights; hidden 100,
// 256 and 2048; equal, unequal and odd intermediate sizes; 1 to 130 tokens; experts that get
// no token, one expert that gets every token; unaligned weight pointers), and fused against
// sequential. The device routing is built by cuda::TopKSoftmax. Tolerance, as
// |gpu - cpu| <= tol * (max|cpu| + |cpu|): the GPU rounds x and silu(g) * u to the weights'
// dtype (the CPU keeps them f32), a relative error of at most 2^-11 (f16) / 2^-8 (bf16) per
// value, about 0.3 of that in rms; through two products and the silu it stays ~2-3x that
// rms relative to the typical |y|, and its largest value over ~1e5 outputs is ~4.5 sigma,
// so about 8e-4 (f16) / 6e-3 (bf16) of max|y|: tol = 2e-3 / 1.6e-2. Fused and sequential
// round the same values the same way and differ only in fp32 summation order (and the
// rare rounding flip it causes), so half those tolerances bound them. Every output is
// also checked to be written (y starts as NaN) and finite. The fused path is also captured
// in a CUDA graph with the routing and replayed on new inputs. NaN gate rows route
// to k distinct experts exactly as the CPU's (NaN ranks last) and leave every other token's
// output exact; the first fused call on a fresh expert array (its table uploaded then) is
// right at once. The stream is non-blocking, as the backend's. Links with the sequential
// path's cuda::Gemm and cuda::SiluMul (kernels/cuda/gemm.cu, silu_mul.cu).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/f16.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/moe.h"

namespace specmoe::kernels {
namespace {

// Device memory owned by the test; `offset` bytes past a fresh allocation (to make
// unaligned weights).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes, size_t offset = 0) {
    EXPECT_EQ(cudaMalloc(&base_, bytes + offset + 16), cudaSuccess);
    ptr_ = static_cast<unsigned char*>(base_) + offset;
  }
  ~DeviceBuffer() { cudaFree(base_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(ptr_);
  }
  void Upload(const void* host, size_t bytes) {
    ASSERT_EQ(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    // A pageable copy may return before its DMA is done, and the ops run on a non-blocking
    // stream that does not wait for the legacy stream.
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }

 private:
  void* base_ = nullptr;
  unsigned char* ptr_ = nullptr;
};

template <typename T>
std::vector<T> Download(const void* device, size_t count) {
  std::vector<T> host(count);
  EXPECT_EQ(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return host;
}

// A routing's buffers, on the host (CPU backend) or the device.
struct HostRouting {
  HostRouting(int n, int e, int k)
      : idx(static_cast<size_t>(n) * k), weight(idx.size()), counts(e), offsets(e + 1),
        pairs(idx.size()) {}
  MoeRouting view() {
    return MoeRouting{idx.data(), weight.data(), counts.data(), offsets.data(), pairs.data()};
  }
  std::vector<int32_t> idx;
  std::vector<float> weight;
  std::vector<int32_t> counts;
  std::vector<int32_t> offsets;
  std::vector<int32_t> pairs;
};

struct DeviceRouting {
  DeviceRouting(int n, int e, int k)
      : pairs_count(static_cast<size_t>(n) * k), experts(e),
        idx(pairs_count * 4), weight(pairs_count * 4), counts(e * 4), offsets((e + 1) * 4),
        pairs(pairs_count * 4) {}
  MoeRouting view() const {
    return MoeRouting{idx.as<int32_t>(), weight.as<float>(), counts.as<int32_t>(),
                      offsets.as<int32_t>(), pairs.as<int32_t>()};
  }
  size_t pairs_count;
  int experts;
  DeviceBuffer idx, weight, counts, offsets, pairs;
};

// Gate logits [n, e]: normal, or drawn from 4 values (many ties); `bias[x]` added to
// column x (-30: expert x never chosen; +8: chosen first by every token).
std::vector<float> MakeLogits(int n, int e, bool ties, const std::vector<float>& bias,
                              uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::uniform_int_distribution<int> level(0, 3);
  std::vector<float> logits(static_cast<size_t>(n) * e);
  for (int t = 0; t < n; ++t) {
    for (int x = 0; x < e; ++x) {
      float v = ties ? 0.5f * static_cast<float>(level(gen)) : normal(gen);
      if (!bias.empty()) v += bias[x];
      logits[static_cast<size_t>(t) * e + x] = v;
    }
  }
  return logits;
}

// Fast uniform values in [-a, a) (SplitMix64), for the large weight matrices.
class FastRandom {
 public:
  explicit FastRandom(uint64_t seed) : state_(seed) {}
  float Uniform(float a) {
    state_ += 0x9e3779b97f4a7c15ull;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return a * (static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }

 private:
  uint64_t state_;
};

class CudaMoeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::DeviceName();
    ctx_ = std::make_unique<cuda::CudaContext>();
    // Non-blocking, as the backend's stream: it does not wait for legacy-stream work, so an
    // op that uploads with a plain cudaMemcpy would race here as it would in the backend.
    ASSERT_EQ(cudaStreamCreateWithFlags(&ctx_->stream, cudaStreamNonBlocking), cudaSuccess);
    ASSERT_EQ(cublasCreate(&ctx_->cublas), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasSetStream(ctx_->cublas, ctx_->stream), CUBLAS_STATUS_SUCCESS);
    cpu_ = CreateCpuBackend(0);
  }
  void TearDown() override {
    if (ctx_ == nullptr) return;
    cudaStreamSynchronize(ctx_->stream);
    cudaStream_t stream = ctx_->stream;
    cublasDestroy(ctx_->cublas);
    ctx_.reset();
    cudaStreamDestroy(stream);
  }
  void Sync() { ASSERT_EQ(cudaStreamSynchronize(ctx_->stream), cudaSuccess); }

  std::unique_ptr<cuda::CudaContext> ctx_;
  std::unique_ptr<Backend> cpu_;
};

// --- TopKSoftmax ---

void ExpectSameRouting(HostRouting& want, const DeviceRouting& got, const std::string& what) {
  const size_t pairs = got.pairs_count;
  const int e = got.experts;
  EXPECT_EQ(Download<int32_t>(got.idx.as<void>(), pairs), want.idx) << what << ": idx";
  EXPECT_EQ(Download<int32_t>(got.counts.as<void>(), e), want.counts) << what << ": counts";
  EXPECT_EQ(Download<int32_t>(got.offsets.as<void>(), e + 1), want.offsets) << what << ": offsets";
  EXPECT_EQ(Download<int32_t>(got.pairs.as<void>(), pairs), want.pairs) << what << ": pairs";
  const std::vector<float> weight = Download<float>(got.weight.as<void>(), pairs);
  for (size_t p = 0; p < pairs; ++p) {
    if (std::isnan(want.weight[p])) {
      ASSERT_TRUE(std::isnan(weight[p])) << what << ": weight of pair " << p;
      continue;
    }
    ASSERT_LE(std::fabs(weight[p] - want.weight[p]), 1e-6f * std::fabs(want.weight[p]) + 1e-30f)
        << what << ": weight of pair " << p;
  }
}

void CheckTopK(Backend& cpu, cuda::CudaContext& ctx, int n, int e, int k,
               bool ties, const std::vector<float>& bias, uint32_t seed) {
  const std::string what = "n=" + std::to_string(n) + " e=" + std::to_string(e) +
                           " k=" + std::to_string(k) + (ties ? " ties" : "");
  std::vector<float> logits = MakeLogits(n, e, ties, bias, seed);
  HostRouting want(n, e, k);
  cpu.TopKSoftmax(logits.data(), n, e, k, want.view());
  DeviceBuffer d_logits(std::max<size_t>(logits.size(), 1) * 4);
  d_logits.Upload(logits.data(), logits.size() * 4);
  DeviceRouting got(n, e, k);
  cuda::TopKSoftmax(d_logits.as<float>(), n, e, k, got.view(), ctx);
  ASSERT_EQ(cudaStreamSynchronize(ctx.stream), cudaSuccess);
  ExpectSameRouting(want, got, what);
}

TEST_F(CudaMoeTest, TopKSoftmaxMatchesCpu) {
  uint32_t seed = 1;
  for (int n : {1, 3, 8, 33, 128, 300, 600}) {
    for (int e : {8, 16}) {
      for (int k : {1, 2}) {
        for (bool ties : {false, true}) {
          CheckTopK(*cpu_, *ctx_, n, e, k, ties, {}, ++seed);
        }
      }
    }
  }
}

TEST_F(CudaMoeTest, TopKSoftmaxManyPairsAndIdleExperts) {
  // 12000 pairs: 12 chunks of the grouping kernel.
  CheckTopK(*cpu_, *ctx_, 3000, 64, 4, false, {}, 101);
  CheckTopK(*cpu_, *ctx_, 3000, 64, 4, true, {}, 102);
  // Experts 2 and 5 never chosen, expert 7 chosen first by every token.
  std::vector<float> bias(8, 0.0f);
  bias[2] = -30.0f;
  bias[5] = -30.0f;
  bias[7] = 8.0f;
  CheckTopK(*cpu_, *ctx_, 257, 8, 2, false, bias, 103);
  CheckTopK(*cpu_, *ctx_, 1, 8, 8, true, {}, 104);
}

// NaN gate rows in a batch: NaN ranks after every number, so each row still routes
// to k DISTINCT experts, exactly the CPU's (kernels/routing_order.h). A NaN that made later
// choices fall back to expert 0 would route one token to expert 0 twice and break the
// expert runs that the fused kernels tile.
std::vector<float> NanRows(int n, int e, uint32_t seed) {
  std::vector<float> logits = MakeLogits(n, e, false, {}, seed);
  const float nan = std::nanf("");
  auto row = [&](int t) { return logits.begin() + static_cast<size_t>(t) * e; };
  std::fill(row(0), row(0) + e, nan);           // all NaN
  row(3)[0] = nan;                               // NaN at the first expert
  for (int x = 1; x + 1 < e; ++x) row(7)[x] = nan;  // only the first and last are numbers
  row(12)[e - 1] = nan;                          // NaN at the last expert
  std::fill(row(13), row(13) + e - 1, nan);      // one number, then NaNs
  return logits;
}

TEST_F(CudaMoeTest, TopKSoftmaxNanRowsPickDistinctExpertsAsTheCpu) {
  for (int k : {1, 2, 4}) {
    const int n = 40, e = 8;
    const std::string what = "NaN rows, k=" + std::to_string(k);
    const std::vector<float> logits = NanRows(n, e, 70u + k);
    HostRouting want(n, e, k);
    cpu_->TopKSoftmax(logits.data(), n, e, k, want.view());
    DeviceBuffer d_logits(logits.size() * 4);
    d_logits.Upload(logits.data(), logits.size() * 4);
    DeviceRouting got(n, e, k);
    cuda::TopKSoftmax(d_logits.as<float>(), n, e, k, got.view(), *ctx_);
    Sync();
    ExpectSameRouting(want, got, what);
    const std::vector<int32_t> idx = Download<int32_t>(got.idx.as<void>(), got.pairs_count);
    for (int t = 0; t < n; ++t) {
      std::vector<int32_t> chosen(idx.begin() + t * k, idx.begin() + (t + 1) * k);
      std::sort(chosen.begin(), chosen.end());
      EXPECT_EQ(std::adjacent_find(chosen.begin(), chosen.end()), chosen.end())
          << what << ": token " << t << " routes to one expert twice";
    }
  }
}

// --- MoeExperts ---

struct MoeCase {
  std::string name;
  int hidden = 0;
  std::vector<int> inter;     // per expert
  int k = 2;
  DType dtype = DType::kF16;
  std::vector<int> tokens;    // the n values run with one pair of ops
  std::vector<float> bias;    // gate logit bias per expert (empty: none)
  std::vector<int> unaligned; // experts whose weights sit 2 bytes past an aligned address
};

// One expert's weights on the host (CPU reference) and the device (same values).
struct ExpertStore {
  std::vector<uint16_t> gate, up, down;
  std::unique_ptr<DeviceBuffer> d_gate, d_up, d_down;
};

class MoeFixture {
 public:
  MoeFixture(const MoeCase& c, uint64_t seed) : c_(c) {
    const int e = static_cast<int>(c.inter.size());
    store_.resize(e);
    host_.resize(e);
    device_.resize(e);
    FastRandom rnd(seed);
    for (int x = 0; x < e; ++x) {
      const int inter = c.inter[x];
      const size_t offset =
          std::find(c.unaligned.begin(), c.unaligned.end(), x) != c.unaligned.end() ? 2 : 0;
      ExpertStore& s = store_[x];
      // Uniform with variance 1 / cols: each product has about unit scale.
      Fill(&s.gate, static_cast<size_t>(inter) * c.hidden, std::sqrt(3.0f / c.hidden), rnd);
      Fill(&s.up, static_cast<size_t>(inter) * c.hidden, std::sqrt(3.0f / c.hidden), rnd);
      Fill(&s.down, static_cast<size_t>(c.hidden) * inter, std::sqrt(3.0f / inter), rnd);
      s.d_gate = Put(s.gate, offset);
      s.d_up = Put(s.up, offset);
      s.d_down = Put(s.down, offset);
      host_[x] = ExpertWeights{Weight{s.gate.data(), c.dtype, inter, c.hidden},
                               Weight{s.up.data(), c.dtype, inter, c.hidden},
                               Weight{s.down.data(), c.dtype, c.hidden, inter}};
      device_[x] = ExpertWeights{Weight{s.d_gate->as<void>(), c.dtype, inter, c.hidden},
                                 Weight{s.d_up->as<void>(), c.dtype, inter, c.hidden},
                                 Weight{s.d_down->as<void>(), c.dtype, c.hidden, inter}};
    }
  }

  const ExpertWeights* host() const { return host_.data(); }
  const ExpertWeights* device() const { return device_.data(); }
  int experts() const { return static_cast<int>(host_.size()); }

 private:
  void Fill(std::vector<uint16_t>* v, size_t count, float a, FastRandom& rnd) {
    v->resize(count);
    for (size_t i = 0; i < count; ++i) {
      const float f = rnd.Uniform(a);
      (*v)[i] = c_.dtype == DType::kF16 ? F32ToF16(f) : F32ToBf16(f);
    }
  }
  static std::unique_ptr<DeviceBuffer> Put(const std::vector<uint16_t>& v, size_t offset) {
    auto buffer = std::make_unique<DeviceBuffer>(v.size() * 2, offset);
    buffer->Upload(v.data(), v.size() * 2);
    return buffer;
  }

  MoeCase c_;
  std::vector<ExpertStore> store_;
  std::vector<ExpertWeights> host_;
  std::vector<ExpertWeights> device_;
};

float MaxAbs(const std::vector<float>& v) {
  float m = 0.0f;
  for (float f : v) m = std::max(m, std::fabs(f));
  return m;
}

// |got - want| <= tol * (max|want| + |want|) everywhere, and every value finite.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, float tol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  const float scale = MaxAbs(want);
  ASSERT_GT(scale, 0.0f) << what;
  int bad = 0;
  size_t first_bad = 0;
  size_t worst_at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float err = std::fabs(got[i] - want[i]);
    if (!std::isfinite(got[i]) || !(err <= tol * (scale + std::fabs(want[i])))) {
      if (bad++ == 0) first_bad = i;
    }
    if (err > std::fabs(got[worst_at] - want[worst_at])) worst_at = i;
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " outside tol " << tol
                    << " * (max|ref| + |ref|), max|ref| = " << scale << "; first at "
                    << first_bad << ": " << got[first_bad] << " vs " << want[first_bad];
  // The largest error, relative to max|ref|, for tuning the tolerance on a GPU.
  std::printf("  %s: worst error %.3g of max|ref|\n", what.c_str(),
              std::fabs(got[worst_at] - want[worst_at]) / scale);
}

// Runs every n of `c` through the CPU backend and both device paths (the same two op objects
// for all n, as the engine keeps them).
void RunMoeCase(Backend& cpu, cuda::CudaContext& ctx, const MoeCase& c) {
  MoeFixture fixture(c, 7u + static_cast<uint64_t>(c.hidden) * 31u + c.inter.size());
  const int e = fixture.experts();
  const float scale = 4.0f;
  const float tol = c.dtype == DType::kF16 ? 2e-3f : 1.6e-2f;
  std::unique_ptr<cuda::MoeExpertsOp> fused = cuda::CreateFusedMoeExperts();
  std::unique_ptr<cuda::MoeExpertsOp> sequential = cuda::CreateSequentialMoeExperts();
  uint32_t seed = 11;
  for (int n : c.tokens) {
    const std::string what = c.name + " " + DTypeName(c.dtype) + " n=" + std::to_string(n);
    std::mt19937 gen(++seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n) * c.hidden);
    for (float& v : x) v = normal(gen);
    const std::vector<float> logits = MakeLogits(n, e, false, c.bias, ++seed);

    HostRouting routing(n, e, c.k);
    cpu.TopKSoftmax(logits.data(), n, e, c.k, routing.view());
    std::vector<float> want(x.size());
    cpu.MoeExperts(x.data(), n, c.hidden, routing.view(), c.k, fixture.host(), e, scale,
                   want.data());

    DeviceBuffer d_x(x.size() * 4), d_logits(logits.size() * 4);
    DeviceBuffer d_fused(x.size() * 4), d_sequential(x.size() * 4);
    d_x.Upload(x.data(), x.size() * 4);
    d_logits.Upload(logits.data(), logits.size() * 4);
    ASSERT_EQ(cudaMemset(d_fused.as<void>(), 0xff, x.size() * 4), cudaSuccess);  // NaN
    ASSERT_EQ(cudaMemset(d_sequential.as<void>(), 0xff, x.size() * 4), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the memsets ran on the legacy stream
    DeviceRouting d_routing(n, e, c.k);
    cuda::TopKSoftmax(d_logits.as<float>(), n, e, c.k, d_routing.view(), ctx);
    fused->Run(d_x.as<float>(), n, c.hidden, d_routing.view(), c.k, fixture.device(), e, scale,
               d_fused.as<float>(), ctx);
    sequential->Run(d_x.as<float>(), n, c.hidden, d_routing.view(), c.k, fixture.device(), e,
                    scale, d_sequential.as<float>(), ctx);
    ASSERT_EQ(cudaStreamSynchronize(ctx.stream), cudaSuccess) << what;
    const std::vector<float> got_fused = Download<float>(d_fused.as<void>(), x.size());
    const std::vector<float> got_sequential = Download<float>(d_sequential.as<void>(), x.size());
    ExpectClose(got_fused, want, tol, what + " fused vs cpu");
    ExpectClose(got_sequential, want, tol, what + " sequential vs cpu");
    ExpectClose(got_fused, got_sequential, tol / 2, what + " fused vs sequential");
  }
}

std::vector<int> Repeat(int value, int count) { return std::vector<int>(count, value); }

TEST_F(CudaMoeTest, ExpertsEqualSizes) {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    MoeCase c;
    c.name = "hidden 256, 8 x 512, top-2, expert 5 idle";
    c.hidden = 256;
    c.inter = Repeat(512, 8);
    c.dtype = dtype;
    c.tokens = {1, 2, 7, 16, 33, 64, 100, 128};
    c.bias = std::vector<float>(8, 0.0f);
    c.bias[5] = -30.0f;
    RunMoeCase(*cpu_, *ctx_, c);
  }
}

TEST_F(CudaMoeTest, ExpertsUnequalOddSizesUnaligned) {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    MoeCase c;
    c.name = "hidden 256, odd unequal sizes, unaligned experts 1 and 4";
    c.hidden = 256;
    c.inter = {511, 257, 64, 1000, 33, 512, 130, 7};
    c.dtype = dtype;
    c.tokens = {1, 5, 64, 128};
    c.unaligned = {1, 4};
    RunMoeCase(*cpu_, *ctx_, c);
  }
}

TEST_F(CudaMoeTest, ExpertsUnalignedHiddenTopOne) {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int k : {1, 2}) {
      MoeCase c;
      c.name = "hidden 100, 4 experts, top-" + std::to_string(k);
      c.hidden = 100;
      c.inter = {96, 200, 33, 64};
      c.k = k;
      c.dtype = dtype;
      c.tokens = {1, 9, 128};
      RunMoeCase(*cpu_, *ctx_, c);
    }
  }
}

TEST_F(CudaMoeTest, ExpertsOneExpertTakesAllTokensAndSplitK) {
  // Every token's first choice is expert 0 (65 and 130 tokens: 2 and 3 row tiles); one token
  // runs the down product split over up to 8 ranges of its 4096-wide expert, some of them past
  // the end of the smaller experts.
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    MoeCase c;
    c.name = "hidden 256, sizes up to 4096, expert 0 takes all, 16 experts";
    c.hidden = 256;
    c.inter = {4096, 1500, 100, 512, 64, 2048, 1024, 256, 128, 96, 512, 512, 3000, 64, 8, 520};
    c.dtype = dtype;
    c.tokens = {1, 2, 65, 130};
    c.bias = std::vector<float>(16, 0.0f);
    c.bias[0] = 8.0f;
    RunMoeCase(*cpu_, *ctx_, c);
  }
}

TEST_F(CudaMoeTest, ExpertsSeedShapes) {
  // The draft's MoE layer: hidden 2048, 8 experts of 8192, top-2 (engine/README.md, LLaMA-MoE).
  MoeCase c;
  c.name = "hidden 2048, 8 x 8192, top-2";
  c.hidden = 2048;
  c.inter = Repeat(8192, 8);
  c.dtype = DType::kF16;
  c.tokens = {1, 64};
  RunMoeCase(*cpu_, *ctx_, c);
  MoeCase b;
  b.name = "hidden 2048, 8 x 1024, top-2";
  b.hidden = 2048;
  b.inter = Repeat(1024, 8);
  b.dtype = DType::kBF16;
  b.tokens = {1, 17, 64};
  RunMoeCase(*cpu_, *ctx_, b);
}

TEST_F(CudaMoeTest, FusedReplaysFromGraph) {
  MoeCase c;
  c.name = "graph";
  c.hidden = 256;
  c.inter = {512, 300, 512, 1024, 64, 512, 512, 200};
  c.dtype = DType::kF16;
  MoeFixture fixture(c, 99);
  const int n = 20, e = 8, k = 2;
  const float scale = 4.0f;
  std::unique_ptr<cuda::MoeExpertsOp> fused = cuda::CreateFusedMoeExperts();
  DeviceBuffer d_x(static_cast<size_t>(n) * c.hidden * 4), d_logits(n * e * 4);
  DeviceBuffer d_y(static_cast<size_t>(n) * c.hidden * 4);
  DeviceRouting d_routing(n, e, k);

  auto inputs = [&](uint32_t seed, std::vector<float>* x, std::vector<float>* logits) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    x->resize(static_cast<size_t>(n) * c.hidden);
    for (float& v : *x) v = normal(gen);
    *logits = MakeLogits(n, e, false, {}, seed + 1);
    d_x.Upload(x->data(), x->size() * 4);
    d_logits.Upload(logits->data(), logits->size() * 4);
  };
  auto step = [&] {
    cuda::TopKSoftmax(d_logits.as<float>(), n, e, k, d_routing.view(), *ctx_);
    fused->Run(d_x.as<float>(), n, c.hidden, d_routing.view(), k, fixture.device(), e, scale,
               d_y.as<float>(), *ctx_);
  };

  std::vector<float> x, logits;
  inputs(5, &x, &logits);
  step();  // eager: sizes the scratch and uploads the expert table
  Sync();

  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(ctx_->stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  ctx_->capturing = true;
  step();
  ctx_->capturing = false;
  ASSERT_EQ(cudaStreamEndCapture(ctx_->stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

  for (uint32_t seed : {17u, 29u}) {
    inputs(seed, &x, &logits);
    ASSERT_EQ(cudaMemset(d_y.as<void>(), 0xff, x.size() * 4), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the memset ran on the legacy stream
    ASSERT_EQ(cudaGraphLaunch(exec, ctx_->stream), cudaSuccess);
    Sync();
    HostRouting routing(n, e, k);
    cpu_->TopKSoftmax(logits.data(), n, e, k, routing.view());
    std::vector<float> want(x.size());
    cpu_->MoeExperts(x.data(), n, c.hidden, routing.view(), k, fixture.host(), e, scale,
                     want.data());
    ExpectClose(Download<float>(d_y.as<void>(), x.size()), want, 2e-3f,
                "graph replay, seed " + std::to_string(seed));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// NaN gate rows among finite ones: the NaN tokens' outputs are NaN on both backends, and every
// other token's output equals the CPU's (no token reads another's stale scratch).
TEST_F(CudaMoeTest, ExpertsWithNanGateRowsLeaveTheOtherTokensExact) {
  MoeCase c;
  c.name = "NaN gate rows";
  c.hidden = 256;
  c.inter = {512, 300, 512, 1024, 64, 512, 512, 200};
  c.dtype = DType::kF16;
  MoeFixture fixture(c, 123);
  const int n = 40, e = 8, k = 2;
  const float scale = 4.0f;
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * c.hidden);
  for (float& v : x) v = normal(gen);
  const std::vector<float> logits = NanRows(n, e, 77);
  HostRouting routing(n, e, k);
  cpu_->TopKSoftmax(logits.data(), n, e, k, routing.view());
  std::vector<float> want(x.size());
  cpu_->MoeExperts(x.data(), n, c.hidden, routing.view(), k, fixture.host(), e, scale,
                   want.data());

  std::unique_ptr<cuda::MoeExpertsOp> fused = cuda::CreateFusedMoeExperts();
  std::unique_ptr<cuda::MoeExpertsOp> sequential = cuda::CreateSequentialMoeExperts();
  DeviceBuffer d_x(x.size() * 4), d_logits(logits.size() * 4);
  DeviceBuffer d_fused(x.size() * 4), d_sequential(x.size() * 4);
  d_x.Upload(x.data(), x.size() * 4);
  d_logits.Upload(logits.data(), logits.size() * 4);
  DeviceRouting d_routing(n, e, k);
  cuda::TopKSoftmax(d_logits.as<float>(), n, e, k, d_routing.view(), *ctx_);
  fused->Run(d_x.as<float>(), n, c.hidden, d_routing.view(), k, fixture.device(), e, scale,
             d_fused.as<float>(), *ctx_);
  sequential->Run(d_x.as<float>(), n, c.hidden, d_routing.view(), k, fixture.device(), e,
                  scale, d_sequential.as<float>(), *ctx_);
  Sync();
  for (const auto& [name, device] :
       {std::pair<std::string, const DeviceBuffer*>{"fused", &d_fused},
        std::pair<std::string, const DeviceBuffer*>{"sequential", &d_sequential}}) {
    const std::vector<float> got = Download<float>(device->as<void>(), x.size());
    std::vector<float> got_finite, want_finite;
    int nan_tokens = 0;
    for (int t = 0; t < n; ++t) {
      const bool nan_token = std::isnan(routing.weight[t * k]);
      nan_tokens += nan_token;
      for (int i = 0; i < c.hidden; ++i) {
        const size_t at = static_cast<size_t>(t) * c.hidden + i;
        if (nan_token) {
          ASSERT_TRUE(std::isnan(got[at])) << name << ": token " << t << " element " << i;
        } else {
          got_finite.push_back(got[at]);
          want_finite.push_back(want[at]);
        }
      }
    }
    EXPECT_EQ(nan_tokens, 2) << "tokens 0 and 13 choose a NaN with k = 2";
    ExpectClose(got_finite, want_finite, 2e-3f, name + ": the tokens without NaN");
  }
}

// The first fused call on a new expert array uploads its device table and launches the kernels
// that read it at once, on a non-blocking stream: the upload must be ordered before them
// (a legacy-stream cudaMemcpy was not). Fresh op and fresh array every round, so
// every round uploads a table.
TEST_F(CudaMoeTest, FusedFirstCallOnAFreshTableMatchesTheCpu) {
  MoeCase c;
  c.name = "fresh tables";
  c.hidden = 256;
  c.inter = Repeat(512, 64);
  c.dtype = DType::kBF16;
  MoeFixture fixture(c, 321);
  const int n = 16, e = 64, k = 2;
  const float scale = 2.0f;
  std::mt19937 gen(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * c.hidden);
  for (float& v : x) v = normal(gen);
  const std::vector<float> logits = MakeLogits(n, e, false, {}, 8);
  HostRouting routing(n, e, k);
  cpu_->TopKSoftmax(logits.data(), n, e, k, routing.view());
  std::vector<float> want(x.size());
  cpu_->MoeExperts(x.data(), n, c.hidden, routing.view(), k, fixture.host(), e, scale,
                   want.data());
  DeviceBuffer d_x(x.size() * 4), d_logits(logits.size() * 4), d_y(x.size() * 4);
  d_x.Upload(x.data(), x.size() * 4);
  d_logits.Upload(logits.data(), logits.size() * 4);
  DeviceRouting d_routing(n, e, k);
  cuda::TopKSoftmax(d_logits.as<float>(), n, e, k, d_routing.view(), *ctx_);
  // Every array stays alive, so no two rounds share an address.
  std::vector<std::vector<ExpertWeights>> arrays;
  for (int round = 0; round < 24; ++round) {
    arrays.emplace_back(fixture.device(), fixture.device() + e);
    std::unique_ptr<cuda::MoeExpertsOp> fused = cuda::CreateFusedMoeExperts();
    fused->Run(d_x.as<float>(), n, c.hidden, d_routing.view(), k, arrays.back().data(), e, scale,
               d_y.as<float>(), *ctx_);
    Sync();
    ExpectClose(Download<float>(d_y.as<void>(), x.size()), want, 1.6e-2f,
                "fresh table, round " + std::to_string(round));
  }
}

}  // namespace
}  // namespace specmoe::kernels
