// kernels/cuda/processed_distribution.cu — ProcessedDistribution on the device
// (kernels/cuda/sampling.h; the CPU op it must match: kernels/cpu/sampling.cc
// ProcessLogitsRow, its order of steps and its tie rules).
//
// logits: device f32 [vocab]; probs: host f32 [vocab] (the one row that comes back).
//   1. penalty: the distinct in-range context ids, packed on the host, one upload through
//      ctx.Staging(); applied on the device as the values are read (sampling_util.cuh);
//   2. temperature 0: one block's argmax (the CPU's ArgmaxRow rules, NaN included), a
//      one-hot; done;
//   3. top-k off and top-p 1 (the whole vocabulary kept, the common sampling case): no sort;
//      one block's argmax gives max z, e_i = exp(z_i - max z) in double for every id, their
//      sum by one cub reduction, probs[i] = e_i / sum; done;
//   4. otherwise the penalised row is sorted descending by 64-bit order keys (value, then
//      lower id first; cub radix sort). For T > 0, z = l / T (double) is increasing in l, so
//      this is also the order of z and of e = exp(z - max z): top-k keeps the first k of it
//      (exactly the CPU's set), and top-p walks it;
//   5. e_j = exp(z_j - z_0) in double for the kept j; cum = inclusive prefix sum (cub, in
//      sorted order as the CPU sums its nucleus);
//   6. top-p < 1: the nucleus is the first j + 1 with cum_j >= top_p * cum_last (all kept
//      when rounding never gets there), total = cum of the nucleus; else total = cum_last;
//   7. probs[id_j] = e_j / total for j in the nucleus, 0 elsewhere.
// Differences from the CPU: the sums run in another order (double: ~1e-16 relative, below
// f32 output rounding), and where exp maps two different z to the same double the CPU
// orders them by id and this code by z — which matters only when that pair straddles the
// top-p boundary (exact ties in e). Requires temperature >= 0 (as the engine validates).
// Tested by tests/cuda_sampling_test.cc against the CPU backend (label cuda).
#include <cuda_runtime.h>

#include <cub/device/device_reduce.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <climits>
#include <cmath>
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
constexpr int kArgmaxThreads = 512;

// probs[argmax of the penalised row] = 1 (probs zeroed before). One block of kArgmaxThreads.
__global__ void __launch_bounds__(kArgmaxThreads)
    OneHotArgmaxKernel(const float* __restrict__ row, int vocab, DevicePenalty penalty,
                       float* __restrict__ probs) {
  const int best = BlockArgmax<kArgmaxThreads>(row, vocab, penalty);
  if (threadIdx.x == 0) probs[best] = 1.0f;
}

// *best = the argmax of the penalised row. One block of kArgmaxThreads.
__global__ void __launch_bounds__(kArgmaxThreads)
    ArgmaxKernel(const float* __restrict__ row, int vocab, DevicePenalty penalty,
                 int* __restrict__ best) {
  const int id = BlockArgmax<kArgmaxThreads>(row, vocab, penalty);
  if (threadIdx.x == 0) *best = id;
}

// e[i] = exp(z_i - z_max) for every id i < vocab, z = double(penalised row) *
// inv_temperature, z_max that of *best (the argmax: the largest z).
__global__ void __launch_bounds__(kThreads)
    AllWeightsKernel(const float* __restrict__ row, int vocab, DevicePenalty penalty,
                     double inv_temperature, const int* __restrict__ best,
                     double* __restrict__ e) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= vocab) return;
  const double max_z = static_cast<double>(PenalizedLogit(row, *best, penalty)) * inv_temperature;
  const double z = static_cast<double>(PenalizedLogit(row, i, penalty)) * inv_temperature;
  e[i] = exp(z - max_z);
}

// probs[i] = e[i] / *total for every id i < vocab.
__global__ void __launch_bounds__(kThreads)
    AllNormalizeKernel(const double* __restrict__ e, int vocab, const double* __restrict__ total,
                       float* __restrict__ probs) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i < vocab) probs[i] = static_cast<float>(e[i] / *total);
}

// e[j] = exp(z_j - z_0), z_j = double(value of sorted[j]) * inv_temperature, j < kept.
__global__ void __launch_bounds__(kThreads)
    WeightsKernel(const uint64_t* __restrict__ sorted, int kept, double inv_temperature,
                  double* __restrict__ e) {
  const int j = blockIdx.x * kThreads + threadIdx.x;
  if (j >= kept) return;
  const double max_z = static_cast<double>(KeyValue(sorted[0])) * inv_temperature;
  const double z = static_cast<double>(KeyValue(sorted[j])) * inv_temperature;
  e[j] = exp(z - max_z);
}

