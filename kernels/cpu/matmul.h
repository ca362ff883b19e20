// kernels/cpu/matmul.h — y[n, out] = x[n, in] . W^T on the CPU over weights repacked at load.
//
// The CPU backend repacks every linear weight once (PackPanels, from Backend::PrepareLinear)
// into K-major panels of kPanelWidth outputs (WeightLayout::kPanels, backend.h), and one
// broadcast (outer-product) micro-kernel family serves every row count: AVX-512 (up to 12
// rows x 32 outputs in 24 zmm accumulators), AVX2 (up to 6 rows x 16 outputs), or a scalar
// fmaf loop, chosen at run time (a test hook forces one). Every output is ONE fp32
// accumulator started at +0.0 and fused-multiply-added over k = 0, 1, ..., in - 1 in order:
//   y[r, o] = fma(w[o, in-1], x[r, in-1], ... fma(w[o, 1], x[r, 1], fma(w[o, 0], x[r, 0], +0)))
// f16/bf16 weights are widened exactly in registers. Large row counts are blocked over K
// with the exact partial sums parked in y between blocks, and the work is split over output
// panels and row groups, never over K; so each output's bits depend on nothing but its row
// of x and its row of w (not on n, the tiling, the thread count, or the ISA path): batch
// invariance (kernels/README.md). Tested bit for bit against a scalar fmaf loop by
// tests/cpu_matmul_test.cc; timed by tests/cpu_kernels_bench.cc against OpenBLAS.
#ifndef SPECMOE_KERNELS_CPU_MATMUL_H_
#define SPECMOE_KERNELS_CPU_MATMUL_H_

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace specmoe::kernels {

// Bytes of a panel-packed [rows, cols] weight of `dtype`: ceil(rows / kPanelWidth) panels of
// cols x kPanelWidth elements (a multiple of 64 bytes).
size_t PanelBytes(DType dtype, int64_t rows, int64_t cols);

// Repacks w (WeightLayout::kRows, any alignment) into `out` (PanelBytes(...) bytes, 64-byte
// aligned): out[p][k][j] = w[p * kPanelWidth + j, k], zeros for the padding outputs
// j >= rows - p * kPanelWidth of the last panel; values copied exactly in the stored dtype.
// Returns the view of the packed weight. Split over panels on `pool`.
Weight PackPanels(const Weight& w, void* out, ThreadPool& pool);

// y[n, w.rows] = x[n, w.cols] . w^T for any n >= 0, in the order documented above. w may be
// panel-packed (the fast path) or row-major (packed into a scratch buffer first: the same
// bits, at the cost of one repack per call; tests and ad-hoc callers).
void CpuMatMul(const float* x, int n, const Weight& w, float* y, ThreadPool& pool);

// At most this many matrices in one fused call.
inline constexpr int kMaxFused = 4;

// y[i] = x . w[i]^T for i < count (count <= kMaxFused, all w[i].cols equal): the same bits
// as count CpuMatMul calls, as one split of all their panels over the threads (one hand-off
// to the thread team for q/k/v or gate/up).
void CpuMatMulMany(const float* x, int n, const Weight* w, float* const* y, int count,
                   ThreadPool& pool);

// Work folded into a product's packing and epilogue, with the same bits as the separate
// ops (the arithmetic of row_ops.h): no extra pass over the activations, no extra hand-off.
struct MatMulFusion {
  // RMSNorm of x folded into its packing: the product reads
  // xn[r, k] = norm[k] * (x[r, k] * InvRms(x[r], cols, eps)); xn is also stored in
  // norm_out [n, cols] when that is not null (it may not alias x). norm: [cols] f32.
  const float* norm = nullptr;
  float eps = 0.0f;
  float* norm_out = nullptr;
  // Residual add after the product (count 1): residual[r, o] = residual[r, o] + y[0][r, o].
  float* residual = nullptr;
  // SiLU-mul after a gate (w[0]) and up (w[1]) product (count 2, equal shapes):
  // y[0][r, o] = SiluMulOne(y[0][r, o], y[1][r, o]); each item runs a gate panel and the
  // same up panel, then this, while both are in L1.
  bool silu_mul = false;
};

// CpuMatMulMany with `fusion` applied.
void CpuMatMulFused(const float* x, int n, const Weight* w, float* const* y, int count,
                    const MatMulFusion& fusion, ThreadPool& pool);

// The micro-kernel paths. kAuto picks the widest the CPU has (AVX-512F, else AVX2+FMA+F16C
// when this build targets it, else scalar).
enum class MatMulIsa { kAuto, kScalar, kAvx2, kAvx512 };

// Whether this build and CPU can run `isa` (kAuto and kScalar: always).
bool MatMulIsaSupported(MatMulIsa isa);
// The path CpuMatMul uses now.
MatMulIsa ActiveMatMulIsa();
// Test hook: forces `isa` (must be supported) for every later call in the process; kAuto
// restores the default. Not for concurrent use with running matmuls.
void SetMatMulIsaForTesting(MatMulIsa isa);
const char* MatMulIsaName(MatMulIsa isa);

// Converts rows [row_begin, row_end) of a row-major w to f32: out[(row_end - row_begin), w.cols].
void ConvertRowsToF32(const Weight& w, int64_t row_begin, int64_t row_end, float* out);

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_CPU_MATMUL_H_
