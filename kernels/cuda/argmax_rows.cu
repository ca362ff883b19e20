// kernels/cuda/argmax_rows.cu — ArgmaxRows on the device (kernels/cuda/sampling.h; the CPU
// op it must match: CpuBackend::ArgmaxRows = kernels/cpu/sampling.cc ApplyRepetitionPenalty
// then ArgmaxRow).
//
// logits: device f32 [rows, vocab]; penalties: host [rows] or null; out: host int32 [rows].
// The distinct in-range context ids of every penalised row are packed on the host (sorted,
// deduplicated: sampling_util.cuh) with per-row offsets and penalties, uploaded in one copy
// through ctx.Staging(); one block of 512 threads per row reduces (penalised value, id) with
// the lowest-id tie rule and the CPU's NaN rule (BlockArgmax); the rows' ids come back
// through staging with one stream synchronisation.
// Tested by tests/cuda_sampling_test.cc against the CPU backend (label cuda).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/sampling_util.cuh"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kThreads = 512;

// Grid: rows; block: kThreads. offsets: [rows + 1] into ids, penalties: [rows] (both null
// when no row is penalised); out: [rows].
__global__ void __launch_bounds__(kThreads)
    ArgmaxRowsKernel(const float* __restrict__ logits, int vocab, const int32_t* offsets,
                     const float* penalties, const int32_t* ids, int32_t* out) {
  const int r = blockIdx.x;
  DevicePenalty penalty;
  if (offsets != nullptr) {
    penalty.ids = ids + offsets[r];
    penalty.n = offsets[r + 1] - offsets[r];
    penalty.penalty = penalties[r];
  }
  const int best = BlockArgmax<kThreads>(logits + static_cast<size_t>(r) * vocab, vocab, penalty);
  if (threadIdx.x == 0) out[r] = best;
}

}  // namespace

void ArgmaxRows(const float* logits, int rows, int vocab, const RowPenalty* penalties,
                int32_t* out, CudaContext& ctx) {
  if (rows <= 0) return;
  SPECMOE_CHECK(vocab > 0, "ArgmaxRows: empty vocabulary");
  // Host packing: offsets [rows + 1], penalties [rows], ids [total] (all 4-byte words).
  std::vector<int32_t> ids;
  std::vector<int32_t> offsets(rows + 1, 0);
  std::vector<float> factors(rows, 1.0f);
  if (penalties != nullptr) {
    for (int r = 0; r < rows; ++r) {
      PackPenaltyIds(penalties[r], vocab, &ids);
      offsets[r + 1] = static_cast<int32_t>(ids.size());
      factors[r] = penalties[r].penalty;
    }
  }
  const bool penalised = !ids.empty();
  const size_t upload_words = penalised ? (rows + 1) + rows + ids.size() : 0;
  const size_t upload_bytes = AlignUp(upload_words * 4);
  const size_t result_bytes = static_cast<size_t>(rows) * sizeof(int32_t);
  char* staging = static_cast<char*>(ctx.Staging(upload_bytes + result_bytes));
  char* scratch = static_cast<char*>(ctx.SideScratch(upload_bytes + result_bytes));

  const int32_t* d_offsets = nullptr;
  const float* d_penalties = nullptr;
  const int32_t* d_ids = nullptr;
  if (penalised) {
    std::memcpy(staging, offsets.data(), (rows + 1) * sizeof(int32_t));
    std::memcpy(staging + (rows + 1) * 4, factors.data(), rows * sizeof(float));
    std::memcpy(staging + (2 * rows + 1) * 4, ids.data(), ids.size() * sizeof(int32_t));
    SPECMOE_CUDA_CHECK(cudaMemcpyAsync(scratch, staging, upload_words * 4,
                                       cudaMemcpyHostToDevice, ctx.stream));
    d_offsets = reinterpret_cast<const int32_t*>(scratch);
    d_penalties = reinterpret_cast<const float*>(scratch + (rows + 1) * 4);
    d_ids = reinterpret_cast<const int32_t*>(scratch + (2 * rows + 1) * 4);
  }
  int32_t* d_out = reinterpret_cast<int32_t*>(scratch + upload_bytes);
  ArgmaxRowsKernel<<<rows, kThreads, 0, ctx.stream>>>(logits, vocab, d_offsets, d_penalties,
                                                      d_ids, d_out);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
  SPECMOE_CUDA_CHECK(cudaMemcpyAsync(staging + upload_bytes, d_out, result_bytes,
                                     cudaMemcpyDeviceToHost, ctx.stream));
  SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  std::memcpy(out, staging + upload_bytes, result_bytes);
}

}  // namespace specmoe::kernels::cuda
