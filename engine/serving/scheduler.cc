// engine/serving/scheduler.cc — the step (scheduler.h), in the order of engine/README.md, The step.
//
// Slot layout of a decoding request whose root is at position r: the target holds
// committed tokens at logical slots [0, r); tree node i (node 0 is the root) is written at
// slot r + i with position r + depth(i). The draft holds [0, r] after its catch-up. After
// verification the accepted node at depth d moves from slot r + i to slot r + d in both
// caches (leaves were never run through the draft: it catches up on them next step).
#include "engine/serving/scheduler.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "engine/spec/logits.h"
#include "engine/spec/token_tree.h"
#include "engine/spec/verifier.h"

namespace specmoe::engine {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// The physical moves that bring the K/V of the accepted nodes (tree slots) to their
// committed slots, appended to *moves. Node nodes[d-1] sits at depth d (slot root_pos +
// node) and belongs at root_pos + d; moving in depth order is safe: node index >= depth,
// and indices grow along the path. Different requests' moves touch different blocks.
void AddMoves(const KvCache& cache, const SequenceBlocks& blocks, int root_pos,
              std::span<const int> nodes, Scheduler::Moves* moves) {
  for (size_t d = 1; d <= nodes.size(); ++d) {
    if (nodes[d - 1] == static_cast<int>(d)) continue;
    moves->src.push_back(cache.PhysicalSlot(blocks, root_pos + nodes[d - 1]));
    moves->dst.push_back(cache.PhysicalSlot(blocks, root_pos + static_cast<int>(d)));
  }
}

// One compaction call for the whole cache (every layer, every request of the step).
void Compact(kernels::Backend& backend, KvCache& cache, const Scheduler::Moves& moves) {
  if (moves.src.empty()) return;
  backend.KvCompact(moves.src.data(), moves.dst.data(), static_cast<int>(moves.src.size()),
                    cache.row(), cache.dtype(), cache.k_pools().data(), cache.v_pools().data(),
                    cache.num_layers());
}

int BlocksFor(int slots) { return (slots + kKvBlockSize - 1) / kKvBlockSize; }

// How much of seq's tokens the prefix cache may supply: up to the root (its logits are
// needed), and never a position whose prompt logprobs row is still owed.
int CacheLimit(const Sequence& seq) {
  const int owed = seq.owed_prompt_row();
  return owed < 0 ? seq.root_pos() : std::min(owed, seq.root_pos());
}

// The first prompt token's entry: nothing precedes it.
TokenLogprob FirstPromptEntry(const Sequence& seq) {
  TokenLogprob entry;
  entry.token_id = seq.tokens[0];
  entry.logprob = std::numeric_limits<float>::quiet_NaN();
  return entry;
}

}  // namespace

Scheduler::Scheduler(ModelSet* models, const EngineOptions& options, EngineStats* stats)
    : models_(models),
      options_(options),
      stats_(stats),
      policy_(options.tree_policy == EngineOptions::TreePolicy::kDynamic
                  ? TreePolicy::Kind::kDynamic
                  : TreePolicy::Kind::kStatic,
              CostCurve(), CostCurve()),
      target_runner_(models->target.get(), models->target_cache.get()),
      // A block's K/V depends on its tokens, the model pair and the KV dtype.
      prefix_cache_(models->target_cache.get(), models->draft_cache.get(), options.prefix_cache,
                    absl::HashOf(options.target_dir, options.draft_dir,
                                 static_cast<int>(models->target_cache->dtype()))) {
  if (models_->draft != nullptr) {
    if (policy_.kind() == TreePolicy::Kind::kDynamic) {
      auto [target, draft] = MeasureCosts(*models_, options_.max_step_tokens);
      policy_ = TreePolicy(TreePolicy::Kind::kDynamic, std::move(target), std::move(draft));
    }
    drafter_.emplace(models_->draft.get(), models_->draft_cache.get(), &policy_);
  }
  // vLLM's admission watermark: keep a few blocks free for the running requests' growth.
  watermark_blocks_ = std::max(1, models_->target_cache->num_blocks() / 25);
  Publish();
}

