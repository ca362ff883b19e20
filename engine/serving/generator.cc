// engine/serving/generator.cc — loading both models and the speculative step (DESIGN §4).
//
// Slot layout of one step, for a sequence whose root (last committed token) is at position
// r: the target's cache holds committed tokens at logical slots [0, r); tree node i (node 0
// is the root) is written at logical slot r + i and has RoPE position r + depth(i); it sees
// slots [0, r) and the nodes set in its ancestor mask. The draft's cache holds [0, r] after
// its catch-up (the root at slot r too), so the same layout serves its level-by-level passes.
// After verification, accepted node i at depth d moves from slot r + i to slot r + d.
#include "engine/serving/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/loader/memory_check.h"
#include "engine/spec/sampler.h"
#include "engine/spec/token_tree.h"
#include "engine/text/vocab_check.h"

namespace specmoe::engine {
namespace {

// Slots past the context reserved for the tree's scratch K/V (the tree's size limit).
constexpr int kTreeSlots = 64;
constexpr int kBlockSize = 16;

struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<WeightStore> store;
  ModelWeights weights;
};

absl::StatusOr<LoadedModel> LoadModel(const std::string& dir, const char* role) {
  LoadedModel m;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  m.config = *std::move(config);
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::Open(dir);
  if (!store.ok()) return store.status();
  m.store = *std::move(store);
  absl::Status fits = CheckFitsInMemory(m.store->total_bytes(), absl::StrCat(role, " ", dir));
  if (!fits.ok()) return fits;
  absl::StatusOr<ModelWeights> weights = BindModelWeights(m.config, *m.store);
  if (!weights.ok()) return weights.status();
  m.weights = *std::move(weights);
  return m;
}

// The context tokens whose repetition penalty applies at tree node `node`: the sequence
// so far plus the node's path (root excluded: the root is already the last token). Empty
// when no penalty applies, since nothing reads it then.
std::vector<int32_t> PathContext(const std::vector<int32_t>& tokens, const TokenTree& tree,
                                 int node, const SamplingParams& params) {
  if (params.repetition_penalty == 1.0f) return {};
  std::vector<int32_t> context = tokens;
  for (int i : tree.Path(node)) context.push_back(tree.token[i]);
  return context;
}

}  // namespace

Generator::~Generator() {
  // Models and caches free backend memory; destroy them before the backend.
  target_cache_.reset();
  draft_cache_.reset();
  target_.reset();
  draft_.reset();
}

