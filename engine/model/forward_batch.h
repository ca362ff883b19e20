// engine/model/forward_batch.h — the host description of one forward pass (kernels/README.md, Op
// table) and its ONE validator.
//
// A ForwardBatch lists the tokens of one multi-sequence forward (prefill chunks, decode
// tokens, token trees of several sequences) with where each stands; Model::Forward hands its
// view (Desc) to the backend once (Backend::BeginForward) and every op reads it there.
// Validate checks everything the kernels rely on, so a broken description from the
// scheduler is caught in one place, before any op reads out of bounds.
// Tested by tests/forward_batch_test.cc (one bad description per rule, each named error).
#ifndef SPECMOE_ENGINE_MODEL_FORWARD_BATCH_H_
#define SPECMOE_ENGINE_MODEL_FORWARD_BATCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/model/kv_cache.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// The tokens of one forward pass and where they stand. All arrays are host memory and
// indexed by token (n = tokens.size()) unless noted; see kernels::ForwardDesc and
// kernels::AttentionArgs for the meaning and the visibility rule.
// Contract: plain data, reused across forwards (Clear keeps the capacity).
struct ForwardBatch {
  std::vector<int32_t> tokens;          // [n]
  std::vector<int32_t> positions;       // [n] RoPE positions
  std::vector<int32_t> slots;           // [n] physical KV slots written
  std::vector<int32_t> token_seq;       // [n] index of the token's sequence
  std::vector<int32_t> visible_prefix;  // [n]
  std::vector<uint64_t> tree_mask;      // [n], or empty when no token uses a tree
  std::vector<int32_t> tree_start;      // [n_seqs], or empty when no token uses a tree
  // [n_seqs, max_blocks_per_seq] physical block ids; a sequence with fewer blocks is padded
  // with kNoBlock.
  std::vector<int32_t> block_tables;
  int max_blocks_per_seq = 0;
  std::vector<int32_t> logit_rows;      // token rows whose logits are wanted, increasing

  static constexpr int32_t kNoBlock = -1;

  void Clear();
  // Appends one token.
  void Add(int32_t token, int32_t position, int32_t slot, int32_t seq, int32_t visible,
           uint64_t mask);
  // Sets the block tables of the batch's sequences (each padded to the longest with
  // kNoBlock).
  void SetBlockTables(const std::vector<const SequenceBlocks*>& seqs);

  int n_tokens() const { return static_cast<int>(tokens.size()); }
  // Sequences described by the block tables.
  int n_seqs() const {
    return max_blocks_per_seq > 0 ? static_cast<int>(block_tables.size()) / max_blocks_per_seq
                                  : 0;
  }
  // True when some token has a tree mask bit set.
  bool uses_tree() const;
  // The kernels-level view of this batch (host pointers into the vectors: valid while the
  // batch is not modified). tree_mask and tree_start are null when no token uses a tree.
  kernels::ForwardDesc Desc() const;
};

// Checks `batch` against what the kernels rely on, for a forward of at most `max_tokens`
// tokens over a KV cache of `num_blocks` blocks of `block_size` slots. INVALID_ARGUMENT,
// naming the rule and the offending index, when:
//   - n_tokens > max_tokens, or positions, slots, token_seq, visible_prefix have other than
//     n entries, or tree_mask neither n nor 0;
//   - max_blocks_per_seq < 1 or block_tables is not n_seqs * max_blocks_per_seq (n > 0);
//   - a token's sequence is not in [0, n_seqs);
//   - a token uses a mask and tree_start has fewer than n_seqs entries, or its tree_start is
//     negative ("tree_start");
//   - a block id is neither kNoBlock nor in [0, num_blocks), or a real block follows
//     kNoBlock in a row;
//   - a token's position, visible prefix or write slot is negative, its write slot is
//     outside the cache, or a visible slot (prefix or tree slot) lies beyond its sequence's
//     blocks ("visible");
//   - logit_rows are not strictly increasing within [0, n) ("logit_rows").
// Cost O(n + block table entries).
absl::Status Validate(const ForwardBatch& batch, int max_tokens, int block_size,
                      int num_blocks);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_MODEL_FORWARD_BATCH_H_
