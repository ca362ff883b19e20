// engine/serving/generator.h — generation with SpecInfer token-tree speculation (DESIGN §2, §4).
//
// A Generator owns the backend, the target and (optional) draft models and their paged KV
// caches. Start() checks and prefills a request; each Step() drafts a token tree level by
// level with the draft, scores root + tree in ONE target forward pass, verifies (greedy or
// recursive rejection sampling), compacts the accepted path's K/V in both caches and returns
// the emitted tokens, cut at EOS, stop tokens, stop strings, max_tokens or the context.
// Plain decoding is the same step with a tree of just the root.
// Tested by tests/speculation_test.cc (speculative output == plain output, bit for bit, on
// the CPU; KV compaction == plain decoding) and tests/model_golden_test.cc.
#ifndef SPECMOE_ENGINE_SERVING_GENERATOR_H_
#define SPECMOE_ENGINE_SERVING_GENERATOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/serving/engine.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "engine/serving/request.h"
#include "engine/spec/rng.h"
#include "engine/text/stop_matcher.h"
#include "engine/text/tokenizer.h"
#include "engine/spec/verifier.h"
#include "engine/loader/weights.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// The state of one request being generated. Owned by the caller; pass it back to Step().
struct Sequence {
  GenerationRequest request;
  std::vector<int32_t> tokens;        // prompt + emitted tokens; the last one is the root
  int prompt_len = 0;
  int draft_len = 0;                  // tokens whose K/V are in the draft cache
  std::vector<int> expansion;         // this request's tree (empty: plain decoding)
  SequenceBlocks target_blocks;
  SequenceBlocks draft_blocks;
  Rng draft_rng{0};                   // draws the tree's children
  Rng verify_rng{0};                  // acceptance uniforms and bonus tokens (independent)
  std::optional<IncrementalDetokenizer> detok;
  std::optional<StopMatcher> stops;
  SpeculationCounter counter;
  FinishReason finish = FinishReason::kNone;
  int completion_tokens() const { return static_cast<int>(tokens.size()) - prompt_len; }
};

// What one Step() produced.
struct StepOutput {
  std::vector<int32_t> token_ids;     // emitted tokens (EOS and stop tokens excluded)
  std::string text;                   // their text delta
  bool finished = false;
  // Where the step's time went (for the server's step-time metrics) and the tree's size.
  double draft_seconds = 0;   // drafting the tree (0 without speculation)
  double target_seconds = 0;  // the target's pass over root + tree
  double verify_seconds = 0;  // verification, K/V compaction and emission
  int tree_tokens = 0;        // nodes the target scored (root included)
  // INTERNAL when the models' data broke an invariant (a NaN or infinite logit: DESIGN
  // §2.6), naming the model and the step; the sequence is then finished and released.
  absl::Status status;
};

// Contract: single-threaded (the engine's worker thread owns it); holds the mmapped weights
// for its lifetime. Cost of Step(): (tree depth) draft forwards + one target forward.
class Generator {
 public:
  static absl::StatusOr<std::unique_ptr<Generator>> Create(const EngineOptions& options);
  ~Generator();

  // Takes a request that passed PrepareRequest (engine/serving/request_validator.h: the one
  // validator, run by Engine::Submit), reserves KV room for the whole request and prefills
  // both models. INVALID_ARGUMENT when the request could never fit the cache,
  // RESOURCE_EXHAUSTED when the KV cache has no room now (retry later).
  absl::StatusOr<std::unique_ptr<Sequence>> Start(GenerationRequest request);
  // Runs one verify step of `seq` (which must not be finished).
  StepOutput Step(Sequence& seq);
  // Marks seq finished (e.g. cancelled) and releases its KV blocks.
  void Finish(Sequence& seq, FinishReason reason);
  // Speculation statistics of seq so far.
  SpeculationStats Stats(const Sequence& seq) const;

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelConfig& target_config() const { return target_config_; }
  bool has_draft() const { return draft_ != nullptr; }
  int max_context() const { return max_context_; }
  const std::vector<int>& default_expansion() const { return options_.expansion; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  Model& target() { return *target_; }
  Model* draft() { return draft_.get(); }
  KvCache& target_cache() { return *target_cache_; }
  KvCache* draft_cache() { return draft_cache_.get(); }

 private:
  explicit Generator(const EngineOptions& options) : options_(options) {}
  // Runs tokens[from, to) of seq through `model` causally at their own positions, writing
  // their K/V; returns the logits of the last one when want_logits.
  void RunCausal(Model& model, KvCache& cache, const SequenceBlocks& blocks,
                 const std::vector<int32_t>& tokens, int from, int to, bool want_logits,
                 std::vector<float>* logits);
  // Drafts a token tree rooted at seq's last token (the draft catches up first).
  absl::Status DraftTree(Sequence& seq, const std::vector<int>& expansion, TokenTree* tree);
  // INTERNAL naming the model and the step when `rows` x [vocab] logits hold a NaN or Inf.
  absl::Status CheckLogits(const char* role, const std::vector<float>& rows, int vocab,
                           const Sequence& seq) const;
  // Scores root + tree with the target: logits [tree.size(), vocab].
  void ScoreTree(Sequence& seq, const TokenTree& tree, std::vector<float>* logits);
  // Moves the K/V of the accepted nodes (tree slots) to their committed slots.
  void Compact(KvCache& cache, const SequenceBlocks& blocks, int root_pos,
               const std::vector<int>& nodes);
  // The expansion actually used this step: the request's, shortened to fit the context and
  // the tokens still wanted.
  std::vector<int> StepExpansion(const Sequence& seq) const;

  EngineOptions options_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig target_config_;
  ModelConfig draft_config_;
  std::unique_ptr<WeightStore> target_store_;
  std::unique_ptr<WeightStore> draft_store_;
  std::unique_ptr<Model> target_;
  std::unique_ptr<Model> draft_;
  std::unique_ptr<KvCache> target_cache_;
  std::unique_ptr<KvCache> draft_cache_;
  std::vector<int32_t> eos_ids_;
  int max_context_ = 0;
  ForwardBatch batch_;                // reused across forwards
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_GENERATOR_H_
