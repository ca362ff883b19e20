// tests/cuda_backend_test.cc — the CUDA backend (kernels/cuda/cuda_backend.h) op by op against
// the CPU backend, the reference (label cuda). Every test but MissingDeviceIsAnError (which
// checks that a missing device is an error Status, not an abort) skips at run time when no
// CUDA device is visible (kernels/README.md).
//
// Comparisons are |gpu - cpu| <= atol + rtol * |cpu| per element, with tolerances from the
// rounding each op is allowed to differ by:
//   - exact copies and IEEE-exact maths (Embedding, Add, GatherRows, KvWrite, KvCompact, the
//     copies and BeginForward): bit equality (KvWrite's f16 bytes too);
//   - RmsNorm, Rope, SiluMul, Tanh: the same fp32 operations in the same order except a
//     summation order or a libm function (<= 2 ulp): rtol 1e-5 and a small atol;
//   - MatMul: the fp32 accumulation order differs (cuBLAS against the CPU's 8 lanes), a
//     random-walk error of ~1e-6 of the terms' l2 norm L = sqrt(sum_k (x_k w_k)^2), so
//     atol = 3e-5 * L for f32 weights (TF32 products would be off by ~4e-4 * L). With f16 /
//     bf16 weights the tensor cores accumulate with truncated block sums (up to ~1.5e-5 * L
//     at 4k columns, worst case), so atol = 1e-4 * L for the accumulation; the GPU also rounds
//     x to the weight's dtype, which adds at most E = sum_k |x_k - round(x_k)| |w_k| (computed
//     exactly per output). So f16 / bf16 results must match the CPU on x within
//     1e-4 * L + E, and the CPU on the rounded x (the same exact products) within 1e-4 * L.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/f16.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"

namespace specmoe::kernels {
namespace {

std::vector<float> RandomFloats(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(gen);
  return v;
}

// A weight in host memory, stored as `dtype` (rounded to nearest even), with its exact f32
// values.
struct HostWeight {
  std::vector<uint8_t> storage;
  std::vector<float> values;  // [rows, cols] the stored values widened
  Weight w;                   // host view of storage
};

HostWeight MakeWeight(DType dtype, int64_t rows, int64_t cols, uint32_t seed, float stddev = 1.0f,
                      float mean = 0.0f) {
  HostWeight h;
  std::vector<float> v = RandomFloats(static_cast<size_t>(rows * cols), seed, stddev);
  for (float& x : v) x += mean;
  h.storage.resize(v.size() * DTypeBytes(dtype));
  h.values.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(h.storage.data() + 4 * i, &v[i], 4);
      h.values[i] = v[i];
    } else {
      const uint16_t bits = dtype == DType::kF16 ? F32ToF16(v[i]) : F32ToBf16(v[i]);
      std::memcpy(h.storage.data() + 2 * i, &bits, 2);
      h.values[i] = dtype == DType::kF16 ? F16ToF32(bits) : Bf16ToF32(bits);
    }
  }
  h.w = Weight{h.storage.data(), dtype, rows, cols};
  return h;
}

float RoundTo(DType dtype, float v) {
  if (dtype == DType::kF16) return F16ToF32(F32ToF16(v));
  if (dtype == DType::kBF16) return Bf16ToF32(F32ToBf16(v));
  return v;
}

// |got - want| <= atol[i] + rtol * |want[i]| for every i (atol of size 1: the same for all).
::testing::AssertionResult AllNear(const std::vector<float>& got, const std::vector<float>& want,
                                   const std::vector<float>& atol, float rtol) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size differs";
  size_t bad = 0, first = 0;
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = atol[atol.size() == 1 ? 0 : i] + rtol * std::fabs(want[i]);
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= tol)) {  // NaN fails too
      if (bad == 0) first = i;
      ++bad;
      worst = std::max(worst, diff / tol);
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  const float first_tol = atol[atol.size() == 1 ? 0 : first] + rtol * std::fabs(want[first]);
  return ::testing::AssertionFailure()
         << bad << " of " << got.size() << " outside tolerance; first at " << first << ": got "
         << got[first] << " want " << want[first] << " tol " << first_tol << "; worst diff / tol "
         << worst;
}

::testing::AssertionResult AllNear(const std::vector<float>& got, const std::vector<float>& want,
                                   float atol, float rtol) {
  return AllNear(got, want, std::vector<float>{atol}, rtol);
}

::testing::AssertionResult SameBytes(const void* got, const void* want, size_t bytes) {
  const auto* g = static_cast<const uint8_t*>(got);
  const auto* w = static_cast<const uint8_t*>(want);
  for (size_t i = 0; i < bytes; ++i) {
    if (g[i] != w[i]) {
      return ::testing::AssertionFailure() << "byte " << i << " of " << bytes << " differs: got "
                                           << int{g[i]} << " want " << int{w[i]};
    }
  }
  return ::testing::AssertionSuccess();
}

// The arrays of a host ForwardDesc.
struct HostDesc {
  int n_seqs = 1;
  int max_blocks_per_seq = 0;
  std::vector<int32_t> tokens, positions, slots, token_seq, visible_prefix, tree_start;
  std::vector<int32_t> block_tables, logit_rows;
  std::vector<uint64_t> tree_mask;

  ForwardDesc View() const {
    ForwardDesc d;
    d.n_tokens = static_cast<int>(tokens.size());
    d.n_seqs = n_seqs;
    d.max_blocks_per_seq = max_blocks_per_seq;
    d.n_logit_rows = static_cast<int>(logit_rows.size());
    d.tokens = tokens.data();
    d.positions = positions.data();
    d.slots = slots.data();
    d.token_seq = token_seq.data();
    d.visible_prefix = visible_prefix.data();
    d.tree_mask = tree_mask.empty() ? nullptr : tree_mask.data();
    d.tree_start = tree_mask.empty() ? nullptr : tree_start.data();
    d.block_tables = block_tables.data();
    d.logit_rows = logit_rows.data();
    return d;
  }
};

