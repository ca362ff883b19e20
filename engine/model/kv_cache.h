// engine/model/kv_cache.h — a paged KV cache for one model (engine/README.md, KV cache and
// preemption).
//
// Every layer has K and V pools of [num_blocks * block_size, n_kv_heads * head_dim] in
// backend memory, of f32 (the default) or f16 (half the bytes; results differ from f32 by
// the rounding of K and V). A sequence owns a list of blocks (its block table); logical slot s of a
// sequence lives at physical slot blocks[s / block_size] * block_size + s % block_size.
// Committed tokens occupy logical slots [0, length); a token tree is written to scratch slots
// after them and its accepted path is moved into place (Backend::KvCompact).
// Tested by tests/engine_test.cc (compaction equals plain decoding) and the e2e tests.
#ifndef SPECMOE_ENGINE_MODEL_KV_CACHE_H_
#define SPECMOE_ENGINE_MODEL_KV_CACHE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// The blocks of one sequence in one cache. Plain data; owned by the request's state.
struct SequenceBlocks {
  std::vector<int32_t> blocks;  // physical block ids, in logical order
};

// Contract: owns the K/V pools (freed on destruction); used only by the engine's worker
// thread; Reserve/Release are O(blocks).
class KvCache {
 public:
  // Allocates num_blocks blocks of block_size slots of `dtype` for every layer.
  // INVALID_ARGUMENT for a dtype other than f32 or f16; RESOURCE_EXHAUSTED when the backend
  // cannot allocate the pools.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(
      kernels::Backend* backend, int num_layers, int row, int block_size, int num_blocks,
      kernels::DType dtype = kernels::DType::kF32);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // Grows `seq` so that logical slots [0, slots) exist. RESOURCE_EXHAUSTED when the pool is
  // out of blocks (seq is left as it was).
  absl::Status Reserve(SequenceBlocks& seq, int slots);
  // Returns all of seq's blocks to the pool.
  void Release(SequenceBlocks& seq);

  // Physical slot of logical slot `logical` of `seq` (which must be reserved).
  int32_t PhysicalSlot(const SequenceBlocks& seq, int logical) const {
    return seq.blocks[logical / block_size_] * block_size_ + logical % block_size_;
  }

  // A layer's pools: [num_blocks * block_size, row] elements of dtype().
  void* k(int layer) { return k_[layer]; }
  void* v(int layer) { return v_[layer]; }
  // Every layer's pools ([num_layers]), for the ops over all layers at once (KvCompact).
  std::span<void* const> k_pools() const { return k_; }
  std::span<void* const> v_pools() const { return v_; }
  kernels::DType dtype() const { return dtype_; }
  int row() const { return row_; }
  size_t row_bytes() const { return static_cast<size_t>(row_) * kernels::DTypeBytes(dtype_); }
  int block_size() const { return block_size_; }
  int num_blocks() const { return num_blocks_; }
  int free_blocks() const { return static_cast<int>(free_.size()); }
  int num_layers() const { return static_cast<int>(k_.size()); }
  // An id no other cache of this process ever has (kernels::NewRecordingId): recorded
  // forwards are keyed by it, so a cache made at a freed one's address never replays a
  // recording that points at the freed pools.
  uint64_t recording_id() const { return recording_id_; }

 private:
  KvCache(kernels::Backend* backend, int row, int block_size, int num_blocks,
          kernels::DType dtype);
  kernels::Backend* backend_;
  kernels::DType dtype_;
  int row_;
  int block_size_;
  int num_blocks_;
  std::vector<void*> k_;  // [num_layers] -> [num_blocks * block_size, row]
  std::vector<void*> v_;
  std::vector<int32_t> free_;  // free block ids (a stack)
  const uint64_t recording_id_ = kernels::NewRecordingId();
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_MODEL_KV_CACHE_H_
