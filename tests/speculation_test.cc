// tests/speculation_test.cc — token-tree speculation is lossless (engine/README.md, Verification).
//
// On the CPU the small-batch kernels and attention are batch-invariant, so a token's logits
// are bit-identical whether it is scored alone (plain decoding) or inside a tree: greedy
// speculative output must equal plain greedy output token for token, for every tree shape and
// every draft (a random MoE, the agreeing MoE, the target itself). After acceptance both KV
// caches must equal the caches of plain one-token-at-a-time decoding of the same tokens.
// Sampled speculation must give the target's distribution of the first token.
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/engine_harness.h"
#include "engine/spec/sampler.h"
#include "gtest/gtest.h"
#include "tests/stats_util.h"

namespace specmoe::engine {
namespace {

const std::string kFixtures = SPECMOE_FIXTURES;
const std::string kTarget = kFixtures + "/models/e2e_target";
const std::string kDraft = kFixtures + "/models/e2e_draft";
const std::string kRandomDraft = kFixtures + "/models/moe_tiny";

// One backend thread: the models are tiny, and the results do not depend on the thread count.
std::unique_ptr<Harness> MakeGenerator(const std::string& draft,
                                       std::vector<int> expansion = {1, 1, 3, 1, 1, 1, 1, 1}) {
  EngineOptions options;
  options.target_dir = kTarget;
  options.draft_dir = draft;
  options.threads = 1;
  options.expansion = std::move(expansion);
  options.max_context = 256;
  options.max_batch = 3;
  options.tree_policy = EngineOptions::TreePolicy::kStatic;  // the shapes under test
  absl::StatusOr<std::unique_ptr<Harness>> g = Harness::Create(options);
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? *std::move(g) : nullptr;
}

// Prompts of several lengths (ids inside the 4096-token demo vocabulary), BOS first.
std::vector<std::vector<int32_t>> Prompts() {
  std::vector<std::vector<int32_t>> prompts;
  for (int p = 0; p < 6; ++p) {
    std::vector<int32_t> ids = {1};
    for (int i = 0; i < 1 + 7 * p; ++i) ids.push_back(3 + (p * 977 + i * 131) % 4000);
    prompts.push_back(ids);
  }
  return prompts;
}

struct Generated {
  std::vector<int32_t> ids;
  SpeculationStats stats;
  FinishReason finish = FinishReason::kNone;
};

Generated Generate(Harness& g, GenerationRequest request) {
  Generated out;
  absl::StatusOr<Sequence*> seq = g.Start(std::move(request));
  EXPECT_TRUE(seq.ok()) << seq.status();
  if (!seq.ok()) return out;
  for (int guard = 0; guard < 10000; ++guard) {
    HarnessOutput step = g.Step(**seq);
    out.ids.insert(out.ids.end(), step.token_ids.begin(), step.token_ids.end());
    if (step.finished) {
      out.stats = step.final_event.speculation;
      out.finish = step.final_event.finish_reason;
      break;
    }
  }
  return out;
}

GenerationRequest Greedy(const std::vector<int32_t>& prompt, int max_tokens, bool speculate,
                         std::vector<int> expansion = {}) {
  GenerationRequest r;
  r.prompt_ids = prompt;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.speculation.disable = !speculate;
  r.speculation.expansion = std::move(expansion);
  return r;
}

class LosslessGreedyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LosslessGreedyTest, SpeculativeEqualsPlainForEveryTreeShape) {
  const std::string draft = GetParam() == "target" ? kTarget
                            : GetParam() == "moe"  ? kDraft
                                                   : kRandomDraft;
  std::unique_ptr<Harness> g = MakeGenerator(draft);
  ASSERT_NE(g, nullptr);
  const std::vector<std::vector<int>> shapes = {
      {1}, {1, 1, 1, 1}, {2, 2, 1}, {4}, {1, 1, 3, 1, 1, 1, 1, 1}};
  for (const std::vector<int32_t>& prompt : Prompts()) {
    const Generated plain = Generate(*g, Greedy(prompt, 40, false));
    ASSERT_EQ(plain.ids.size(), 40u);
    EXPECT_EQ(plain.stats.verify_steps, 0);
    for (const std::vector<int>& shape : shapes) {
      const Generated spec = Generate(*g, Greedy(prompt, 40, true, shape));
      ASSERT_EQ(spec.ids, plain.ids) << "draft " << GetParam() << ", tree of depth "
                                     << shape.size() << ", prompt of " << prompt.size();
      EXPECT_GT(spec.stats.verify_steps, 0);
      EXPECT_LE(spec.stats.verify_steps, 40);
      if (GetParam() == "target") {
        // The target as its own draft: every level is accepted, depth + 1 tokens per step
        // (the last steps are shortened by max_tokens).
        for (float rate : spec.stats.acceptance_by_depth) EXPECT_EQ(rate, 1.0f);
        const int depth = static_cast<int>(shape.size());
        EXPECT_EQ(spec.stats.verify_steps, (40 + depth) / (depth + 1));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Drafts, LosslessGreedyTest,
                         ::testing::Values("random", "moe", "target"));

TEST(SpeculationTest, AgreeingDraftAcceptsTokens) {
  std::unique_ptr<Harness> g = MakeGenerator(kDraft);
  ASSERT_NE(g, nullptr);
  const Generated spec = Generate(*g, Greedy(Prompts()[3], 64, true));
  EXPECT_GT(spec.stats.mean_tokens_per_step, 1.2f);
  EXPECT_EQ(spec.stats.acceptance_by_depth.size(), 8u);
}

TEST(SpeculationTest, StopConditionsCutTheAcceptedPath) {
  std::unique_ptr<Harness> g = MakeGenerator(kTarget, {1, 1, 1, 1, 1, 1, 1});
  ASSERT_NE(g, nullptr);
  const std::vector<int32_t> prompt = Prompts()[2];
  const Generated plain = Generate(*g, Greedy(prompt, 30, false));
  ASSERT_EQ(plain.ids.size(), 30u);
  // max_tokens inside a step of 8 tokens.
  for (int max_tokens : {1, 2, 5, 9, 13}) {
    const Generated spec = Generate(*g, Greedy(prompt, max_tokens, true));
    EXPECT_EQ(spec.finish, FinishReason::kLength);
    ASSERT_EQ(spec.ids.size(), static_cast<size_t>(max_tokens));
    EXPECT_TRUE(std::equal(spec.ids.begin(), spec.ids.end(), plain.ids.begin()));
  }
  // A stop token in the middle of an accepted path: output stops before it.
  const int32_t stop = plain.ids[11];
  size_t first = 0;
  while (plain.ids[first] != stop) ++first;
  GenerationRequest r = Greedy(prompt, 30, true);
  r.stop_token_ids = {stop};
  const Generated cut = Generate(*g, r);
  EXPECT_EQ(cut.finish, FinishReason::kStop);
  EXPECT_EQ(cut.ids, std::vector<int32_t>(plain.ids.begin(), plain.ids.begin() + first));
}

// Reads the K/V rows of logical slots [0, count) of `blocks` in `cache`, every layer.
std::vector<float> CacheRows(KvCache& cache, const SequenceBlocks& blocks, int count) {
  std::vector<float> rows;
  for (int l = 0; l < cache.num_layers(); ++l) {
    for (int s = 0; s < count; ++s) {
      const size_t at = static_cast<size_t>(cache.PhysicalSlot(blocks, s)) * cache.row();
      const float* k = static_cast<const float*>(cache.k(l)) + at;
      const float* v = static_cast<const float*>(cache.v(l)) + at;
      rows.insert(rows.end(), k, k + cache.row());
      rows.insert(rows.end(), v, v + cache.row());
    }
  }
  return rows;
}

// K/V of `tokens` decoded one token at a time by `model` into a fresh cache.
std::vector<float> PlainDecodeRows(Model& model, const std::vector<int32_t>& tokens) {
  static std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend(1);
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(
      backend.get(), model.config().num_layers, model.kv_row(), 16,
      (static_cast<int>(tokens.size()) + 15) / 16);
  EXPECT_TRUE(cache.ok());
  SequenceBlocks blocks;
  EXPECT_TRUE((*cache)->Reserve(blocks, static_cast<int>(tokens.size())).ok());
  ForwardBatch batch;
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    batch.Clear();
    batch.Add(tokens[pos], static_cast<int32_t>(pos),
              (*cache)->PhysicalSlot(blocks, static_cast<int>(pos)), 0,
              static_cast<int32_t>(pos) + 1, 0);
    batch.SetBlockTables({&blocks});
    model.Forward(batch, **cache, nullptr);
  }
  return CacheRows(**cache, blocks, static_cast<int>(tokens.size()));
}

TEST(SpeculationTest, CompactedCachesEqualPlainDecoding) {
  std::unique_ptr<Harness> g = MakeGenerator(kDraft, {2, 2, 1, 1});
  ASSERT_NE(g, nullptr);
  // A one-token prompt: nothing goes through the (batched, non-invariant) prefill, so every
  // cached row was computed by the small-batch kernels.
  GenerationRequest r = Greedy({1}, 200, true);
  absl::StatusOr<Sequence*> seq = g->Start(r);
  ASSERT_TRUE(seq.ok()) << seq.status();
  Sequence& s = **seq;
  int steps_with_rejection = 0;
  for (int step = 0; step < 12; ++step) {
    const size_t before = s.tokens.size();
    ASSERT_FALSE(g->Step(s).finished);
    if (s.tokens.size() - before < 5) ++steps_with_rejection;
  }
  const int committed = static_cast<int>(s.tokens.size()) - 1;  // the root is not cached yet
  const std::vector<int32_t> prefix(s.tokens.begin(), s.tokens.begin() + committed);
  EXPECT_EQ(CacheRows(g->target_cache(), s.target_blocks, committed),
            PlainDecodeRows(g->target(), prefix));
  ASSERT_GE(s.draft_len, committed - 1);
  const std::vector<int32_t> draft_prefix(s.tokens.begin(), s.tokens.begin() + s.draft_len);
  EXPECT_EQ(CacheRows(*g->draft_cache(), s.draft_blocks, s.draft_len),
            PlainDecodeRows(*g->draft(), draft_prefix));
  EXPECT_GT(steps_with_rejection, 0) << "the test should cover partial acceptance";
  g->Cancel(s);
}

// Sampled speculation through the engine: the first emitted token has the target's
// processed distribution (chi-square, threshold p = 1e-9).
TEST(SpeculationTest, SampledFirstTokenHasTargetDistribution) {
  std::unique_ptr<Harness> g = MakeGenerator(kDraft, {3, 2});
  ASSERT_NE(g, nullptr);
  const std::vector<int32_t> prompt = Prompts()[1];
  SamplingParams params;
  params.temperature = 0.8f;
  params.top_k = 12;

  // The target's processed distribution at the prompt's last token, from plain decoding.
  GenerationRequest probe = Greedy(prompt, 1, false);
  absl::StatusOr<Sequence*> seq = g->Start(probe);
  ASSERT_TRUE(seq.ok());
  ForwardBatch batch;
  const int root = static_cast<int>(prompt.size()) - 1;
  batch.Add(prompt[root], root, g->target_cache().PhysicalSlot((*seq)->target_blocks, root), 0,
            root + 1, 0);
  batch.SetBlockTables({&(*seq)->target_blocks});
  batch.logit_rows = {0};
  std::vector<float> logits(g->target().config().vocab_size);
  g->target().Forward(batch, g->target_cache(), logits.data());
  g->Cancel(**seq);
  std::vector<float> p;
  ProcessLogits(logits.data(), static_cast<int>(logits.size()), params, prompt, &p);

  const int trials = 6000;
  std::map<int32_t, int> counts;
  for (int t = 0; t < trials; ++t) {
    GenerationRequest r = Greedy(prompt, 3, true);
    r.sampling = params;
    r.sampling.seed = 1000 + t;
    absl::StatusOr<Sequence*> s = g->Start(r);
    ASSERT_TRUE(s.ok());
    HarnessOutput out = g->Step(**s);
    ASSERT_FALSE(out.token_ids.empty());
    ++counts[out.token_ids[0]];
    if (!out.finished) g->Cancel(**s);
  }
  std::vector<int64_t> observed(p.size());
  for (auto [id, count] : counts) observed[id] = count;
  const ChiSquareResult fit = ChiSquareTest(observed, std::vector<double>(p.begin(), p.end()));
  EXPECT_EQ(fit.impossible, 0) << "a token outside the target's support was emitted";
  EXPECT_GT(fit.p_value, 1e-9) << "chi2 " << fit.statistic << " with " << fit.dof << " dof";
}

}  // namespace
}  // namespace specmoe::engine
