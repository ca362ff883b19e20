// engine/model/runner.cc — building one multi-sequence ForwardBatch (see runner.h).
#include "engine/model/runner.h"

#include "kernels/check.h"

namespace specmoe::engine {

void Runner::Clear() {
  batch_.Clear();
  seqs_.clear();
}

int Runner::AddCausal(const SequenceBlocks& blocks, std::span<const int32_t> tokens, int from,
                      int to, bool want_last) {
  SPECMOE_CHECK(from < to && to <= static_cast<int>(tokens.size()) && to - from <= room(),
                "a causal segment outside its tokens or past the forward's room");
  const int seq = static_cast<int>(seqs_.size());
  seqs_.push_back(&blocks);
  for (int pos = from; pos < to; ++pos) {
    batch_.Add(tokens[pos], pos, cache_->PhysicalSlot(blocks, pos), seq, pos + 1, 0);
  }
  batch_.tree_start.push_back(0);
  if (!want_last) return -1;
  batch_.logit_rows.push_back(static_cast<int32_t>(batch_.tokens.size()) - 1);
  return logit_rows() - 1;
}

int Runner::AddCausalRows(const SequenceBlocks& blocks, std::span<const int32_t> tokens, int from,
                          int to, int rows_from) {
  SPECMOE_CHECK(from <= rows_from && rows_from < to, "wanted rows outside the causal segment");
  const int first_token = this->tokens();
  AddCausal(blocks, tokens, from, to, false);
  const int first_row = logit_rows();
  for (int pos = rows_from; pos < to; ++pos) {
    batch_.logit_rows.push_back(first_token + pos - from);
  }
  return first_row;
}

int Runner::AddTree(const SequenceBlocks& blocks, int root_pos, std::span<const int32_t> token,
                    std::span<const int32_t> depth, std::span<const uint64_t> mask,
                    std::span<const int> nodes) {
  SPECMOE_CHECK(!nodes.empty() && static_cast<int>(nodes.size()) <= room(),
                "an empty tree segment or one past the forward's room");
  const int seq = static_cast<int>(seqs_.size());
  seqs_.push_back(&blocks);
  const int first_row = logit_rows();
  for (int i : nodes) {
    batch_.Add(token[i], root_pos + depth[i], cache_->PhysicalSlot(blocks, root_pos + i), seq,
               root_pos, mask[i]);
    batch_.logit_rows.push_back(tokens() - 1);
  }
  batch_.tree_start.push_back(root_pos);
  return first_row;
}

const float* Runner::Run() {
  batch_.SetBlockTables(seqs_);
  return model_->Forward(batch_, *cache_);
}

}  // namespace specmoe::engine