void Scheduler::Add(std::unique_ptr<Sequence> seq) {
  waiting_.push_back(std::move(seq));
  Publish();
}

std::vector<int> Scheduler::StepShape(const Sequence& seq) const {
  std::vector<int> step_shape = seq.expansion;
  const int wanted = seq.request.max_tokens - seq.completion_tokens();
  const int room = models_->max_context - 1 - seq.root_pos();
  const int depth =
      std::max(0, std::min({static_cast<int>(step_shape.size()), wanted - 1, room - 1}));
  step_shape.resize(depth);
  return step_shape;
}

void Scheduler::OfferBlocks(Sequence& seq) {
  prefix_cache_.Insert(seq.tokens, seq.target_len, seq.target_blocks, seq.draft_len,
                       seq.speculating() ? &seq.draft_blocks : nullptr, seq.prefix_chain);
}

void Scheduler::Release(Sequence& seq) {
  OfferBlocks(seq);
  prefix_cache_.Release(seq.target_blocks,
                        models_->draft_cache != nullptr ? &seq.draft_blocks : nullptr,
                        seq.prefix_chain);
  seq.target_len = 0;
  seq.draft_len = 0;
}

void Scheduler::Finish(Sequence& seq, GenerationEvent event) {
  Release(seq);
  event.finished = true;
  event.finish_reason = seq.finish;
  event.prompt_tokens = seq.prompt_len;
  event.completion_tokens = seq.completion_tokens();
  event.cached_prompt_tokens = std::max(0, seq.cached_prompt_tokens);
  event.speculation = seq.counter.Stats();
  event.seed = seq.request.sampling.seed;
  seq.sink(std::move(event));
}

void Scheduler::EndPromptOnly() {
  std::erase_if(running_, [this](std::unique_ptr<Sequence>& seq) {
    if (seq->prefilling()) return false;
    GenerationEvent event;
    if (seq->owed_prompt_row() >= 0 && seq->prompt_logprobs_sent == 0) {  // a 1-token prompt
      event.prompt_logprobs.push_back(FirstPromptEntry(*seq));
      seq->prompt_logprobs_sent = 1;
    }
    if (!seq->request.prompt_only) {
      if (!event.prompt_logprobs.empty()) seq->sink(std::move(event));
      return false;
    }
    seq->finish = FinishReason::kLength;
    Finish(*seq, std::move(event));
    return true;
  });
}

bool Scheduler::AdvancePrefill(Sequence& seq, int slots, const LogitsView& logits, int first_row) {
  seq.target_len = slots;
  GenerationEvent event;
  if (first_row >= 0) {
    // Rows for positions [owed, target_len); a broken row fails this request only.
    const int owed = seq.owed_prompt_row();
    if (std::optional<NonFinite> bad = FindNonFinite(logits, first_row, seq.target_len - owed)) {
      event.status = absl::InternalError(absl::StrCat(
          "target model ", options_.target_dir, " produced a ", bad->nan ? "NaN" : "infinite",
          " logit (token id ", bad->token, ") at prompt position ", owed + bad->row - first_row,
          "; the weights are broken"));
      Finish(seq, std::move(event));
      return true;
    }
    event.prompt_logprobs = PromptLogprobs(seq, logits, first_row);
  }
  if (!seq.prefilling() && seq.request.prompt_only) {
    seq.finish = FinishReason::kLength;
    Finish(seq, std::move(event));
    return true;
  }
  if (!event.prompt_logprobs.empty()) seq.sink(std::move(event));
  return false;
}

std::vector<TokenLogprob> Scheduler::PromptLogprobs(Sequence& seq, const LogitsView& logits,
                                                    int first_row) {
  std::vector<TokenLogprob> entries;
  if (seq.prompt_logprobs_sent == 0) entries.push_back(FirstPromptEntry(seq));
  // Rows [first_row, ...) hold positions [owed, target_len): token p + 1's entry from row p.
  const int owed = seq.owed_prompt_row();
  for (int pos = owed; pos < seq.target_len; ++pos) {
    entries.push_back(
        RowLogprob(logits, first_row + pos - owed, seq.tokens[pos + 1], seq.request.top_logprobs));
  }
  seq.prompt_logprobs_sent = seq.target_len + 1;
  return entries;
}

