// engine/serving/prefix_cache.h — automatic prefix caching over both KV caches.
//
// A full block of committed tokens is named by a hash chained over its parent block's hash
// and its token ids, seeded by the model pair and the KV dtype. The table maps hashes to
// entries; an entry holds a target block and, once a speculating request has written it, the
// draft block of the same tokens (a pair). Sequences share an entry's blocks by reference
// count; an entry no sequence holds stays cached in an LRU and is evicted only when a
// Reserve needs its room (a sequence's last block first). A speculating request's hit needs
// both blocks: an entry without its draft block ends the hit (never K/V nobody wrote).
// Blocks that are not (yet) in the table belong to one sequence alone and go straight back
// to their KvCache when it releases them. Only blocks whose every slot lies below the
// sequence's committed length are cached, and a sequence writes only at or past its
// committed length, so a shared block is never written again (no copy-on-write).
// Disabled, it is the plain allocator: nothing is cached, lookups find nothing.
// Tested by tests/prefix_cache_test.cc.
#ifndef SPECMOE_ENGINE_SERVING_PREFIX_CACHE_H_
#define SPECMOE_ENGINE_SERVING_PREFIX_CACHE_H_

#include <cstdint>
#include <list>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "engine/model/kv_cache.h"

namespace specmoe::engine {

// What one sequence has offered the cache so far (plain data, owned by the sequence; reset
// when its blocks are released).
struct PrefixChain {
  std::vector<uint64_t> hashes;  // hashes[i]: the chained hash of full target block i
  int draft_blocks = 0;          // leading draft blocks already offered
};

// Contract: borrows both caches (the draft's may be null), alive for its life; used by the
// engine's worker thread only. Lookup/Acquire/Insert cost O(tokens looked at); Release
// O(blocks); eviction O(1) per block (the draft's O(LRU) at worst).
class PrefixCache {
 public:
  // seed: changes with anything that changes a block's K/V besides its tokens (the model
  // pair, the KV dtype).
  PrefixCache(KvCache* target, KvCache* draft, bool enabled, uint64_t seed);
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The longest cached prefix of tokens[0, limit), in whole blocks.
  struct Hit {
    int tokens = 0;            // cached tokens (a multiple of the block size)
    int revived = 0;           // of its blocks, those no sequence holds now (in the LRU)
    std::vector<int> entries;  // the entries, in order
  };
  // with_draft: the request speculates, so every entry needs its draft block too.
  Hit Lookup(std::span<const int32_t> tokens, int limit, bool with_draft) const;
  // Takes a reference on each of hit's entries and appends their blocks to the block lists
  // (draft: null when the request does not speculate); `chain` becomes their hashes.
  void Acquire(const Hit& hit, SequenceBlocks& target, SequenceBlocks* draft, PrefixChain& chain);

  // A prefilling sequence holding exactly the whole blocks of its committed tokens (and, with
  // `draft`, the same in the draft) takes the cached blocks that continue its chain within
  // tokens[0, limit): requests admitted together find what the first of them prefills.
  // Returns the tokens added (a multiple of the block size; 0 when it holds a partial block).
  int Extend(std::span<const int32_t> tokens, int limit, SequenceBlocks& target,
             SequenceBlocks* draft, PrefixChain& chain);

  // Grows `seq` (of the target's or the draft's cache) to `slots` slots, evicting cached
  // blocks nobody holds when free ones are short. RESOURCE_EXHAUSTED, nothing evicted and
  // seq unchanged, when even that is not enough.
  absl::Status Reserve(bool draft_side, SequenceBlocks& seq, int slots);

  // Offers the sequence's full blocks of committed K/V to the table: target blocks below
  // target_len, and with `draft` (speculating) its draft blocks below draft_len, which join
  // their target block's entry when this sequence wrote both. A block whose tokens are
  // cached already stays the sequence's own.
  void Insert(std::span<const int32_t> tokens, int target_len, const SequenceBlocks& target,
              int draft_len, const SequenceBlocks* draft, PrefixChain& chain);

  // Drops the sequence's references (cached blocks nobody holds join the LRU, last block
  // first) and frees its own blocks; empties both lists and the chain.
  void Release(SequenceBlocks& target, SequenceBlocks* draft, PrefixChain& chain);

  bool enabled() const { return enabled_; }
  // Target blocks a Reserve can still get: free ones and cached ones nobody holds.
  int available_blocks() const { return target_->free_blocks() + cached_blocks(); }
  // Cached entries nobody holds (each one target block, and a draft block for some).
  int cached_blocks() const { return static_cast<int>(lru_.size()); }
  // Entries in the table, held or not.
  int entries() const { return static_cast<int>(table_.size()); }
  // Evictions since start (target blocks).
  int64_t evictions() const { return evictions_; }

  // For tests: every block is free, held by the table, or in exactly one of `held` (the
  // live sequences' lists); reference counts equal the holders; the LRU is exactly the
  // entries nobody holds. Returns the first broken invariant as INTERNAL.
  absl::Status CheckInvariants(std::span<const SequenceBlocks* const> held_target,
                               std::span<const SequenceBlocks* const> held_draft) const;

 private:
  struct Entry {
    uint64_t hash = 0;
    uint64_t parent = 0;
    std::vector<int32_t> tokens;  // [block_size]
    int32_t target = -1;
    int32_t draft = -1;   // -1: the draft's K/V of these tokens is not cached
    int target_refs = 0;  // sequences holding the target block
    int draft_refs = 0;   // speculating sequences holding the draft block too
    bool in_lru = false;
    std::list<int>::iterator lru;
  };

  uint64_t HashBlock(uint64_t parent, std::span<const int32_t> tokens) const;
  // The entries continuing the chain `parent` from token `start` within tokens[0, limit).
  Hit Walk(std::span<const int32_t> tokens, int start, uint64_t parent, int limit,
           bool with_draft) const;
  const Entry* Find(uint64_t parent, uint64_t hash, std::span<const int32_t> tokens) const;
  void Unref(int id);
  // Frees the LRU's oldest entry (both its blocks); false when the LRU is empty.
  bool EvictTarget();
  // Frees the oldest LRU entry's draft block (the entry stays, target-only).
  bool EvictDraft();
  int EvictableDraft() const { return lru_draft_blocks_; }
  void FreeBlock(KvCache& cache, int32_t block);

  KvCache* target_;
  KvCache* draft_;
  bool enabled_;
  uint64_t seed_;
  int block_size_;
  std::vector<Entry> entries_;
  std::vector<int> free_entries_;
  absl::flat_hash_map<uint64_t, int> table_;  // hash -> entry id
  std::vector<int> target_entry_;             // [target blocks] -> entry id or -1
  std::vector<int> draft_entry_;              // [draft blocks] -> entry id or -1
  std::list<int> lru_;                        // entries nobody holds, least recently used first
  int lru_draft_blocks_ = 0;                  // of them, those with a draft block
  int64_t evictions_ = 0;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_PREFIX_CACHE_H_
