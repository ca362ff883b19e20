// kernels/cuda/gemm.cu — y[n, rows] = x[n, cols] . w^T on the device through cublasGemmEx
// (see gemm.h), the CUDA twin of the CPU backend's MatMul (kernels/cpu/matmul.h).
//
// Row-major on column-major cuBLAS: y row-major [n, rows] (leading dimension ldy) is the
// column-major C [rows, n] with ldc = ldy; w row-major [rows, cols] is the column-major
// [cols, rows] matrix A with lda = cols, used transposed; x row-major [n, cols] (ldx) is the
// column-major B [cols, n] with ldb = ldx. So C = op(A) . B with transa = T, transb = N,
// m = rows, n = n, k = cols.
// Dtypes: f32 weights multiply f32 x in CUBLAS_COMPUTE_32F (exact fp32 products, no TF32:
// the handle keeps CUBLAS_DEFAULT_MATH). f16 / bf16 weights: x is first rounded to the
// weight's dtype (nearest even) into ctx.scratch as xh [n, cols] contiguous, then f16 x f16
// (bf16 x bf16) products accumulate in fp32 (CUBLAS_COMPUTE_32F) and y is written in f32.
// So against the CPU (which multiplies f32 x by the widened weight) the only extra error is
// x's rounding: |err| <= u * sum_k |x_k w_k| + fp32 accumulation, u = 2^-11 (f16) / 2^-8 (bf16).
// Tested against the CPU backend by tests/cuda_backend_test.cc (MatMul*).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>

#include "kernels/check.h"
#include "kernels/cuda/cublas_check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemm.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;
constexpr unsigned int kMaxRowBlocks = 65535;  // grid y limit

__device__ inline __half RoundTo(float v, __half*) { return __float2half_rn(v); }
__device__ inline __nv_bfloat16 RoundTo(float v, __nv_bfloat16*) { return __float2bfloat16_rn(v); }

// xh[n, cols] (contiguous) = x[n, cols] (rows ldx floats apart) rounded to T.
// Grid: (ceil(cols / kThreads), min(n, 65535)); the rows are strided by gridDim.y.
template <typename T>
__global__ void RoundRowsKernel(const float* x, int n, int cols, int ldx, T* xh) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  for (int r = blockIdx.y; r < n; r += gridDim.y) {
    xh[static_cast<size_t>(r) * cols + c] =
        RoundTo(x[static_cast<size_t>(r) * ldx + c], static_cast<T*>(nullptr));
  }
}

}  // namespace

void Gemm(const float* x, int n, int ldx, const Weight& w, float* y, int ldy, CudaContext& ctx) {
  SPECMOE_CHECK(n >= 0, "negative row count");
  if (n == 0 || w.rows == 0) return;
  SPECMOE_CHECK(w.cols > 0 && w.rows <= INT_MAX && w.cols <= INT_MAX, "weight shape");
  SPECMOE_CHECK(ldx >= w.cols && ldy >= w.rows, "leading dimension smaller than the row");
  SPECMOE_CHECK(w.data != nullptr, "weight not on the device (failed Upload?)");
  const int rows = static_cast<int>(w.rows);
  const int cols = static_cast<int>(w.cols);
  const float alpha = 1.0f;
  const float beta = 0.0f;

  const void* b = x;
  int ldb = ldx;
  cudaDataType type = CUDA_R_32F;
  if (w.dtype != DType::kF32) {
    SPECMOE_CHECK(w.dtype == DType::kF16 || w.dtype == DType::kBF16, "weight dtype");
    // xh: [n, cols] in the weight's dtype (2 bytes each).
    void* xh = ctx.Scratch(static_cast<size_t>(n) * cols * 2);
    const dim3 grid((cols + kThreads - 1) / kThreads,
                    n < static_cast<int>(kMaxRowBlocks) ? n : kMaxRowBlocks);
    if (w.dtype == DType::kF16) {
      RoundRowsKernel<<<grid, kThreads, 0, ctx.stream>>>(x, n, cols, ldx, static_cast<__half*>(xh));
      type = CUDA_R_16F;
    } else {
      RoundRowsKernel<<<grid, kThreads, 0, ctx.stream>>>(x, n, cols, ldx,
                                                         static_cast<__nv_bfloat16*>(xh));
      type = CUDA_R_16BF;
    }
    SPECMOE_CUDA_CHECK(cudaGetLastError());
    b = xh;
    ldb = cols;
  }
  // C[rows, n] (col-major, ldc = ldy) = A^T . B: A = w as col-major [cols, rows] (lda = cols),
  // B = x as col-major [cols, n] (ldb).
  SPECMOE_CUBLAS_CHECK(cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &alpha,
                                    w.data, type, cols, b, type, ldb, &beta, y, CUDA_R_32F, ldy,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace specmoe::kernels::cuda
