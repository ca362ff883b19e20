// kernels/cuda/moe_experts_fused.cu — CreateFusedMoeExperts (moe.h): all selected experts of
// a MoE FFN in two grouped tensor-core kernels that read the routing (counts, offsets, pairs)
// where TopKSoftmax left it on the device, so one call is a fixed sequence of five launches
// whose grids depend only on host ints (n, k, sizes): no host sync, capturable in a CUDA graph.
//
// x: f32 [n, hidden]; experts: host array whose weights are device memory, all f16 or all
// bf16 (f32 experts run the sequential path, which is not capturable), gate/up
// [inter_x, hidden], down [hidden, inter_x] (inter_x may differ per expert); y: f32 [n, hidden].
// Scratch (ctx.scratch): xh [n, hidden] and h [n * k, ldh] in the weights' dtype, split-K
// partials [splits, n * k, hidden] f32, the tile list [tile bound] int2.
//   1. xh = x rounded to the weights' dtype (nearest even, as cuda::Gemm rounds).
//   2. TileListKernel (one thread): the list of active (expert, row tile) pairs from the
//      device counts, in expert then tile order, -1 past its end. The grids below are sized by
//      a host bound on its length, min(E, n k) + ceil(n k / 64) (sum_x ceil(c_x / 64) over
//      the experts that got pairs), not by all E experts: one token's top-2 of 8 experts
//      launches 3 row tiles, not 8.
//   3. GateUpKernel, grid (ceil(max inter / 32), tile bound): list entry y = (z, m), the rows
//      [64 m, +64) of expert z's run in `pairs` (at most n rows: a token picks an expert once)
//      and columns [32 * x, +32) of its inter: h[offsets[z] + r, c] = rounded(silu(g) * u),
//      g = xh[pairs[.] / k] . gate_z[c], u = the same with up_z; entries past the list's end
//      and column tiles past the expert's inter exit at once.
//   4. DownKernel, grid (ceil(hidden / 64), tile bound, splits): the same rows, 64 columns
//      of hidden, over split s of the expert's inter (split-K so that one token's two experts
//      still fill the GPU): parts[s, pair, c] = h[row, ks] . down_z[c, ks].
//   5. MoeCombine: y[t] = scale * sum_j weight[t, j] * sum_s parts[s, t * k + j] (j, s order).
// Both grouped kernels: 128 threads (4 warps), a 64-row x 64-k activation tile and a
// 64-row x 64-k weight tile per stage, 4 cp.async stages (zero-filled past the rows and the k
// range; a scalar fallback for an operand whose rows are not 16-byte aligned or whose length
// is not a multiple of 8), WMMA m16n16k16 with fp32 accumulators; warp w owns rows
// [16 w, +16) of the tile and skips its MMAs when they are all past the expert's count, so
// 1 token costs little more than streaming the weights. Up to 64 tokens every selected
// weight is read once; past that an expert's weights are read once per 64 of its rows
// (cuBLAS, in the sequential path, may then be faster). Not yet timed on a GPU.
// The CPU twin is Backend::MoeExperts (kernels/cpu/cpu_backend.cc); tested against it and
// against the sequential path, eager and replayed from a CUDA graph, by tests/cuda_moe_test.cc.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/moe_combine.h"

namespace specmoe::kernels::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kThreads = 128;      // 4 warps
constexpr int kBM = 64;            // activation rows per tile (16 per warp)
constexpr int kBK = 64;            // k per pipeline stage
constexpr int kWeightRows = 64;    // weight rows per tile: 32 gate + 32 up, or 64 down
constexpr int kGateUpCols = 32;    // output columns of a gate/up tile
constexpr int kDownCols = 64;      // output columns of a down tile
constexpr int kStages = 4;
constexpr int kLds = kBK + 8;      // smem row stride (16-bit elements): 144 bytes, WMMA-legal
constexpr int kLdc = kDownCols + 4;  // f32 staging row stride
constexpr int kStageElems = (kBM + kWeightRows) * kLds;
constexpr size_t kStagesBytes = static_cast<size_t>(kStages) * kStageElems * sizeof(uint16_t);
// The stages, then two int [kBM] row tables (all dynamic, so the stages start at the window's
// aligned base: WMMA needs 32-byte aligned tiles, cp.async 16-byte).
constexpr size_t kSmemBytes = kStagesBytes + 2 * kBM * sizeof(int);
constexpr int kMaxSplits = 8;
constexpr int kMinSplitK = 512;

