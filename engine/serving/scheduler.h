// engine/serving/scheduler.h — one step for all running requests (engine/README.md, The step):
// admission above a KV watermark (from the longest cached prefix, engine/serving/
// prefix_cache.h; never in a step that must preempt), the step's token budget (trees first,
// then prompt chunks), KV growth with recompute preemption of the most recently admitted
// request that holds blocks and has progressed since its last preemption, one batched draft
// pass (catch-up, then one forward per tree level), ONE target forward over every request's
// root + tree and the prompt chunks, then verification and emission per request, with ONE
// K/V compaction call per cache for the whole step.
//
// On the CPU every kernel is batch-invariant, so each request's tokens do not depend on
// what else is in the step: batched, chunked and preempted outputs equal the output of the
// request alone, bit for bit; sampled requests too under the default coupled verification
// (engine/spec/gumbel.h), whatever trees the load gives (with --sampled-verification
// rejection only under static trees). Tested by tests/scheduler_test.cc,
// tests/speculation_test.cc, tests/engine_test.cc and tests/seeded_sampling_test.cc.
#ifndef SPECMOE_ENGINE_SERVING_SCHEDULER_H_
#define SPECMOE_ENGINE_SERVING_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "engine/model/runner.h"
#include "engine/serving/engine_options.h"
#include "engine/serving/engine_stats.h"
#include "engine/serving/model_set.h"
#include "engine/serving/prefix_cache.h"
#include "engine/serving/sequence.h"
#include "engine/serving/step_report.h"
#include "engine/spec/drafter.h"
#include "engine/spec/logits.h"
#include "engine/spec/tree_policy.h"

namespace specmoe::engine {

// Contract: owned by the engine's worker thread, which alone calls it; borrows the models.
// Cost of Step: (tree depth + 1) draft forwards + one target forward over at most
// max_step_tokens tokens, plus O(requests * tree) host work.
class Scheduler {
 public:
  // A step's K/V compaction of one cache: physical slots, cache[dst[i]] = cache[src[i]].
  struct Moves {
    std::vector<int32_t> src, dst;
  };

  Scheduler(ModelSet* models, const EngineOptions& options, EngineStats* stats);

  // A submitted request joins the back of the waiting queue.
  void Add(std::unique_ptr<Sequence> seq);
  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  // One step over the running set (admitting first); delivers each request's events.
  StepReport Step();
  // Ends every waiting and running request as cancelled (shutdown).
  void CancelAll();

  const std::vector<std::unique_ptr<Sequence>>& running() const { return running_; }
  const std::deque<std::unique_ptr<Sequence>>& waiting() const { return waiting_; }
  int64_t preemptions() const { return preemptions_; }
  const PrefixCache& prefix_cache() const { return prefix_cache_; }

 private:
  // One running request's part in this step.
  struct Planned {
    Sequence* seq = nullptr;
    bool decode = false;          // verify a tree; otherwise prefill a chunk
    int chunk = 0;                // prompt tokens to prefill
    int slots = 0;                // logical KV slots the step writes up to, in both caches
    std::vector<int> step_shape;  // the most this step's tree may hold (StepShape)
  };

