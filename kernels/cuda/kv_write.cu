// kernels/cuda/kv_write.cu — KV append on the device (elementwise.h KvWrite), the twin of the
// CPU backend's KvWrite: k_cache[slot, :] = k[t, :], v_cache[slot, :] = v[t, :] for
// slot = fwd.slots[t], t < fwd.n_tokens, stored as f32 (copied) or f16 (__float2half_rn:
// nearest even, the same bits as the CPU's F32ToF16 for every non-NaN value; a NaN may get
// another NaN payload). A slot < 0 (a padding token of a captured bucket) writes nothing.
// k, v: device [n_tokens, row] f32; caches: device [num_slots, row] of kv_dtype, row =
// n_kv_heads * head_dim. Grid: (ceil(row / 256), min(n_tokens, 65535)), tokens strided by
// gridDim.y. Tested against the CPU backend by tests/cuda_backend_test.cc (bytes compared).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;
constexpr int kMaxTokenBlocks = 65535;  // grid y limit

__device__ inline void Store(float v, float* dst) { *dst = v; }
__device__ inline void Store(float v, __half* dst) { *dst = __float2half_rn(v); }

template <typename T>
__global__ void KvWriteKernel(const float* k, const float* v, const int32_t* slots, int n, int row,
                              T* k_cache, T* v_cache) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= row) return;
  for (int t = blockIdx.y; t < n; t += gridDim.y) {
    const int32_t slot = slots[t];
    if (slot < 0) continue;
    const size_t src = static_cast<size_t>(t) * row + c;
    const size_t dst = static_cast<size_t>(slot) * row + c;
    Store(k[src], k_cache + dst);
    Store(v[src], v_cache + dst);
  }
}

}  // namespace

void KvWrite(const float* k, const float* v, const ForwardDesc& fwd, int row, DType kv_dtype,
             void* k_cache, void* v_cache, CudaContext& ctx) {
  const int n = fwd.n_tokens;
  if (n == 0 || row == 0) return;
  SPECMOE_CHECK(row > 0 && fwd.slots != nullptr, "KvWrite arguments");
  const dim3 grid((row + kThreads - 1) / kThreads, n < kMaxTokenBlocks ? n : kMaxTokenBlocks);
  if (kv_dtype == DType::kF32) {
    KvWriteKernel<<<grid, kThreads, 0, ctx.stream>>>(
        k, v, fwd.slots, n, row, static_cast<float*>(k_cache), static_cast<float*>(v_cache));
  } else {
    SPECMOE_CHECK(kv_dtype == DType::kF16, "the CUDA KV cache holds f32 or f16");
    KvWriteKernel<<<grid, kThreads, 0, ctx.stream>>>(
        k, v, fwd.slots, n, row, static_cast<__half*>(k_cache), static_cast<__half*>(v_cache));
  }
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
