// kernels/cuda/top_k_ids.cu — TopKIds on the device (kernels/cuda/sampling.h; the CPU op it
// must match: CpuBackend::TopKIds = kernels/cpu/sampling.cc ApplyRepetitionPenalty then
// TopKRow: the k largest ids in descending order, ties lower id first).
//
// logits: device f32 [vocab]; ids: host int32 [min(k, vocab)]. The distinct in-range
// context ids of the penalty are packed on the host and uploaded through ctx.Staging() in
// one copy; the penalised row becomes 64-bit order keys (value order, then ~id:
// sampling_util.cuh OrderKey, so every key is distinct and the tie rule is exact), sorted
// descending by cub's radix sort (one row: ~32000 keys), and the first k ids come back
// through staging with one stream synchronisation.
// Tested by tests/cuda_sampling_test.cc against the CPU backend (label cuda).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/sampling_util.cuh"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// ids[k] := the ids of sorted[0, k).
__global__ void __launch_bounds__(kThreads)
    KeyIdsKernel(const uint64_t* __restrict__ sorted, int k, int32_t* __restrict__ ids) {
  const int j = blockIdx.x * kThreads + threadIdx.x;
  if (j < k) ids[j] = KeyId(sorted[j]);
}

}  // namespace

void TopKIds(const float* logits, int vocab, int k, const RowPenalty& penalty, int32_t* ids,
             CudaContext& ctx) {
  k = std::clamp(k, 0, std::max(vocab, 0));
  if (k == 0) return;
  std::vector<int32_t> context;
  PackPenaltyIds(penalty, vocab, &context);

  // Scratch: context ids | keys [vocab] | sorted [vocab] | ids [k] | cub temp.
  // Staging: context ids | ids [k].
  const size_t context_bytes = AlignUp(context.size() * sizeof(int32_t));
  const size_t keys_bytes = AlignUp(static_cast<size_t>(vocab) * sizeof(uint64_t));
  const size_t ids_bytes = AlignUp(static_cast<size_t>(k) * sizeof(int32_t));
  const size_t temp_bytes = SortTempBytes(vocab);
  char* scratch = static_cast<char*>(
      ctx.SideScratch(context_bytes + 2 * keys_bytes + ids_bytes + temp_bytes));
  char* staging = static_cast<char*>(ctx.Staging(context_bytes + ids_bytes));
  auto* d_context = reinterpret_cast<int32_t*>(scratch);
  auto* keys = reinterpret_cast<uint64_t*>(scratch + context_bytes);
  auto* sorted = reinterpret_cast<uint64_t*>(scratch + context_bytes + keys_bytes);
  auto* d_ids = reinterpret_cast<int32_t*>(scratch + context_bytes + 2 * keys_bytes);
  void* temp = scratch + context_bytes + 2 * keys_bytes + ids_bytes;

  const DevicePenalty device_penalty =
      UploadPenalty(context, penalty.penalty, staging, d_context, ctx.stream);
  SortRowDescending(logits, vocab, device_penalty, keys, sorted, temp, temp_bytes, ctx.stream);
  KeyIdsKernel<<<Blocks(k, kThreads), kThreads, 0, ctx.stream>>>(sorted, k, d_ids);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
  SPECMOE_CUDA_CHECK(cudaMemcpyAsync(staging + context_bytes, d_ids, k * sizeof(int32_t),
                                     cudaMemcpyDeviceToHost, ctx.stream));
  SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  std::memcpy(ids, staging + context_bytes, k * sizeof(int32_t));
}

}  // namespace specmoe::kernels::cuda