void Scheduler::EndCancelled() {
  auto cancelled = [this](std::unique_ptr<Sequence>& seq) {
    if (!seq->handle->cancelled()) return false;
    seq->finish = FinishReason::kCancelled;
    Finish(*seq, {});
    return true;
  };
  std::erase_if(running_, cancelled);
  std::erase_if(waiting_, cancelled);
}

int Scheduler::TakeCachedPrefix(Sequence& seq, int free) {
  // The root's logits are needed, so at least the root is computed.
  const PrefixCache::Hit hit = prefix_cache_.Lookup(seq.tokens, CacheLimit(seq), seq.speculating());
  const int first_chunk = std::min(seq.root_pos() - hit.tokens, options_.max_step_tokens) + 1;
  const int blocks = BlocksFor(hit.tokens + first_chunk) - BlocksFor(hit.tokens) + hit.revived;
  if (!running_.empty() && free - blocks < watermark_blocks_) return -1;
  prefix_cache_.Acquire(hit, seq.target_blocks, seq.speculating() ? &seq.draft_blocks : nullptr,
                        seq.prefix_chain);
  seq.target_len = hit.tokens;
  seq.draft_len = hit.tokens;
  if (seq.cached_prompt_tokens < 0) {  // first admission: the request's usage and the metrics
    seq.cached_prompt_tokens = hit.tokens;
    if (prefix_cache_.enabled()) {
      stats_->prefix_cache_queries_total.fetch_add(seq.prompt_len, std::memory_order_relaxed);
      stats_->prefix_cache_hits_total.fetch_add(hit.tokens, std::memory_order_relaxed);
    }
  }
  return blocks;
}

void Scheduler::ExtendCachedPrefixes() {
  for (const auto& seq : running_) {
    if (!seq->prefilling() || (seq->speculating() && seq->draft_len != seq->target_len)) continue;
    const int added =
        prefix_cache_.Extend(seq->tokens, CacheLimit(*seq), seq->target_blocks,
                             seq->speculating() ? &seq->draft_blocks : nullptr, seq->prefix_chain);
    seq->target_len += added;
    seq->draft_len += added;
    if (added > 0 && seq->preemptions == 0) {  // still the prompt's first prefill
      seq->cached_prompt_tokens += added;
      stats_->prefix_cache_hits_total.fetch_add(added, std::memory_order_relaxed);
    }
  }
}

int Scheduler::GrowthBlocks() const {
  int blocks = 0;
  for (const auto& seq : running_) {
    const int slots = seq->prefilling()
                          ? std::min(seq->root_pos(), seq->target_len + options_.max_step_tokens)
                          : seq->root_pos() + ExpansionNodeCount(StepShape(*seq));
    blocks += std::max(0, BlocksFor(slots) - static_cast<int>(seq->target_blocks.blocks.size()));
  }
  return blocks;
}

int Scheduler::Admit() {
  // The running set's growth this step comes first: a request is admitted only into the
  // blocks left after it (and the watermark), so a step never admits and then preempts.
  // Cached blocks no request holds count as available (the prefix cache evicts them).
  int free = prefix_cache_.available_blocks() - GrowthBlocks();
  int admitted = 0;
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_batch) {
    Sequence& next = *waiting_.front();
    const int taken = TakeCachedPrefix(next, free);
    if (taken < 0) break;
    free -= taken;
    if (next.admitted < 0) next.admitted = next_admission_++;
    if (options_.observer != nullptr && next.preemptions == 0) {
      options_.observer->OnQueueWait(Seconds(next.queued_at, Clock::now()));
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    ++admitted;
    // Keep the running set in admission order (a preempted request re-enters in its place).
    std::stable_sort(running_.begin(), running_.end(),
                     [](const auto& a, const auto& b) { return a->admitted < b->admitted; });
  }
  return admitted;
}

