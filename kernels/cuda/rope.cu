// kernels/cuda/rope.cu — rotary position embedding in place on the device (elementwise.h
// Rope), the twin of the CPU backend's Rope (HF LlamaRotaryEmbedding, half-split):
//   inv_freq_j = 1 / theta^(float(2j) / head_dim), then the llama3 scaling if any
//                (RopeInverseFrequencies on the host, as the CPU; passed by value in the launch)
//   angle = float(pos) * inv_freq_j;  x1' = x1 cos - x2 sin;  x2' = x2 cos + x1 sin
// each product rounded, then the sum (no contraction), x1 = head[j], x2 = head[j + half].
// inv_freq must be bit-identical to the CPU's: at position 4k an error of one ulp in it moves
// the angle by ~2e-4 rad. cos / sin are CUDA's full-precision cosf / sinf (<= 2 ulp, with the
// slow-path argument reduction for large angles), the only difference from the CPU.
// x: [n_tokens, n_heads, head_dim] f32; fwd.positions: device [n_tokens]; head_dim even and
// <= 2 * kMaxHalf. One block per token: cos / sin of its position into shared memory, then
// every (head, j) pair of the token. Tested against the CPU backend by
// tests/cuda_backend_test.cc (positions up to 4k).
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHalf = 256;  // head_dim <= 512; 1 KiB of launch parameters

struct InvFreq {
  float v[kMaxHalf];
};

// x: [n, n_heads, 2 * half]. Grid: n blocks of kThreads.
__global__ void RopeKernel(float* x, const int32_t* positions, int n_heads, int half,
                           InvFreq inv_freq) {
  __shared__ float cos_t[kMaxHalf];
  __shared__ float sin_t[kMaxHalf];
  const float p = static_cast<float>(positions[blockIdx.x]);
  for (int j = threadIdx.x; j < half; j += kThreads) {
    const float angle = __fmul_rn(p, inv_freq.v[j]);
    cos_t[j] = cosf(angle);
    sin_t[j] = sinf(angle);
  }
  __syncthreads();
  const int head_dim = 2 * half;
  float* token = x + static_cast<size_t>(blockIdx.x) * n_heads * head_dim;
  for (int idx = threadIdx.x; idx < n_heads * half; idx += kThreads) {
    const int h = idx / half;
    const int j = idx - h * half;
    float* head = token + static_cast<size_t>(h) * head_dim;
    const float x1 = head[j];
    const float x2 = head[j + half];
    head[j] = __fsub_rn(__fmul_rn(x1, cos_t[j]), __fmul_rn(x2, sin_t[j]));
    head[j + half] = __fadd_rn(__fmul_rn(x2, cos_t[j]), __fmul_rn(x1, sin_t[j]));
  }
}

}  // namespace

void Rope(float* x, const ForwardDesc& fwd, int n_heads, int head_dim, float theta,
          const RopeScaling& scaling, CudaContext& ctx) {
  const int n = fwd.n_tokens;
  if (n == 0 || n_heads == 0) return;
  SPECMOE_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim / 2 <= kMaxHalf,
                "RoPE head_dim must be even and at most 512");
  SPECMOE_CHECK(fwd.positions != nullptr && n_heads > 0, "RoPE arguments");
  const int half = head_dim / 2;
  InvFreq inv_freq{};
  RopeInverseFrequencies(head_dim, theta, scaling, inv_freq.v);
  RopeKernel<<<n, kThreads, 0, ctx.stream>>>(x, fwd.positions, n_heads, half, inv_freq);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
