// engine/serving/prefix_cache.cc — the block table, reference counts and LRU (prefix_cache.h).
#include "engine/serving/prefix_cache.h"

#include <algorithm>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace specmoe::engine {

PrefixCache::PrefixCache(KvCache* target, KvCache* draft, bool enabled, uint64_t seed)
    : target_(target),
      draft_(draft),
      enabled_(enabled),
      seed_(seed),
      block_size_(target->block_size()),
      target_entry_(target->num_blocks(), -1),
      draft_entry_(draft != nullptr ? draft->num_blocks() : 0, -1) {}

uint64_t PrefixCache::HashBlock(uint64_t parent, std::span<const int32_t> tokens) const {
  return absl::HashOf(parent, absl::Span<const int32_t>(tokens.data(), tokens.size()));
}

const PrefixCache::Entry* PrefixCache::Find(uint64_t parent, uint64_t hash,
                                            std::span<const int32_t> tokens) const {
  auto it = table_.find(hash);
  if (it == table_.end()) return nullptr;
  const Entry& e = entries_[it->second];
  // A 64-bit collision must not serve another prefix's K/V: the tokens and the parent's
  // hash are compared too.
  if (e.parent != parent || !std::equal(tokens.begin(), tokens.end(), e.tokens.begin())) {
    return nullptr;
  }
  return &e;
}

PrefixCache::Hit PrefixCache::Lookup(std::span<const int32_t> tokens, int limit,
                                     bool with_draft) const {
  if (!enabled_) return {};
  return Walk(tokens, 0, seed_, limit, with_draft);
}

PrefixCache::Hit PrefixCache::Walk(std::span<const int32_t> tokens, int start, uint64_t parent,
                                   int limit, bool with_draft) const {
  Hit hit;
  limit = std::min(limit, static_cast<int>(tokens.size()));
  for (; start + block_size_ <= limit; start += block_size_) {
    const std::span<const int32_t> block = tokens.subspan(start, block_size_);
    const uint64_t hash = HashBlock(parent, block);
    const Entry* e = Find(parent, hash, block);
    if (e == nullptr || (with_draft && e->draft < 0)) break;
    hit.entries.push_back(table_.at(hash));
    hit.tokens += block_size_;
    hit.revived += e->target_refs == 0 ? 1 : 0;
    parent = hash;
  }
  return hit;
}

void PrefixCache::Acquire(const Hit& hit, SequenceBlocks& target, SequenceBlocks* draft,
                          PrefixChain& chain) {
  chain = {};
  for (int id : hit.entries) {
    Entry& e = entries_[id];
    if (e.in_lru) {
      lru_.erase(e.lru);
      e.in_lru = false;
      if (e.draft >= 0) --lru_draft_blocks_;
    }
    ++e.target_refs;
    target.blocks.push_back(e.target);
    if (draft != nullptr) {
      ++e.draft_refs;
      draft->blocks.push_back(e.draft);
    }
    chain.hashes.push_back(e.hash);
  }
  chain.draft_blocks = draft != nullptr ? static_cast<int>(hit.entries.size()) : 0;
}

int PrefixCache::Extend(std::span<const int32_t> tokens, int limit, SequenceBlocks& target,
                        SequenceBlocks* draft, PrefixChain& chain) {
  const int held = static_cast<int>(target.blocks.size());
  if (!enabled_ || static_cast<int>(chain.hashes.size()) != held ||
      (draft != nullptr &&
       (static_cast<int>(draft->blocks.size()) != held || chain.draft_blocks != held))) {
    return 0;
  }
  const Hit hit = Walk(tokens, held * block_size_, held > 0 ? chain.hashes.back() : seed_, limit,
                       draft != nullptr);
  PrefixChain added;
  Acquire(hit, target, draft, added);
  chain.hashes.insert(chain.hashes.end(), added.hashes.begin(), added.hashes.end());
  if (draft != nullptr) chain.draft_blocks += added.draft_blocks;
  return hit.tokens;
}