absl::StatusOr<std::unique_ptr<Generator>> Generator::Create(const EngineOptions& options) {
  std::unique_ptr<Generator> g(new Generator(options));
  absl::Status expansion_ok = ValidateExpansion(options.expansion);
  if (!expansion_ok.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--tree: ", expansion_ok.message()));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(options.target_dir);
  if (!tokenizer.ok()) return tokenizer.status();
  g->tokenizer_ = *std::move(tokenizer);

  absl::StatusOr<LoadedModel> target = LoadModel(options.target_dir, "target");
  if (!target.ok()) return target.status();
  g->target_config_ = target->config;
  g->target_store_ = std::move(target->store);
  if (g->target_config_.vocab_size < g->tokenizer_->vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.target_dir, "/config.json: vocab_size ",
                     g->target_config_.vocab_size, " is smaller than tokenizer.model's ",
                     g->tokenizer_->vocab_size(), " pieces"));
  }

  std::optional<LoadedModel> draft;
  if (!options.draft_dir.empty()) {
    absl::StatusOr<LoadedModel> d = LoadModel(options.draft_dir, "draft");
    if (!d.ok()) return d.status();
    draft = *std::move(d);
    // DESIGN §3.3: same vocabulary size and, where both folders have one, the same pieces.
    std::vector<std::string> target_pieces = g->tokenizer_->pieces();
    std::vector<std::string> draft_pieces;
    absl::StatusOr<std::unique_ptr<Tokenizer>> draft_tok = Tokenizer::Load(options.draft_dir);
    if (!draft_tok.ok() && !absl::IsNotFound(draft_tok.status())) return draft_tok.status();
    if (draft_tok.ok()) draft_pieces = (*draft_tok)->pieces();
    absl::Status same = CheckSameVocabulary(g->target_config_.vocab_size,
                                            draft->config.vocab_size, &target_pieces,
                                            draft_tok.ok() ? &draft_pieces : nullptr);
    if (!same.ok()) return same;
  }

  g->backend_ = kernels::CreateCpuBackend(options.threads);
  g->max_context_ = options.max_context > 0
                        ? std::min(options.max_context, g->target_config_.max_position_embeddings)
                        : g->target_config_.max_position_embeddings;
  const int chunk = std::max(options.max_step_tokens, kTreeSlots);
  absl::StatusOr<std::unique_ptr<Model>> target_model =
      Model::Create(g->target_config_, target->weights, g->backend_.get(), chunk);
  if (!target_model.ok()) return target_model.status();
  g->target_ = *std::move(target_model);
  const int blocks_per_seq = (g->max_context_ + kTreeSlots + kBlockSize - 1) / kBlockSize;
  const int num_blocks = blocks_per_seq * std::max(options.max_batch, 1);
  // Weights (mmapped, read in full) and both KV pools must fit in memory together.
  auto kv_bytes = [&](const ModelConfig& c) {
    return static_cast<size_t>(num_blocks) * kBlockSize * 2 * c.num_layers * c.num_kv_heads *
           c.head_dim * kernels::DTypeBytes(options.kv_dtype);
  };
  size_t total = g->target_store_->total_bytes() + kv_bytes(g->target_config_);
  if (draft.has_value()) total += draft->store->total_bytes() + kv_bytes(draft->config);
  absl::Status fits = CheckFitsInMemory(
      total, absl::StrCat("the models and a KV cache for ", options.max_batch, " x ",
                          g->max_context_, " tokens (lower --max-batch or --max-context)"));
  if (!fits.ok()) return fits;
  absl::StatusOr<std::unique_ptr<KvCache>> target_cache =
      KvCache::Create(g->backend_.get(), g->target_config_.num_layers, g->target_->kv_row(),
                      kBlockSize, num_blocks, options.kv_dtype);
  if (!target_cache.ok()) return target_cache.status();
  g->target_cache_ = *std::move(target_cache);

  if (draft.has_value()) {
    g->draft_config_ = draft->config;
    g->draft_store_ = std::move(draft->store);
    absl::StatusOr<std::unique_ptr<Model>> draft_model =
        Model::Create(g->draft_config_, draft->weights, g->backend_.get(), chunk);
    if (!draft_model.ok()) return draft_model.status();
    g->draft_ = *std::move(draft_model);
    absl::StatusOr<std::unique_ptr<KvCache>> draft_cache =
        KvCache::Create(g->backend_.get(), g->draft_config_.num_layers, g->draft_->kv_row(),
                        kBlockSize, num_blocks, options.kv_dtype);
    if (!draft_cache.ok()) return draft_cache.status();
    g->draft_cache_ = *std::move(draft_cache);
  }

  // EOS from the target's config, else the tokenizer (DESIGN §3.3).
  g->eos_ids_.assign(g->target_config_.eos_token_ids.begin(),
                     g->target_config_.eos_token_ids.end());
  if (g->eos_ids_.empty()) g->eos_ids_.push_back(g->tokenizer_->eos_id());
  return g;
}

absl::Status Generator::CheckLogits(const char* role, const std::vector<float>& rows,
                                    int vocab, const Sequence& seq) const {
  for (size_t i = 0; i < rows.size(); ++i) {
    if (std::isfinite(rows[i])) continue;
    const std::string& dir = std::string_view(role) == "target" ? options_.target_dir
                                                                : options_.draft_dir;
    return absl::InternalError(absl::StrCat(
        role, " model ", dir, " produced a ", std::isnan(rows[i]) ? "NaN" : "infinite",
        " logit (token id ", i % vocab, ", row ", i / vocab, ") at decode step ",
        seq.completion_tokens() + 1, " (position ", seq.tokens.size() - 1,
        "); the weights are broken"));
  }
  return absl::OkStatus();
}

void Generator::RunCausal(Model& model, KvCache& cache, const SequenceBlocks& blocks,
                          const std::vector<int32_t>& tokens, int from, int to,
                          bool want_logits, std::vector<float>* logits) {
  const int chunk = model.max_tokens();
  for (int start = from; start < to; start += chunk) {
    const int end = std::min(to, start + chunk);
    batch_.Clear();
    for (int pos = start; pos < end; ++pos) {
      batch_.Add(tokens[pos], pos, cache.PhysicalSlot(blocks, pos), 0, pos + 1, 0);
    }
    batch_.SetBlockTables({&blocks});
    const bool last = end == to;
    if (last && want_logits) {
      batch_.logit_rows.push_back(end - start - 1);
      logits->resize(model.config().vocab_size);
    }
    model.Forward(batch_, cache, last && want_logits ? logits->data() : nullptr);
  }
}