// n tokens of one sequence: random ids < vocab, positions < max_pos, slots a random
// injective map into [0, num_slots) (num_slots >= n), and every third row as a logit row.
HostDesc MakeDesc(int n, int vocab, int max_pos, int num_slots, uint32_t seed) {
  EXPECT_GE(num_slots, n);
  std::mt19937 gen(seed);
  HostDesc h;
  h.tokens.resize(n);
  h.positions.resize(n);
  h.token_seq.assign(n, 0);
  h.visible_prefix.resize(n);
  for (int t = 0; t < n; ++t) {
    h.tokens[t] = static_cast<int32_t>(gen() % vocab);
    h.positions[t] = static_cast<int32_t>(gen() % max_pos);
    h.visible_prefix[t] = t + 1;
  }
  std::vector<int32_t> all(num_slots);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), gen);
  h.slots.assign(all.begin(), all.begin() + std::min(n, num_slots));
  h.max_blocks_per_seq = 1;
  h.block_tables = {0};
  for (int t = 0; t < n; ++t) {
    if (t % 3 == 0 || t == n - 1) h.logit_rows.push_back(t);
  }
  return h;
}

// A stream and cuBLAS handle of the test's own, for the kernels whose signatures the Backend
// does not expose (leading dimensions).
struct TestContext {
  cuda::CudaContext ctx;
  TestContext() {
    EXPECT_EQ(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamNonBlocking), cudaSuccess);
    EXPECT_EQ(cublasCreate(&ctx.cublas), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasSetStream(ctx.cublas, ctx.stream), CUBLAS_STATUS_SUCCESS);
  }
  ~TestContext() {
    cudaStreamSynchronize(ctx.stream);
    cublasDestroy(ctx.cublas);
    cudaStreamDestroy(ctx.stream);
  }
  void Sync() { ASSERT_EQ(cudaStreamSynchronize(ctx.stream), cudaSuccess); }
};

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::DeviceName();
    absl::StatusOr<std::unique_ptr<Backend>> created = cuda::CreateCudaBackend(0);
    ASSERT_TRUE(created.ok()) << created.status();
    gpu_ = std::move(*created);
    cpu_ = CreateCpuBackend(1);
  }

  void TearDown() override {
    if (gpu_ == nullptr) return;
    for (void* p : buffers_) gpu_->Free(p);
    buffers_.clear();
    gpu_.reset();
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  }

  // Device memory of `count` T, freed at the end of the test.
  template <typename T>
  T* Device(size_t count) {
    void* p = gpu_->Alloc(count * sizeof(T));
    EXPECT_NE(p, nullptr);
    buffers_.push_back(p);
    return static_cast<T*>(p);
  }

  template <typename T>
  T* ToDevice(const std::vector<T>& host) {
    T* d = Device<T>(host.size());
    gpu_->CopyFromHost(d, host.data(), host.size() * sizeof(T));
    return d;
  }

  template <typename T>
  std::vector<T> ToHost(const T* d, size_t count) {
    std::vector<T> host(count);
    gpu_->CopyToHost(host.data(), d, count * sizeof(T));
    return host;
  }

  Weight Upload(const HostWeight& h) {
    const Weight w = gpu_->Upload(h.w);
    EXPECT_NE(w.data, nullptr);
    return w;
  }

  // MatMul of n random rows by h on both backends, compared as the header says.
  void CheckMatMul(const HostWeight& h, const Weight& dw, int n, uint32_t seed) {
    const int64_t rows = h.w.rows, cols = h.w.cols;
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(h.w.dtype) << " " << rows << "x" << cols << " n=" << n);
    const std::vector<float> x = RandomFloats(static_cast<size_t>(n * cols), seed);
    std::vector<float> xr(x.size());
    for (size_t i = 0; i < x.size(); ++i) xr[i] = RoundTo(h.w.dtype, x[i]);
    std::vector<float> want(static_cast<size_t>(n * rows)), want_rounded(want.size());
    cpu_->MatMul(x.data(), n, h.w, want.data());
    cpu_->MatMul(xr.data(), n, h.w, want_rounded.data());
    const double acc_rel = h.w.dtype == DType::kF32 ? 3e-5 : 1e-4;
    std::vector<float> acc_tol(want.size()), total_tol(want.size());
    for (int r = 0; r < n; ++r) {
      for (int64_t o = 0; o < rows; ++o) {
        double l2 = 0.0, rounding = 0.0;
        for (int64_t k = 0; k < cols; ++k) {
          const double wk = h.values[o * cols + k];
          const double term = x[r * cols + k] * wk;
          l2 += term * term;
          rounding += std::fabs((x[r * cols + k] - xr[r * cols + k]) * wk);
        }
        const size_t i = static_cast<size_t>(r * rows + o);
        acc_tol[i] = static_cast<float>(acc_rel * std::sqrt(l2) + 1e-6);
        total_tol[i] = static_cast<float>(acc_tol[i] + rounding);
      }
    }
    const float* dx = ToDevice(x);
    float* dy = Device<float>(want.size());
    gpu_->MatMul(dx, n, dw, dy);
    const std::vector<float> got = ToHost(dy, want.size());
    EXPECT_TRUE(AllNear(got, want, total_tol, 1e-5f));
    EXPECT_TRUE(AllNear(got, want_rounded, acc_tol, 1e-5f));
  }

  std::unique_ptr<Backend> gpu_;
  std::unique_ptr<Backend> cpu_;
  std::vector<void*> buffers_;
};

TEST(CudaBackendCreateTest, MissingDeviceIsAnError) {
  const int count = cuda::DeviceCount();
  const absl::StatusOr<std::unique_ptr<Backend>> beyond = cuda::CreateCudaBackend(count);
  EXPECT_FALSE(beyond.ok());
  const absl::StatusOr<std::unique_ptr<Backend>> negative = cuda::CreateCudaBackend(-1);
  EXPECT_FALSE(negative.ok());
  if (count == 0) {
    // No device: the message names the runtime's error instead of aborting.
    EXPECT_FALSE(beyond.status().message().empty());
  }
}

TEST_F(CudaBackendTest, NameAndRecordingSupport) {
  EXPECT_EQ(gpu_->name(), "cuda");
  EXPECT_TRUE(gpu_->CanRecord());
  EXPECT_FALSE(cpu_->CanRecord());
  EXPECT_FALSE(gpu_->Replay(RecordingKey{NewRecordingId(), 12345}));
}

