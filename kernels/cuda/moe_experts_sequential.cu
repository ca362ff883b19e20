// kernels/cuda/moe_experts_sequential.cu — CreateSequentialMoeExperts (moe.h): the MoE FFN
// one expert after another, as the seed model computes it; the reference of the fused path
// and the benchmark's baseline. Not capturable: it reads the routing's counts and offsets
// back to the host (one stream synchronisation per call).
//
// x: f32 [n, hidden]; routing as TopKSoftmax wrote it (device); experts: host array whose
// weights are device memory, gate/up [inter_x, hidden], down [hidden, inter_x], f32, f16 or
// bf16; y: f32 [n, hidden]. Per expert x with m = counts[x] > 0 pairs:
//   g[m, hidden]     = x[pairs[offsets[x] + r] / k]           (gather kernel)
//   a[m, inter_x]    = g . gate^T,  b[m, inter_x] = g . up^T   (cuda::Gemm, cuBLAS)
//   a                = silu(a) * b                             (cuda::SiluMul)
//   o[m, hidden]     = a . down^T                              (cuda::Gemm)
//   d[pairs[offsets[x] + r]] = o[r]                            (place kernel)
// then y = scale * sum_j weight[t, j] * d[t * k + j] in j order (MoeCombine). The CPU twin is
// Backend::MoeExperts in kernels/cpu/cpu_backend.cc; tested against it (and the fused path
// against this one) by tests/cuda_moe_test.cc.
//
// Links only together with kernels/cuda/gemm.cu and silu_mul.cu (cuda::Gemm, cuda::SiluMul).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/moe_combine.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// g[r, :] = x[rows[r] / k, :] for r < m. x: [n, hidden]; rows: [m] pair ids; g: [m, hidden].
__global__ void GatherTokensKernel(const float* x, const int32_t* rows, int m, int k,
                                   int hidden, float* g) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<size_t>(m) * hidden) return;
  const size_t r = i / hidden;
  const size_t col = i - r * hidden;
  const size_t token = static_cast<size_t>(rows[r] / k);
  g[i] = x[token * hidden + col];
}

// d[rows[r], :] = o[r, :] for r < m. o: [m, hidden]; d: [n * k, hidden].
__global__ void PlaceRowsKernel(const float* o, const int32_t* rows, int m, int hidden,
                                float* d) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<size_t>(m) * hidden) return;
  const size_t r = i / hidden;
  const size_t col = i - r * hidden;
  d[static_cast<size_t>(rows[r]) * hidden + col] = o[i];
}

// Contract: one instance per backend, used by its worker thread only. Owns its buffers
// (cuda::Gemm uses ctx.scratch for its own conversions, so they cannot live there).
class SequentialMoeExperts final : public MoeExpertsOp {
 public:
  void Run(const float* x, int n, int hidden, const MoeRouting& routing, int k,
           const ExpertWeights* experts, int num_experts, float scale, float* y,
           CudaContext& ctx) override {
    if (n <= 0) return;
    if (ctx.capturing) {
      // It reads the counts back (a host sync), which a capture forbids: the recording fails
      // and its forward runs eagerly instead (CudaContext::capture_failed).
      ctx.capture_failed = true;
      return;
    }
    SPECMOE_CHECK(k >= 1 && k <= num_experts && hidden >= 1, "MoE sizes");
    const int64_t pairs = static_cast<int64_t>(n) * k;
    SPECMOE_CHECK(pairs <= INT32_MAX, "pair count");

    // counts [num_experts], then offsets [num_experts + 1], read back once.
    auto* staged = static_cast<int32_t*>(ctx.Staging((2 * num_experts + 1) * sizeof(int32_t)));
    SPECMOE_CUDA_CHECK(cudaMemcpyAsync(staged, routing.counts, num_experts * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, ctx.stream));
    SPECMOE_CUDA_CHECK(cudaMemcpyAsync(staged + num_experts, routing.offsets,
                                       (num_experts + 1) * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, ctx.stream));
    SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    const std::vector<int32_t> counts(staged, staged + num_experts);
    const std::vector<int32_t> offsets(staged + num_experts, staged + 2 * num_experts + 1);
    SPECMOE_CHECK(offsets[0] == 0 && offsets[num_experts] == pairs,
                  "routing does not cover n * k pairs");

    int max_m = 0;
    int64_t max_inter = 0;
    for (int e = 0; e < num_experts; ++e) {
      SPECMOE_CHECK(counts[e] >= 0 && offsets[e + 1] - offsets[e] == counts[e],
                    "routing counts");
      if (counts[e] == 0) continue;
      const ExpertWeights& ex = experts[e];
      SPECMOE_CHECK(ex.gate.cols == hidden && ex.up.cols == hidden && ex.down.rows == hidden &&
                        ex.up.rows == ex.gate.rows && ex.down.cols == ex.gate.rows &&
                        ex.gate.rows >= 1 && ex.gate.rows <= INT32_MAX,
                    "expert weight shapes");
      max_m = std::max(max_m, counts[e]);
      max_inter = std::max(max_inter, ex.gate.rows);
    }
    const size_t row_bytes = static_cast<size_t>(hidden) * sizeof(float);
    auto* gathered = static_cast<float*>(gathered_.Get(max_m * row_bytes, false));  // [m, hidden]
    auto* gate_out = static_cast<float*>(
        gate_out_.Get(static_cast<size_t>(max_m) * max_inter * sizeof(float), false));  // [m, inter]
    auto* up_out = static_cast<float*>(
        up_out_.Get(static_cast<size_t>(max_m) * max_inter * sizeof(float), false));  // [m, inter]
    auto* expert_out = static_cast<float*>(expert_out_.Get(max_m * row_bytes, false));  // [m, hidden]
    auto* contrib = static_cast<float*>(contrib_.Get(pairs * row_bytes, false));  // [n * k, hidden]

    for (int e = 0; e < num_experts; ++e) {
      const int m = counts[e];
      if (m == 0) continue;
      const ExpertWeights& ex = experts[e];
      const int inter = static_cast<int>(ex.gate.rows);
      const int32_t* rows = routing.pairs + offsets[e];
      const size_t elements = static_cast<size_t>(m) * hidden;
      GatherTokensKernel<<<Blocks(elements, kThreads), kThreads, 0, ctx.stream>>>(
          x, rows, m, k, hidden, gathered);
      SPECMOE_CUDA_CHECK(cudaGetLastError());
      Gemm(gathered, m, hidden, ex.gate, gate_out, inter, ctx);
      Gemm(gathered, m, hidden, ex.up, up_out, inter, ctx);
      SiluMul(gate_out, up_out, m, inter, inter, gate_out, ctx);
      Gemm(gate_out, m, inter, ex.down, expert_out, hidden, ctx);
      PlaceRowsKernel<<<Blocks(elements, kThreads), kThreads, 0, ctx.stream>>>(
          expert_out, rows, m, hidden, contrib);
      SPECMOE_CUDA_CHECK(cudaGetLastError());
    }
    MoeCombine(contrib, 1, n, k, hidden, routing.weight, scale, y, ctx);
  }

 private:
  GrowingBuffer gathered_{false};
  GrowingBuffer gate_out_{false};
  GrowingBuffer up_out_{false};
  GrowingBuffer expert_out_{false};
  GrowingBuffer contrib_{false};
};

}  // namespace

std::unique_ptr<MoeExpertsOp> CreateSequentialMoeExperts() {
  return std::make_unique<SequentialMoeExperts>();
}

}  // namespace specmoe::kernels::cuda