std::vector<Scheduler::Planned> Scheduler::Budget(int* tree_room) const {
  const int budget = options_.max_step_tokens;
  std::vector<Planned> plan;
  int pending_prefill = 0;
  for (const auto& seq : running_) {
    if (seq->prefilling()) pending_prefill += seq->root_pos() - seq->target_len;
  }
  // Prompt chunks keep a share of the budget, so trees never starve a prefill.
  const int reserve = std::min(pending_prefill, budget / 4);
  const bool dynamic = policy_.kind() == TreePolicy::Kind::kDynamic;
  int used = 0;       // roots, and static trees in full
  int tree_caps = 0;  // dynamic: the most tree nodes the planned requests may draft
  // Decoding requests are offered the budget from a rotating start, so when not all fit
  // (static trees at a high load) the ones left out differ from step to step.
  const size_t n = running_.size();
  for (size_t k = 0; k < n; ++k) {
    const auto& seq = running_[(k + rotation_) % n];
    if (seq->prefilling()) continue;
    // The policy's shape for this step's arm (a request backing off: its root alone).
    Planned p{seq.get(), true, 0, 0, policy_.RequestShape(StepShape(*seq), seq->draft_skip > 0)};
    const int nodes = ExpansionNodeCount(p.step_shape);  // root included
    const int need = dynamic ? 1 : nodes;
    // The first always fits (max_step_tokens >= the largest tree); others may wait a step.
    if (used > 0 && used + need > budget - reserve) continue;
    used += need;
    tree_caps += nodes - 1;
    p.slots = seq->root_pos() + nodes;
    plan.push_back(std::move(p));
  }
  // Static trees are in `used` in full; their nodes are the room the policy fills.
  *tree_room = dynamic ? std::max(0, std::min(tree_caps, budget - reserve - used)) : tree_caps;
  int left = std::max(0, budget - used - (dynamic ? *tree_room : 0));
  for (const auto& seq : running_) {
    if (!seq->prefilling() || left == 0) continue;
    const int chunk = std::min(seq->root_pos() - seq->target_len, left);
    left -= chunk;
    plan.push_back({seq.get(), false, chunk, seq->target_len + chunk, {}});
  }
  return plan;
}

void Scheduler::GiveBackRoom(int spare, std::vector<Planned>& plan, std::vector<DraftJob>& jobs) {
  KvCache& target = *models_->target_cache;
  for (const auto& seq : running_) {
    if (spare <= 0) return;
    if (!seq->prefilling()) continue;
    auto p = std::find_if(plan.begin(), plan.end(),
                          [&](const Planned& q) { return q.seq == seq.get(); });
    const int from = p == plan.end() ? seq->target_len : p->slots;
    // Within the blocks held and the free ones above the watermark (never preempting).
    const int held = static_cast<int>(seq->target_blocks.blocks.size());
    const int most = (held + std::max(0, target.free_blocks() - watermark_blocks_)) * kKvBlockSize;
    const int to = std::min({seq->root_pos(), from + spare, most});
    if (to <= from || !target.Reserve(seq->target_blocks, to).ok()) continue;
    spare -= to - from;
    if (p == plan.end()) {
      // The draft catches up on this chunk with the request's next one.
      plan.push_back({seq.get(), false, to - from, to, {}});
      jobs.emplace_back().tree.Reset(seq->tokens.back());
    } else {
      p->chunk += to - from;
      p->slots = to;
    }
  }
}

void Scheduler::Preempt(Sequence& seq) {
  Release(seq);
  ++seq.preemptions;
  seq.preempted_at = static_cast<int>(seq.tokens.size());
  ++preemptions_;
  auto it = std::find_if(running_.begin(), running_.end(),
                         [&](const auto& s) { return s.get() == &seq; });
  waiting_.push_front(std::move(*it));
  running_.erase(it);
}

Sequence* Scheduler::Victim(const Sequence& growing) const {
  // The most recently admitted request that holds blocks (preempting one that holds none
  // frees nothing) and has made progress since its last preemption (bounding thrash);
  // failing that, the most recently admitted holder. `growing` may be its own victim.
  Sequence* fallback = nullptr;
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Sequence* seq = it->get();
    if (seq->target_blocks.blocks.empty() && seq != &growing) continue;
    if (fallback == nullptr) fallback = seq;
    const bool progressed = static_cast<int>(seq->tokens.size()) > seq->preempted_at;
    if (seq->preemptions == 0 || progressed) return seq;
  }
  return fallback != nullptr ? fallback : running_.back().get();
}

