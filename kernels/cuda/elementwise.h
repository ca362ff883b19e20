// kernels/cuda/elementwise.h — the element-wise and per-row ops of the CUDA backend, each in
// its own .cu (embedding.cu, rms_norm.cu, rope.cu, silu_mul.cu, add.cu, tanh.cu, kv_write.cu,
// kv_move.cu, gather_rows.cu): twins of the CPU backend's ops of the same names
// (kernels/backend.h has their maths and shapes). All pointers are device memory except where
// marked host; a ForwardDesc is one taken by BeginForward (its arrays on the device). Every op
// is enqueued on ctx.stream. Tested against the CPU backend by tests/cuda_backend_test.cc.
#ifndef SPECMOE_KERNELS_CUDA_ELEMENTWISE_H_
#define SPECMOE_KERNELS_CUDA_ELEMENTWISE_H_

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cuda/context.h"

namespace specmoe::kernels::cuda {

// out[fwd.n_tokens, w.cols] = w[fwd.tokens[t], :] widened to f32.
void Embedding(const ForwardDesc& fwd, const Weight& w, float* out, CudaContext& ctx);
// y[n, d] = w[d] * x * rsqrt(mean(x^2) + eps); w f32 / f16 / bf16 [1, d]; y may alias x.
void RmsNorm(const float* x, int n, int d, const Weight& w, float eps, float* y,
             CudaContext& ctx);
// HF half-split RoPE in place on x[fwd.n_tokens, n_heads, head_dim] at fwd.positions.
void Rope(float* x, const ForwardDesc& fwd, int n_heads, int head_dim, float theta,
          const RopeScaling& scaling, CudaContext& ctx);
// out[n, d] = silu(gate) * up, rows of gate/up/out `ld` floats apart (ld >= d); out may alias
// gate.
void SiluMul(const float* gate, const float* up, int n, int d, int ld, float* out,
             CudaContext& ctx);
// y[i] += x[i].
void Add(const float* x, size_t count, float* y, CudaContext& ctx);
// x[i] = tanh(x[i]).
void Tanh(float* x, size_t count, CudaContext& ctx);
// k_cache[fwd.slots[t]] = k[t], v_cache[...] = v[t] as kv_dtype (f32 or f16, nearest even);
// a slot < 0 (a padding token of a captured bucket) is skipped.
void KvWrite(const float* k, const float* v, const ForwardDesc& fwd, int row, DType kv_dtype,
             void* k_cache, void* v_cache, CudaContext& ctx);
// For every pool of k_caches and v_caches ([layers] each, host arrays of device pointers):
// cache[dst[i]] = cache[src[i]] for i < n, in order; src, dst: device [n]. One launch.
void KvCompact(const int32_t* src, const int32_t* dst, int n, int row, DType kv_dtype,
               void* const* k_caches, void* const* v_caches, int layers, CudaContext& ctx);
// out[i, :] = x[fwd.logit_rows[i], :] for i < fwd.n_logit_rows; out must not alias x.
void GatherRows(const float* x, const ForwardDesc& fwd, int cols, float* out, CudaContext& ctx);

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_ELEMENTWISE_H_