absl::Status PrefixCache::Reserve(bool draft_side, SequenceBlocks& seq, int slots) {
  KvCache& cache = draft_side ? *draft_ : *target_;
  const int missing = (slots + block_size_ - 1) / block_size_ - static_cast<int>(seq.blocks.size());
  if (missing <= 0) return absl::OkStatus();
  const int evictable = draft_side ? EvictableDraft() : cached_blocks();
  if (missing > cache.free_blocks() + evictable) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: need ", missing,
                                                     " more blocks, ", cache.free_blocks(),
                                                     " free and ", evictable, " cached"));
  }
  while (cache.free_blocks() < missing) {
    if (!(draft_side ? EvictDraft() : EvictTarget())) break;
  }
  return cache.Reserve(seq, slots);
}

void PrefixCache::Insert(std::span<const int32_t> tokens, int target_len,
                         const SequenceBlocks& target, int draft_len, const SequenceBlocks* draft,
                         PrefixChain& chain) {
  if (!enabled_) return;
  const int committed = std::min(target_len, static_cast<int>(tokens.size()));
  const int full = std::min(committed / block_size_, static_cast<int>(target.blocks.size()));
  uint64_t parent = chain.hashes.empty() ? seed_ : chain.hashes.back();
  for (int i = static_cast<int>(chain.hashes.size()); i < full; ++i) {
    const std::span<const int32_t> block = tokens.subspan(i * block_size_, block_size_);
    const uint64_t hash = HashBlock(parent, block);
    // Tokens cached already (another request computed them too): this block stays ours.
    if (!table_.contains(hash)) {
      int id;
      if (free_entries_.empty()) {
        id = static_cast<int>(entries_.size());
        entries_.emplace_back();
      } else {
        id = free_entries_.back();
        free_entries_.pop_back();
      }
      Entry& e = entries_[id];
      e = Entry();
      e.hash = hash;
      e.parent = parent;
      e.tokens.assign(block.begin(), block.end());
      e.target = target.blocks[i];
      e.target_refs = 1;
      table_[hash] = id;
      target_entry_[e.target] = id;
    }
    chain.hashes.push_back(hash);
    parent = hash;
  }
  if (draft == nullptr) return;
  const int draft_full =
      std::min({std::min(draft_len, static_cast<int>(tokens.size())) / block_size_,
                static_cast<int>(chain.hashes.size()), static_cast<int>(draft->blocks.size())});
  for (int i = chain.draft_blocks; i < draft_full; ++i) {
    auto it = table_.find(chain.hashes[i]);
    if (it == table_.end()) continue;
    Entry& e = entries_[it->second];
    // Only the entry of our own target block takes our draft block: whoever holds an
    // entry's draft block holds its target block too.
    if (e.target != target.blocks[i] || e.draft >= 0) continue;
    e.draft = draft->blocks[i];
    e.draft_refs = 1;
    draft_entry_[e.draft] = it->second;
  }
  chain.draft_blocks = std::max(chain.draft_blocks, draft_full);
}

void PrefixCache::Unref(int id) {
  Entry& e = entries_[id];
  if (--e.target_refs > 0) return;
  lru_.push_back(id);
  e.lru = std::prev(lru_.end());
  e.in_lru = true;
  if (e.draft >= 0) ++lru_draft_blocks_;
}

void PrefixCache::Release(SequenceBlocks& target, SequenceBlocks* draft, PrefixChain& chain) {
  if (draft != nullptr) {
    for (int32_t b : draft->blocks) {
      const int id = draft_entry_[b];
      if (id < 0) {
        FreeBlock(*draft_, b);
      } else {
        --entries_[id].draft_refs;
      }
    }
    draft->blocks.clear();
  }
  // Last block first, so the LRU evicts a sequence's tail before its head.
  for (auto it = target.blocks.rbegin(); it != target.blocks.rend(); ++it) {
    const int id = target_entry_[*it];
    if (id < 0) {
      FreeBlock(*target_, *it);
    } else {
      Unref(id);
    }
  }
  target.blocks.clear();
  chain = {};
}

