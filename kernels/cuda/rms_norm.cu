// kernels/cuda/rms_norm.cu — RMSNorm on the device (elementwise.h RmsNorm), the twin of the
// CPU backend's RmsNorm (HF LlamaRMSNorm in fp32):
//   variance = sum(x^2) / d;  inv_rms = 1 / sqrt(variance + eps);  y = w * (x * inv_rms)
// with each step rounded as the CPU rounds it (IEEE sqrt and division, no contraction); only
// the order of the sum of squares differs (a tree here, 8 lanes on the CPU), ~1e-7 relative.
// x, y: [n, d] f32 (y may alias x: every thread writes only the elements it read, after the
// whole row was summed); w: [1, d] f32 / f16 / bf16, widened exactly.
// One block of 256 threads per row: strided partial sums, a warp-shuffle reduction, one
// partial per warp in shared memory, a final warp reduction. Tested against the CPU backend
// by tests/cuda_backend_test.cc.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ inline float Widen(float v) { return v; }
__device__ inline float Widen(__half v) { return __half2float(v); }
__device__ inline float Widen(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ inline float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// x, y: [n, d]; w: [d]. Grid: n blocks of kThreads.
template <typename T>
__global__ void RmsNormKernel(const float* x, int d, const T* w, float eps, float* y) {
  __shared__ float warp_sums[kWarps];
  __shared__ float inv_rms_shared;
  const float* row = x + static_cast<size_t>(blockIdx.x) * d;
  float sum = 0.0f;
  for (int i = threadIdx.x; i < d; i += kThreads) sum = __fmaf_rn(row[i], row[i], sum);
  sum = WarpSum(sum);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    float total = lane < kWarps ? warp_sums[lane] : 0.0f;
    total = WarpSum(total);
    if (lane == 0) {
      const float variance = __fdiv_rn(total, static_cast<float>(d));
      inv_rms_shared = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(variance, eps)));
    }
  }
  __syncthreads();
  const float inv_rms = inv_rms_shared;
  float* out = y + static_cast<size_t>(blockIdx.x) * d;
  for (int i = threadIdx.x; i < d; i += kThreads) {
    out[i] = __fmul_rn(Widen(w[i]), __fmul_rn(row[i], inv_rms));
  }
}

}  // namespace

void RmsNorm(const float* x, int n, int d, const Weight& w, float eps, float* y, CudaContext& ctx) {
  SPECMOE_CHECK(n >= 0 && d > 0 && w.rows * w.cols == d, "norm weight size != d");
  if (n == 0) return;
  switch (w.dtype) {
    case DType::kF32:
      RmsNormKernel<<<n, kThreads, 0, ctx.stream>>>(x, d, static_cast<const float*>(w.data), eps,
                                                    y);
      break;
    case DType::kF16:
      RmsNormKernel<<<n, kThreads, 0, ctx.stream>>>(x, d, static_cast<const __half*>(w.data), eps,
                                                    y);
      break;
    case DType::kBF16:
      RmsNormKernel<<<n, kThreads, 0, ctx.stream>>>(x, d, static_cast<const __nv_bfloat16*>(w.data),
                                                    eps, y);
      break;
  }
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