void Scheduler::GrowKv(std::vector<Planned>& plan, StepReport& report) {
  std::vector<Sequence*> order;
  for (const Planned& p : plan) order.push_back(p.seq);
  for (Sequence* seq : order) {
    auto planned =
        std::find_if(plan.begin(), plan.end(), [&](const Planned& p) { return p.seq == seq; });
    if (planned == plan.end()) continue;  // preempted for an earlier one
    const int slots = planned->slots;
    while (true) {
      absl::Status room = prefix_cache_.Reserve(false, seq->target_blocks, slots);
      if (room.ok() && seq->speculating()) {
        room = prefix_cache_.Reserve(true, seq->draft_blocks, slots);
      }
      if (room.ok()) break;
      Sequence* victim = Victim(*seq);
      std::erase_if(plan, [&](const Planned& p) { return p.seq == victim; });
      Preempt(*victim);
      ++report.preempted;
      if (victim == seq) break;
    }
  }
}

StepReport Scheduler::Step() {
  StepReport report;
  // a. Admission, after ending cancelled requests (their blocks are free again).
  EndCancelled();
  report.admitted = Admit();
  ExtendCachedPrefixes();
  EndPromptOnly();
  // b. The step's arm for its load (tree_policy.h), the budget (trees first, then prompt
  // chunks) and the blocks it needs.
  policy_.ChooseArm(static_cast<int>(std::count_if(
      running_.begin(), running_.end(), [](const auto& seq) { return !seq->prefilling(); })));
  int tree_room = 0;
  std::vector<Planned> plan = Budget(&tree_room);
  GrowKv(plan, report);
  ++rotation_;
  if (plan.empty()) {
    Publish();
    return report;
  }
  // c-d. Trees and draft, interleaved: every request's tree from one batched draft pass, the
  // policy deciding each level before it is drawn.
  const Clock::time_point start = Clock::now();
  std::vector<DraftJob> jobs = DraftTrees(plan, tree_room);
  int tree_nodes = 0;
  for (const DraftJob& job : jobs) tree_nodes += job.tree.size() - 1;
  GiveBackRoom(tree_room - tree_nodes, plan, jobs);
  // e. ONE target forward over every root + tree and every prompt chunk.
  const Clock::time_point drafted = Clock::now();
  std::vector<int> first_row;
  const LogitsView logits = ScoreTarget(plan, jobs, &first_row, report);
  const Clock::time_point scored = Clock::now();
  // f-g. Verify and emit, one request after another (each adds its accepted path's K/V moves
  // to the step's lists); prefilling requests advance.
  std::vector<Sequence*> finished;
  Moves target_moves, draft_moves;
  int emitted = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    Sequence& seq = *plan[i].seq;
    const size_t tokens_before = seq.tokens.size();
    if (!plan[i].decode) {
      ++report.prefilling;
      report.prefill_tokens += plan[i].chunk;
      if (AdvancePrefill(seq, plan[i].slots, logits, first_row[i])) finished.push_back(&seq);
    } else {
      ++report.decoding;
      if (VerifyAndEmit(seq, jobs[i], logits, first_row[i], &target_moves, &draft_moves)) {
        finished.push_back(&seq);
      }
      emitted += static_cast<int>(seq.tokens.size() - tokens_before);
    }
  }
  // h. ONE compaction per cache moves every accepted path into place; finished requests
  // leave the running set, the others offer their full blocks to the prefix cache.
  Compact(*models_->backend, *models_->target_cache, target_moves);
  if (models_->draft_cache != nullptr) {
    Compact(*models_->backend, *models_->draft_cache, draft_moves);
  }
  std::erase_if(running_, [&](const std::unique_ptr<Sequence>& s) {
    return std::find(finished.begin(), finished.end(), s.get()) != finished.end();
  });
  for (const Planned& p : plan) {
    if (std::find(finished.begin(), finished.end(), p.seq) == finished.end()) OfferBlocks(*p.seq);
  }
  report.draft_seconds = Seconds(start, drafted);
  report.target_seconds = Seconds(drafted, scored);
  report.verify_seconds = Seconds(scored, Clock::now());
  if (report.decoding > 0) {
    policy_.ObserveOverhead(report.verify_seconds, tree_nodes);
    policy_.ObserveOutcome(report.decoding, emitted,
                           report.draft_seconds + report.target_seconds + report.verify_seconds,
                           report.prefill_tokens > 0);
  }
  if (options_.observer != nullptr) options_.observer->OnStep(report);
  Publish();
  return report;
}

