// kernels/cuda/add.cu — the residual connection on the device (elementwise.h Add), the twin
// of the CPU backend's Add: y[i] += x[i] for i < count, f32 (exact same rounding as the CPU).
// x, y: device [count]. Grid-stride loop over size_t indices (counts beyond 2^31 are fine).
// Tested against the CPU backend by tests/cuda_backend_test.cc.
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;
constexpr size_t kMaxBlocks = 1 << 16;

__global__ void AddKernel(const float* x, size_t count, float* y) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    y[i] = __fadd_rn(y[i], x[i]);
  }
}

}  // namespace

void Add(const float* x, size_t count, float* y, CudaContext& ctx) {
  if (count == 0) return;
  const size_t blocks = (count + kThreads - 1) / kThreads;
  AddKernel<<<static_cast<unsigned int>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0,
              ctx.stream>>>(x, count, y);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