static_assert(kBM == 16 * (kThreads / 32), "one 16-row slice per warp");
static_assert(static_cast<size_t>(kBM) * kLdc * sizeof(float) <= kStagesBytes, "staging fits");
static_assert((kBM * kBK / 8) % kThreads == 0 && (kWeightRows * kBK / 8) % kThreads == 0,
              "16-byte chunks divide over the threads");

// One expert as the kernels see it (device copy of the host array's pointers and sizes).
struct ExpertTable {
  const uint16_t* gate;  // [inter, hidden]
  const uint16_t* up;    // [inter, hidden]
  const uint16_t* down;  // [hidden, inter]
  int inter;
  int gate_up_vec;  // rows of gate and up are 16-byte aligned (cp.async)
  int down_vec;     // rows of down are 16-byte aligned
  int pad;
};

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// 16 bytes global -> shared, asynchronously; zero-filled (nothing read) when !valid, in which
// case `src` must still be a valid address.
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Where one tile's operands come from. Activation row r of the tile is row a_rows[r] of
// `a` (lda elements apart; -1: a row past the expert's count, zeros). Weight row r is row
// col0 + r % half of b0 (r < half) or b1 (ldb apart), valid while col0 + r % half < n_limit.
// Only k in [k_begin, k_end) is read; the rest of the last stage is zero.
struct TileSources {
  const uint16_t* a;
  size_t lda;
  const int* a_rows;  // shared [kBM]
  bool a_vec;
  const uint16_t* b0;  // rows [0, half) of the tile
  const uint16_t* b1;  // rows [half, 2 half)
  size_t ldb;
  int half;
  int col0;
  int n_limit;
  bool b_vec;
  int k_end;
};

// Fills one stage: activations sa [kBM, kLds] and weights sb [kWeightRows, kLds], k from k0.
__device__ __forceinline__ void LoadStage(uint16_t* sa, uint16_t* sb, const TileSources& src,
                                          int k0) {
  const int tid = threadIdx.x;
  for (int c = tid; c < kBM * kBK / 8; c += kThreads) {
    const int r = c >> 3;
    const int kc = (c & 7) * 8;
    const int kk = k0 + kc;
    const int row = src.a_rows[r];
    uint16_t* dst = sa + r * kLds + kc;
    if (src.a_vec) {
      const bool valid = row >= 0 && kk < src.k_end;
      const uint16_t* from = valid ? src.a + static_cast<size_t>(row) * src.lda + kk : src.a;
      CpAsync16(dst, from, valid);
    } else {
      for (int i = 0; i < 8; ++i) {
        dst[i] = (row >= 0 && kk + i < src.k_end)
                     ? src.a[static_cast<size_t>(row) * src.lda + kk + i]
                     : uint16_t{0};
      }
    }
  }
  for (int c = tid; c < kWeightRows * kBK / 8; c += kThreads) {
    const int r = c >> 3;
    const int kc = (c & 7) * 8;
    const int kk = k0 + kc;
    const int part = r / src.half;
    const int col = src.col0 + (r - part * src.half);
    const bool row_ok = col < src.n_limit;
    const uint16_t* base = part == 0 ? src.b0 : src.b1;
    uint16_t* dst = sb + r * kLds + kc;
    if (src.b_vec) {
      const bool valid = row_ok && kk < src.k_end;
      const uint16_t* from = valid ? base + static_cast<size_t>(col) * src.ldb + kk : base;
      CpAsync16(dst, from, valid);
    } else {
      for (int i = 0; i < 8; ++i) {
        dst[i] = (row_ok && kk + i < src.k_end) ? base[static_cast<size_t>(col) * src.ldb + kk + i]
                                                : uint16_t{0};
      }
    }
  }
}

