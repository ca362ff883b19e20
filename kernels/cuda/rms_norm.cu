// kernels/cuda/rms_norm.cu — RMSNorm, y = w * x * rsqrt(mean(x^2) + eps), fp32 (DESIGN §3.1).
// One block of 256 threads per row: strided sum of squares, shared-memory tree reduction,
// then the scaled write. Checked against the CPU backend by tests/cuda_kernels_test.cc.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// x, y: [n, d]; w: [d]. Grid: n blocks.
__global__ void RmsNormKernel(const float* x, int d, const float* w, float eps, float* y) {
  __shared__ float partial[kThreads];
  const float* row = x + static_cast<size_t>(blockIdx.x) * d;
  float sum = 0.0f;
  for (int i = threadIdx.x; i < d; i += kThreads) sum += row[i] * row[i];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const float scale = rsqrtf(partial[0] / d + eps);
  float* out = y + static_cast<size_t>(blockIdx.x) * d;
  for (int i = threadIdx.x; i < d; i += kThreads) out[i] = w[i] * (row[i] * scale);
}

}  // namespace

void RmsNorm(const float* x, int n, int d, const float* w, float eps, float* y) {
  if (n == 0) return;
  RmsNormKernel<<<n, kThreads>>>(x, d, w, eps, y);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
  SPECMOE_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace specmoe::kernels::cuda
