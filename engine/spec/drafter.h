// engine/spec/drafter.h — the draft model's part of a step for many sequences at once
// (engine/README.md, The step, d): ONE draft forward for every sequence's catch-up (the committed
// tokens the draft has not seen, ending at the root, whose logits start the tree; prompt
// chunks the target already prefilled ride along without logits), then ONE draft forward
// per tree level over every sequence's new frontier nodes, with tree attention. The tree
// policy decides per level how many children each frontier node gets, before they are
// drawn; drawn children are never dropped.
// Tested by tests/speculation_test.cc (lossless, compacted caches) and
// tests/scheduler_test.cc (batched == alone).
#ifndef SPECMOE_ENGINE_SPEC_DRAFTER_H_
#define SPECMOE_ENGINE_SPEC_DRAFTER_H_

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "engine/model/runner.h"
#include "engine/spec/logits.h"
#include "engine/spec/params.h"
#include "engine/spec/rng.h"
#include "engine/spec/token_tree.h"
#include "engine/spec/tree_policy.h"
#include "engine/spec/verifier.h"

namespace specmoe::engine {

// One speculating sequence's drafting this step. Inputs are set by the caller; the
// drafter fills tree, node_q, value and non_finite.
struct DraftJob {
  const SequenceBlocks* blocks = nullptr;  // the sequence's draft-cache blocks
  std::span<const int32_t> tokens;         // committed tokens; the last one is the root
  int draft_len = 0;                       // tokens the draft cache holds
  const SamplingParams* params = nullptr;
  Rng* rng = nullptr;  // the draft stream (kDraftStream; rejection mode only)
  // Sampled requests: kCoupled children are the top of log q + G(seed, position, v)
  // (ExpandLevelCoupled), kRejection children are drawn from q with `rng`.
  SampledVerification verification = SampledVerification::kCoupled;
  std::vector<int> step_shape;  // the most the tree may hold this step (may be empty)
  const AcceptanceModel* acceptance = nullptr;
  // Exploration up to this depth (TreePolicy::ExploreDepth; LevelRequest::explore). 0: none.
  int explore_depth = 0;

  TokenTree tree;
  std::vector<float> node_q;            // [nodes] the draft's probability of each node (root 1)
  std::vector<double> value;            // [nodes] estimated acceptance probability (root 1)
  std::optional<NonFinite> non_finite;  // set when a draft logit was NaN or infinite: the
                                        // tree is unusable and the request must fail
  int root_pos() const { return static_cast<int>(tokens.size()) - 1; }
  int drafted_len() const { return root_pos() + 1; }  // the draft's tokens after drafting
};

// A prefilling sequence's tokens [from, to) that the draft has not seen yet.
struct DraftCatchUp {
  const SequenceBlocks* blocks = nullptr;
  std::span<const int32_t> tokens;
  int from = 0;
  int to = 0;
};

// What the draft forwards took.
struct DraftTiming {
  double catch_up_seconds = 0;
  int catch_up_tokens = 0;
  double level_seconds = 0;
  int level_tokens = 0;
  int levels = 0;
};

// Contract: borrows the draft model, its cache and the policy; worker thread only. Cost:
// one draft forward for the catch-ups (more only when they exceed the model's max_tokens)
// plus one per level, each over every job's frontier.
class Drafter {
 public:
  Drafter(Model* draft, KvCache* cache, TreePolicy* policy);

  // Drafts every job's tree; `token_room` bounds the tree nodes of all jobs together (the
  // step budget left for trees). A job that ends with non_finite set has an unusable tree.
  DraftTiming Draft(std::span<DraftJob* const> jobs, std::span<const DraftCatchUp> catch_ups,
                    int token_room);

 private:
  // One job's frontier: the nodes of its deepest level that are run through the draft,
  // and the draft's view at each ([vocab]; see NodeDistribution).
  struct Frontier {
    std::vector<int> nodes;
    std::vector<std::vector<float>> dist;
  };
  // The catch-up forward(s); sets each job's frontier to its root.
  void CatchUp(std::span<DraftJob* const> jobs, std::span<const DraftCatchUp> catch_ups,
               std::vector<Frontier>& frontier, DraftTiming& timing);
  // Adds depth `level` to every job that still has a frontier, with one draft forward over
  // the new nodes that are not leaves; false when no job had anything left to draft.
  bool DraftLevel(int level, std::span<DraftJob* const> jobs, std::vector<Frontier>& frontier,
                  int& token_room, DraftTiming& timing);
  // The draft's view at a node from its logits row: greedy requests keep the penalised
  // logits (children are their top-k), sampled ones the processed distribution q.
  void NodeDistribution(const DraftJob& job, int node, const LogitsView& view, int row,
                        std::vector<float>* dist) const;

  Runner runner_;
  TreePolicy* policy_;
  kernels::Backend* backend_;
  int vocab_;
};

// For the policy's feedback: q of the first child tested at each depth along the accepted
// path ([depth], 0 where nothing was tested).
std::vector<float> FirstTestedQ(const DraftJob& job, const VerifyResult& result);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_DRAFTER_H_
