// tests/cpu_kernels_bench.cc — the CPU backend's MatMul against OpenBLAS and the bandwidth
// floor, and the MoE expert op (kernels/README.md, CPU kernels). Not a test: a Google Benchmark
// program,
//   ninja -C build cpu_kernels_bench && build/tests/cpu_kernels_bench
//
// Measures the read bandwidth once (1 GiB streaming reduction, all threads), then for a
// 24576 x 4096 weight matrix times the backend's MatMul (one batch-invariant path for every
// row count, over the panels the backend prepared as at load) with f32, f16 and bf16 weights
// at n = 1 .. 512 rows, each vector path (AVX2, AVX-512) forced at a few row counts, and
// OpenBLAS (sgemv at 1 row, sgemm at n rows; f32), the reference. Counters: weight_GBps
// (weight bytes / time), GFLOPS, and floor_ms (weight bytes / measured read bandwidth, the
// time of reading the weights once). Then the MoE expert op at 1, 8, 32 and 128 tokens
// beside the bytes of the experts the routing selected. The CPU column is the whole process's CPU time.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/bandwidth.h"
#include "kernels/cpu/f16.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"

namespace specmoe::kernels {
namespace {

constexpr int64_t kRows = 24576;
constexpr int64_t kCols = 4096;
constexpr int kMaxBatch = 512;

struct Fixture {
  std::unique_ptr<Backend> backend = CreateCpuBackend(0);
  double read_gbs = 0.0;
  std::vector<float> w_f32;  // row-major, for OpenBLAS
  Weight packed[3];          // each dtype, prepared (panels) by the backend

  Fixture() {
    read_gbs = MeasureReadBandwidthGBs(size_t{1} << 30, 0);
    std::printf("read bandwidth: %.1f GB/s (1 GiB streaming reduction, all threads)\n", read_gbs);
    std::printf("matmul path: %s\n", MatMulIsaName(ActiveMatMulIsa()));
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.0f, 0.02f);
    w_f32.resize(kRows * kCols);
    for (float& v : w_f32) v = dist(rng);
    packed[0] = backend->PrepareLinear(Weight{w_f32.data(), DType::kF32, kRows, kCols});
    std::vector<uint16_t> half(kRows * kCols);
    for (DType dtype : {DType::kF16, DType::kBF16}) {
      for (int64_t i = 0; i < kRows * kCols; ++i) {
        half[i] = dtype == DType::kF16 ? F32ToF16(w_f32[i]) : F32ToBf16(w_f32[i]);
      }
      packed[static_cast<int>(dtype)] =
          backend->PrepareLinear(Weight{half.data(), dtype, kRows, kCols});
    }
    x.resize(kMaxBatch * kCols);
    for (float& v : x) v = dist(rng);
    y.resize(kMaxBatch * kRows);
  }

  Weight Get(DType dtype) const { return packed[static_cast<int>(dtype)]; }

