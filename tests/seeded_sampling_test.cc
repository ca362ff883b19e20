// tests/seeded_sampling_test.cc — seeded sampling is load-, tree- and draft-invariant, the
// seed is echoed, and per-token logprobs are exact, through the Engine's worker
// loop on the e2e fixture pair and the llama_tiny golden.
//
// Bit-identity: N = 1..12 seeded requests (temperatures 0.5-1.2, top-k, top-p, repetition
// penalty; a greedy one among them) submitted together with speculation on, under static
// and dynamic trees, with a KV budget small enough to force preemptions, each produce
// exactly the tokens and text of the same request run alone with speculation off. The
// default coupled verification guarantees it; rejection sampling would not (its random
// stream follows the trees the load gives).
// Logprobs: equal bit for bit with speculation on and off; one entry per token in every
// event; top entries sorted; the values equal a float64 log-softmax of transformers'
// logits (tests/fixtures/golden/llama_tiny) within 1e-4.
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/serving/engine.h"
#include "gtest/gtest.h"
#include "tests/event_collector.h"
#include "tests/golden_util.h"

namespace specmoe::engine {
namespace {

const std::string kFixtures = SPECMOE_FIXTURES;

using Collector = EventCollector;

std::unique_ptr<Engine> MakeEngine(EngineOptions::TreePolicy policy, int kv_cache_tokens,
                                   bool draft = true) {
  EngineOptions options;
  options.target_dir = kFixtures + "/models/e2e_target";
  if (draft) options.draft_dir = kFixtures + "/models/e2e_draft";
  options.threads = 1;
  options.max_batch = 16;
  options.max_step_tokens = 64;
  options.kv_cache_tokens = kv_cache_tokens;
  options.tree_policy = policy;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

// Request i of the mix: a prompt of a few words, its own seed and sampling controls.
GenerationRequest Mixed(const Engine& engine, int i) {
  static const char* kPrompts[] = {"In the beginning", "And the LORD said unto Moses",
                                   "Blessed are", "And it came to pass", "the people of",
                                   "unto the children of Israel and"};
  GenerationRequest r;
  r.prompt_ids = engine.tokenizer().Encode(kPrompts[i % 6], true);
  r.max_tokens = 20 + 3 * (i % 4);
  r.ignore_eos = true;
  r.sampling.temperature = i == 5 ? 0.0f : 0.5f + 0.1f * static_cast<float>(i % 8);
  r.sampling.seed = 1000 + 17 * static_cast<uint64_t>(i);
  if (i % 3 == 1) r.sampling.top_k = 8 + i;
  if (i % 4 == 2) r.sampling.top_p = 0.9f;
  if (i % 5 == 3) r.sampling.repetition_penalty = 1.3f;
  if (i % 6 == 4) r.speculation.expansion = {2, 2, 1};
  r.top_logprobs = i % 2 == 0 ? 3 : 0;
  return r;
}

struct Output {
  std::vector<int32_t> ids;
  std::string text;
  std::vector<TokenLogprob> logprobs;
};

Output RunAlone(Engine& engine, GenerationRequest r) {
  Collector c(r.wants_logprobs());
  EXPECT_TRUE(engine.Submit(std::move(r), c.Sink()).ok());
  c.Wait();
  EXPECT_TRUE(c.final_event().status.ok()) << c.final_event().status;
  return {c.ids(), c.text(), c.logprobs()};
}

void ExpectSameLogprobs(const std::vector<TokenLogprob>& a, const std::vector<TokenLogprob>& b,
                        const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t t = 0; t < a.size(); ++t) {
    EXPECT_EQ(a[t].token_id, b[t].token_id) << what << " token " << t;
    EXPECT_EQ(a[t].logprob, b[t].logprob) << what << " token " << t;  // bit for bit
    ASSERT_EQ(a[t].top.size(), b[t].top.size()) << what << " token " << t;
    for (size_t k = 0; k < a[t].top.size(); ++k) {
      EXPECT_EQ(a[t].top[k].token_id, b[t].top[k].token_id) << what << " token " << t;
      EXPECT_EQ(a[t].top[k].logprob, b[t].top[k].logprob) << what << " token " << t;
    }
  }
}

class LoadInvarianceTest : public ::testing::TestWithParam<EngineOptions::TreePolicy> {};

TEST_P(LoadInvarianceTest, SeededRequestsTogetherEqualEachAloneWithoutSpeculation) {
  constexpr int kMax = 12;
  std::unique_ptr<Engine> plain = MakeEngine(GetParam(), 0);
  ASSERT_NE(plain, nullptr);
  std::vector<Output> alone;
  for (int i = 0; i < kMax; ++i) {
    GenerationRequest r = Mixed(*plain, i);
    r.speculation.disable = true;
    alone.push_back(RunAlone(*plain, r));
    ASSERT_EQ(alone.back().ids.size(), static_cast<size_t>(r.max_tokens)) << i;
  }
  // 256 KV slots for up to 12 requests of ~30 tokens plus their trees: preemptions.
  std::unique_ptr<Engine> loaded = MakeEngine(GetParam(), 256);
  ASSERT_NE(loaded, nullptr);
  int drafted = 0;
  for (int n = 1; n <= kMax; ++n) {
    std::vector<std::unique_ptr<Collector>> together;
    for (int i = 0; i < n; ++i) {
      const GenerationRequest r = Mixed(*loaded, i);
      together.push_back(std::make_unique<Collector>(r.wants_logprobs()));
      ASSERT_TRUE(loaded->Submit(r, together.back()->Sink()).ok());
    }
    for (int i = 0; i < n; ++i) {
      together[i]->Wait();
      const std::string what = "N = " + std::to_string(n) + ", request " + std::to_string(i);
      const GenerationEvent& last = together[i]->final_event();
      ASSERT_TRUE(last.status.ok()) << what << ": " << last.status;
      EXPECT_EQ(together[i]->ids(), alone[i].ids) << what;
      EXPECT_EQ(together[i]->text(), alone[i].text) << what;
      EXPECT_EQ(together[i]->mismatched_events(), 0) << what;
      ExpectSameLogprobs(together[i]->logprobs(), alone[i].logprobs, what);
      EXPECT_EQ(last.seed, Mixed(*loaded, i).sampling.seed) << what;
      drafted += last.speculation.drafted_tokens;
    }
  }
  EXPECT_GT(drafted, 0) << "speculation should have drafted";
  EXPECT_GT(loaded->stats().preemptions_total.load(), 0) << "the KV budget should preempt";
}

INSTANTIATE_TEST_SUITE_P(Policies, LoadInvarianceTest,
                         ::testing::Values(EngineOptions::TreePolicy::kStatic,
                                           EngineOptions::TreePolicy::kDynamic),
                         [](const ::testing::TestParamInfo<EngineOptions::TreePolicy>& info) {
                           return info.param == EngineOptions::TreePolicy::kStatic ? "Static"
                                                                                    : "Dynamic";
                         });

TEST(SeedEchoTest, ServerChosenSeedIsEchoedAndReproducesTheText) {
  std::unique_ptr<Engine> engine = MakeEngine(EngineOptions::TreePolicy::kStatic, 0);
  ASSERT_NE(engine, nullptr);
  GenerationRequest r = Mixed(*engine, 0);
  r.sampling.seed = 0;  // the server chooses
  Collector first;
  ASSERT_TRUE(engine->Submit(r, first.Sink()).ok());
  first.Wait();
  const uint64_t seed = first.final_event().seed;
  EXPECT_NE(seed, 0u);
  r.sampling.seed = seed;
  r.speculation.disable = true;
  const Output again = RunAlone(*engine, r);
  EXPECT_EQ(again.ids, first.ids());
  EXPECT_EQ(again.text, first.text());
}

TEST(LogprobsTest, TopEntriesAreSortedAndIncludeTheirOwnToken) {
  std::unique_ptr<Engine> engine = MakeEngine(EngineOptions::TreePolicy::kStatic, 0);
  ASSERT_NE(engine, nullptr);
  GenerationRequest r = Mixed(*engine, 5);  // greedy: the token is the top entry
  r.top_logprobs = 20;
  const Output out = RunAlone(*engine, r);
  ASSERT_EQ(out.logprobs.size(), out.ids.size());
  for (size_t t = 0; t < out.logprobs.size(); ++t) {
    const TokenLogprob& lp = out.logprobs[t];
    EXPECT_EQ(lp.token_id, out.ids[t]);
    ASSERT_EQ(lp.top.size(), 20u);
    EXPECT_LE(lp.logprob, 0.0f);
    for (size_t k = 1; k < lp.top.size(); ++k) {
      EXPECT_TRUE(lp.top[k - 1].logprob > lp.top[k].logprob ||
                  (lp.top[k - 1].logprob == lp.top[k].logprob &&
                   lp.top[k - 1].token_id < lp.top[k].token_id));
    }
    EXPECT_EQ(lp.top[0].token_id, lp.token_id);
    EXPECT_EQ(lp.top[0].logprob, lp.logprob);
  }
  // Without logprobs asked for, none are sent.
  r.top_logprobs = 0;
  EXPECT_TRUE(RunAlone(*engine, r).logprobs.empty());
}

TEST(LogprobsTest, MatchAFloat64LogSoftmaxOfTheTransformersLogits) {
  const Golden golden = ReadGolden("llama_tiny");
  const auto prompt = golden.meta["prompt_ids"].get<std::vector<int32_t>>();
  EngineOptions options;
  options.target_dir = kFixtures + "/models/llama_tiny";
  options.threads = 1;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  double worst = 0.0;
  for (size_t len = 1; len <= prompt.size(); ++len) {
    GenerationRequest r;
    r.prompt_ids.assign(prompt.begin(), prompt.begin() + len);
    r.max_tokens = 1;
    r.ignore_eos = true;
    r.logprobs = true;
    r.top_logprobs = 5;
    const Output out = RunAlone(**engine, r);
    ASSERT_EQ(out.logprobs.size(), 1u);
    // float64 log-softmax of the reference row len - 1.
    const float* row = golden.logits.data() + (len - 1) * golden.vocab;
    double max_logit = row[0];
    for (int v = 0; v < golden.vocab; ++v) max_logit = std::max<double>(max_logit, row[v]);
    double total = 0.0;
    for (int v = 0; v < golden.vocab; ++v) total += std::exp(row[v] - max_logit);
    auto reference = [&](int32_t v) { return row[v] - max_logit - std::log(total); };
    const TokenLogprob& lp = out.logprobs[0];
    ASSERT_EQ(lp.top.size(), 5u);
    worst = std::max(worst, std::abs(lp.logprob - reference(lp.token_id)));
    for (const TopLogprob& t : lp.top) {
      worst = std::max(worst, std::abs(t.logprob - reference(t.token_id)));
    }
  }
  std::printf("max |logprob - float64 reference| = %.3g\n", worst);
  EXPECT_LE(worst, 1e-4);
}

}  // namespace
}  // namespace specmoe::engine