// *nucleus := kept (every kept id; top-p lowers it). One thread.
__global__ void InitNucleusKernel(int kept, int* nucleus) { *nucleus = kept; }

// *nucleus := min j + 1 over j < kept with cum[j] >= threshold and (j == 0 or
// cum[j - 1] < threshold): the first crossing (*nucleus preset to kept: none).
__global__ void __launch_bounds__(kThreads)
    NucleusKernel(const double* __restrict__ cum, int kept, double top_p, int* nucleus) {
  const int j = blockIdx.x * kThreads + threadIdx.x;
  if (j >= kept) return;
  const double threshold = top_p * cum[kept - 1];
  if (cum[j] >= threshold && (j == 0 || cum[j - 1] < threshold)) atomicMin(nucleus, j + 1);
}

// probs[id of sorted[j]] = e[j] / cum[*nucleus - 1] for j < *nucleus (probs zeroed before).
__global__ void __launch_bounds__(kThreads)
    NormalizeKernel(const uint64_t* __restrict__ sorted, const double* __restrict__ e,
                    const double* __restrict__ cum, const int* __restrict__ nucleus,
                    int kept, float* __restrict__ probs) {
  const int j = blockIdx.x * kThreads + threadIdx.x;
  const int n = *nucleus;
  if (j >= kept || j >= n) return;
  probs[KeyId(sorted[j])] = static_cast<float>(e[j] / cum[n - 1]);
}

}  // namespace