  void EndCancelled();
  // Ends the prompt-only requests whose prompts are prefilled (a cache hit or a 1-token
  // prompt leaves nothing to prefill), after a 1-token prompt's one prompt logprobs entry.
  void EndPromptOnly();
  // g for a prefilling request whose chunk reached `slots`: its prompt logprobs from rows
  // [first_row, ...) when it owes any (-1: none), and the end of a prompt-only request; true
  // when the request finished (its final event delivered, its blocks released).
  bool AdvancePrefill(Sequence& seq, int slots, const LogitsView& logits, int first_row);
  // seq's prompt logprobs from this step's rows [first_row, ...) (its owed positions up to
  // the prefilled target_len; the first prompt token's entry first when none was sent).
  std::vector<TokenLogprob> PromptLogprobs(Sequence& seq, const LogitsView& logits, int first_row);
  // The blocks the running set takes this step beyond those it holds (its plan at most).
  int GrowthBlocks() const;
  // Moves waiting requests into the running set while the blocks left after the running
  // set's growth keep the watermark; returns how many.
  int Admit();
  // The step's plan in the order of the target forward: decoding requests, then prompt
  // chunks; *tree_room: the tree nodes the dynamic policy may add across the batch.
  std::vector<Planned> Budget(int* tree_room) const;
  // Takes the blocks every planned request needs, preempting as needed; drops the
  // preempted ones from `plan`.
  void GrowKv(std::vector<Planned>& plan, StepReport& report);
  // The tree room the policy left (`spare` nodes) goes to prompt chunks in the same
  // forward: planned chunks grow, prefilling requests without one get one (the draft
  // catches up on the extra tokens with their next chunk).
  void GiveBackRoom(int spare, std::vector<Planned>& plan, std::vector<DraftJob>& jobs);
  void Preempt(Sequence& seq);
  // Takes the longest cached prefix of the front waiting request's tokens when the blocks
  // it needs (its first chunk's and the cached ones it revives) leave `free` above the
  // watermark, and returns that block count; -1 (nothing taken) when they would not.
  int TakeCachedPrefix(Sequence& seq, int free);
  // Prefilling requests take the cached blocks that continue their prompts (what another
  // request admitted with them has prefilled since).
  void ExtendCachedPrefixes();
  // Offers seq's full blocks of committed K/V to the prefix cache.
  void OfferBlocks(Sequence& seq);
  // Whom to preempt so that `growing` can grow (see scheduler.cc).
  Sequence* Victim(const Sequence& growing) const;
  // c-d: the jobs of the step's decoding requests (a root-only tree for those that do not
  // draft), drafted together; prefilling requests' chunks go through the draft too.
  std::vector<DraftJob> DraftTrees(const std::vector<Planned>& plan, int tree_room);
  // e: the one target forward; (*first_row)[i]: plan[i]'s first logit row (-1: none; a
  // prompt chunk has rows only for owed prompt logprobs).
  LogitsView ScoreTarget(const std::vector<Planned>& plan, const std::vector<DraftJob>& jobs,
                         std::vector<int>* first_row, StepReport& report);
  // f-g for one decoding request: verify, commit and emit, adding its compaction to the
  // step's moves of each cache (h: one KvCompact per cache after all requests); true when the
  // request finished (its final event delivered, its blocks released, no moves added).
  bool VerifyAndEmit(Sequence& seq, const DraftJob& job, const LogitsView& logits, int first_row,
                     Moves* target_moves, Moves* draft_moves);
  // The request's step shape: its expansion cut to the context and to the tokens still
  // wanted (a step emits at most depth + 1 tokens).
  std::vector<int> StepShape(const Sequence& seq) const;
  // Releases seq's blocks and delivers its final event.
  void Finish(Sequence& seq, GenerationEvent event);
  void Release(Sequence& seq);
  void Publish();

  ModelSet* models_;
  EngineOptions options_;
  EngineStats* stats_;
  TreePolicy policy_;
  std::optional<Drafter> drafter_;
  Runner target_runner_;
  PrefixCache prefix_cache_;
  std::deque<std::unique_ptr<Sequence>> waiting_;   // preempted requests at the front
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  int64_t next_admission_ = 0;
  size_t rotation_ = 0;  // where this step's budget starts among the running requests
  int64_t preemptions_ = 0;
  int watermark_blocks_ = 1;
};

// The cost curves of one target forward and one draft forward over 1, 2, 4 ... 64 tokens
// (at most max_tokens), measured on the loaded models: the dynamic tree policy's start-up
// calibration.
std::pair<CostCurve, CostCurve> MeasureCosts(ModelSet& models, int max_tokens);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_SCHEDULER_H_
