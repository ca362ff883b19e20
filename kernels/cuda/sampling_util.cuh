// kernels/cuda/sampling_util.cuh — pieces the logits reductions share (argmax_rows.cu,
// processed_distribution.cu, top_k_ids.cu; kernels/cuda/sampling.h): the repetition penalty
// packed on the host and applied on the device, a block-wide argmax, and the 64-bit sort key
// (with the cub radix sort over it) that orders a row as kernels/cpu/sampling.cc does:
// larger value first, ties lower id first. Internal to kernels/cuda.
//
// Penalty (kernels/cpu/sampling.cc ApplyRepetitionPenalty): the host keeps the DISTINCT ids
// of the context in [0, vocab), sorted (so each is penalised once); the device finds an id
// by binary search and computes l > 0 ? l / p : l * p in double, clamped to +-FLT_MAX.
// Tested through tests/cuda_sampling_test.cc.
#ifndef SPECMOE_KERNELS_CUDA_SAMPLING_UTIL_CUH_
#define SPECMOE_KERNELS_CUDA_SAMPLING_UTIL_CUH_

#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_check.h"

namespace specmoe::kernels::cuda {

// Appends the distinct ids of penalty.context in [0, vocab), sorted, to *ids (nothing when
// the penalty changes nothing). Returns how many it appended.
inline int PackPenaltyIds(const RowPenalty& penalty, int vocab, std::vector<int32_t>* ids) {
  if (!PenaltyApplies(penalty)) return 0;
  const size_t first = ids->size();
  for (int i = 0; i < penalty.context_size; ++i) {
    const int32_t t = penalty.context[i];
    if (t >= 0 && t < vocab) ids->push_back(t);
  }
  std::sort(ids->begin() + first, ids->end());
  ids->erase(std::unique(ids->begin() + first, ids->end()), ids->end());
  return static_cast<int>(ids->size() - first);
}

// Rounds `bytes` up to a multiple of 256 (alignment of the pieces carved out of scratch).
inline size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

// One row's penalty on the device: ids [n] sorted and distinct (device memory).
struct DevicePenalty {
  const int32_t* ids = nullptr;
  int n = 0;
  float penalty = 1.0f;
};

// Uploads a row's packed penalty ids (PackPenaltyIds) through `staging` (pinned) into
// `d_ids` (device) on `stream` and returns the device view; no penalty when `ids` is empty.
inline DevicePenalty UploadPenalty(const std::vector<int32_t>& ids, float penalty,
                                   void* staging, int32_t* d_ids, cudaStream_t stream) {
  DevicePenalty p;
  if (ids.empty()) return p;
  std::memcpy(staging, ids.data(), ids.size() * sizeof(int32_t));
  SPECMOE_CUDA_CHECK(cudaMemcpyAsync(d_ids, staging, ids.size() * sizeof(int32_t),
                                     cudaMemcpyHostToDevice, stream));
  p.ids = d_ids;
  p.n = static_cast<int>(ids.size());
  p.penalty = penalty;
  return p;
}

// row[i] after the penalty (row: device [vocab]).
__device__ __forceinline__ float PenalizedLogit(const float* row, int i, const DevicePenalty& p) {
  const float value = row[i];
  if (p.n == 0) return value;
  int lo = 0;
  int hi = p.n;  // find i in ids[lo, hi)
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (p.ids[mid] < i) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo == p.n || p.ids[lo] != i) return value;
  const double l = value;
  const double penalised =
      l > 0 ? l / static_cast<double>(p.penalty) : l * static_cast<double>(p.penalty);
  const double clamped =
      penalised < -static_cast<double>(FLT_MAX)
          ? -static_cast<double>(FLT_MAX)
          : (static_cast<double>(FLT_MAX) < penalised ? static_cast<double>(FLT_MAX) : penalised);
  return static_cast<float>(clamped);
}

// (value, id) candidates of an argmax: larger value first, ties lower id first.
struct ArgmaxCandidate {
  float value;
  int id;
};

