// kernels/cuda/moe_combine.h — the last step of both MoE expert paths (moe.h): the weighted
// sum of each token's k expert outputs, in j order, as Backend::MoeExperts on the CPU
// computes it. Implemented in kernels/cuda/moe_combine.cu; tested through both expert paths
// by tests/cuda_moe_test.cc.
#ifndef SPECMOE_KERNELS_CUDA_MOE_COMBINE_H_
#define SPECMOE_KERNELS_CUDA_MOE_COMBINE_H_

#include "kernels/cuda/context.h"

namespace specmoe::kernels::cuda {

// y[t, i] = scale * sum_{j<k} weight[t * k + j] * d[t * k + j, i] for t < n, i < hidden, where
// d[p, i] = sum_{s<splits} parts[s, p, i] (split-K partial sums, added in s order).
// parts: device f32 [splits, n * k, hidden]; weight: device f32 [n * k]; y: device f32
// [n, hidden]. Each output is written once (no atomics), so the result is deterministic.
// Enqueued on ctx.stream.
void MoeCombine(const float* parts, int splits, int n, int k, int hidden, const float* weight,
                float scale, float* y, CudaContext& ctx);

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_MOE_COMBINE_H_
