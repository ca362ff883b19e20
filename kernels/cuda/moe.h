// kernels/cuda/moe.h — MoE routing and experts on the device (kernels/backend.h TopKSoftmax,
// MoeExperts; kernels/README.md). Implemented in kernels/cuda/top_k_softmax.cu,
// moe_experts_fused.cu and moe_experts_sequential.cu; tested by tests/cuda_moe_test.cc
// (label cuda): routing and both expert paths against the CPU backend, fused against
// sequential.
#ifndef SPECMOE_KERNELS_CUDA_MOE_H_
#define SPECMOE_KERNELS_CUDA_MOE_H_

#include <memory>

#include "kernels/backend.h"
#include "kernels/cuda/context.h"

namespace specmoe::kernels::cuda {

// The routing of Backend::TopKSoftmax, computed and kept on the device: logits device
// [n, e]; routing's buffers device. Counts, offsets and pairs are built on the device (no
// host round trip). Enqueued on ctx.stream.
void TopKSoftmax(const float* logits, int n, int e, int k, const MoeRouting& routing,
                 CudaContext& ctx);

// Backend::MoeExperts on the device: x, y device [n, hidden]; routing device (as TopKSoftmax
// wrote it); experts: HOST array of num_experts whose weights are device memory (Upload),
// f16, bf16 or f32, all experts of one call the same dtype.
// The sum over a token's k choices runs in j order, so a token's result does not depend on the
// other tokens (on the device up to cuBLAS / tensor-core rounding, which is not batch-invariant).
class MoeExpertsOp {
 public:
  virtual ~MoeExpertsOp() = default;
  virtual void Run(const float* x, int n, int hidden, const MoeRouting& routing, int k,
                   const ExpertWeights* experts, int num_experts, float scale, float* y,
                   CudaContext& ctx) = 0;
};

// Fused: every selected expert's gate/up and down products in one grouped computation per
// matrix that reads the per-expert counts and offsets ON THE DEVICE (no host sync, so it can
// be captured in a CUDA graph), then a scatter-add with the gate weights and `scale`.
// The expert weight pointers are uploaded once per distinct `experts` host array (kept in
// the op; the first call for an array must not be inside a capture).
std::unique_ptr<MoeExpertsOp> CreateFusedMoeExperts();

// Sequential (the reference and the benchmark's baseline, as the seed model computes it):
// reads the counts back to the host (one sync per layer; not capturable), then per expert a
// gather, cuBLAS gate/up, SiLU-mul, cuBLAS down and a scatter-add.
std::unique_ptr<MoeExpertsOp> CreateSequentialMoeExperts();

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_MOE_H_