absl::StatusOr<std::unique_ptr<Sequence>> Generator::Start(GenerationRequest request) {
  auto seq = std::make_unique<Sequence>();
  seq->request = std::move(request);
  const GenerationRequest& req = seq->request;
  seq->tokens = req.prompt_ids;
  seq->prompt_len = static_cast<int>(req.prompt_ids.size());
  if (draft_ != nullptr && !req.speculation.disable) {
    seq->expansion = req.speculation.expansion.empty() ? options_.expansion
                                                       : req.speculation.expansion;
  }
  // Independent random streams (DESIGN §4): the tree's children, and verification.
  Rng base(req.sampling.seed);
  seq->draft_rng = base.Split(kDraftStream);
  seq->verify_rng = base.Split(kVerifyStream);
  seq->detok.emplace(tokenizer_.get(), req.prompt_ids);
  seq->stops.emplace(req.stop);

  // Reserve the whole request's room up front so a running request never runs out.
  const int need = std::min(seq->prompt_len + req.max_tokens, max_context_) + kTreeSlots;
  absl::Status room = target_cache_->Reserve(seq->target_blocks, need);
  if (room.ok() && !seq->expansion.empty()) {
    room = draft_cache_->Reserve(seq->draft_blocks, need);
  }
  if (!room.ok()) {
    target_cache_->Release(seq->target_blocks);
    if (draft_cache_) draft_cache_->Release(seq->draft_blocks);
    if (need > target_cache_->num_blocks() * target_cache_->block_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_tokens: the request needs ", need, " KV slots, more than the cache"));
    }
    return room;
  }
  // Prefill everything but the root (the last prompt token), in both models.
  const int root_pos = seq->prompt_len - 1;
  RunCausal(*target_, *target_cache_, seq->target_blocks, seq->tokens, 0, root_pos, false,
            nullptr);
  if (!seq->expansion.empty()) {
    RunCausal(*draft_, *draft_cache_, seq->draft_blocks, seq->tokens, 0, root_pos, false,
              nullptr);
    seq->draft_len = root_pos;
  }
  return seq;
}

std::vector<int> Generator::StepExpansion(const Sequence& seq) const {
  std::vector<int> expansion = seq.expansion;
  const int root_pos = static_cast<int>(seq.tokens.size()) - 1;
  // A step emits at most depth + 1 tokens; deeper levels would be thrown away.
  const int wanted = seq.request.max_tokens - seq.completion_tokens();
  const int room = max_context_ - 1 - root_pos;
  const int depth = std::max(0, std::min({static_cast<int>(expansion.size()), wanted - 1, room - 1}));
  expansion.resize(depth);
  return expansion;
}

absl::Status Generator::DraftTree(Sequence& seq, const std::vector<int>& expansion,
                                  TokenTree* tree) {
  const int root_pos = static_cast<int>(seq.tokens.size()) - 1;
  const int vocab = draft_config_.vocab_size;
  const SamplingParams& params = seq.request.sampling;
  // Catch up: every committed token the draft has not seen, and the root.
  std::vector<float> logits;
  RunCausal(*draft_, *draft_cache_, seq.draft_blocks, seq.tokens, seq.draft_len, root_pos + 1,
            true, &logits);
  seq.draft_len = root_pos + 1;
  if (absl::Status finite = CheckLogits("draft", logits, vocab, seq); !finite.ok()) {
    return finite;
  }

  std::vector<int> frontier = {0};
  std::vector<std::vector<float>> frontier_logits = {logits};
  const int depth = static_cast<int>(expansion.size());
  for (int level = 1; level <= depth; ++level) {
    // The draft's view at each frontier node: greedy trees take its top-k of the penalized
    // logits; sampled trees draw from its processed distribution q (kept in the tree).
    std::vector<std::vector<float>> dist(frontier.size());
    for (size_t f = 0; f < frontier.size(); ++f) {
      std::vector<int32_t> context = PathContext(seq.tokens, *tree, frontier[f], params);
      if (params.greedy()) {
        dist[f] = frontier_logits[f];
        ApplyRepetitionPenalty(dist[f].data(), vocab, params.repetition_penalty, context);
      } else {
        ProcessLogits(frontier_logits[f].data(), vocab, params, context, &dist[f]);
      }
    }
    const int first_new = tree->size();
    ExpandLevel(*tree, frontier, dist, expansion[level - 1], params.greedy(), seq.draft_rng);
    const int last_new = tree->size();
    frontier.clear();
    for (int i = first_new; i < last_new; ++i) frontier.push_back(i);
    if (level == depth) break;  // leaves are never run through the draft
    // One batched draft forward over the new level, with tree attention.
    batch_.Clear();
    for (int i : frontier) {
      batch_.Add(tree->token[i], root_pos + tree->depth[i],
                 draft_cache_->PhysicalSlot(seq.draft_blocks, root_pos + i), 0, root_pos,
                 tree->mask[i]);
      batch_.logit_rows.push_back(static_cast<int>(batch_.tokens.size()) - 1);
    }
    batch_.tree_start = {root_pos};
    batch_.SetBlockTables({&seq.draft_blocks});
    std::vector<float> level_logits(frontier.size() * static_cast<size_t>(vocab));
    draft_->Forward(batch_, *draft_cache_, level_logits.data());
    if (absl::Status finite = CheckLogits("draft", level_logits, vocab, seq); !finite.ok()) {
      return finite;
    }
    frontier_logits.assign(frontier.size(), {});
    for (size_t f = 0; f < frontier.size(); ++f) {
      frontier_logits[f].assign(level_logits.begin() + f * vocab,
                                level_logits.begin() + (f + 1) * vocab);
    }
  }
  return absl::OkStatus();
}

