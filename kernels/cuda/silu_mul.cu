// kernels/cuda/silu_mul.cu — the SwiGLU product on the device (elementwise.h SiluMul), the
// twin of the CPU backend's SiluMul: out = gate / (1 + exp(-gate)) * up, rounded in that
// order (IEEE division, no contraction; expf <= 2 ulp from the CPU's exp).
// gate, up, out: [n, d] f32 with rows `ld` floats apart (ld >= d: a row of a fused gate/up
// output); out may alias gate (each element is read, then written, by one thread).
// Grid: (ceil(d / 256), min(n, 65535)) with rows strided by gridDim.y. Tested against the CPU
// backend by tests/cuda_backend_test.cc.
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;
constexpr int kMaxRowBlocks = 65535;  // grid y limit

__global__ void SiluMulKernel(const float* gate, const float* up, int n, int d, int ld,
                              float* out) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d) return;
  for (int r = blockIdx.y; r < n; r += gridDim.y) {
    const size_t i = static_cast<size_t>(r) * ld + c;
    const float a = gate[i];
    out[i] = __fmul_rn(__fdiv_rn(a, __fadd_rn(1.0f, expf(-a))), up[i]);
  }
}

}  // namespace

void SiluMul(const float* gate, const float* up, int n, int d, int ld, float* out,
             CudaContext& ctx) {
  SPECMOE_CHECK(n >= 0 && d >= 0 && ld >= d, "SiluMul shape");
  if (n == 0 || d == 0) return;
  const dim3 grid((d + kThreads - 1) / kThreads, n < kMaxRowBlocks ? n : kMaxRowBlocks);
  SiluMulKernel<<<grid, kThreads, 0, ctx.stream>>>(gate, up, n, d, ld, out);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