std::vector<DraftJob> Scheduler::DraftTrees(const std::vector<Planned>& plan, int tree_room) {
  std::vector<DraftJob> jobs(plan.size());
  std::vector<DraftJob*> drafting;
  std::vector<DraftCatchUp> catch_ups;
  int draft_chunks = 0;  // the catch-up forward: prompt chunks ...
  int draft_tokens = 0;  // ... and every drafting request's catch-up
  for (size_t i = 0; i < plan.size(); ++i) {
    Sequence& seq = *plan[i].seq;
    jobs[i].tree.Reset(seq.tokens.back());
    if (!seq.speculating()) continue;
    if (!plan[i].decode) {  // the draft prefills the same chunk as the target
      catch_ups.push_back({&seq.draft_blocks, seq.tokens, seq.draft_len, plan[i].slots});
      draft_chunks += plan[i].slots - seq.draft_len;
      seq.draft_len = plan[i].slots;
      continue;
    }
    if (policy_.kind() == TreePolicy::Kind::kDynamic && plan[i].step_shape.empty()) {
      // No tree this step (backing off, or a plain arm): no draft work either.
      seq.draft_skip = std::max(0, seq.draft_skip - 1);
      continue;
    }
    DraftJob& job = jobs[i];
    job.blocks = &seq.draft_blocks;
    job.tokens = seq.tokens;
    job.draft_len = seq.draft_len;
    job.params = &seq.request.sampling;
    job.rng = &seq.draft_rng;
    job.verification = options_.sampled_verification;
    job.step_shape = plan[i].step_shape;
    job.acceptance = &seq.acceptance;
    draft_tokens += job.drafted_len() - job.draft_len;
    job.explore_depth = policy_.ExploreDepth(
        seq.acceptance, static_cast<int>(job.step_shape.size()), seq.draft_backoff > 0);
    drafting.push_back(&job);
  }
  int decoding = 0;
  int prefill_tokens = 0;
  for (const Planned& p : plan) {
    decoding += p.decode ? 1 : 0;
    prefill_tokens += p.chunk;
  }
  // The first node of the step pays for the drafting requests' catch-up (the chunks run
  // anyway): when no tree pays for it, nothing is drafted, and the request backs off
  // (skipping the catch-up) for the next steps.
  policy_.BeginStep(decoding + prefill_tokens, draft_tokens + draft_chunks, decoding,
                    draft_chunks);
  if (!drafter_.has_value() || (drafting.empty() && catch_ups.empty())) return jobs;
  const DraftTiming timing = drafter_->Draft(drafting, catch_ups, tree_room);
  if (timing.catch_up_tokens > 0) {
    policy_.ObserveDraft(timing.catch_up_tokens, timing.catch_up_seconds);
  }
  if (timing.levels > 0) {
    policy_.ObserveDraft(timing.level_tokens / timing.levels, timing.level_seconds / timing.levels);
  }
  return jobs;
}