using AccFrag = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// acc[f] (f < 4: weight rows [16 f, +16) of the tile) += A[tile rows] . B^T over
// [k_begin, k_end), pipelined through kStages stages of `smem`. `active`: this warp has rows
// before the expert's count (uniform per warp; every thread reaches every barrier).
template <typename T>
__device__ __forceinline__ void MainLoop(uint16_t* smem, const TileSources& src, int k_begin,
                                         bool active, AccFrag (&acc)[4]) {
  const int warp = threadIdx.x >> 5;
  for (int f = 0; f < 4; ++f) wmma::fill_fragment(acc[f], 0.0f);
  const int tiles = src.k_end > k_begin ? (src.k_end - k_begin + kBK - 1) / kBK : 0;
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < tiles) {
      uint16_t* stage = smem + s * kStageElems;
      LoadStage(stage, stage + kBM * kLds, src, k_begin + s * kBK);
    }
    CpAsyncCommit();
  }
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b_frag;
  for (int kt = 0; kt < tiles; ++kt) {
    CpAsyncWait<kStages - 2>();  // stage kt has landed (for this thread) ...
    __syncthreads();             // ... for all threads; stage kt - 1 is free again
    const int next = kt + kStages - 1;
    if (next < tiles) {
      uint16_t* stage = smem + (next % kStages) * kStageElems;
      LoadStage(stage, stage + kBM * kLds, src, k_begin + next * kBK);
    }
    CpAsyncCommit();
    if (active) {
      const T* sa = reinterpret_cast<const T*>(smem + (kt % kStages) * kStageElems);
      const T* sb = sa + kBM * kLds;
      for (int kk = 0; kk < kBK; kk += 16) {
        wmma::load_matrix_sync(a_frag, sa + warp * 16 * kLds + kk, kLds);
        for (int f = 0; f < 4; ++f) {
          wmma::load_matrix_sync(b_frag, sb + f * 16 * kLds + kk, kLds);
          wmma::mma_sync(acc[f], a_frag, b_frag, acc[f]);
        }
      }
    }
  }
  CpAsyncWait<0>();
  __syncthreads();  // the stages may now be reused as the f32 staging tile
}

// tiles[i] = (expert x, row tile m) for every m < ceil(counts[x] / kBM), experts in order;
// (-1, -1) for i in [that many, capacity). One thread (E and the tile count are small).
__global__ void TileListKernel(const int32_t* counts, int num_experts, int capacity,
                               int2* tiles) {
  int i = 0;
  for (int x = 0; x < num_experts; ++x) {
    const int m_tiles = (counts[x] + kBM - 1) / kBM;
    for (int m = 0; m < m_tiles && i < capacity; ++m) tiles[i++] = make_int2(x, m);
  }
  for (; i < capacity; ++i) tiles[i] = make_int2(-1, -1);
}