TEST_F(CudaBackendTest, Copies) {
  for (size_t bytes : {size_t{1}, size_t{37}, size_t{4096}, (size_t{1} << 20) + 3}) {
    std::vector<uint8_t> host(bytes);
    std::mt19937 gen(static_cast<uint32_t>(bytes));
    for (uint8_t& b : host) b = static_cast<uint8_t>(gen());
    uint8_t* a = Device<uint8_t>(bytes);
    uint8_t* b = Device<uint8_t>(bytes);
    gpu_->CopyFromHost(a, host.data(), bytes);
    gpu_->Copy(b, a, bytes);
    const std::vector<uint8_t> back = ToHost(b, bytes);
    EXPECT_TRUE(SameBytes(back.data(), host.data(), bytes)) << bytes << " bytes";
  }
}

TEST_F(CudaBackendTest, AllocIsAlignedAndOutOfMemoryIsNull) {
  void* p = gpu_->Alloc(100);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  gpu_->Free(p);
  EXPECT_EQ(gpu_->Alloc(size_t{1} << 50), nullptr);
  // The failed allocation leaves no error behind: the next op still checks clean.
  std::vector<float> x = RandomFloats(100, 1), y = RandomFloats(100, 2);
  float* dx = ToDevice(x);
  float* dy = ToDevice(y);
  gpu_->Add(dx, x.size(), dy);
  EXPECT_EQ(ToHost(dy, y.size())[0], y[0] + x[0]);
}

TEST_F(CudaBackendTest, UploadEachDtype) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const HostWeight h = MakeWeight(dtype, 37, 53, 3);
    const Weight w = Upload(h);
    ASSERT_NE(w.data, nullptr);
    EXPECT_NE(w.data, h.w.data);
    EXPECT_EQ(w.dtype, dtype);
    EXPECT_EQ(w.rows, 37);
    EXPECT_EQ(w.cols, 53);
    std::vector<uint8_t> back(h.storage.size());
    gpu_->CopyToHost(back.data(), w.data, back.size());
    EXPECT_TRUE(SameBytes(back.data(), h.storage.data(), back.size())) << DTypeName(dtype);
  }
  // Out of memory: a Weight without data, nothing aborted. The host pointer is never read
  // (the allocation fails first).
  const float dummy = 0.0f;
  const Weight huge = gpu_->Upload(Weight{&dummy, DType::kF32, int64_t{1} << 24, int64_t{1} << 24});
  EXPECT_EQ(huge.data, nullptr);
  EXPECT_EQ(huge.rows, int64_t{1} << 24);
}

TEST_F(CudaBackendTest, MatMulSweep) {
  uint32_t seed = 100;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (auto [rows, cols] : {std::pair<int, int>{37, 53}, {64, 128}, {1, 7}, {130, 4099}}) {
      const HostWeight h = MakeWeight(dtype, rows, cols, ++seed);
      const Weight dw = Upload(h);
      for (int n : {1, 2, 3, 7, 16, 33, 64, 128, 256}) CheckMatMul(h, dw, n, ++seed);
    }
    const HostWeight big = MakeWeight(dtype, 1024, 4096 + 3, ++seed);
    const Weight dbig = Upload(big);
    for (int n : {1, 7, 64, 256}) CheckMatMul(big, dbig, n, ++seed);
  }
}

TEST_F(CudaBackendTest, MatMulManyMatchesCpu) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const int cols = 96 + 5;
    const int rows[3] = {64, 32, 33};
    std::vector<HostWeight> h;
    Weight host_w[3], dev_w[3];
    for (int i = 0; i < 3; ++i) {
      h.push_back(MakeWeight(dtype, rows[i], cols, 200 + i));
    }
    for (int i = 0; i < 3; ++i) {
      host_w[i] = h[i].w;
      dev_w[i] = Upload(h[i]);
    }
    for (int n : {1, 5, 64}) {
      const std::vector<float> x = RandomFloats(static_cast<size_t>(n) * cols, 300 + n);
      std::vector<std::vector<float>> want(3);
      float* want_ptr[3];
      float* dev_y[3];
      for (int i = 0; i < 3; ++i) {
        want[i].resize(static_cast<size_t>(n) * rows[i]);
        want_ptr[i] = want[i].data();
        dev_y[i] = Device<float>(want[i].size());
      }
      cpu_->MatMulMany(x.data(), n, host_w, want_ptr, 3);
      gpu_->MatMulMany(ToDevice(x), n, dev_w, dev_y, 3);
      for (int i = 0; i < 3; ++i) {
        // Each output equals a single MatMul's (checked in detail by MatMulSweep).
        float* single = Device<float>(want[i].size());
        gpu_->MatMul(ToDevice(x), n, dev_w[i], single);
        EXPECT_EQ(ToHost(dev_y[i], want[i].size()), ToHost(single, want[i].size()));
        const float rtol = dtype == DType::kF32 ? 1e-4f : (dtype == DType::kF16 ? 5e-3f : 3e-2f);
        EXPECT_TRUE(AllNear(ToHost(dev_y[i], want[i].size()), want[i], rtol * 10.0f, rtol))
            << DTypeName(dtype) << " matrix " << i << " n=" << n;
      }
    }
  }
}

TEST_F(CudaBackendTest, GemmWithLeadingDimensions) {
  TestContext tc;
  const int n = 9, rows = 40, cols = 77, ldx = cols + 5, ldy = rows + 3;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const HostWeight h = MakeWeight(dtype, rows, cols, 400);
    const Weight dw = Upload(h);
    const std::vector<float> xp = RandomFloats(static_cast<size_t>(n) * ldx, 401);
    std::vector<float> x(static_cast<size_t>(n) * cols);
    for (int r = 0; r < n; ++r) {
      std::copy_n(xp.begin() + r * ldx, cols, x.begin() + r * cols);
    }
    std::vector<float> want(static_cast<size_t>(n) * rows);
    cpu_->MatMul(x.data(), n, h.w, want.data());
    const std::vector<float> sentinel(static_cast<size_t>(n) * ldy, -7.0f);
    float* dy = ToDevice(sentinel);
    cuda::Gemm(ToDevice(xp), n, ldx, dw, dy, ldy, tc.ctx);
    tc.Sync();
    const std::vector<float> yp = ToHost(dy, sentinel.size());
    std::vector<float> got(want.size());
    for (int r = 0; r < n; ++r) {
      std::copy_n(yp.begin() + r * ldy, rows, got.begin() + r * rows);
      for (int c = rows; c < ldy; ++c) EXPECT_EQ(yp[r * ldy + c], -7.0f) << "padding written";
    }
    const float rtol = dtype == DType::kF32 ? 1e-4f : (dtype == DType::kF16 ? 5e-3f : 3e-2f);
    EXPECT_TRUE(AllNear(got, want, rtol * 10.0f, rtol)) << DTypeName(dtype);
  }
}

