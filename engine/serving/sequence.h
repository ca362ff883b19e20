// engine/serving/sequence.h — the state of one request in the scheduler, from admission to
// its last event, across preemptions (engine/README.md, KV cache and preemption).
//
// tokens = prompt + emitted tokens; the last one is the root (not yet in the target's
// cache). target_len / draft_len count the tokens whose K/V each cache holds; a request is
// prefilling while target_len < root position. Preemption drops the request's references to
// both caches' blocks and sets both lengths to 0: the request is recomputed from its tokens
// (from the longest prefix the prefix cache still holds), and everything else (random
// streams, detokenizer, stop matcher, statistics) carries on, so its stream simply
// continues. Tested by tests/scheduler_test.cc and tests/prefix_cache_test.cc.
#ifndef SPECMOE_ENGINE_SERVING_SEQUENCE_H_
#define SPECMOE_ENGINE_SERVING_SEQUENCE_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/model/kv_cache.h"
#include "engine/serving/prefix_cache.h"
#include "engine/serving/request.h"
#include "engine/serving/request_handle.h"
#include "engine/spec/rng.h"
#include "engine/spec/tree_policy.h"
#include "engine/spec/verifier.h"
#include "engine/text/stop_matcher.h"
#include "engine/text/tokenizer.h"

namespace specmoe::engine {

// Plain state; owned by the scheduler (worker thread only).
struct Sequence {
  Sequence(GenerationRequest req, EventSink event_sink, std::shared_ptr<RequestHandle> h,
           const Tokenizer* tokenizer, bool has_draft, const std::vector<int>& default_expansion);

  GenerationRequest request;
  EventSink sink;
  std::shared_ptr<RequestHandle> handle;
  std::chrono::steady_clock::time_point queued_at;
  int64_t admitted = -1;        // admission order (preemption takes the largest)
  std::vector<int32_t> tokens;  // prompt + emitted; the last one is the root
  int prompt_len = 0;
  int target_len = 0;          // tokens with K/V in the target cache
  int draft_len = 0;           // tokens with K/V in the draft cache
  std::vector<int> expansion;  // the most its trees may hold (empty: plain decoding)
  SequenceBlocks target_blocks;
  SequenceBlocks draft_blocks;
  PrefixChain prefix_chain;  // the blocks offered to the prefix cache
  // Prompt tokens the prefix cache supplied before any preemption (-1: not admitted yet).
  int cached_prompt_tokens = -1;
  // Prompt logprobs: the prompt tokens whose entries were delivered (tokens 0..n-1).
  int prompt_logprobs_sent = 0;
  Rng draft_rng{0};   // draws the tree's children
  Rng verify_rng{0};  // acceptance uniforms and bonus tokens (independent)
  IncrementalDetokenizer detok;
  StopMatcher stops;
  SpeculationCounter counter;
  AcceptanceModel acceptance;
  int preemptions = 0;
  int preempted_at = 0;  // tokens.size() at the last preemption (thrash bound, scheduler.cc)
  // Dynamic trees: after a step whose policy drafted nothing, the draft sits out
  // draft_skip steps (doubling up to 16 while it keeps drafting nothing), so a request
  // whose trees do not pay stops paying for the draft's catch-up too; it catches up on
  // the skipped tokens in one batched forward when it drafts again.
  int draft_backoff = 0;
  int draft_skip = 0;
  FinishReason finish = FinishReason::kNone;

  bool speculating() const { return !expansion.empty(); }
  int root_pos() const { return static_cast<int>(tokens.size()) - 1; }
  bool prefilling() const { return target_len < root_pos(); }
  int completion_tokens() const { return static_cast<int>(tokens.size()) - prompt_len; }
  // The first prompt position whose logits row the request still owes for its prompt
  // logprobs (row p gives token p + 1's entry), or -1 when it owes none. The prefix cache may
  // supply the K/V of positions before it only.
  int owed_prompt_row() const {
    if (!request.prompt_logprobs || prompt_logprobs_sent >= prompt_len) return -1;
    return prompt_logprobs_sent > 0 ? prompt_logprobs_sent - 1 : 0;
  }
  // KV slots the request can ever need: its context plus tree scratch.
  int max_slots(int max_context, int tree_slots) const;
};

// What committing one step's tokens produced.
struct Emitted {
  std::vector<int32_t> token_ids;  // EOS and stop tokens excluded
  std::string text;
};

// Appends `tokens` (accepted path + bonus) to seq, cut at the first stop condition (EOS
// unless ignore_eos, a stop token or string, max_tokens, the context), setting seq.finish.
Emitted Commit(Sequence& seq, std::span<const int32_t> tokens, std::span<const int32_t> eos_ids,
               int max_context);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_SEQUENCE_H_
