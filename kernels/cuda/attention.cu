// kernels/cuda/attention.cu — tree attention over the paged KV cache, flash-decoding style
// (kernels/cuda/attention.h; the CPU op it must match: kernels/cpu/attention.cc).
//
// Shapes: q, out [n_tokens, n_heads, head_dim] f32; k_cache, v_cache
// [num_blocks * block_size, n_kv_heads, head_dim] f32 or f16 (widened exactly to f32).
// Visibility (as kernels/cpu/attention.cc VisibleSlots): token t of sequence s sees logical
// slots [0, visible_prefix[t]) and logical slot tree_start[s] + j for each bit j of
// tree_mask[t] with tree_start[s] + j >= visible_prefix[t] (a slot of both counts once).
//
// Two kernels:
//   1. PartialKernel, grid (rows of one pass, splits), 4 warps per block. A block takes the
//      split-th chunk of kChunk logical slots, [split * kChunk, (split + 1) * kChunk), cut
//      at its token's end = the last visible slot + 1 (device data: only the work inside a
//      block depends on it, never the launch). Warp w walks steps of 4 consecutive slots
//      (begin + 4w.., then 16 further);
//      for the visible slots of a step the 32 lanes load K and V at their elements
//      (lane + 32 i), compute q . k and sum it with xor shuffles (every lane gets the same
//      bits, so the skip tests stay warp-uniform), then update an online softmax with
//      m' = max(m, s..), l = l e^(m - m') + sum e^(s - m'), o = o e^(m - m') + sum e^(s - m') v.
//      The 4 warps merge in shared memory. With one split
//      the block writes out = o / l directly; otherwise (m, l, o) go to ctx scratch.
//   2. MergeKernel, one block per (token, head): M = max m_s, w_s = e^(m_s - M),
//      out = sum_s w_s o_s / sum_s w_s l_s, the sums in split order.
// s = scale * (q . k) as on the CPU; fp32 accumulation throughout. Splits that see nothing
// have m = -inf, l = 0 and weigh exactly 0; a token that sees nothing gets zeros (l = 0).
// Batch invariance (backend.h): the chunk of a key and the warp and step that visit it
// depend only on its logical slot, and the merge adds the splits in order with the empty
// ones contributing exact zeros, so a token's output bits depend on its own q, keys and
// visibility only, never on the other tokens, the head count or the table's width (which
// set only how many splits and rows are launched). With one split the partial kernel writes
// out = o / l itself, which is bit for bit what the merge of that split with empty ones
// gives (w = e^0 = 1, l * 1 + 0 = l, o * 1 + 0 = o).
// splits = ceil(capacity / kChunk), capacity = max_blocks_per_seq * block_size; the partial
// results of rows * splits blocks go to ctx scratch in passes of at most kMaxPartialBytes
// (long prefills run several passes; a pass's rows do not change any row's result).
//
// Tested by tests/cuda_attention_test.cc against the CPU backend (label cuda).
#include "kernels/cuda/attention.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kKeys = 4;  // consecutive slots per warp step
constexpr int kMaxHeadDim = 256;
// Logical slots per split: 4 warps x 4 keys x 16 steps. Fixed, so that the split of a key
// never depends on the batch; a 4k-token decode gets 16 splits per (token, head).
constexpr int kChunk = 256;
// Scratch for the partial results of one pass: [rows, splits, head_dim + 2] f32.
constexpr size_t kMaxPartialBytes = size_t{64} << 20;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float Widen(float x) { return x; }
__device__ __forceinline__ float Widen(__half x) { return __half2float(x); }
__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

// The parts of a taken ForwardDesc attention reads (device pointers) and the launch shape.
struct Params {
  const int32_t* token_seq;       // [n_tokens]
  const int32_t* visible_prefix;  // [n_tokens]
  const uint64_t* tree_mask;      // [n_tokens] or null
  const int32_t* tree_start;      // [n_seqs] or null
  const int32_t* block_tables;    // [n_seqs, max_blocks_per_seq]
  int max_blocks_per_seq;
  int n_heads;
  int n_kv_heads;
  int head_dim;
  int block_size;
  int splits;
  int row_offset;  // first (token, head) row of this pass
  float scale;
};

