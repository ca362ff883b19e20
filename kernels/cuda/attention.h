// kernels/cuda/attention.h — tree attention over the paged KV cache on the device, the CUDA
// twin of the CPU backend's Attention (kernels/backend.h AttentionArgs; kernels/cpu/attention.cc).
// Implemented in kernels/cuda/attention.cu; tested against the CPU backend by
// tests/cuda_attention_test.cc (label cuda).
#ifndef SPECMOE_KERNELS_CUDA_ATTENTION_H_
#define SPECMOE_KERNELS_CUDA_ATTENTION_H_

#include "kernels/backend.h"
#include "kernels/cuda/context.h"

namespace specmoe::kernels::cuda {

// out[t, h, :] = softmax(scale * q[t,h,:] . K[visible(t)]) V[visible(t)] for every token t
// of args.fwd (whose arrays are DEVICE memory: a description taken by BeginForward), with
// the visibility rule of AttentionArgs (prefix + bit-packed tree mask). q, out, caches:
// device. kv_dtype kF32 or kF16. A token that sees no key gets zeros.
// Flash-decoding: the visible length is split over `splits` blocks per (token, head), each
// computing a partial max / sum / weighted V in ctx.scratch, then one merge; the number of
// splits depends only on the host ints of args (n_tokens, max_blocks_per_seq * block_size),
// never on device data, so the launch is the same for every replay of a captured graph.
// Enqueued on ctx.stream; no host synchronisation.
void Attention(const AttentionArgs& args, CudaContext& ctx);

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_ATTENTION_H_