// h[offsets[z] + r, c] = rounded(silu(xh[t] . gate_z[c]) * (xh[t] . up_z[c])),
// t = pairs[offsets[z] + r] / k, for the tile (z, m) = tiles[blockIdx.y].
// xh: [n, hidden]; h: [n * k, ldh].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    GateUpKernel(const uint16_t* xh, int hidden, bool x_vec, const ExpertTable* experts,
                 const int2* tiles, const int32_t* counts, const int32_t* offsets,
                 const int32_t* pairs, int k, T* h, int ldh) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  int* a_rows = reinterpret_cast<int*>(smem_raw + kStagesBytes);  // [kBM]
  const int2 tile = tiles[blockIdx.y];
  if (tile.x < 0) return;
  const int expert = tile.x;
  const int m0 = tile.y * kBM;
  const int count = counts[expert];
  if (m0 >= count) return;
  const ExpertTable ex = experts[expert];
  const int col0 = blockIdx.x * kGateUpCols;
  if (col0 >= ex.inter) return;
  const int rows = min(kBM, count - m0);
  const int row_begin = offsets[expert] + m0;
  for (int r = threadIdx.x; r < kBM; r += kThreads) {
    a_rows[r] = r < rows ? pairs[row_begin + r] / k : -1;
  }
  __syncthreads();

  TileSources src;
  src.a = xh;
  src.lda = static_cast<size_t>(hidden);
  src.a_rows = a_rows;
  src.a_vec = x_vec;
  src.b0 = ex.gate;
  src.b1 = ex.up;
  src.ldb = static_cast<size_t>(hidden);
  src.half = kGateUpCols;
  src.col0 = col0;
  src.n_limit = ex.inter;
  src.b_vec = ex.gate_up_vec != 0;
  src.k_end = hidden;
  const int warp = threadIdx.x >> 5;
  const bool active = warp * 16 < rows;
  auto* smem = reinterpret_cast<uint16_t*>(smem_raw);
  AccFrag acc[4];  // gate columns [0, 16), [16, 32); up columns [0, 16), [16, 32)
  MainLoop<T>(smem, src, 0, active, acc);

  float* staging = reinterpret_cast<float*>(smem_raw);  // [kBM, kLdc]
  if (active) {
    for (int f = 0; f < 2; ++f) {
      // Gate and up fragments of one type hold the same (row, col) at the same index.
      AccFrag out;
      for (int i = 0; i < out.num_elements; ++i) {
        const float g = acc[f].x[i];
        out.x[i] = g / (1.0f + expf(-g)) * acc[2 + f].x[i];
      }
      wmma::store_matrix_sync(staging + warp * 16 * kLdc + f * 16, out, kLdc,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kBM * kGateUpCols; i += kThreads) {
    const int r = i / kGateUpCols;
    const int c = i - r * kGateUpCols;
    if (r < rows && col0 + c < ex.inter) {
      h[static_cast<size_t>(row_begin + r) * ldh + col0 + c] = FromFloat<T>(staging[r * kLdc + c]);
    }
  }
}

// parts[s, pairs[offsets[z] + r], c] = h[offsets[z] + r, ks] . down_z[c, ks] over split
// s = blockIdx.z of expert z's inter, for the tile (z, m) = tiles[blockIdx.y].
// h: [n * k, ldh]; parts: [splits, n * k, hidden].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    DownKernel(const uint16_t* h, int ldh, int hidden, const ExpertTable* experts,
               const int2* tiles, const int32_t* counts, const int32_t* offsets,
               const int32_t* pairs, int splits, size_t split_stride, float* parts) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  int* a_rows = reinterpret_cast<int*>(smem_raw + kStagesBytes);  // [kBM]
  int* pair_of_row = a_rows + kBM;                                // [kBM]
  const int2 tile = tiles[blockIdx.y];
  if (tile.x < 0) return;
  const int expert = tile.x;
  const int split = blockIdx.z;
  const int m0 = tile.y * kBM;
  const int count = counts[expert];
  if (m0 >= count) return;
  const ExpertTable ex = experts[expert];
  const int col0 = blockIdx.x * kDownCols;
  const int rows = min(kBM, count - m0);
  const int row_begin = offsets[expert] + m0;
  for (int r = threadIdx.x; r < kBM; r += kThreads) {
    a_rows[r] = r < rows ? row_begin + r : -1;
    pair_of_row[r] = r < rows ? pairs[row_begin + r] : -1;
  }
  __syncthreads();

  // Split s covers [s * chunk, min(inter, (s + 1) * chunk)), chunk a multiple of kBK; a split
  // past the end still writes its (zero) partial, since MoeCombine adds all of them.
  const int chunk = ((ex.inter + splits - 1) / splits + kBK - 1) / kBK * kBK;
  const int k_begin = split * chunk;
  TileSources src;
  src.a = h;
  src.lda = static_cast<size_t>(ldh);
  src.a_rows = a_rows;
  // h is 256-byte aligned and ldh a multiple of 8; 16-byte chunks must also end at k_end.
  src.a_vec = ex.inter % 8 == 0;
  src.b0 = ex.down;
  src.b1 = ex.down;
  src.ldb = static_cast<size_t>(ex.inter);
  src.half = kDownCols;
  src.col0 = col0;
  src.n_limit = hidden;
  src.b_vec = ex.down_vec != 0;
  src.k_end = min(ex.inter, k_begin + chunk);
  const int warp = threadIdx.x >> 5;
  const bool active = warp * 16 < rows;
  auto* smem = reinterpret_cast<uint16_t*>(smem_raw);
  AccFrag acc[4];  // down columns [16 f, +16)
  MainLoop<T>(smem, src, k_begin, active, acc);

  float* staging = reinterpret_cast<float*>(smem_raw);  // [kBM, kLdc]
  if (active) {
    for (int f = 0; f < 4; ++f) {
      wmma::store_matrix_sync(staging + warp * 16 * kLdc + f * 16, acc[f], kLdc,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();
  float* out = parts + static_cast<size_t>(split) * split_stride;
  for (int i = threadIdx.x; i < kBM * kDownCols; i += kThreads) {
    const int r = i / kDownCols;
    const int c = i - r * kDownCols;
    if (r < rows && col0 + c < hidden) {
      out[static_cast<size_t>(pair_of_row[r]) * hidden + col0 + c] = staging[r * kLdc + c];
    }
  }
}

// out[i] = x[i] rounded to T (nearest even). x: [count] f32.
template <typename T>
__global__ void RoundKernel(const float* x, size_t count, T* out) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) out[i] = FromFloat<T>(x[i]);
}