__device__ __forceinline__ ArgmaxCandidate Better(ArgmaxCandidate a, ArgmaxCandidate b) {
  return (a.value > b.value || (a.value == b.value && a.id < b.id)) ? a : b;
}

// The argmax of the penalised row (kernels/cpu/sampling.cc ArgmaxRow: best = 0, replaced by
// each later strictly larger value; so NaNs are never chosen, except row[0] when it is NaN,
// which nothing replaces). Called by all kThreads threads of a block (no divergence around
// it); the result is valid in thread 0. kThreads: a multiple of 32, at most 1024.
template <int kThreads>
__device__ int BlockArgmax(const float* row, int vocab, const DevicePenalty& penalty) {
  __shared__ ArgmaxCandidate s_best[kThreads / 32];
  ArgmaxCandidate best{-INFINITY, INT_MAX};
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = PenalizedLogit(row, i, penalty);
    if (!isnan(v)) best = Better(best, ArgmaxCandidate{v, i});
  }
  for (int off = 16; off > 0; off /= 2) {
    const ArgmaxCandidate other{__shfl_xor_sync(0xffffffffu, best.value, off),
                                __shfl_xor_sync(0xffffffffu, best.id, off)};
    best = Better(best, other);
  }
  if (threadIdx.x % 32 == 0) s_best[threadIdx.x / 32] = best;
  __syncthreads();
  int result = 0;
  if (threadIdx.x == 0) {
    best = s_best[0];
    for (int w = 1; w < kThreads / 32; ++w) best = Better(best, s_best[w]);
    const bool first_nan = isnan(PenalizedLogit(row, 0, penalty));
    result = (first_nan || best.id == INT_MAX) ? 0 : best.id;
  }
  return result;
}

// A 64-bit key whose descending order is the CPU's order of a row: larger value first, ties
// (-0 == +0 included) lower id first. High half: the value's bits mapped to an unsigned
// order; low half: ~id.
__device__ __forceinline__ uint64_t OrderKey(float value, int id) {
  if (value == 0.0f) value = 0.0f;  // -0 sorts with +0
  const uint32_t bits = __float_as_uint(value);
  const uint32_t ordered = (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(ordered) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(id));
}

__device__ __forceinline__ int KeyId(uint64_t key) {
  return static_cast<int>(~static_cast<uint32_t>(key & 0xffffffffu));
}

__device__ __forceinline__ float KeyValue(uint64_t key) {
  const uint32_t ordered = static_cast<uint32_t>(key >> 32);
  const uint32_t bits = (ordered & 0x80000000u) != 0 ? (ordered & 0x7fffffffu) : ~ordered;
  return __uint_as_float(bits);
}

// keys[vocab] := OrderKey(penalised row[i], i). Grid: Blocks(vocab, kThreads).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    OrderKeysKernel(const float* __restrict__ row, int vocab, DevicePenalty penalty,
                    uint64_t* __restrict__ keys) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i < vocab) keys[i] = OrderKey(PenalizedLogit(row, i, penalty), i);
}

// Bytes of cub temporary storage SortRowDescending needs for a row of vocab.
inline size_t SortTempBytes(int vocab) {
  size_t bytes = 0;
  SPECMOE_CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending(
      nullptr, bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr), vocab,
      0, 64));
  return bytes;
}

// sorted[vocab] := the OrderKeys of the penalised row in descending order, i.e. the ids by
// penalised logit, largest first, ties lower id first (kernels/cpu/sampling.cc TopKRow's
// order). keys: scratch [vocab]; temp: SortTempBytes(vocab) bytes. Enqueued on stream.
inline void SortRowDescending(const float* row, int vocab, const DevicePenalty& penalty,
                              uint64_t* keys, uint64_t* sorted, void* temp, size_t temp_bytes,
                              cudaStream_t stream) {
  constexpr int kThreads = 256;
  OrderKeysKernel<kThreads>
      <<<Blocks(vocab, kThreads), kThreads, 0, stream>>>(row, vocab, penalty, keys);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
  SPECMOE_CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending(temp, temp_bytes, keys, sorted, vocab,
                                                              0, 64, stream));
}

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_SAMPLING_UTIL_CUH_