bool PrefixCache::EvictTarget() {
  if (lru_.empty()) return false;
  const int id = lru_.front();
  lru_.pop_front();
  Entry& e = entries_[id];
  e.in_lru = false;
  if (e.draft >= 0) {
    --lru_draft_blocks_;
    draft_entry_[e.draft] = -1;
    FreeBlock(*draft_, e.draft);
  }
  target_entry_[e.target] = -1;
  FreeBlock(*target_, e.target);
  table_.erase(e.hash);
  e = Entry();
  free_entries_.push_back(id);
  ++evictions_;
  return true;
}

bool PrefixCache::EvictDraft() {
  for (int id : lru_) {
    Entry& e = entries_[id];
    if (e.draft < 0) continue;
    draft_entry_[e.draft] = -1;
    FreeBlock(*draft_, e.draft);
    e.draft = -1;
    --lru_draft_blocks_;
    return true;
  }
  return false;
}

void PrefixCache::FreeBlock(KvCache& cache, int32_t block) {
  SequenceBlocks one{{block}};
  cache.Release(one);
}

absl::Status PrefixCache::CheckInvariants(std::span<const SequenceBlocks* const> held_target,
                                          std::span<const SequenceBlocks* const> held_draft) const {
  auto check_side = [&](const KvCache* cache, const std::vector<int>& entry_of,
                        std::span<const SequenceBlocks* const> held, bool draft) -> absl::Status {
    if (cache == nullptr) return absl::OkStatus();
    const char* side = draft ? "draft" : "target";
    std::vector<int> holders(cache->num_blocks(), 0);
    for (const SequenceBlocks* s : held) {
      for (int32_t b : s->blocks) ++holders[b];
    }
    int accounted = cache->free_blocks();
    for (int b = 0; b < cache->num_blocks(); ++b) {
      const int id = entry_of[b];
      if (id < 0) {
        if (holders[b] > 1) {
          return absl::InternalError(absl::StrCat(side, " block ", b, " is uncached and held by ",
                                                  holders[b], " sequences"));
        }
        accounted += holders[b];
        continue;
      }
      const Entry& e = entries_[id];
      const int refs = draft ? e.draft_refs : e.target_refs;
      if ((draft ? e.draft : e.target) != b) {
        return absl::InternalError(
            absl::StrCat(side, " block ", b, " maps to entry ", id, " which does not hold it"));
      }
      if (refs < 0 || refs != holders[b]) {
        return absl::InternalError(absl::StrCat(side, " block ", b, " has ", refs,
                                                " references and ", holders[b], " holders"));
      }
      ++accounted;
    }
    if (accounted != cache->num_blocks()) {
      return absl::InternalError(absl::StrCat(side, " blocks: ", accounted, " accounted for of ",
                                              cache->num_blocks(), " (a leak or a double free)"));
    }
    return absl::OkStatus();
  };
  absl::Status s = check_side(target_, target_entry_, held_target, false);
  if (s.ok()) s = check_side(draft_, draft_entry_, held_draft, true);
  if (!s.ok()) return s;
  int in_lru = 0, lru_drafts = 0;
  for (const auto& [hash, id] : table_) {
    const Entry& e = entries_[id];
    if (e.hash != hash || e.target < 0 || target_entry_[e.target] != id) {
      return absl::InternalError(absl::StrCat("entry ", id, " is inconsistent with the table"));
    }
    if (e.draft_refs > e.target_refs) {
      return absl::InternalError(absl::StrCat("entry ", id, " has more draft references (",
                                              e.draft_refs, ") than target ones (", e.target_refs,
                                              ")"));
    }
    if (e.in_lru != (e.target_refs == 0)) {
      return absl::InternalError(absl::StrCat("entry ", id, " with ", e.target_refs,
                                              " references is ", e.in_lru ? "" : "not ",
                                              "in the LRU"));
    }
    in_lru += e.in_lru ? 1 : 0;
    lru_drafts += e.in_lru && e.draft >= 0 ? 1 : 0;
  }
  if (in_lru != static_cast<int>(lru_.size()) || lru_drafts != lru_draft_blocks_) {
    return absl::InternalError("the LRU does not list exactly the entries nobody holds");
  }
  return absl::OkStatus();
}

}  // namespace specmoe::engine