// Grid: (rows of the pass, splits); block: kThreads. kPerLane * 32 >= head_dim.
// q, out: [n_tokens, n_heads, head_dim]; part_o: [rows of the pass, splits, head_dim];
// part_ml: [rows of the pass, splits, 2] (m, l). With p.splits == 1 writes out instead.
template <typename KV, int kPerLane>
__global__ void __launch_bounds__(kThreads)
    PartialKernel(Params p, const float* __restrict__ q, const KV* __restrict__ k_cache,
                  const KV* __restrict__ v_cache, float* __restrict__ part_o,
                  float* __restrict__ part_ml, float* __restrict__ out) {
  __shared__ float s_o[kWarps][kMaxHeadDim];
  __shared__ float s_m[kWarps];
  __shared__ float s_l[kWarps];

  const int local = blockIdx.x;          // row within the pass
  const int row = p.row_offset + local;  // t * n_heads + h
  const int t = row / p.n_heads;
  const int h = row % p.n_heads;
  const int split = blockIdx.y;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int d = p.head_dim;

  // The token's visible range [0, end) of logical slots, end within the table's capacity.
  const int seq = p.token_seq[t];
  const int64_t capacity = static_cast<int64_t>(p.max_blocks_per_seq) * p.block_size;
  const int64_t prefix = Min64(Max64(p.visible_prefix[t], 0), capacity);
  uint64_t mask = 0;
  int64_t tree_start = 0;
  int64_t end = prefix;
  if (p.tree_mask != nullptr) {
    mask = p.tree_mask[t];
    tree_start = p.tree_start[seq];
    if (mask != 0) end = Max64(end, tree_start + (64 - __clzll(static_cast<long long>(mask))));
  }
  end = Min64(end, capacity);
  const int64_t begin = static_cast<int64_t>(split) * kChunk;
  const int64_t stop = Min64(begin + kChunk, end);

  const int32_t* table = p.block_tables + static_cast<size_t>(seq) * p.max_blocks_per_seq;
  const int kv_head = h / (p.n_heads / p.n_kv_heads);
  const size_t kv_row = static_cast<size_t>(p.n_kv_heads) * d;
  const float* q_row = q + static_cast<size_t>(row) * d;

  float qr[kPerLane];
  float o[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    qr[i] = e < d ? q_row[e] : 0.0f;
    o[i] = 0.0f;
  }
  float m = -INFINITY;
  float l = 0.0f;

  // Each step a warp takes kKeys consecutive slots: all their K and V loads are issued
  // before the shuffles, so several rows are in flight per warp.
  for (int64_t base = begin + static_cast<int64_t>(warp) * kKeys; base < stop;
       base += static_cast<int64_t>(kWarps) * kKeys) {
    bool visible[kKeys];
    float kr[kKeys][kPerLane];
    float vr[kKeys][kPerLane];
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      const int64_t logical = base + u;
      visible[u] = logical < stop;
      if (visible[u] && logical >= prefix) {  // tree bits beyond the prefix (CPU VisibleSlots)
        const int64_t j = logical - tree_start;
        visible[u] = j >= 0 && j < 64 && ((mask >> j) & 1u) != 0;
      }
      size_t offset = 0;
      if (visible[u]) {
        const int64_t physical =
            static_cast<int64_t>(table[logical / p.block_size]) * p.block_size +
            logical % p.block_size;
        offset = static_cast<size_t>(physical) * kv_row + static_cast<size_t>(kv_head) * d;
      }
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int e = lane + 32 * i;
        const bool load = visible[u] && e < d;
        kr[u][i] = load ? Widen(k_cache[offset + e]) : 0.0f;
        vr[u][i] = load ? Widen(v_cache[offset + e]) : 0.0f;
      }
    }
    float score[kKeys];
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) dot = fmaf(qr[i], kr[u][i], dot);
      score[u] = dot;
    }
    // Every lane ends with the same sums (xor butterfly, commutative adds): `visible` and
    // the tests below are warp-uniform.
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
#pragma unroll
      for (int u = 0; u < kKeys; ++u) score[u] += __shfl_xor_sync(kFullMask, score[u], off);
    }
    float m_new = m;
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      score[u] *= p.scale;
      if (visible[u]) m_new = fmaxf(m_new, score[u]);
    }
    if (m_new == -INFINITY) continue;  // nothing visible (or only -inf scores): weight 0
    const float correction = expf(m - m_new);  // 0 while m is -inf
    l *= correction;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) o[i] *= correction;
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      if (!visible[u]) continue;
      const float weight = expf(score[u] - m_new);
      l += weight;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) o[i] = fmaf(weight, vr[u][i], o[i]);
    }
    m = m_new;
  }

  // Merge the warps: M = max m_w, w_w = e^(m_w - M), L = sum w_w l_w, O = sum w_w o_w.
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    if (e < d) s_o[warp][e] = o[i];
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
  __syncthreads();
  float block_m = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) block_m = fmaxf(block_m, s_m[w]);
  float scales[kWarps];
  float block_l = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    scales[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - block_m);
    block_l += s_l[w] * scales[w];
  }
  for (int e = threadIdx.x; e < d; e += kThreads) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum = fmaf(s_o[w][e], scales[w], sum);
    if (p.splits == 1) {
      out[static_cast<size_t>(row) * d + e] = block_l > 0.0f ? sum / block_l : 0.0f;
    } else {
      part_o[(static_cast<size_t>(local) * p.splits + split) * d + e] = sum;
    }
  }
  if (p.splits > 1 && threadIdx.x == 0) {
    const size_t ml = (static_cast<size_t>(local) * p.splits + split) * 2;
    part_ml[ml] = block_m;
    part_ml[ml + 1] = block_l;
  }
}