TEST_F(CudaBackendTest, EmbeddingIsExact) {
  const int vocab = 1000;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int hidden : {1, 515, 4096}) {
      const HostWeight h = MakeWeight(dtype, vocab, hidden, 500 + hidden);
      const Weight dw = Upload(h);
      for (int n : {1, 7, 256}) {
        const HostDesc desc = MakeDesc(n, vocab, 4096, 1024, 600 + n);
        const ForwardDesc host = desc.View();
        std::vector<float> want(static_cast<size_t>(n) * hidden);
        cpu_->Embedding(*cpu_->BeginForward(host), h.w, want.data());
        float* out = Device<float>(want.size());
        gpu_->Embedding(*gpu_->BeginForward(host), dw, out);
        EXPECT_EQ(ToHost(out, want.size()), want)
            << DTypeName(dtype) << " hidden=" << hidden << " n=" << n;
      }
    }
  }
}

TEST_F(CudaBackendTest, RmsNormMatchesCpu) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int d : {1, 7, 64, 4096 + 3}) {
      const HostWeight h = MakeWeight(dtype, 1, d, 700 + d, 0.1f, 1.0f);
      const Weight dw = Upload(h);
      for (int n : {1, 3, 33, 256}) {
        const std::vector<float> x = RandomFloats(static_cast<size_t>(n) * d, 800 + n, 2.0f);
        std::vector<float> want(x.size());
        cpu_->RmsNorm(x.data(), n, d, h.w, 1e-5f, want.data());
        float* dx = ToDevice(x);
        float* dy = Device<float>(x.size());
        gpu_->RmsNorm(dx, n, d, dw, 1e-5f, dy);
        EXPECT_TRUE(AllNear(ToHost(dy, x.size()), want, 1e-6f, 1e-5f))
            << DTypeName(dtype) << " d=" << d << " n=" << n;
        gpu_->RmsNorm(dx, n, d, dw, 1e-5f, dx);  // in place
        EXPECT_EQ(ToHost(dx, x.size()), ToHost(dy, x.size())) << "in place differs";
      }
    }
  }
}

TEST_F(CudaBackendTest, RopeMatchesCpu) {
  for (float theta : {10000.0f, 500000.0f}) {
    for (auto [n_heads, head_dim] : {std::pair<int, int>{1, 2}, {5, 6}, {32, 128}, {3, 64}}) {
      for (int n : {1, 7, 256}) {
        const HostDesc desc = MakeDesc(n, 100, 4097, 1024, 900 + n);
        const ForwardDesc host = desc.View();
        const std::vector<float> x =
            RandomFloats(static_cast<size_t>(n) * n_heads * head_dim, 1000 + n);
        // Without scaling and with LLaMA-3.1's llama3 scaling (original context 8192).
        for (const RopeScaling& scaling : {RopeScaling{}, RopeScaling{8.0f, 1.0f, 4.0f, 8192.0f}}) {
          std::vector<float> want = x;
          cpu_->Rope(want.data(), *cpu_->BeginForward(host), n_heads, head_dim, theta, scaling);
          float* dx = ToDevice(x);
          gpu_->Rope(dx, *gpu_->BeginForward(host), n_heads, head_dim, theta, scaling);
          EXPECT_TRUE(AllNear(ToHost(dx, x.size()), want, 4e-6f, 1e-5f))
              << "theta=" << theta << " heads=" << n_heads << " head_dim=" << head_dim
              << " n=" << n << " llama3 factor=" << scaling.factor;
        }
      }
    }
  }
}

TEST_F(CudaBackendTest, SiluMulMatchesCpu) {
  for (int d : {1, 100, 4096 + 3}) {
    for (int n : {1, 33, 256}) {
      const size_t count = static_cast<size_t>(n) * d;
      const std::vector<float> gate = RandomFloats(count, 1100 + d, 4.0f);
      const std::vector<float> up = RandomFloats(count, 1200 + n);
      std::vector<float> want(count);
      cpu_->SiluMul(gate.data(), up.data(), n, d, want.data());
      float* dg = ToDevice(gate);
      float* du = ToDevice(up);
      float* dout = Device<float>(count);
      gpu_->SiluMul(dg, du, n, d, dout);
      EXPECT_TRUE(AllNear(ToHost(dout, count), want, 1e-6f, 1e-5f)) << "d=" << d << " n=" << n;
      gpu_->SiluMul(dg, du, n, d, dg);  // out aliases gate
      EXPECT_EQ(ToHost(dg, count), ToHost(dout, count)) << "aliased output differs";
    }
  }
}

TEST_F(CudaBackendTest, SiluMulWithLeadingDimension) {
  TestContext tc;
  const int n = 5, d = 37, ld = 2 * d + 1;
  const std::vector<float> gate = RandomFloats(static_cast<size_t>(n) * ld, 1300, 3.0f);
  const std::vector<float> up = RandomFloats(static_cast<size_t>(n) * ld, 1301);
  std::vector<float> g(static_cast<size_t>(n) * d), u(g.size()), want(g.size());
  for (int r = 0; r < n; ++r) {
    std::copy_n(gate.begin() + r * ld, d, g.begin() + r * d);
    std::copy_n(up.begin() + r * ld, d, u.begin() + r * d);
  }
  cpu_->SiluMul(g.data(), u.data(), n, d, want.data());
  const std::vector<float> sentinel(static_cast<size_t>(n) * ld, 9.0f);
  float* dout = ToDevice(sentinel);
  cuda::SiluMul(ToDevice(gate), ToDevice(up), n, d, ld, dout, tc.ctx);
  tc.Sync();
  const std::vector<float> outp = ToHost(dout, sentinel.size());
  std::vector<float> got(want.size());
  for (int r = 0; r < n; ++r) {
    std::copy_n(outp.begin() + r * ld, d, got.begin() + r * d);
    for (int c = d; c < ld; ++c) EXPECT_EQ(outp[r * ld + c], 9.0f) << "padding written";
  }
  EXPECT_TRUE(AllNear(got, want, 1e-6f, 1e-5f));
}