void Generator::ScoreTree(Sequence& seq, const TokenTree& tree, std::vector<float>* logits) {
  const int root_pos = static_cast<int>(seq.tokens.size()) - 1;
  batch_.Clear();
  for (int i = 0; i < tree.size(); ++i) {
    batch_.Add(tree.token[i], root_pos + tree.depth[i],
               target_cache_->PhysicalSlot(seq.target_blocks, root_pos + i), 0, root_pos,
               tree.mask[i]);
    batch_.logit_rows.push_back(i);
  }
  batch_.tree_start = {root_pos};
  batch_.SetBlockTables({&seq.target_blocks});
  logits->resize(static_cast<size_t>(tree.size()) * target_config_.vocab_size);
  target_->Forward(batch_, *target_cache_, logits->data());
}

void Generator::Compact(KvCache& cache, const SequenceBlocks& blocks, int root_pos,
                        const std::vector<int>& nodes) {
  // Node nodes[d-1] sits at depth d (slot root_pos + node) and belongs at root_pos + d.
  // Moving in depth order is safe: node index >= depth, and indices grow along the path.
  std::vector<int32_t> src, dst;
  for (size_t d = 1; d <= nodes.size(); ++d) {
    if (nodes[d - 1] == static_cast<int>(d)) continue;
    src.push_back(cache.PhysicalSlot(blocks, root_pos + nodes[d - 1]));
    dst.push_back(cache.PhysicalSlot(blocks, root_pos + static_cast<int>(d)));
  }
  if (src.empty()) return;
  for (int l = 0; l < cache.num_layers(); ++l) {
    backend_->KvMove(src.data(), dst.data(), static_cast<int>(src.size()), cache.row(),
                     cache.dtype(), cache.k(l), cache.v(l));
  }
}