LogitsView Scheduler::ScoreTarget(const std::vector<Planned>& plan,
                                  const std::vector<DraftJob>& jobs, std::vector<int>* first_row,
                                  StepReport& report) {
  target_runner_.Clear();
  first_row->assign(plan.size(), -1);
  for (size_t i = 0; i < plan.size(); ++i) {
    Sequence& seq = *plan[i].seq;
    if (!plan[i].decode) {
      // Prompt logprobs: every row from the first one still owed (never before the chunk:
      // the prefix cache supplies no owed position, CacheLimit).
      const int owed = seq.owed_prompt_row();
      if (owed >= 0 && owed < plan[i].slots) {
        (*first_row)[i] = target_runner_.AddCausalRows(seq.target_blocks, seq.tokens,
                                                       seq.target_len, plan[i].slots, owed);
      } else {
        target_runner_.AddCausal(seq.target_blocks, seq.tokens, seq.target_len, plan[i].slots,
                                 false);
      }
      continue;
    }
    if (jobs[i].non_finite.has_value()) continue;  // fails in verification
    const TokenTree& tree = jobs[i].tree;
    std::vector<int> nodes(tree.size());
    for (int n = 0; n < tree.size(); ++n) nodes[n] = n;
    (*first_row)[i] = target_runner_.AddTree(seq.target_blocks, seq.root_pos(), tree.token,
                                             tree.depth, tree.mask, nodes);
    report.tree_tokens += tree.size();
  }
  const int tokens = target_runner_.tokens();
  const Clock::time_point start = Clock::now();
  const float* rows = target_runner_.Run();
  policy_.ObserveTarget(tokens, Seconds(start, Clock::now()));
  return {models_->backend.get(), rows, target_runner_.logit_rows(),
          models_->target_config.vocab_size};
}

bool Scheduler::VerifyAndEmit(Sequence& seq, const DraftJob& job, const LogitsView& logits,
                              int first_row, Moves* target_moves, Moves* draft_moves) {
  // A broken invariant in the models' data fails this request only (engine/README.md, Errors).
  std::optional<NonFinite> bad = job.non_finite;
  const bool in_draft = bad.has_value();
  if (!in_draft) bad = FindNonFinite(logits, first_row, job.tree.size());
  if (bad.has_value()) {
    GenerationEvent event;
    event.status = absl::InternalError(absl::StrCat(
        in_draft ? "draft model " : "target model ",
        in_draft ? options_.draft_dir : options_.target_dir, " produced a ",
        bad->nan ? "NaN" : "infinite", " logit (token id ", bad->token, ") at decode step ",
        seq.completion_tokens() + 1, " (position ", seq.root_pos(), "); the weights are broken"));
    Finish(seq, std::move(event));
    return true;
  }
  const int root_pos = seq.root_pos();
  const VerifyResult result = VerifyTree(logits, first_row, job.tree, seq.tokens,
                                         seq.request.sampling, options_.sampled_verification,
                                         seq.verify_rng);
  // The root is already at its slot in the target; the accepted path moves into place with
  // the step's one compaction per cache (also for a request that finishes now: its full
  // blocks are offered to the prefix cache, so their K/V must be in place; nothing is
  // allocated before the compaction runs).
  AddMoves(*models_->target_cache, seq.target_blocks, root_pos, result.accepted_nodes,
           target_moves);
  seq.target_len = root_pos + 1 + static_cast<int>(result.accepted_nodes.size());
  const bool drafted = job.blocks != nullptr;
  if (drafted) {
    // A leaf was never run through the draft: it catches up on it next step.
    std::vector<int> in_draft_cache;
    for (int node : result.accepted_nodes) {
      if (job.tree.depth[node] < static_cast<int>(job.step_shape.size())) {
        in_draft_cache.push_back(node);
      }
    }
    AddMoves(*models_->draft_cache, seq.draft_blocks, root_pos, in_draft_cache, draft_moves);
    seq.draft_len = root_pos + 1 + static_cast<int>(in_draft_cache.size());
  }
  std::vector<int32_t> emitted;
  for (int node : result.accepted_nodes) emitted.push_back(job.tree.token[node]);
  emitted.push_back(result.bonus_token);
  Emitted out = Commit(seq, emitted, models_->eos_ids, models_->max_context);
  // Every target pass of a speculating request is a verify step, even one whose tree was
  // cut to the root (near max_tokens, or while the draft backs off).
  if (seq.speculating()) {
    const StepStats stats = ComputeStepStats(job.tree, result);
    seq.counter.Record(stats, static_cast<int>(out.token_ids.size()));
    if (drafted) {
      const std::vector<float> first_q = FirstTestedQ(job, result);
      seq.acceptance.Record(stats, first_q);
      policy_.ObserveStep(stats, first_q);
    }
  }
  if (drafted && policy_.backs_off() && !job.step_shape.empty()) {
    seq.draft_backoff = job.tree.size() > 1 ? 0 : std::clamp(2 * seq.draft_backoff, 1, 16);
    seq.draft_skip = seq.draft_backoff;
  }
  GenerationEvent event;
  if (seq.request.wants_logprobs()) {
    // Token i was chosen at node i of the path (the root, then the accepted nodes): the
    // logits row of that node.
    for (size_t i = 0; i < out.token_ids.size(); ++i) {
      const int node = i == 0 ? 0 : result.accepted_nodes[i - 1];
      event.logprobs.push_back(
          RowLogprob(logits, first_row + node, out.token_ids[i], seq.request.top_logprobs));
    }
  }
  event.token_ids = std::move(out.token_ids);
  event.text = std::move(out.text);
  if (seq.finish == FinishReason::kNone) {
    seq.sink(std::move(event));
    return false;
  }
  Finish(seq, std::move(event));
  return true;
}

