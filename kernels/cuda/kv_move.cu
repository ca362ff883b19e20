// kernels/cuda/kv_move.cu — KV compaction on the device (elementwise.h KvMove), the twin of
// the CPU backend's KvMove: cache[dst[i], :] = cache[src[i], :] for i < n, IN ORDER (a later
// move may read a row an earlier one wrote, or overwrite a row an earlier one read: the
// accepted path's compaction does both), for the K and the V cache of one layer.
// src, dst: device [n] physical slots; caches: device [num_slots, row] of kv_dtype (any
// dtype: rows are moved as bytes, row * DTypeBytes(kv_dtype) each).
// The order is kept without any barrier: thread c of cache z owns unit c (16, 4 or 2 bytes) of
// every row and runs the n moves one after another on it, so each unit sees the moves in
// order and different units never interact. Grid: (ceil(units / 256), 2), y = K or V.
// Tested against the CPU backend by tests/cuda_backend_test.cc (chained moves included).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;

// units: row size in U; caches: [num_slots, units] of U.
template <typename U>
__global__ void KvMoveKernel(const int32_t* src, const int32_t* dst, int n, size_t units,
                             U* k_cache, U* v_cache) {
  const size_t c = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= units) return;
  U* cache = blockIdx.y == 0 ? k_cache : v_cache;
  for (int i = 0; i < n; ++i) {
    const int32_t from = src[i];
    const int32_t to = dst[i];
    if (from == to) continue;
    cache[static_cast<size_t>(to) * units + c] = cache[static_cast<size_t>(from) * units + c];
  }
}

template <typename U>
void Launch(const int32_t* src, const int32_t* dst, int n, size_t row_bytes, void* k_cache,
            void* v_cache, cudaStream_t stream) {
  const size_t units = row_bytes / sizeof(U);
  const dim3 grid(Blocks(units, kThreads), 2);
  KvMoveKernel<<<grid, kThreads, 0, stream>>>(src, dst, n, units, static_cast<U*>(k_cache),
                                              static_cast<U*>(v_cache));
}

bool Aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

}  // namespace

void KvMove(const int32_t* src, const int32_t* dst, int n, int row, DType kv_dtype, void* k_cache,
            void* v_cache, CudaContext& ctx) {
  if (n == 0 || row == 0) return;
  SPECMOE_CHECK(n > 0 && row > 0, "KvMove arguments");
  const size_t row_bytes = static_cast<size_t>(row) * DTypeBytes(kv_dtype);
  if (row_bytes % 16 == 0 && Aligned(k_cache, 16) && Aligned(v_cache, 16)) {
    Launch<uint4>(src, dst, n, row_bytes, k_cache, v_cache, ctx.stream);
  } else if (row_bytes % 4 == 0 && Aligned(k_cache, 4) && Aligned(v_cache, 4)) {
    Launch<uint32_t>(src, dst, n, row_bytes, k_cache, v_cache, ctx.stream);
  } else {
    SPECMOE_CHECK(row_bytes % 2 == 0 && Aligned(k_cache, 2) && Aligned(v_cache, 2),
                  "KV rows of 2-byte elements");
    Launch<uint16_t>(src, dst, n, row_bytes, k_cache, v_cache, ctx.stream);
  }
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