  std::vector<float> x, y;
};

Fixture& GetFixture() {
  static Fixture* fixture = new Fixture();
  return *fixture;
}

void SetCounters(benchmark::State& state, size_t weight_bytes, int n) {
  const Fixture& f = GetFixture();
  state.counters["GFLOPS"] = benchmark::Counter(2.0 * n * kRows * kCols / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_GBps"] = benchmark::Counter(static_cast<double>(weight_bytes) / 1e9,
                                                     benchmark::Counter::kIsIterationInvariantRate);
  state.counters["floor_ms"] = static_cast<double>(weight_bytes) / (f.read_gbs * 1e9) * 1e3;
  state.counters["read_GBps"] = f.read_gbs;
}

// The backend's MatMul: args {dtype, rows}.
void BM_Streaming(benchmark::State& state) {
  Fixture& f = GetFixture();
  const DType dtype = static_cast<DType>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const Weight w = f.Get(dtype);
  for (auto _ : state) {
    f.backend->MatMul(f.x.data(), n, w, f.y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(DTypeName(dtype));
  SetCounters(state, w.bytes(), n);
}

// The same MatMul forced onto each vector path (AVX2 on an AVX-512 machine too), to compare
// them: args {isa, dtype, rows}.
void BM_MatMulPath(benchmark::State& state) {
  Fixture& f = GetFixture();
  const MatMulIsa isa = static_cast<MatMulIsa>(state.range(0));
  if (!MatMulIsaSupported(isa)) {
    state.SkipWithError("path not supported on this CPU");
    return;
  }
  const DType dtype = static_cast<DType>(state.range(1));
  const int n = static_cast<int>(state.range(2));
  const Weight w = f.Get(dtype);
  SetMatMulIsaForTesting(isa);
  for (auto _ : state) {
    f.backend->MatMul(f.x.data(), n, w, f.y.data());
    benchmark::ClobberMemory();
  }
  SetMatMulIsaForTesting(MatMulIsa::kAuto);
  state.SetLabel(std::string(MatMulIsaName(isa)) + " " + DTypeName(dtype));
  SetCounters(state, w.bytes(), n);
}

// OpenBLAS on f32 weights: sgemv for 1 row, sgemm (x . W^T) for n rows.
void BM_OpenBlas(benchmark::State& state) {
  Fixture& f = GetFixture();
  const int n = static_cast<int>(state.range(0));
  for (auto _ : state) {
    if (n == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, kRows, kCols, 1.0f, f.w_f32.data(), kCols,
                  f.x.data(), 1, 0.0f, f.y.data(), 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, kRows, kCols, 1.0f, f.x.data(), kCols,
                  f.w_f32.data(), kCols, 0.0f, f.y.data(), kRows);
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(n == 1 ? "F32 sgemv" : "F32 sgemm");
  SetCounters(state, kRows * kCols * sizeof(float), n);
}

// The draft's expert op (demo draft shape: hidden 1024, 8 experts of 512, top 2) over n
// tokens with random routing: tokens are grouped by expert, so each selected expert's
// weights are read once per call. floor_ms: the bytes of the experts actually selected over
// the read bandwidth. Args {dtype, tokens}.
void BM_MoeExperts(benchmark::State& state) {
  Fixture& f = GetFixture();
  const DType dtype = static_cast<DType>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  constexpr int kHidden = 1024, kSize = 512, kExperts = 8, kTop = 2;
  const size_t matrix_bytes = static_cast<size_t>(kHidden) * kSize * DTypeBytes(dtype);
  // The experts' values: the first rows of the f32 matrix, narrowed to dtype, prepared.
  std::vector<uint8_t> raw(3 * kExperts * matrix_bytes);
  NarrowRow(f.w_f32.data(), static_cast<int64_t>(3 * kExperts) * kHidden * kSize, dtype,
            raw.data());
  std::vector<ExpertWeights> experts(kExperts);
  for (int e = 0; e < kExperts; ++e) {
    const uint8_t* at = raw.data() + 3 * e * matrix_bytes;
    experts[e] = {f.backend->PrepareLinear(Weight{at, dtype, kSize, kHidden}),
                  f.backend->PrepareLinear(Weight{at + matrix_bytes, dtype, kSize, kHidden}),
                  f.backend->PrepareLinear(Weight{at + 2 * matrix_bytes, dtype, kHidden, kSize})};
  }
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  std::vector<float> logits(static_cast<size_t>(n) * kExperts);
  for (float& l : logits) l = dist(rng);
  std::vector<int32_t> idx(n * kTop), pairs(n * kTop), counts(kExperts), offsets(kExperts + 1);
  std::vector<float> weight(n * kTop);
  const MoeRouting routing{idx.data(), weight.data(), counts.data(), offsets.data(), pairs.data()};
  f.backend->TopKSoftmax(logits.data(), n, kExperts, kTop, routing);
  std::vector<bool> used(kExperts, false);
  for (int32_t e : idx) used[e] = true;
  const size_t selected = static_cast<size_t>(std::count(used.begin(), used.end(), true));
  for (auto _ : state) {
    f.backend->MoeExperts(f.x.data(), n, kHidden, routing, kTop, experts.data(), kExperts, 1.0f,
                          f.y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(DTypeName(dtype)) + ", " + std::to_string(selected) +
                 " experts selected");
  SetCounters(state, selected * 3 * matrix_bytes, n);
  state.counters["GFLOPS"] = benchmark::Counter(
      2.0 * n * kTop * 3 * kHidden * kSize / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void StreamingArgs(benchmark::internal::Benchmark* b) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int n : {1, 2, 4, 8, 16, 32, 64, 128, 256, 512}) {
      b->Args({static_cast<int64_t>(dtype), n});
    }
  }
}

// Time is wall-clock; the CPU column is the whole process's CPU time (all threads), which
// tells a busy machine apart from a slow kernel.
BENCHMARK(BM_Streaming)
    ->Apply(StreamingArgs)
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();
BENCHMARK(BM_MatMulPath)
    ->ArgsProduct({{static_cast<int64_t>(MatMulIsa::kAvx2),
                    static_cast<int64_t>(MatMulIsa::kAvx512)},
                   {static_cast<int64_t>(DType::kF32), static_cast<int64_t>(DType::kF16)},
                   {1, 8, 64}})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();
BENCHMARK(BM_MoeExperts)
    ->ArgsProduct({{static_cast<int64_t>(DType::kF32), static_cast<int64_t>(DType::kBF16)},
                   {1, 8, 32, 128}})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();
BENCHMARK(BM_OpenBlas)
    ->ArgsProduct({{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();

}  // namespace
}  // namespace specmoe::kernels

BENCHMARK_MAIN();
