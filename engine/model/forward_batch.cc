// engine/model/forward_batch.cc — building, viewing and validating a forward's description
// (see forward_batch.h).
#include "engine/model/forward_batch.h"

#include <algorithm>
#include <bit>

#include "absl/strings/str_cat.h"

namespace specmoe::engine {

void ForwardBatch::Clear() {
  tokens.clear();
  positions.clear();
  slots.clear();
  token_seq.clear();
  visible_prefix.clear();
  tree_mask.clear();
  tree_start.clear();
  block_tables.clear();
  max_blocks_per_seq = 0;
  logit_rows.clear();
}

void ForwardBatch::Add(int32_t token, int32_t position, int32_t slot, int32_t seq,
                       int32_t visible, uint64_t mask) {
  tokens.push_back(token);
  positions.push_back(position);
  slots.push_back(slot);
  token_seq.push_back(seq);
  visible_prefix.push_back(visible);
  tree_mask.push_back(mask);
}

void ForwardBatch::SetBlockTables(const std::vector<const SequenceBlocks*>& seqs) {
  max_blocks_per_seq = 1;
  for (const SequenceBlocks* s : seqs) {
    max_blocks_per_seq = std::max(max_blocks_per_seq, static_cast<int>(s->blocks.size()));
  }
  block_tables.assign(seqs.size() * max_blocks_per_seq, kNoBlock);
  for (size_t i = 0; i < seqs.size(); ++i) {
    std::copy(seqs[i]->blocks.begin(), seqs[i]->blocks.end(),
              block_tables.begin() + i * max_blocks_per_seq);
  }
}

bool ForwardBatch::uses_tree() const {
  return std::any_of(tree_mask.begin(), tree_mask.end(), [](uint64_t m) { return m != 0; });
}

kernels::ForwardDesc ForwardBatch::Desc() const {
  const bool tree = uses_tree();
  kernels::ForwardDesc d;
  d.n_tokens = n_tokens();
  d.n_seqs = n_seqs();
  d.max_blocks_per_seq = max_blocks_per_seq;
  d.n_logit_rows = static_cast<int>(logit_rows.size());
  d.tokens = tokens.data();
  d.positions = positions.data();
  d.slots = slots.data();
  d.token_seq = token_seq.data();
  d.visible_prefix = visible_prefix.data();
  d.tree_mask = tree ? tree_mask.data() : nullptr;
  d.tree_start = tree ? tree_start.data() : nullptr;
  d.block_tables = block_tables.data();
  d.logit_rows = logit_rows.data();
  return d;
}

absl::Status Validate(const ForwardBatch& batch, int max_tokens, int block_size,
                      int num_blocks) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  const size_t n = batch.tokens.size();
  if (static_cast<int64_t>(n) > max_tokens) {
    return bad("forward batch: ", n, " tokens, more than max_tokens ", max_tokens);
  }
  for (auto [name, size] : {std::pair{"positions", batch.positions.size()},
                            std::pair{"slots", batch.slots.size()},
                            std::pair{"token_seq", batch.token_seq.size()},
                            std::pair{"visible_prefix", batch.visible_prefix.size()}}) {
    if (size != n) {
      return bad("forward batch: ", name, " has ", size, " entries for ", n, " tokens");
    }
  }
  if (!batch.tree_mask.empty() && batch.tree_mask.size() != n) {
    return bad("forward batch: tree_mask has ", batch.tree_mask.size(), " entries for ", n,
               " tokens");
  }
  if (n == 0) {
    if (!batch.logit_rows.empty()) return bad("forward batch: logit_rows without tokens");
    return absl::OkStatus();
  }
  const int per_seq = batch.max_blocks_per_seq;
  if (per_seq < 1 || batch.block_tables.size() % per_seq != 0) {
    return bad("forward batch: block_tables has ", batch.block_tables.size(),
               " entries, not a multiple of max_blocks_per_seq ", per_seq);
  }
  const int n_seqs = batch.n_seqs();
  // blocks[s]: the real blocks of sequence s (a prefix of its row, kNoBlock after).
  std::vector<int> blocks(n_seqs, 0);
  for (int s = 0; s < n_seqs; ++s) {
    const int32_t* row = batch.block_tables.data() + static_cast<size_t>(s) * per_seq;
    for (int b = 0; b < per_seq; ++b) {
      if (row[b] == ForwardBatch::kNoBlock) continue;
      if (row[b] < 0 || row[b] >= num_blocks) {
        return bad("forward batch: block_tables[", s, "][", b, "] = ", row[b],
                   " is not a block of the cache (", num_blocks, " blocks)");
      }
      if (b != blocks[s]) {
        return bad("forward batch: block_tables[", s, "][", b, "] follows an empty entry");
      }
      blocks[s] = b + 1;
    }
  }
  const bool tree = batch.uses_tree();
  if (tree && batch.tree_start.size() < static_cast<size_t>(n_seqs)) {
    return bad("forward batch: tree_start has ", batch.tree_start.size(), " entries for ",
               n_seqs, " sequences and a token uses a tree mask");
  }
  const int64_t cache_slots = static_cast<int64_t>(num_blocks) * block_size;
  for (size_t t = 0; t < n; ++t) {
    const int s = batch.token_seq[t];
    if (s < 0 || s >= n_seqs) {
      return bad("forward batch: token ", t, " has sequence ", s, ", not in [0, ", n_seqs, ")");
    }
    const int64_t seq_slots = static_cast<int64_t>(blocks[s]) * block_size;
    if (batch.positions[t] < 0) return bad("forward batch: token ", t, " has a negative position");
    const int32_t slot = batch.slots[t];
    if (slot < 0 || slot >= cache_slots) {
      return bad("forward batch: token ", t, " writes slot ", slot, ", outside the cache (",
                 cache_slots, " slots)");
    }
    const int32_t* row = batch.block_tables.data() + static_cast<size_t>(s) * per_seq;
    if (std::find(row, row + blocks[s], slot / block_size) == row + blocks[s]) {
      return bad("forward batch: token ", t, " writes slot ", slot,
                 ", not in a block of its sequence ", s);
    }
    const int32_t visible = batch.visible_prefix[t];
    if (visible < 0 || visible > seq_slots) {
      return bad("forward batch: token ", t, " has visible prefix ", visible, ", beyond the ",
                 seq_slots, " slots of sequence ", s);
    }
    const uint64_t mask = batch.tree_mask.empty() ? 0 : batch.tree_mask[t];
    if (mask != 0) {
      const int64_t start = batch.tree_start[s];
      if (start < 0) {
        return bad("forward batch: token ", t, " uses a tree mask and tree_start[", s,
                   "] = ", start, " is negative");
      }
      const int64_t last = start + 63 - std::countl_zero(mask);
      if (last >= seq_slots) {
        return bad("forward batch: token ", t, " has visible tree slot ", last, ", beyond the ",
                   seq_slots, " slots of sequence ", s);
      }
    }
  }
  for (size_t i = 0; i < batch.logit_rows.size(); ++i) {
    const int32_t row = batch.logit_rows[i];
    if (row < 0 || static_cast<size_t>(row) >= n) {
      return bad("forward batch: logit_rows[", i, "] = ", row, " is not a token row (", n,
                 " tokens)");
    }
    if (i > 0 && row <= batch.logit_rows[i - 1]) {
      return bad("forward batch: logit_rows are not strictly increasing at ", i);
    }
  }
  return absl::OkStatus();
}

}  // namespace specmoe::engine
