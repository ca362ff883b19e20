// kernels/cuda/kv_move.cu — KV compaction on the device (elementwise.h KvCompact), the twin of
// the CPU backend's KvCompact: for every layer's K and V pool, cache[dst[i], :] =
// cache[src[i], :] for i < n, IN ORDER (a later move may read a row an earlier one wrote, or
// overwrite a row an earlier one read: the accepted path's compaction does both), every
// layer of one cache in ONE launch (a step compacts each cache once, not once per layer and
// request). src, dst: device [n] physical slots; pools: [num_slots, row] of kv_dtype (any
// dtype: rows are moved as bytes, row * DTypeBytes(kv_dtype) each).
// The order is kept without any barrier: thread c of pool z owns unit c (16, 4 or 2 bytes) of
// every row and runs the n moves one after another on it, so each unit sees the moves in
// order and different units never interact. Grid: (ceil(units / 256), 2 * layers), y = the
// pool (layer y / 2, K when y is even). The pool pointers travel in the kernel's parameters
// (kMaxPools per launch; more layers take more launches, still no host wait).
// Tested against the CPU backend by tests/cuda_backend_test.cc (chained moves included).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;
constexpr int kMaxPools = 256;  // 2 KiB of pointers: within the 4 KiB parameter limit

struct Pools {
  void* pool[kMaxPools];  // K of layer 0, V of layer 0, K of layer 1, ...
};

// units: row size in U; each pool: [num_slots, units] of U.
template <typename U>
__global__ void KvCompactKernel(const int32_t* src, const int32_t* dst, int n, size_t units,
                                Pools pools) {
  const size_t c = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= units) return;
  U* cache = static_cast<U*>(pools.pool[blockIdx.y]);
  for (int i = 0; i < n; ++i) {
    const int32_t from = src[i];
    const int32_t to = dst[i];
    if (from == to) continue;
    cache[static_cast<size_t>(to) * units + c] = cache[static_cast<size_t>(from) * units + c];
  }
}

template <typename U>
void Launch(const int32_t* src, const int32_t* dst, int n, size_t row_bytes, const Pools& pools,
            int count, cudaStream_t stream) {
  const size_t units = row_bytes / sizeof(U);
  const dim3 grid(Blocks(units, kThreads), count);
  KvCompactKernel<U><<<grid, kThreads, 0, stream>>>(src, dst, n, units, pools);
}

bool Aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

}  // namespace

void KvCompact(const int32_t* src, const int32_t* dst, int n, int row, DType kv_dtype,
               void* const* k_caches, void* const* v_caches, int layers, CudaContext& ctx) {
  if (n == 0 || row == 0 || layers == 0) return;
  SPECMOE_CHECK(n > 0 && row > 0 && layers > 0, "KvCompact arguments");
  const size_t row_bytes = static_cast<size_t>(row) * DTypeBytes(kv_dtype);
  // The widest unit (16, 4 or 2 bytes) that divides a row and aligns every pool.
  auto fits = [&](size_t unit) {
    if (row_bytes % unit != 0) return false;
    for (int l = 0; l < layers; ++l) {
      if (!Aligned(k_caches[l], unit) || !Aligned(v_caches[l], unit)) return false;
    }
    return true;
  };
  const size_t unit = fits(16) ? 16 : fits(4) ? 4 : 2;
  SPECMOE_CHECK(unit > 2 || fits(2), "KV rows of 2-byte elements");
  for (int first = 0; first < layers; first += kMaxPools / 2) {
    const int count = std::min(kMaxPools / 2, layers - first);
    Pools pools{};
    for (int l = 0; l < count; ++l) {
      pools.pool[2 * l] = k_caches[first + l];
      pools.pool[2 * l + 1] = v_caches[first + l];
    }
    if (unit == 16) {
      Launch<uint4>(src, dst, n, row_bytes, pools, 2 * count, ctx.stream);
    } else if (unit == 4) {
      Launch<uint32_t>(src, dst, n, row_bytes, pools, 2 * count, ctx.stream);
    } else {
      Launch<uint16_t>(src, dst, n, row_bytes, pools, 2 * count, ctx.stream);
    }
    SPECMOE_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace specmoe::kernels::cuda