bool SameWeight(const Weight& a, const Weight& b) {
  return a.data == b.data && a.dtype == b.dtype && a.rows == b.rows && a.cols == b.cols;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

size_t RoundUp(size_t v, size_t to) { return (v + to - 1) / to * to; }

// Contract: one instance per backend, used by its worker thread only. Keeps a device table
// per distinct `experts` host array (re-uploaded, outside a capture, if the array's contents
// change) and a sequential op for f32 experts.
class FusedMoeExperts final : public MoeExpertsOp {
 public:
  FusedMoeExperts() : sequential_(CreateSequentialMoeExperts()) {}
  ~FusedMoeExperts() override {
    for (auto& [key, table] : tables_) cudaFree(table.device);
  }

  void Run(const float* x, int n, int hidden, const MoeRouting& routing, int k,
           const ExpertWeights* experts, int num_experts, float scale, float* y,
           CudaContext& ctx) override {
    if (n <= 0) return;
    SPECMOE_CHECK(num_experts >= 1 && num_experts <= 65535 && k >= 1 && k <= num_experts &&
                      hidden >= 1,
                  "MoE sizes");
    const Table& table = FindTable(experts, num_experts, hidden, ctx);
    if (table.dtype == DType::kF32) {
      sequential_->Run(x, n, hidden, routing, k, experts, num_experts, scale, y, ctx);
      return;
    }
    const int64_t pairs = static_cast<int64_t>(n) * k;
    // Active (expert, row tile) pairs: sum over experts x of ceil(c_x / kBM) <= (experts with
    // pairs) + ceil(pairs / kBM), and never more than every expert's every tile (an expert
    // has at most n of the pairs).
    const int64_t m_tiles = (n + kBM - 1) / kBM;
    const int64_t tile_bound =
        std::min<int64_t>(num_experts * m_tiles,
                          std::min<int64_t>(num_experts, pairs) + (pairs + kBM - 1) / kBM);
    SPECMOE_CHECK(pairs <= INT32_MAX && tile_bound <= 65535, "too many tokens for one MoE call");
    const int splits = Splits(n, k, hidden, num_experts, table.max_inter);
    const int ldh = static_cast<int>(RoundUp(table.max_inter, 8));

    // Scratch: xh [n, hidden], h [pairs, ldh] (16-bit), parts [splits, pairs, hidden] f32,
    // tiles [tile_bound] int2.
    const size_t xh_bytes = RoundUp(static_cast<size_t>(n) * hidden * sizeof(uint16_t), 256);
    const size_t h_bytes = RoundUp(static_cast<size_t>(pairs) * ldh * sizeof(uint16_t), 256);
    const size_t split_stride = static_cast<size_t>(pairs) * hidden;
    const size_t parts_bytes = RoundUp(splits * split_stride * sizeof(float), 256);
    const size_t tiles_bytes = static_cast<size_t>(tile_bound) * sizeof(int2);
    auto* base = static_cast<unsigned char*>(
        ctx.Scratch(xh_bytes + h_bytes + parts_bytes + tiles_bytes));
    auto* xh = reinterpret_cast<uint16_t*>(base);
    auto* h = reinterpret_cast<uint16_t*>(base + xh_bytes);
    auto* parts = reinterpret_cast<float*>(base + xh_bytes + h_bytes);
    auto* tiles = reinterpret_cast<int2*>(base + xh_bytes + h_bytes + parts_bytes);
    TileListKernel<<<1, 1, 0, ctx.stream>>>(routing.counts, num_experts,
                                             static_cast<int>(tile_bound), tiles);
    SPECMOE_CUDA_CHECK(cudaGetLastError());

    const size_t x_count = static_cast<size_t>(n) * hidden;
    const dim3 gate_up_grid((table.max_inter + kGateUpCols - 1) / kGateUpCols,
                            static_cast<unsigned>(tile_bound), 1);
    const dim3 down_grid((hidden + kDownCols - 1) / kDownCols, static_cast<unsigned>(tile_bound),
                         splits);
    const bool x_vec = hidden % 8 == 0;
    if (table.dtype == DType::kF16) {
      RoundKernel<__half><<<Blocks(x_count, 256), 256, 0, ctx.stream>>>(
          x, x_count, reinterpret_cast<__half*>(xh));
      SPECMOE_CUDA_CHECK(cudaGetLastError());
      GateUpKernel<__half><<<gate_up_grid, kThreads, kSmemBytes, ctx.stream>>>(
          xh, hidden, x_vec, table.device, tiles, routing.counts, routing.offsets,
          routing.pairs, k, reinterpret_cast<__half*>(h), ldh);
      SPECMOE_CUDA_CHECK(cudaGetLastError());
      DownKernel<__half><<<down_grid, kThreads, kSmemBytes, ctx.stream>>>(
          h, ldh, hidden, table.device, tiles, routing.counts, routing.offsets, routing.pairs,
          splits, split_stride, parts);
      SPECMOE_CUDA_CHECK(cudaGetLastError());
    } else {
      RoundKernel<__nv_bfloat16><<<Blocks(x_count, 256), 256, 0, ctx.stream>>>(
          x, x_count, reinterpret_cast<__nv_bfloat16*>(xh));
      SPECMOE_CUDA_CHECK(cudaGetLastError());
      GateUpKernel<__nv_bfloat16><<<gate_up_grid, kThreads, kSmemBytes, ctx.stream>>>(
          xh, hidden, x_vec, table.device, tiles, routing.counts, routing.offsets,
          routing.pairs, k, reinterpret_cast<__nv_bfloat16*>(h), ldh);
      SPECMOE_CUDA_CHECK(cudaGetLastError());
      DownKernel<__nv_bfloat16><<<down_grid, kThreads, kSmemBytes, ctx.stream>>>(
          h, ldh, hidden, table.device, tiles, routing.counts, routing.offsets, routing.pairs,
          splits, split_stride, parts);
      SPECMOE_CUDA_CHECK(cudaGetLastError());
    }
    MoeCombine(parts, splits, n, k, hidden, routing.weight, scale, y, ctx);
  }

 private:
  struct Table {
    std::vector<ExpertWeights> host;  // the array as uploaded
    int hidden = 0;
    ExpertTable* device = nullptr;    // [host.size()]
    DType dtype = DType::kF16;
    int max_inter = 0;
  };

  // Split-K count of the down product: enough blocks for ~4 per SM when few experts run
  // (1 token: 2 experts x ceil(hidden / 64) column tiles), none when the tiles already do.
  // Depends only on host ints, so a captured graph replays the same grid.
  int Splits(int n, int k, int hidden, int num_experts, int max_inter) const {
    const int64_t pairs = static_cast<int64_t>(n) * k;
    const int64_t col_tiles = (hidden + kDownCols - 1) / kDownCols;
    const int64_t row_tiles =
        std::max<int64_t>(std::min<int64_t>(num_experts, pairs), (pairs + kBM - 1) / kBM);
    const int64_t want = (4 * static_cast<int64_t>(sm_count_) + col_tiles * row_tiles - 1) /
                         (col_tiles * row_tiles);
    int64_t splits = std::min<int64_t>(want, kMaxSplits);
    splits = std::min<int64_t>(splits, std::max(1, max_inter / kMinSplitK));
    return static_cast<int>(std::max<int64_t>(splits, 1));
  }

  // The device table of `experts`, uploaded on first use (or when the array changed).
  const Table& FindTable(const ExpertWeights* experts, int num_experts, int hidden,
                         CudaContext& ctx) {
    auto it = tables_.find(experts);
    if (it != tables_.end() && Matches(it->second, experts, num_experts, hidden)) {
      return it->second;
    }
    SPECMOE_CHECK(!ctx.capturing,
                  "the first fused MoE call for an expert array must run outside a capture");
    if (!initialized_) {
      int device = 0;
      SPECMOE_CUDA_CHECK(cudaGetDevice(&device));
      SPECMOE_CUDA_CHECK(
          cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device));
      SPECMOE_CUDA_CHECK(cudaFuncSetAttribute(GateUpKernel<__half>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(kSmemBytes)));
      SPECMOE_CUDA_CHECK(cudaFuncSetAttribute(GateUpKernel<__nv_bfloat16>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(kSmemBytes)));
      SPECMOE_CUDA_CHECK(cudaFuncSetAttribute(DownKernel<__half>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(kSmemBytes)));
      SPECMOE_CUDA_CHECK(cudaFuncSetAttribute(DownKernel<__nv_bfloat16>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(kSmemBytes)));
      initialized_ = true;
    }
    Table fresh;
    fresh.host.assign(experts, experts + num_experts);
    fresh.hidden = hidden;
    fresh.dtype = experts[0].gate.dtype;
    std::vector<ExpertTable> rows(num_experts);
    for (int e = 0; e < num_experts; ++e) {
      const ExpertWeights& ex = experts[e];
      SPECMOE_CHECK(ex.gate.cols == hidden && ex.up.cols == hidden && ex.down.rows == hidden &&
                        ex.up.rows == ex.gate.rows && ex.down.cols == ex.gate.rows &&
                        ex.gate.rows >= 1 && ex.gate.rows <= INT32_MAX / 2,
                    "expert weight shapes");
      SPECMOE_CHECK(ex.gate.dtype == fresh.dtype && ex.up.dtype == fresh.dtype &&
                        ex.down.dtype == fresh.dtype,
                    "all expert weights of a MoE call must have one dtype");
      const int inter = static_cast<int>(ex.gate.rows);
      fresh.max_inter = std::max(fresh.max_inter, inter);
      rows[e].gate = static_cast<const uint16_t*>(ex.gate.data);
      rows[e].up = static_cast<const uint16_t*>(ex.up.data);
      rows[e].down = static_cast<const uint16_t*>(ex.down.data);
      rows[e].inter = inter;
      rows[e].gate_up_vec = hidden % 8 == 0 && Aligned16(ex.gate.data) && Aligned16(ex.up.data);
      rows[e].down_vec = inter % 8 == 0 && Aligned16(ex.down.data);
      rows[e].pad = 0;
    }
    if (it != tables_.end()) {
      // The array changed in place: no kernel may still read its old table.
      SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
      SPECMOE_CUDA_CHECK(cudaFree(it->second.device));
      tables_.erase(it);
    }
    // The copy is ordered on the backend's stream, before the kernels that read the table
    // (a plain cudaMemcpy runs on the legacy stream, which the non-blocking ctx.stream does
    // not wait for); the wait keeps `rows` alive until the copy has left it.
    SPECMOE_CUDA_CHECK(cudaMalloc(&fresh.device, rows.size() * sizeof(ExpertTable)));
    SPECMOE_CUDA_CHECK(cudaMemcpyAsync(fresh.device, rows.data(),
                                       rows.size() * sizeof(ExpertTable),
                                       cudaMemcpyHostToDevice, ctx.stream));
    SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    return tables_.emplace(experts, std::move(fresh)).first->second;
  }

  static bool Matches(const Table& table, const ExpertWeights* experts, int num_experts,
                      int hidden) {
    if (static_cast<int>(table.host.size()) != num_experts || table.hidden != hidden) {
      return false;
    }
    for (int e = 0; e < num_experts; ++e) {
      const ExpertWeights& a = table.host[e];
      const ExpertWeights& b = experts[e];
      if (!SameWeight(a.gate, b.gate) || !SameWeight(a.up, b.up) ||
          !SameWeight(a.down, b.down)) {
        return false;
      }
    }
    return true;
  }

  std::unique_ptr<MoeExpertsOp> sequential_;
  std::unordered_map<const ExpertWeights*, Table> tables_;
  bool initialized_ = false;
  int sm_count_ = 132;
};

}  // namespace

std::unique_ptr<MoeExpertsOp> CreateFusedMoeExperts() {
  return std::make_unique<FusedMoeExperts>();
}

}  // namespace specmoe::kernels::cuda