StepOutput Generator::Step(Sequence& seq) {
  StepOutput out;
  const GenerationRequest& req = seq.request;
  const SamplingParams& params = req.sampling;
  const int vocab = target_config_.vocab_size;
  const int root_pos = static_cast<int>(seq.tokens.size()) - 1;

  using StepClock = std::chrono::steady_clock;
  const StepClock::time_point step_start = StepClock::now();
  // 1. Draft a tree (or just the root for plain decoding).
  const std::vector<int> expansion = StepExpansion(seq);
  TokenTree tree(seq.tokens.back());
  // A broken invariant in the models' data fails this request only (DESIGN §2.6).
  auto fail = [&](absl::Status status) {
    Finish(seq, FinishReason::kNone);
    out.status = std::move(status);
    out.finished = true;
    return out;
  };
  if (!expansion.empty()) {
    if (absl::Status drafted = DraftTree(seq, expansion, &tree); !drafted.ok()) {
      return fail(std::move(drafted));
    }
  }

  // 2. One target pass over root + tree.
  const StepClock::time_point drafted_at = StepClock::now();
  std::vector<float> logits;
  ScoreTree(seq, tree, &logits);
  const StepClock::time_point scored_at = StepClock::now();
  out.tree_tokens = tree.size();
  if (absl::Status finite = CheckLogits("target", logits, vocab, seq); !finite.ok()) {
    return fail(std::move(finite));
  }

  // 3. Verify.
  VerifyResult result;
  if (params.greedy()) {
    std::vector<int32_t> argmax(tree.size());
    for (int i = 0; i < tree.size(); ++i) {
      float* row = logits.data() + static_cast<size_t>(i) * vocab;
      if (params.repetition_penalty != 1.0f) {
        ApplyRepetitionPenalty(row, vocab, params.repetition_penalty,
                               PathContext(seq.tokens, tree, i, params));
      }
      argmax[i] = Argmax(row, vocab);
    }
    result = VerifyGreedy(tree, argmax);
  } else {
    // The target's processed distribution, computed only at the nodes the walk visits.
    auto target_probs = [&](int node, std::vector<float>* probs) {
      ProcessLogits(logits.data() + static_cast<size_t>(node) * vocab, vocab, params,
                    PathContext(seq.tokens, tree, node, params), probs);
    };
    result = VerifyStochastic(tree, target_probs, seq.verify_rng);
  }

  // 4. Commit the accepted path's K/V: the root is already at its slot in the target.
  const int depth = static_cast<int>(expansion.size());
  Compact(*target_cache_, seq.target_blocks, root_pos, result.accepted_nodes);
  if (!expansion.empty()) {
    std::vector<int> drafted = result.accepted_nodes;
    // A leaf was never run through the draft: it catches up on it next step.
    if (!drafted.empty() && tree.depth[drafted.back()] == depth) drafted.pop_back();
    Compact(*draft_cache_, seq.draft_blocks, root_pos, drafted);
    seq.draft_len = root_pos + 1 + static_cast<int>(drafted.size());
  }

  // 5. Emit the accepted tokens and the bonus token, cut at the first stop condition.
  std::vector<int32_t> emitted;
  for (int node : result.accepted_nodes) emitted.push_back(tree.token[node]);
  emitted.push_back(result.bonus_token);
  std::string text;
  for (int32_t token : emitted) {
    const bool is_eos = std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end();
    if (is_eos && !req.ignore_eos) {
      seq.finish = FinishReason::kEos;
      break;
    }
    if (std::find(req.stop_token_ids.begin(), req.stop_token_ids.end(), token) !=
        req.stop_token_ids.end()) {
      seq.finish = FinishReason::kStop;
      break;
    }
    const size_t held_back = seq.stops->pending_size();
    StopMatcher::Result matched = seq.stops->Push(seq.detok->Add(token));
    text += matched.emit;
    if (matched.stopped) {
      // DESIGN §6: the token that completed the stop string is returned (and counted) only
      // if some of its own text is, so text, token_ids and completion_tokens agree.
      if (matched.emit.size() > held_back) {
        seq.tokens.push_back(token);
        out.token_ids.push_back(token);
      }
      seq.finish = FinishReason::kStop;
      break;
    }
    seq.tokens.push_back(token);
    out.token_ids.push_back(token);
    if (seq.completion_tokens() >= req.max_tokens ||
        static_cast<int>(seq.tokens.size()) >= max_context_) {
      seq.finish = FinishReason::kLength;
      break;
    }
  }
  // Every target pass of a speculating request is a verify step, even one whose tree was
  // cut to the root near max_tokens or the end of the context.
  if (!seq.expansion.empty()) {
    seq.counter.Record(ComputeStepStats(tree, result), static_cast<int>(out.token_ids.size()));
  }
  // Text held back as a possible stop-string prefix is released when the request ends
  // for another reason.
  if (seq.finish != FinishReason::kNone && seq.finish != FinishReason::kStop) {
    text += seq.stops->Flush();
  }
  out.text = std::move(text);
  if (seq.finish != FinishReason::kNone) Finish(seq, seq.finish);
  out.finished = seq.finish != FinishReason::kNone;
  out.draft_seconds = std::chrono::duration<double>(drafted_at - step_start).count();
  out.target_seconds = std::chrono::duration<double>(scored_at - drafted_at).count();
  out.verify_seconds = std::chrono::duration<double>(StepClock::now() - scored_at).count();
  return out;
}

void Generator::Finish(Sequence& seq, FinishReason reason) {
  if (seq.finish == FinishReason::kNone) seq.finish = reason;
  target_cache_->Release(seq.target_blocks);
  if (draft_cache_) draft_cache_->Release(seq.draft_blocks);
}

SpeculationStats Generator::Stats(const Sequence& seq) const { return seq.counter.Stats(); }

}  // namespace specmoe::engine