void ProcessedDistribution(const float* logits, int vocab, const RowPenalty& penalty,
                           const LogitsProcessing& processing, float* probs, CudaContext& ctx) {
  SPECMOE_CHECK(vocab > 0, "ProcessedDistribution: empty vocabulary");
  SPECMOE_CHECK(processing.temperature >= 0.0f, "ProcessedDistribution: negative temperature");
  std::vector<int32_t> context;
  PackPenaltyIds(penalty, vocab, &context);
  const bool greedy = processing.temperature == 0.0f;
  const int kept =
      processing.top_k > 0 && processing.top_k < vocab ? processing.top_k : vocab;
  const bool whole = !greedy && kept == vocab && !(processing.top_p < 1.0f);  // no sort

  // Scratch: context ids | probs [vocab] f32 | nucleus int | then, sorting: keys, sorted
  // [vocab] u64 | e, cum [kept] f64 | cub temp (sort and scan share it); or, whole: e [vocab]
  // f64 | total f64 | cub temp (the reduction). Staging: context ids | probs.
  const size_t context_bytes = AlignUp(context.size() * sizeof(int32_t));
  const size_t probs_bytes = AlignUp(static_cast<size_t>(vocab) * sizeof(float));
  const size_t nucleus_bytes = AlignUp(sizeof(int));
  const size_t keys_bytes = AlignUp(static_cast<size_t>(vocab) * sizeof(uint64_t));
  const size_t weights_bytes = AlignUp(static_cast<size_t>(kept) * sizeof(double));
  size_t scan_bytes = 0;
  size_t reduce_bytes = 0;
  if (whole) {
    SPECMOE_CUDA_CHECK(cub::DeviceReduce::Sum(nullptr, reduce_bytes,
                                              static_cast<const double*>(nullptr),
                                              static_cast<double*>(nullptr), vocab));
  } else if (!greedy) {
    SPECMOE_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes,
                                                     static_cast<const double*>(nullptr),
                                                     static_cast<double*>(nullptr), kept));
  }
  size_t temp_bytes = 0;
  size_t work_part = 0;
  if (whole) {
    temp_bytes = AlignUp(reduce_bytes);
    work_part = weights_bytes + AlignUp(sizeof(double)) + temp_bytes;
  } else if (!greedy) {
    temp_bytes = AlignUp(std::max(SortTempBytes(vocab), scan_bytes));
    work_part = 2 * keys_bytes + 2 * weights_bytes + temp_bytes;
  }
  char* scratch = static_cast<char*>(
      ctx.SideScratch(context_bytes + probs_bytes + nucleus_bytes + work_part));
  char* staging = static_cast<char*>(ctx.Staging(context_bytes + probs_bytes));
  auto* d_context = reinterpret_cast<int32_t*>(scratch);
  auto* d_probs = reinterpret_cast<float*>(scratch + context_bytes);
  auto* nucleus = reinterpret_cast<int*>(scratch + context_bytes + probs_bytes);
  char* work = scratch + context_bytes + probs_bytes + nucleus_bytes;

  const DevicePenalty device_penalty =
      UploadPenalty(context, penalty.penalty, staging, d_context, ctx.stream);
  SPECMOE_CUDA_CHECK(cudaMemsetAsync(d_probs, 0, static_cast<size_t>(vocab) * sizeof(float),
                                     ctx.stream));
  if (greedy) {
    OneHotArgmaxKernel<<<1, kArgmaxThreads, 0, ctx.stream>>>(logits, vocab, device_penalty,
                                                             d_probs);
    SPECMOE_CUDA_CHECK(cudaGetLastError());
  } else if (whole) {
    auto* e = reinterpret_cast<double*>(work);
    auto* total = reinterpret_cast<double*>(work + weights_bytes);
    void* temp = work + weights_bytes + AlignUp(sizeof(double));
    int* best = nucleus;
    ArgmaxKernel<<<1, kArgmaxThreads, 0, ctx.stream>>>(logits, vocab, device_penalty, best);
    SPECMOE_CUDA_CHECK(cudaGetLastError());
    const double inv_temperature = 1.0 / static_cast<double>(processing.temperature);
    const unsigned blocks = Blocks(vocab, kThreads);
    AllWeightsKernel<<<blocks, kThreads, 0, ctx.stream>>>(logits, vocab, device_penalty,
                                                          inv_temperature, best, e);
    SPECMOE_CUDA_CHECK(cudaGetLastError());
    size_t reduce_temp = temp_bytes;
    SPECMOE_CUDA_CHECK(cub::DeviceReduce::Sum(temp, reduce_temp, e, total, vocab, ctx.stream));
    AllNormalizeKernel<<<blocks, kThreads, 0, ctx.stream>>>(e, vocab, total, d_probs);
    SPECMOE_CUDA_CHECK(cudaGetLastError());
  } else {
    auto* keys = reinterpret_cast<uint64_t*>(work);
    auto* sorted = reinterpret_cast<uint64_t*>(work + keys_bytes);
    auto* e = reinterpret_cast<double*>(work + 2 * keys_bytes);
    auto* cum = reinterpret_cast<double*>(work + 2 * keys_bytes + weights_bytes);
    void* temp = work + 2 * keys_bytes + 2 * weights_bytes;
    SortRowDescending(logits, vocab, device_penalty, keys, sorted, temp, temp_bytes,
                      ctx.stream);
    const double inv_temperature = 1.0 / static_cast<double>(processing.temperature);
    const unsigned blocks = Blocks(kept, kThreads);
    WeightsKernel<<<blocks, kThreads, 0, ctx.stream>>>(sorted, kept, inv_temperature, e);
    SPECMOE_CUDA_CHECK(cudaGetLastError());
    size_t scan_temp = temp_bytes;
    SPECMOE_CUDA_CHECK(cub::DeviceScan::InclusiveSum(temp, scan_temp, e, cum, kept, ctx.stream));
    InitNucleusKernel<<<1, 1, 0, ctx.stream>>>(kept, nucleus);
    SPECMOE_CUDA_CHECK(cudaGetLastError());
    if (processing.top_p < 1.0f) {
      NucleusKernel<<<blocks, kThreads, 0, ctx.stream>>>(
          cum, kept, static_cast<double>(processing.top_p), nucleus);
      SPECMOE_CUDA_CHECK(cudaGetLastError());
    }
    NormalizeKernel<<<blocks, kThreads, 0, ctx.stream>>>(sorted, e, cum, nucleus, kept, d_probs);
    SPECMOE_CUDA_CHECK(cudaGetLastError());
  }
  SPECMOE_CUDA_CHECK(cudaMemcpyAsync(staging + context_bytes, d_probs,
                                     static_cast<size_t>(vocab) * sizeof(float),
                                     cudaMemcpyDeviceToHost, ctx.stream));
  SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  std::memcpy(probs, staging + context_bytes, static_cast<size_t>(vocab) * sizeof(float));
}

}  // namespace specmoe::kernels::cuda