void Scheduler::CancelAll() {
  for (auto& seq : running_) {
    seq->finish = FinishReason::kCancelled;
    Finish(*seq, {});
  }
  running_.clear();
  for (auto& seq : waiting_) {
    seq->finish = FinishReason::kCancelled;
    Finish(*seq, {});
  }
  waiting_.clear();
  Publish();
}

void Scheduler::Publish() {
  const KvCache& cache = *models_->target_cache;
  int preempted_waiting = 0;
  for (const auto& seq : waiting_) preempted_waiting += seq->admitted >= 0 ? 1 : 0;
  // The only writer of every gauge. Preempted requests are not in queue_depth (the engine
  // bounds new submissions by it: KV pressure must not turn into RESOURCE_EXHAUSTED).
  stats_->queue_depth.store(static_cast<int>(waiting_.size()) - preempted_waiting,
                            std::memory_order_relaxed);
  stats_->running.store(static_cast<int>(running_.size()), std::memory_order_relaxed);
  stats_->preempted.store(preempted_waiting, std::memory_order_relaxed);
  stats_->preemptions_total.store(preemptions_, std::memory_order_relaxed);
  const int available = prefix_cache_.available_blocks();
  stats_->kv_blocks_free.store(available, std::memory_order_relaxed);
  stats_->kv_blocks_used.store(cache.num_blocks() - available, std::memory_order_relaxed);
  stats_->prefix_cache_blocks.store(prefix_cache_.cached_blocks(), std::memory_order_relaxed);
}

std::pair<CostCurve, CostCurve> MeasureCosts(ModelSet& models, int max_tokens) {
  // Up to the largest tree (a 7B target's 256-token forward takes tens of seconds on a
  // CPU); past it the curves extend along their last segment and live steps refine them.
  max_tokens = std::min(max_tokens, kTreeSlots);
  std::vector<std::pair<int, double>> target_points, draft_points;
  std::vector<int32_t> tokens(max_tokens);
  for (int i = 0; i < max_tokens; ++i) tokens[i] = i % models.target_config.vocab_size;
  auto measure = [&](Model& model, KvCache& cache, std::vector<std::pair<int, double>>* out) {
    SequenceBlocks blocks;
    if (!cache.Reserve(blocks, max_tokens).ok()) return;
    Runner runner(&model, &cache);
    for (int n = 1;; n = std::min(2 * n, max_tokens)) {
      double best = 1e30;
      for (int rep = 0; rep < (n == 1 ? 2 : 1); ++rep) {  // the first also pages weights in
        runner.Clear();
        runner.AddCausal(blocks, tokens, 0, n, true);
        const Clock::time_point t0 = Clock::now();
        runner.Run();
        best = std::min(best, Seconds(t0, Clock::now()));
      }
      out->emplace_back(n, best);
      if (n == max_tokens) break;
    }
    cache.Release(blocks);
  };
  measure(*models.target, *models.target_cache, &target_points);
  if (models.draft != nullptr) measure(*models.draft, *models.draft_cache, &draft_points);
  return {CostCurve(std::move(target_points)), CostCurve(std::move(draft_points))};
}

}  // namespace specmoe::engine
