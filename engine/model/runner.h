// engine/model/runner.h — one multi-sequence forward: segments of several sequences (prompt
// chunks and catch-up tokens run causally, token trees with ancestor masks) collected into
// one ForwardBatch and run through the model in one pass (engine/README.md, The step, d-e).
//
// Each Add call is one sequence's segment (a sequence appears at most once per forward)
// and returns the index of its first logit row. Slot layout (engine/README.md): a causal token at
// logical position p is written at logical slot p and sees [0, p]; tree node i of a tree
// rooted at position r is written at slot r + i, has position r + depth(i), and sees
// [0, r) plus its ancestor mask.
// Tested through tests/speculation_test.cc, tests/scheduler_test.cc and
// tests/chunked_prefill_test.cc.
#ifndef SPECMOE_ENGINE_MODEL_RUNNER_H_
#define SPECMOE_ENGINE_MODEL_RUNNER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "engine/model/kv_cache.h"
#include "engine/model/model.h"

namespace specmoe::engine {

// Contract: borrows the model and its cache (owned by the caller, alive for the runner's
// life); used by the worker thread only. Cost of Run: one Model::Forward.
class Runner {
 public:
  Runner(Model* model, KvCache* cache) : model_(model), cache_(cache) {}

  // Starts a new forward.
  void Clear();
  // tokens[from, to) of a sequence, causally at their own positions; when want_last, the
  // last one's logits are wanted. Returns that logit row (or -1).
  int AddCausal(const SequenceBlocks& blocks, std::span<const int32_t> tokens, int from, int to,
                bool want_last);
  // The same segment with the logits of every token at positions [rows_from, to) wanted
  // (from <= rows_from < to; prompt logprobs). Returns the first of those rows.
  int AddCausalRows(const SequenceBlocks& blocks, std::span<const int32_t> tokens, int from, int to,
                    int rows_from);
  // Tree nodes `nodes` (indices into the tree's arrays token/depth/mask) of a tree whose root
  // is at position root_pos; every node's logits are wanted, in the order of `nodes`.
  // Returns the first of their logit rows.
  int AddTree(const SequenceBlocks& blocks, int root_pos, std::span<const int32_t> token,
              std::span<const int32_t> depth, std::span<const uint64_t> mask,
              std::span<const int> nodes);

  int tokens() const { return static_cast<int>(batch_.tokens.size()); }
  int logit_rows() const { return static_cast<int>(batch_.logit_rows.size()); }
  // Room left in this forward (the model's max_tokens).
  int room() const { return model_->max_tokens() - tokens(); }
  bool empty() const { return batch_.tokens.empty(); }

  // Runs the forward; returns the logits of the wanted rows in backend memory,
  // [logit_rows(), vocab] (null when none), valid until the model's next forward.
  const float* Run();

  Model& model() { return *model_; }
  KvCache& cache() { return *cache_; }

 private:
  Model* model_;
  KvCache* cache_;
  ForwardBatch batch_;
  std::vector<const SequenceBlocks*> seqs_;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_MODEL_RUNNER_H_
