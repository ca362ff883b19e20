// kernels/cuda/moe_combine.cu — MoeCombine (moe_combine.h): y[n, hidden] = scale *
// sum_{j<k} weight[t, j] * d[t * k + j], d the sum of split-K partials [splits, n * k, hidden]
// in s order. One thread per output element; the products and sums are rounded one by one
// (__fmul_rn / __fadd_rn, no FMA contraction) in the CPU backend's order: acc = 0;
// acc += w_j * d_j for j < k; y = scale * acc. Tested through both expert paths by
// tests/cuda_moe_test.cc.
#include "kernels/cuda/moe_combine.h"

#include <cuda_runtime.h>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Grid: ceil(n * hidden / kThreads) blocks.
__global__ void MoeCombineKernel(const float* parts, int splits, size_t pair_stride, int n,
                                 int k, int hidden, const float* weight, float scale,
                                 float* y) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t total = static_cast<size_t>(n) * hidden;
  if (i >= total) return;
  const size_t t = i / hidden;
  const size_t col = i - t * hidden;
  float acc = 0.0f;
  for (int j = 0; j < k; ++j) {
    const size_t pair = t * k + j;
    const float* d = parts + pair * hidden + col;
    float sum = d[0];
    for (int s = 1; s < splits; ++s) sum = __fadd_rn(sum, d[s * pair_stride]);
    acc = __fadd_rn(acc, __fmul_rn(weight[pair], sum));
  }
  y[i] = __fmul_rn(scale, acc);
}

}  // namespace

void MoeCombine(const float* parts, int splits, int n, int k, int hidden, const float* weight,
                float scale, float* y, CudaContext& ctx) {
  SPECMOE_CHECK(splits >= 1 && k >= 1 && hidden >= 1, "combine sizes");
  if (n <= 0) return;
  const size_t total = static_cast<size_t>(n) * hidden;
  const size_t pair_stride = static_cast<size_t>(n) * k * hidden;
  MoeCombineKernel<<<Blocks(total, kThreads), kThreads, 0, ctx.stream>>>(
      parts, splits, pair_stride, n, k, hidden, weight, scale, y);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