// Grid: rows of the pass; block: kThreads. Merges the splits of part_o / part_ml (see
// PartialKernel) into out[row_offset + row, :], in split order. Every thread computes the
// same weights (no shared array, so any split count works).
__global__ void __launch_bounds__(kThreads)
    MergeKernel(int splits, int d, int row_offset, const float* __restrict__ part_o,
                const float* __restrict__ part_ml, float* __restrict__ out) {
  const size_t base = static_cast<size_t>(blockIdx.x) * splits;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, part_ml[(base + s) * 2]);
  float l = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ms = part_ml[(base + s) * 2];
    const float w = ms == -INFINITY ? 0.0f : expf(ms - m);
    l = fmaf(part_ml[(base + s) * 2 + 1], w, l);
  }
  const size_t row = static_cast<size_t>(row_offset) + blockIdx.x;
  for (int e = threadIdx.x; e < d; e += kThreads) {
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ms = part_ml[(base + s) * 2];
      const float w = ms == -INFINITY ? 0.0f : expf(ms - m);
      sum = fmaf(part_o[(base + s) * d + e], w, sum);
    }
    out[row * d + e] = l > 0.0f ? sum / l : 0.0f;
  }
}

template <typename KV>
void LaunchPartial(const Params& p, int rows, const AttentionArgs& a, float* part_o,
                   float* part_ml, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(p.splits));
  const KV* k = static_cast<const KV*>(a.k_cache);
  const KV* v = static_cast<const KV*>(a.v_cache);
  if (p.head_dim <= 32) {
    PartialKernel<KV, 1><<<grid, kThreads, 0, stream>>>(p, a.q, k, v, part_o, part_ml, a.out);
  } else if (p.head_dim <= 64) {
    PartialKernel<KV, 2><<<grid, kThreads, 0, stream>>>(p, a.q, k, v, part_o, part_ml, a.out);
  } else if (p.head_dim <= 128) {
    PartialKernel<KV, 4><<<grid, kThreads, 0, stream>>>(p, a.q, k, v, part_o, part_ml, a.out);
  } else {
    PartialKernel<KV, 8><<<grid, kThreads, 0, stream>>>(p, a.q, k, v, part_o, part_ml, a.out);
  }
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void Attention(const AttentionArgs& args, CudaContext& ctx) {
  const ForwardDesc& f = *args.fwd;
  if (f.n_tokens <= 0 || args.n_heads <= 0) return;
  SPECMOE_CHECK(args.head_dim > 0 && args.head_dim <= kMaxHeadDim, "Attention: head_dim");
  SPECMOE_CHECK(args.n_kv_heads > 0 && args.n_heads % args.n_kv_heads == 0,
                "Attention: n_heads must be a multiple of n_kv_heads");
  SPECMOE_CHECK(args.block_size > 0, "Attention: block_size");
  SPECMOE_CHECK(args.kv_dtype == DType::kF32 || args.kv_dtype == DType::kF16,
                "Attention: kv_dtype must be f32 or f16");
  const int64_t rows = static_cast<int64_t>(f.n_tokens) * args.n_heads;
  SPECMOE_CHECK(rows <= INT_MAX, "Attention: n_tokens * n_heads exceeds the grid");

  // Splits from the table's capacity only (host ints): one per kChunk slots.
  const int64_t capacity = static_cast<int64_t>(f.max_blocks_per_seq) * args.block_size;
  const int64_t splits = std::max<int64_t>(1, (capacity + kChunk - 1) / kChunk);
  SPECMOE_CHECK(splits <= 65535, "Attention: the block table is too wide for the grid");

  Params p;
  p.token_seq = f.token_seq;
  p.visible_prefix = f.visible_prefix;
  p.tree_mask = f.tree_mask;
  p.tree_start = f.tree_start;
  p.block_tables = f.block_tables;
  p.max_blocks_per_seq = f.max_blocks_per_seq;
  p.n_heads = args.n_heads;
  p.n_kv_heads = args.n_kv_heads;
  p.head_dim = args.head_dim;
  p.block_size = args.block_size;
  p.splits = static_cast<int>(splits);
  p.scale = args.scale;

  // Rows per pass: all of them, or as many as kMaxPartialBytes of partial results hold.
  const size_t row_bytes = static_cast<size_t>(splits) * (p.head_dim + 2) * sizeof(float);
  const int64_t fit = static_cast<int64_t>(kMaxPartialBytes / row_bytes);
  const int64_t pass_rows = p.splits == 1 ? rows : std::clamp<int64_t>(fit, 1, rows);
  float* part_o = nullptr;
  float* part_ml = nullptr;
  if (p.splits > 1) {
    // scratch: part_o [pass_rows, splits, head_dim] then part_ml [pass_rows, splits, 2], f32.
    const size_t partials = static_cast<size_t>(pass_rows) * p.splits;
    float* scratch =
        static_cast<float*>(ctx.Scratch(static_cast<size_t>(pass_rows) * row_bytes));
    part_o = scratch;
    part_ml = scratch + partials * p.head_dim;
  }
  for (int64_t first = 0; first < rows; first += pass_rows) {
    const int count = static_cast<int>(std::min<int64_t>(pass_rows, rows - first));
    p.row_offset = static_cast<int>(first);
    if (args.kv_dtype == DType::kF16) {
      LaunchPartial<__half>(p, count, args, part_o, part_ml, ctx.stream);
    } else {
      LaunchPartial<float>(p, count, args, part_o, part_ml, ctx.stream);
    }
    if (p.splits > 1) {
      MergeKernel<<<static_cast<unsigned>(count), kThreads, 0, ctx.stream>>>(
          p.splits, p.head_dim, p.row_offset, part_o, part_ml, args.out);
      SPECMOE_CUDA_CHECK(cudaGetLastError());
    }
  }
}

}  // namespace specmoe::kernels::cuda