TEST_F(CudaBackendTest, AddIsExactAndTanhMatchesCpu) {
  for (size_t count : {size_t{1}, size_t{1000}, size_t{1000003}}) {
    const std::vector<float> x = RandomFloats(count, 1400, 3.0f);
    const std::vector<float> y = RandomFloats(count, 1401, 3.0f);
    std::vector<float> want = y;
    cpu_->Add(x.data(), count, want.data());
    float* dy = ToDevice(y);
    gpu_->Add(ToDevice(x), count, dy);
    EXPECT_EQ(ToHost(dy, count), want) << count;

    std::vector<float> want_tanh = x;
    cpu_->Tanh(want_tanh.data(), count);
    float* dx = ToDevice(x);
    gpu_->Tanh(dx, count);
    EXPECT_TRUE(AllNear(ToHost(dx, count), want_tanh, 1e-7f, 1e-5f)) << count;
  }
}

// Values that exercise every f16 rounding case: normals, ties to even, subnormals,
// underflow to zero, overflow to infinity, signed zeros.
std::vector<float> F16EdgeValues(size_t count, uint32_t seed) {
  std::vector<float> v = RandomFloats(count, seed);
  std::mt19937 gen(seed + 1);
  for (size_t i = 0; i < count; ++i) {
    switch (i % 8) {
      case 1:
        v[i] *= 1e-6f;
        break;  // subnormal halves
      case 2:
        v[i] *= 3e-8f;
        break;  // underflow
      case 3:
        v[i] *= 40000.0f;
        break;   // some overflow to inf
      case 4: {  // exact ties between two halves
        const float base = 1.0f + static_cast<float>(gen() % 1024) / 1024.0f;
        v[i] = base + 1.0f / 2048.0f;
        break;
      }
      case 5:
        v[i] = (i % 16 == 5) ? -0.0f : 65520.0f;
        break;
      default:
        break;
    }
  }
  return v;
}

TEST_F(CudaBackendTest, KvWriteMatchesCpuBytes) {
  const int num_slots = 300;
  for (DType kv : {DType::kF32, DType::kF16}) {
    for (int row : {37, 512}) {
      for (int n : {1, 7, 256}) {
        const HostDesc desc = MakeDesc(n, 10, 10, num_slots, 1500 + n);
        const ForwardDesc host = desc.View();
        const size_t cache_bytes = static_cast<size_t>(num_slots) * row * DTypeBytes(kv);
        std::vector<uint8_t> init(cache_bytes);
        std::mt19937 gen(1600 + row);
        for (uint8_t& b : init) b = static_cast<uint8_t>(gen());
        const std::vector<float> k = F16EdgeValues(static_cast<size_t>(n) * row, 1700 + n);
        const std::vector<float> v = F16EdgeValues(static_cast<size_t>(n) * row, 1800 + n);
        std::vector<uint8_t> want_k = init, want_v = init;
        cpu_->KvWrite(k.data(), v.data(), *cpu_->BeginForward(host), row, kv, want_k.data(),
                      want_v.data());
        uint8_t* dk = ToDevice(init);
        uint8_t* dv = ToDevice(init);
        gpu_->KvWrite(ToDevice(k), ToDevice(v), *gpu_->BeginForward(host), row, kv, dk, dv);
        const std::string what =
            std::string(DTypeName(kv)) + " row=" + std::to_string(row) + " n=" + std::to_string(n);
        EXPECT_TRUE(SameBytes(ToHost(dk, cache_bytes).data(), want_k.data(), cache_bytes)) << what;
        EXPECT_TRUE(SameBytes(ToHost(dv, cache_bytes).data(), want_v.data(), cache_bytes)) << what;
      }
    }
  }
}

TEST_F(CudaBackendTest, KvWriteSkipsNegativeSlots) {
  const int num_slots = 64, row = 40, n = 9;
  for (DType kv : {DType::kF32, DType::kF16}) {
    HostDesc desc = MakeDesc(n, 10, 10, num_slots, 1900);
    const std::vector<float> k = RandomFloats(static_cast<size_t>(n) * row, 1901);
    const std::vector<float> v = RandomFloats(static_cast<size_t>(n) * row, 1902);
    // The CPU reference writes only the real tokens.
    HostDesc real = desc;
    std::vector<float> real_k, real_v;
    real.slots.clear();
    real.tokens.clear();
    for (int t = 0; t < n; ++t) {
      if (t % 3 == 1) {
        desc.slots[t] = -1;
        continue;
      }
      real.slots.push_back(desc.slots[t]);
      real.tokens.push_back(0);
      real_k.insert(real_k.end(), k.begin() + t * row, k.begin() + (t + 1) * row);
      real_v.insert(real_v.end(), v.begin() + t * row, v.begin() + (t + 1) * row);
    }
    ForwardDesc real_view = real.View();
    real_view.n_tokens = static_cast<int>(real.slots.size());
    const size_t cache_bytes = static_cast<size_t>(num_slots) * row * DTypeBytes(kv);
    std::vector<uint8_t> want_k(cache_bytes, 0x5a), want_v(cache_bytes, 0xa5);
    const std::vector<uint8_t> init_k = want_k, init_v = want_v;
    cpu_->KvWrite(real_k.data(), real_v.data(), real_view, row, kv, want_k.data(), want_v.data());
    uint8_t* dk = ToDevice(init_k);
    uint8_t* dv = ToDevice(init_v);
    gpu_->KvWrite(ToDevice(k), ToDevice(v), *gpu_->BeginForward(desc.View()), row, kv, dk, dv);
    EXPECT_TRUE(SameBytes(ToHost(dk, cache_bytes).data(), want_k.data(), cache_bytes));
    EXPECT_TRUE(SameBytes(ToHost(dv, cache_bytes).data(), want_v.data(), cache_bytes));
  }
}

