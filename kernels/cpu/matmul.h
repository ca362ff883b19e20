// kernels/cpu/matmul.h — y[n, out] = x[n, in] . W^T on the CPU, W as stored (f32/f16/bf16).
//
// StreamingMatMul is the few-rows kernel (decode, tree verification, draft levels, experts):
// each weight row is read from memory once for all n activation rows. The panel kernel (for
// 16 and more rows) converts each K-block of a panel of weight rows to f32 once and runs a
// register-blocked micro-kernel over it. Both follow the same per-output summation order,
// which depends only on the input length, so each row's result is bit-identical whatever n
// is (batch invariance, kernels/README.md); CpuMatMul picks between them. Tested by
// tests/cpu_backend_test.cc against a double-precision reference and bit-exactly across
// n = 1..300; timed by tests/cpu_kernels_bench.cc against OpenBLAS.
#ifndef SPECMOE_KERNELS_CPU_MATMUL_H_
#define SPECMOE_KERNELS_CPU_MATMUL_H_

#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace specmoe::kernels {

// y[n, w.rows] = x[n, w.cols] . w^T for any n >= 0 and any w.cols (no alignment or size
// constraint; w.data may be unaligned). Summation order for output (r, o):
//   lane l (0..7) of an fp32 accumulator sums w[o, k] * x[r, k] over k = 8i + l, i
//   increasing, k < w.cols rounded down to a multiple of 8, by fused multiply-add;
//   the 8 lanes are reduced as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7));
//   then the remaining k (w.cols % 8) are multiply-added in increasing order.
// This depends on neither n nor the thread count, so every row is bit-identical alone or
// among any others. Work is split over output rows only. (A build without FMA uses a
// scalar fallback with the same order but separate multiply and add roundings.)
// Cost: reads the weights once; about 2 * n * rows * cols flops.
void StreamingMatMul(const float* x, int n, const Weight& w, float* y, ThreadPool& pool);

// The CPU backend's MatMul for any n: the same product, the same per-output summation
// order as StreamingMatMul (so the same bits for every row whatever n), through the
// streaming kernel for a few rows and a packed-panel register-blocked kernel for more.
void CpuMatMul(const float* x, int n, const Weight& w, float* y, ThreadPool& pool);

// At most this many matrices in one fused call.
inline constexpr int kMaxFused = 4;

// y[i] = x . w[i]^T for i < count (count <= kMaxFused, all w[i].cols equal): the same bits
// as count CpuMatMul calls, as one split of all their output rows over the threads (one
// thread-team hand-off and one load balance for q/k/v or gate/up).
void CpuMatMulMany(const float* x, int n, const Weight* w, float* const* y, int count,
                   ThreadPool& pool);
void StreamingMatMulMany(const float* x, int n, const Weight* w, float* const* y, int count,
                         ThreadPool& pool);

// Converts rows [row_begin, row_end) of w to f32: out[(row_end - row_begin), w.cols].
void ConvertRowsToF32(const Weight& w, int64_t row_begin, int64_t row_end, float* out);

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_CPU_MATMUL_H_
