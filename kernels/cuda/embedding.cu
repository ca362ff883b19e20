// kernels/cuda/embedding.cu — token embedding lookup on the device (elementwise.h Embedding),
// the twin of the CPU backend's Embedding: out[t, :] = w[fwd.tokens[t], :] widened to f32
// (exact for f16 and bf16). w: [vocab, hidden] f32 / f16 / bf16 (device); fwd: taken (device
// arrays); out: [n_tokens, hidden] f32. An id outside [0, vocab), which the engine rejects
// before any forward (the CPU backend aborts on it), gives a row of zeros here instead of an
// out-of-bounds read. Tested against the CPU backend by tests/cuda_backend_test.cc.
#include <cuda_bf16.h>
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

__device__ inline float Widen(float v) { return v; }
__device__ inline float Widen(__half v) { return __half2float(v); }
__device__ inline float Widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// Grid: (ceil(cols / kThreads), min(n, 65535)); tokens strided by gridDim.y.
template <typename T>
__global__ void EmbeddingKernel(const int32_t* tokens, int n, const T* w, int64_t vocab, int cols,
                                float* out) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  for (int t = blockIdx.y; t < n; t += gridDim.y) {
    const int32_t id = tokens[t];
    const float v = (id >= 0 && id < vocab) ? Widen(w[static_cast<size_t>(id) * cols + c]) : 0.0f;
    out[static_cast<size_t>(t) * cols + c] = v;
  }
}

}  // namespace

void Embedding(const ForwardDesc& fwd, const Weight& w, float* out, CudaContext& ctx) {
  const int n = fwd.n_tokens;
  if (n == 0 || w.cols == 0) return;
  SPECMOE_CHECK(w.cols <= INT32_MAX && fwd.tokens != nullptr, "embedding arguments");
  const int cols = static_cast<int>(w.cols);
  const dim3 grid((cols + kThreads - 1) / kThreads, n < kMaxTokenBlocks ? n : kMaxTokenBlocks);
  switch (w.dtype) {
    case DType::kF32:
      EmbeddingKernel<<<grid, kThreads, 0, ctx.stream>>>(
          fwd.tokens, n, static_cast<const float*>(w.data), w.rows, cols, out);
      break;
    case DType::kF16:
      EmbeddingKernel<<<grid, kThreads, 0, ctx.stream>>>(
          fwd.tokens, n, static_cast<const __half*>(w.data), w.rows, cols, out);
      break;
    case DType::kBF16:
      EmbeddingKernel<<<grid, kThreads, 0, ctx.stream>>>(
          fwd.tokens, n, static_cast<const __nv_bfloat16*>(w.data), w.rows, cols, out);
      break;
  }
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
