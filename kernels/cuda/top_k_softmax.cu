// kernels/cuda/top_k_softmax.cu — MoE routing on the device (kernels/cuda/moe.h TopKSoftmax,
// the twin of Backend::TopKSoftmax in kernels/cpu/cpu_backend.cc).
//
// logits: f32 [n, e]. Writes routing.idx, routing.weight: [n, k] (int32, f32);
// routing.counts: [e]; routing.offsets: [e + 1]; routing.pairs: [n * k] (int32).
//
// Two kernels on ctx.stream, no host round trip:
// 1. TopKKernel, one thread per token: the k largest logits by repeated selection under the
//    CPU's total order (kernels/routing_order.h: a before b iff l[a] > l[b], or l[a] == l[b]
//    and a < b; NaN after every number), so the k choices are distinct and the j-th
//    choice is the largest element that comes after the (j-1)-th; then, exactly as the CPU
//    does, p_j = expf(l_j - l_0), sum += p_j in j order, weight_j = p_j / sum (no operation
//    of this can be contracted into an FMA, so the only difference to the CPU is expf's last
//    ulp).
// 2. GroupKernel, one block: counts with shared-memory atomics (an integer sum, so the order
//    does not matter), offsets by a serial exclusive scan (e <= 256), then the pairs placed
//    in increasing order within each expert, chunk by chunk of kGroupThreads pairs: a pair's
//    place is its expert's running base + the same expert's pairs in earlier warps of the
//    chunk (per-warp counts in shared memory) + its rank among earlier lanes of its warp
//    (__match_any_sync). Deterministic, and equal to the CPU's stable counting sort.
// Tested by tests/cuda_moe_test.cc against the CPU backend (idx, counts, offsets, pairs
// exactly; weights within 1e-6 relative).
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/moe.h"
#include "kernels/routing_order.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kTopKThreads = 128;
constexpr int kGroupThreads = 1024;
constexpr int kGroupWarps = kGroupThreads / 32;
constexpr int kMaxExperts = 256;

// True when expert a comes before expert b in the routing order (routing_order.h: NaN last).
__device__ __forceinline__ bool Before(const float* l, int a, int b) {
  return ExpertBefore(l[a], a, l[b], b);
}

// logits [n, e] -> idx, weight [n, k]. Grid: ceil(n / kTopKThreads) blocks.
__global__ void TopKKernel(const float* logits, int n, int e, int k, int32_t* idx,
                           float* weight) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const float* l = logits + static_cast<size_t>(t) * e;
  int32_t* out_idx = idx + static_cast<size_t>(t) * k;
  float* out_w = weight + static_cast<size_t>(t) * k;
  int prev = -1;
  float top = 0.0f;
  float sum = 0.0f;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int a = 0; a < e; ++a) {
      if (prev >= 0 && !Before(l, prev, a)) continue;  // already chosen or ranked higher
      if (best < 0 || Before(l, a, best)) best = a;
    }
    // The order is total (NaN included) and k <= e, so an expert after `prev` always
    // remains: the k choices are distinct. The guard only keeps memory safe.
    if (best < 0) best = 0;
    if (j == 0) top = l[best];
    const float p = expf(l[best] - top);
    sum += p;
    out_idx[j] = best;
    out_w[j] = p;
    prev = best;
  }
  for (int j = 0; j < k; ++j) out_w[j] = out_w[j] / sum;
}

// idx [pairs] (experts of pairs p = t * k + j) -> counts [e], offsets [e + 1], grouped
// pairs [pairs]. One block of kGroupThreads; dynamic shared memory: (2 + kGroupWarps) * e
// ints.
__global__ void GroupKernel(const int32_t* idx, int pairs, int e, int32_t* counts,
                            int32_t* offsets, int32_t* grouped) {
  extern __shared__ int32_t shared[];
  int32_t* s_counts = shared;                  // [e]
  int32_t* s_next = shared + e;                // [e] next free place of each expert
  int32_t* s_warp_counts = shared + 2 * e;     // [kGroupWarps, e] of the current chunk
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;

  for (int x = tid; x < e; x += kGroupThreads) s_counts[x] = 0;
  __syncthreads();
  for (int p = tid; p < pairs; p += kGroupThreads) atomicAdd(&s_counts[idx[p]], 1);
  __syncthreads();
  if (tid == 0) {
    int32_t running = 0;
    for (int x = 0; x < e; ++x) {
      counts[x] = s_counts[x];
      offsets[x] = running;
      s_next[x] = running;
      running += s_counts[x];
    }
    offsets[e] = running;
  }
  __syncthreads();

  const unsigned lanes_below = (1u << lane) - 1u;
  for (int base = 0; base < pairs; base += kGroupThreads) {  // uniform over the block
    for (int i = tid; i < kGroupWarps * e; i += kGroupThreads) s_warp_counts[i] = 0;
    __syncthreads();
    const int p = base + tid;
    const int x = p < pairs ? idx[p] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, x);
    if (x >= 0 && (peers & lanes_below) == 0) s_warp_counts[warp * e + x] = __popc(peers);
    __syncthreads();
    if (x >= 0) {
      int place = s_next[x] + __popc(peers & lanes_below);
      for (int w = 0; w < warp; ++w) place += s_warp_counts[w * e + x];
      grouped[place] = p;
    }
    __syncthreads();
    for (int y = tid; y < e; y += kGroupThreads) {
      int chunk = 0;
      for (int w = 0; w < kGroupWarps; ++w) chunk += s_warp_counts[w * e + y];
      s_next[y] += chunk;
    }
    __syncthreads();
  }
}

}  // namespace

void TopKSoftmax(const float* logits, int n, int e, int k, const MoeRouting& routing,
                 CudaContext& ctx) {
  SPECMOE_CHECK(k >= 1 && k <= e, "k must be in [1, e]");
  SPECMOE_CHECK(e <= kMaxExperts, "the device routing handles at most 256 experts");
  SPECMOE_CHECK(n >= 0 && static_cast<int64_t>(n) * k <= INT32_MAX, "pair count");
  if (n > 0) {
    TopKKernel<<<Blocks(static_cast<size_t>(n), kTopKThreads), kTopKThreads, 0, ctx.stream>>>(
        logits, n, e, k, routing.idx, routing.weight);
    SPECMOE_CUDA_CHECK(cudaGetLastError());
  }
  const size_t shared_bytes = static_cast<size_t>(2 + kGroupWarps) * e * sizeof(int32_t);
  GroupKernel<<<1, kGroupThreads, shared_bytes, ctx.stream>>>(
      routing.idx, n * k, e, routing.counts, routing.offsets, routing.pairs);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