TEST_F(CudaBackendTest, KvCompactMatchesCpuInOrderInEveryLayer) {
  const int num_slots = 100;
  // Chains in both directions: move 1 overwrites what move 0 read (the accepted path's
  // compaction), move 3 reads what move 2 wrote, a no-op move, a repeated source.
  const std::vector<int32_t> src = {12, 15, 17, 40, 41, 50, 60, 60};
  const std::vector<int32_t> dst = {11, 12, 13, 41, 42, 50, 61, 62};
  for (DType kv : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int row : {37, 64, 512}) {
      const size_t cache_bytes = static_cast<size_t>(num_slots) * row * DTypeBytes(kv);
      const int layers = 3;
      std::vector<std::vector<uint8_t>> k(layers), v(layers);
      std::vector<void*> hk, hv, dk, dv;
      std::mt19937 gen(2000 + row);
      for (int l = 0; l < layers; ++l) {
        k[l].resize(cache_bytes);
        v[l].resize(cache_bytes);
        for (uint8_t& b : k[l]) b = static_cast<uint8_t>(gen());
        for (uint8_t& b : v[l]) b = static_cast<uint8_t>(gen());
        hk.push_back(k[l].data());
        hv.push_back(v[l].data());
        dk.push_back(ToDevice(k[l]));
        dv.push_back(ToDevice(v[l]));
      }
      for (int n : {1, 3, static_cast<int>(src.size())}) {
        cpu_->KvCompact(src.data(), dst.data(), n, row, kv, hk.data(), hv.data(), layers);
        gpu_->KvCompact(src.data(), dst.data(), n, row, kv, dk.data(), dv.data(), layers);
        for (int l = 0; l < layers; ++l) {
          const std::string what = std::string(DTypeName(kv)) + " row=" + std::to_string(row) +
                                   " n=" + std::to_string(n) + " layer=" + std::to_string(l);
          EXPECT_TRUE(SameBytes(ToHost(static_cast<uint8_t*>(dk[l]), cache_bytes).data(),
                                k[l].data(), cache_bytes))
              << what;
          EXPECT_TRUE(SameBytes(ToHost(static_cast<uint8_t*>(dv[l]), cache_bytes).data(),
                                v[l].data(), cache_bytes))
              << what;
        }
      }
    }
  }
}

TEST_F(CudaBackendTest, GatherRowsIsExactAliasedOrNot) {
  for (int cols : {1, 4096 + 3}) {
    for (int n : {1, 50, 256}) {
      const HostDesc desc = MakeDesc(n, 10, 10, 1024, 2100 + n);
      const ForwardDesc host = desc.View();
      const std::vector<float> x = RandomFloats(static_cast<size_t>(n) * cols, 2200 + n);
      const size_t out_count = desc.logit_rows.size() * cols;
      std::vector<float> want(out_count);
      cpu_->GatherRows(x.data(), *cpu_->BeginForward(host), cols, want.data());
      const ForwardDesc* fwd = gpu_->BeginForward(host);
      float* dx = ToDevice(x);
      float* dout = Device<float>(out_count);
      gpu_->GatherRows(dx, *fwd, cols, dout);
      EXPECT_EQ(ToHost(dout, out_count), want) << "cols=" << cols << " n=" << n;
      gpu_->GatherRows(dx, *fwd, cols, dx);  // in place, as the logits are
      EXPECT_EQ(ToHost(dx, out_count), want) << "aliased, cols=" << cols << " n=" << n;
    }
  }
}

template <typename T>
std::vector<T> Back(Backend& b, const T* p, size_t count) {
  std::vector<T> host(count);
  if (count > 0) b.CopyToHost(host.data(), p, count * sizeof(T));
  return host;
}

void ExpectRoundTrip(Backend& gpu, const HostDesc& h) {
  const ForwardDesc host = h.View();
  const ForwardDesc* d = gpu.BeginForward(host);
  ASSERT_NE(d, nullptr);
  EXPECT_NE(d, &host);
  EXPECT_EQ(d->n_tokens, host.n_tokens);
  EXPECT_EQ(d->n_seqs, host.n_seqs);
  EXPECT_EQ(d->max_blocks_per_seq, host.max_blocks_per_seq);
  EXPECT_EQ(d->n_logit_rows, host.n_logit_rows);
  const size_t n = h.tokens.size();
  EXPECT_EQ(Back(gpu, d->tokens, n), h.tokens);
  EXPECT_EQ(Back(gpu, d->positions, n), h.positions);
  EXPECT_EQ(Back(gpu, d->slots, n), h.slots);
  EXPECT_EQ(Back(gpu, d->token_seq, n), h.token_seq);
  EXPECT_EQ(Back(gpu, d->visible_prefix, n), h.visible_prefix);
  EXPECT_EQ(Back(gpu, d->block_tables, h.block_tables.size()), h.block_tables);
  EXPECT_EQ(Back(gpu, d->logit_rows, h.logit_rows.size()), h.logit_rows);
  if (h.tree_mask.empty()) {
    EXPECT_EQ(d->tree_mask, nullptr);
    EXPECT_EQ(d->tree_start, nullptr);
  } else {
    ASSERT_NE(d->tree_mask, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(d->tree_mask) % 8, 0u);
    EXPECT_EQ(Back(gpu, d->tree_mask, n), h.tree_mask);
    EXPECT_EQ(Back(gpu, d->tree_start, h.tree_start.size()), h.tree_start);
  }
}

HostDesc TreeDesc(int n, int n_seqs, int max_blocks, uint32_t seed) {
  std::mt19937 gen(seed);
  HostDesc h;
  h.n_seqs = n_seqs;
  h.max_blocks_per_seq = max_blocks;
  for (int t = 0; t < n; ++t) {
    h.tokens.push_back(static_cast<int32_t>(gen() % 32000));
    h.positions.push_back(static_cast<int32_t>(gen() % 4096));
    h.slots.push_back(static_cast<int32_t>(gen() % 100000));
    h.token_seq.push_back(t * n_seqs / n);
    h.visible_prefix.push_back(static_cast<int32_t>(gen() % 4096));
    h.tree_mask.push_back((static_cast<uint64_t>(gen()) << 32) | gen());
    if (t % 2 == 0) h.logit_rows.push_back(t);
  }
  for (int s = 0; s < n_seqs; ++s) h.tree_start.push_back(static_cast<int32_t>(gen() % 4096));
  for (int i = 0; i < n_seqs * max_blocks; ++i) {
    h.block_tables.push_back(static_cast<int32_t>(gen() % 6000));
  }
  return h;
}

TEST_F(CudaBackendTest, BeginForwardRoundTrip) {
  ExpectRoundTrip(*gpu_, TreeDesc(37, 3, 5, 2300));
  HostDesc no_tree = TreeDesc(20, 2, 9, 2301);
  no_tree.tree_mask.clear();
  no_tree.tree_start.clear();
  ExpectRoundTrip(*gpu_, no_tree);
  ExpectRoundTrip(*gpu_, TreeDesc(1, 1, 1, 2302));
  // Larger than the initial device buffer (it grows), then small again.
  ExpectRoundTrip(*gpu_, TreeDesc(256, 200, 1000, 2303));
  ExpectRoundTrip(*gpu_, TreeDesc(5, 2, 3, 2304));
}

