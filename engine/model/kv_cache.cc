// engine/model/kv_cache.cc — paged KV cache pools and the block allocator.
#include "engine/model/kv_cache.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"

namespace specmoe::engine {

KvCache::KvCache(kernels::Backend* backend, int row, int block_size, int num_blocks,
                 kernels::DType dtype)
    : backend_(backend),
      dtype_(dtype),
      row_(row),
      block_size_(block_size),
      num_blocks_(num_blocks) {}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(kernels::Backend* backend,
                                                          int num_layers, int row,
                                                          int block_size, int num_blocks,
                                                          kernels::DType dtype) {
  if (dtype != kernels::DType::kF32 && dtype != kernels::DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache dtype must be f32 or f16, got ",
                                                   kernels::DTypeName(dtype)));
  }
  std::unique_ptr<KvCache> cache(new KvCache(backend, row, block_size, num_blocks, dtype));
  const size_t bytes = static_cast<size_t>(num_blocks) * block_size * cache->row_bytes();
  for (int layer = 0; layer < num_layers; ++layer) {
    void* k = backend->Alloc(bytes);
    void* v = k ? backend->Alloc(bytes) : nullptr;
    if (k) cache->k_.push_back(k);
    if (v) cache->v_.push_back(v);
    if (!k || !v) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate the KV cache: ", num_layers, " layers x 2 x ", bytes >> 20,
          " MiB (", num_blocks, " blocks of ", block_size, " tokens); lower --max-context"));
    }
  }
  cache->free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) cache->free_.push_back(b);
  return cache;
}

KvCache::~KvCache() {
  for (void* p : k_) backend_->Free(p);
  for (void* p : v_) backend_->Free(p);
}

absl::Status KvCache::Reserve(SequenceBlocks& seq, int slots) {
  const int needed = (slots + block_size_ - 1) / block_size_;
  const int missing = needed - static_cast<int>(seq.blocks.size());
  if (missing <= 0) return absl::OkStatus();
  if (missing > static_cast<int>(free_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: need ", missing,
                                                     " more blocks, ", free_.size(), " free"));
  }
  for (int i = 0; i < missing; ++i) {
    seq.blocks.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void KvCache::Release(SequenceBlocks& seq) {
  for (int32_t b : seq.blocks) free_.push_back(b);
  seq.blocks.clear();
}

}  // namespace specmoe::engine
