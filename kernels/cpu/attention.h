// kernels/cpu/attention.h — paged GQA attention with a per-token visibility rule on the CPU.
//
// Implements Backend::Attention (contract in kernels/backend.h, AttentionArgs). For each
// (query token, head), in a fixed order that depends only on that token's own inputs:
//   1. s_i = scale * (q . k_i) for the visible logical slots i in increasing order
//      (the dot product with 8 fp32 lanes reduced in a fixed order),
//   2. m = max_i s_i,  p_i = exp(s_i - m),  l = sum_i p_i (sequential, fp32),
//   3. out = (sum_i p_i v_i) / l, the sum running over i in increasing order.
// Invisible slots are skipped, so a token's output is bit-identical whatever other tokens
// or sequences share the batch. Work is split over (token, range of heads) units; within a
// unit the cache is read slot by slot (each slot's K/V row contiguously). An f16 cache is
// widened element by element into the same order (F16C where the build has it).
// Tested by tests/cpu_backend_test.cc against a double-precision reference (causal
// prefill and a tree mask over a paged cache) and bit-exactly for batch invariance.
#ifndef SPECMOE_KERNELS_CPU_ATTENTION_H_
#define SPECMOE_KERNELS_CPU_ATTENTION_H_

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace specmoe::kernels {

// Requires n_heads % n_kv_heads == 0 and kv_dtype kF32 or kF16. A token with no visible key gets out = 0.
void PagedAttention(const AttentionArgs& args, ThreadPool& pool);

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_CPU_ATTENTION_H_