// The recorded sequence: h = Embedding(tokens); h = RmsNorm(h); y = h . w^T; y += residual;
// logits = GatherRows(y). Buffers fixed across runs.
struct Pipeline {
  Weight embed, norm, proj;
  int hidden = 0, out = 0, n = 0;
  float* h = nullptr;         // [n, hidden]
  float* y = nullptr;         // [n, out]
  float* residual = nullptr;  // [n, out]
  float* logits = nullptr;    // [n, out]

  void Run(Backend& b, const ForwardDesc& fwd) const {
    b.Embedding(fwd, embed, h);
    b.RmsNorm(h, n, hidden, norm, 1e-5f, h);
    b.MatMul(h, n, proj, y);
    b.Add(residual, static_cast<size_t>(n) * out, y);
    b.GatherRows(y, fwd, out, logits);
  }
};

// backend.h's GPU guarantee, checked exactly: the per-row ops give a row the same bits
// whatever else is in the call (rows run alone or in a slice against the same rows inside a
// call of 37), and every op, MatMul included, gives the same bits when run twice.
TEST_F(CudaBackendTest, PerRowOpsAreBatchInvariantAndDeterministic) {
  const int n = 37, d = 4096 + 3, heads = 8, head_dim = 64, vocab = 300, experts = 16, k = 4;
  const int rope_width = heads * head_dim;
  const HostWeight norm = MakeWeight(DType::kBF16, 1, d, 3000, 0.1f, 1.0f);
  const HostWeight embed = MakeWeight(DType::kF16, vocab, d, 3001);
  const HostWeight proj = MakeWeight(DType::kF16, 96, d, 3002);
  const Weight dnorm = Upload(norm);
  const Weight dembed = Upload(embed);
  const Weight dproj = Upload(proj);
  const std::vector<float> x = RandomFloats(static_cast<size_t>(n) * d, 3003, 2.0f);
  const std::vector<float> up = RandomFloats(static_cast<size_t>(n) * d, 3004);
  const std::vector<float> rot = RandomFloats(static_cast<size_t>(n) * rope_width, 3005);
  const std::vector<float> gate = RandomFloats(static_cast<size_t>(n) * experts, 3006);
  const HostDesc all = MakeDesc(n, vocab, 4097, 64, 3007);
  float* dx = ToDevice(x);
  float* dup = ToDevice(up);
  float* dgate = ToDevice(gate);
  float* out = Device<float>(static_cast<size_t>(n) * d);
  float* drot = Device<float>(rot.size());
  MoeRouting routing{Device<int32_t>(n * k), Device<float>(n * k), Device<int32_t>(experts),
                     Device<int32_t>(experts + 1), Device<int32_t>(n * k)};

  // Each op's output for rows [first, first + count), [count, width] per op.
  auto run = [&](int first, int count) {
    std::vector<std::vector<float>> outputs;
    const size_t rows = static_cast<size_t>(count);
    gpu_->RmsNorm(dx + first * d, count, d, dnorm, 1e-5f, out);
    outputs.push_back(ToHost(out, rows * d));
    gpu_->SiluMul(dx + first * d, dup + first * d, count, d, out);
    outputs.push_back(ToHost(out, rows * d));
    gpu_->Copy(out, dx + first * d, rows * d * sizeof(float));
    gpu_->Tanh(out, rows * d);
    outputs.push_back(ToHost(out, rows * d));
    HostDesc sub;
    sub.max_blocks_per_seq = all.max_blocks_per_seq;
    sub.block_tables = all.block_tables;
    for (auto [from, to] : {std::pair{&all.tokens, &sub.tokens}, {&all.positions, &sub.positions},
                            {&all.slots, &sub.slots}, {&all.token_seq, &sub.token_seq},
                            {&all.visible_prefix, &sub.visible_prefix}}) {
      to->assign(from->begin() + first, from->begin() + first + count);
    }
    const ForwardDesc* fwd = gpu_->BeginForward(sub.View());
    gpu_->Embedding(*fwd, dembed, out);
    outputs.push_back(ToHost(out, rows * d));
    gpu_->CopyFromHost(drot, rot.data() + static_cast<size_t>(first) * rope_width,
                       rows * rope_width * sizeof(float));
    gpu_->Rope(drot, *fwd, heads, head_dim, 500000.0f, kernels::RopeScaling{});
    outputs.push_back(ToHost(drot, rows * rope_width));
    gpu_->TopKSoftmax(dgate + first * experts, count, experts, k, routing);
    std::vector<float> idx;
    for (int32_t i : ToHost(routing.idx, rows * k)) idx.push_back(static_cast<float>(i));
    outputs.push_back(idx);
    outputs.push_back(ToHost(routing.weight, rows * k));
    std::vector<int32_t> argmax(count);
    gpu_->ArgmaxRows(dx + first * d, count, d, nullptr, argmax.data());
    outputs.push_back(std::vector<float>(argmax.begin(), argmax.end()));
    return outputs;
  };
  const char* names[] = {"RmsNorm", "SiluMul",     "Tanh",           "Embedding",
                         "Rope",    "TopK experts", "TopK weights", "ArgmaxRows"};
  const std::vector<std::vector<float>> full = run(0, n);
  EXPECT_EQ(run(0, n), full) << "two runs of the same calls differ";
  for (auto [first, count] : {std::pair{0, 1}, {5, 1}, {36, 1}, {10, 20}}) {
    const std::vector<std::vector<float>> part = run(first, count);
    for (size_t op = 0; op < full.size(); ++op) {
      const size_t width = full[op].size() / n;
      ASSERT_EQ(part[op].size(), width * count);
      EXPECT_EQ(std::memcmp(part[op].data(), full[op].data() + first * width,
                            part[op].size() * sizeof(float)),
                0)
          << names[op] << " of rows [" << first << ", " << first + count
          << ") differs from the same rows among " << n;
    }
  }
  float* y = Device<float>(static_cast<size_t>(n) * 96);
  gpu_->MatMul(dx, n, dproj, y);
  const std::vector<float> y1 = ToHost(y, static_cast<size_t>(n) * 96);
  gpu_->MatMul(dx, n, dproj, y);
  EXPECT_EQ(ToHost(y, static_cast<size_t>(n) * 96), y1) << "MatMul twice differs";
}

