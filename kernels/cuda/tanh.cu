// kernels/cuda/tanh.cu — x[i] = tanh(x[i]) in place on the device (elementwise.h Tanh), the
// twin of the CPU backend's Tanh (CUDA's full-precision tanhf, <= 2 ulp from the CPU's).
// x: device [count] f32. Grid-stride loop over size_t indices. Tested against the CPU backend
// by tests/cuda_backend_test.cc.
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;
constexpr size_t kMaxBlocks = 1 << 16;

__global__ void TanhKernel(float* x, size_t count) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    x[i] = tanhf(x[i]);
  }
}

}  // namespace

void Tanh(float* x, size_t count, CudaContext& ctx) {
  if (count == 0) return;
  const size_t blocks = (count + kThreads - 1) / kThreads;
  TanhKernel<<<static_cast<unsigned int>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0,
               ctx.stream>>>(x, count);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