TEST_F(CudaBackendTest, RecordingReplaysWithNewInputs) {
  const int vocab = 500, hidden = 256 + 3, out = 130, n = 13;
  const HostWeight embed = MakeWeight(DType::kBF16, vocab, hidden, 2400);
  const HostWeight norm = MakeWeight(DType::kF32, 1, hidden, 2401, 0.1f, 1.0f);
  const HostWeight proj = MakeWeight(DType::kF16, out, hidden, 2402);
  Pipeline p;
  p.embed = Upload(embed);
  p.norm = Upload(norm);
  p.proj = Upload(proj);
  p.hidden = hidden;
  p.out = out;
  p.n = n;
  p.h = Device<float>(static_cast<size_t>(n) * hidden);
  p.y = Device<float>(static_cast<size_t>(n) * out);
  p.residual = Device<float>(static_cast<size_t>(n) * out);
  p.logits = Device<float>(static_cast<size_t>(n) * out);
  const HostDesc a = MakeDesc(n, vocab, 100, 100, 2403);
  HostDesc b = MakeDesc(n, vocab, 100, 100, 2404);
  b.logit_rows = a.logit_rows;  // same counts, other tokens
  ASSERT_NE(a.tokens, b.tokens);
  const std::vector<float> res_a = RandomFloats(static_cast<size_t>(n) * out, 2405);
  const std::vector<float> res_b = RandomFloats(static_cast<size_t>(n) * out, 2406);
  const size_t logit_count = a.logit_rows.size() * out;

  // Eager runs: the first sizes the scratch buffers (a recording must not grow them).
  auto eager = [&](const HostDesc& d, const std::vector<float>& res) {
    gpu_->CopyFromHost(p.residual, res.data(), res.size() * sizeof(float));
    p.Run(*gpu_, *gpu_->BeginForward(d.View()));
    return ToHost(p.logits, logit_count);
  };
  const std::vector<float> eager_a = eager(a, res_a);
  const std::vector<float> eager_b = eager(b, res_b);
  ASSERT_NE(eager_a, eager_b);

  // Record on a's inputs: EndRecording runs it once.
  gpu_->CopyFromHost(p.residual, res_a.data(), res_a.size() * sizeof(float));
  const ForwardDesc* fwd = gpu_->BeginForward(a.View());
  const RecordingKey key{NewRecordingId(), 7};
  gpu_->BeginRecording(key);
  p.Run(*gpu_, *fwd);
  ASSERT_TRUE(gpu_->EndRecording());
  EXPECT_TRUE(AllNear(ToHost(p.logits, logit_count), eager_a, 1e-5f, 1e-5f)) << "recording run";

  // Replay on b's inputs: the description BeginForward took last and the new residual.
  gpu_->CopyFromHost(p.residual, res_b.data(), res_b.size() * sizeof(float));
  gpu_->BeginForward(b.View());
  EXPECT_TRUE(gpu_->Replay(key));
  EXPECT_TRUE(AllNear(ToHost(p.logits, logit_count), eager_b, 1e-5f, 1e-5f)) << "replay on b";

  // And back to a.
  gpu_->CopyFromHost(p.residual, res_a.data(), res_a.size() * sizeof(float));
  gpu_->BeginForward(a.View());
  EXPECT_TRUE(gpu_->Replay(key));
  EXPECT_TRUE(AllNear(ToHost(p.logits, logit_count), eager_a, 1e-5f, 1e-5f)) << "replay on a";
  EXPECT_FALSE(gpu_->Replay(RecordingKey{key.owner, 8}));
  EXPECT_FALSE(gpu_->Replay(RecordingKey{NewRecordingId(), 7}));

  // The logits reductions have a scratch buffer of their own: a sampled row of a
  // large vocabulary (the sort's workspace is far larger than this forward's scratch) must
  // not invalidate the recording.
  const int big_vocab = 1 << 20;
  const std::vector<float> big = RandomFloats(big_vocab, 2408);
  float* d_big = Device<float>(big_vocab);
  gpu_->CopyFromHost(d_big, big.data(), big.size() * sizeof(float));
  std::vector<float> probs(big_vocab);
  gpu_->ProcessedDistribution(d_big, big_vocab, RowPenalty{},
                              LogitsProcessing{1.0f, 0, 0.9f}, probs.data());
  std::vector<int32_t> ids(64);
  gpu_->TopKIds(d_big, big_vocab, 64, RowPenalty{}, ids.data());
  int32_t argmax = -1;
  gpu_->ArgmaxRows(d_big, 1, big_vocab, nullptr, &argmax);
  EXPECT_EQ(argmax, ids[0]);
  gpu_->CopyFromHost(p.residual, res_b.data(), res_b.size() * sizeof(float));
  gpu_->BeginForward(b.View());
  EXPECT_TRUE(gpu_->Replay(key)) << "a logits reduction discarded the recording";
  EXPECT_TRUE(AllNear(ToHost(p.logits, logit_count), eager_b, 1e-5f, 1e-5f))
      << "replay after the reductions";

  // A description that outgrows the device buffer moves it: the recordings are discarded.
  ExpectRoundTrip(*gpu_, TreeDesc(256, 200, 1000, 2407));
  EXPECT_FALSE(gpu_->Replay(key));

  // Recordings of two owners with the same bucket (two models on one backend): dropping one
  // owner's (a Model's destructor) leaves the other's.
  const RecordingKey other{NewRecordingId(), 7};
  for (const RecordingKey& k : {key, other}) {
    gpu_->CopyFromHost(p.residual, res_a.data(), res_a.size() * sizeof(float));
    const ForwardDesc* fwd_a = gpu_->BeginForward(a.View());
    gpu_->BeginRecording(k);
    p.Run(*gpu_, *fwd_a);
    ASSERT_TRUE(gpu_->EndRecording());
  }
  gpu_->DropRecordings(key.owner);
  gpu_->CopyFromHost(p.residual, res_b.data(), res_b.size() * sizeof(float));
  gpu_->BeginForward(b.View());
  EXPECT_FALSE(gpu_->Replay(key));
  EXPECT_TRUE(gpu_->Replay(other));
  EXPECT_TRUE(AllNear(ToHost(p.logits, logit_count), eager_b, 1e-5f, 1e-5f)) << "other owner";
  gpu_->DropRecordings(other.owner);
  EXPECT_FALSE(gpu_->Replay(other));
}

}  // namespace
}  // namespace specmoe::kernels
