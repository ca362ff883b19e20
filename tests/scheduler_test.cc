// tests/scheduler_test.cc — many requests in one step (engine/serving/scheduler.h,
// §2.2-2.3). On the CPU every kernel is batch-invariant, so what a request produces must not
// depend on what else runs: batched (submitted together or staggered), chunked and
// preempted outputs equal the request alone, token for token and byte for byte.
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/serving/engine.h"
#include "engine/serving/model_set.h"
#include "engine/serving/request_validator.h"
#include "engine/serving/scheduler.h"
#include "engine/serving/sequence.h"
#include "gtest/gtest.h"
#include "tests/scheduler_driver.h"

namespace specmoe::engine {
namespace {

const std::string kFixtures = SPECMOE_FIXTURES;

using Result = DriverResult;
using Driver = SchedulerDriver;

EngineOptions Options(int max_step_tokens = 64, int kv_cache_tokens = 0) {
  EngineOptions options;
  options.target_dir = kFixtures + "/models/e2e_target";
  options.draft_dir = kFixtures + "/models/e2e_draft";
  options.threads = 1;
  options.max_batch = 16;
  options.max_step_tokens = max_step_tokens;
  options.kv_cache_tokens = kv_cache_tokens;
  // Sampled requests' trees would otherwise follow the load (their outputs stay exact in
  // distribution, not in bits); greedy ones are checked under the dynamic policy below.
  options.tree_policy = EngineOptions::TreePolicy::kStatic;
  return options;
}

// A text of about `words` words from a fixed list (the fixture's tokenizer knows them).
std::string Words(int words, int seed) {
  static const char* kWords[] = {"the", "LORD", "said", "unto", "Moses", "and", "in",
                                 "beginning", "God", "created", "heaven", "earth", "of",
                                 "Israel", "hear", "blessed", "are", "they", "that"};
  std::string text;
  for (int i = 0; i < words; ++i) {
    if (i > 0) text += ' ';
    text += kWords[(seed * 7 + i * 5) % 19];
  }
  return text;
}

// Request i of a mixed workload: prompt lengths from 2 to ~150 tokens (the long ones
// prefill in several chunks of a 64-token step), speculation on and off, four trees,
// greedy and seeded sampling, stop strings.
GenerationRequest Mixed(const Tokenizer& tokenizer, int i, const std::string& stop = "") {
  static const std::vector<std::vector<int>> kTrees = {
      {1, 1, 3, 1, 1, 1, 1, 1}, {2, 2, 1}, {1}, {4}};
  GenerationRequest r;
  r.request_id = "r" + std::to_string(i);
  const int words[] = {1, 3, 120, 8, 40, 2, 150, 12, 5, 90, 20, 4};
  r.prompt_ids = tokenizer.Encode(Words(words[i % 12], i), true);
  r.max_tokens = 24 + (i * 5) % 17;
  r.ignore_eos = true;
  r.speculation.disable = i % 3 == 2;
  r.speculation.expansion = kTrees[i % 4];
  if (i % 2 == 1) {
    r.sampling.temperature = 0.8f;
    r.sampling.top_k = 20;
    r.sampling.seed = 100 + i;
  }
  if (i % 4 == 3) r.sampling.repetition_penalty = 1.3f;
  if (!stop.empty()) r.stop = {stop};
  return r;
}

void ExpectSame(const Result& batched, const Result& alone, const std::string& what) {
  ASSERT_TRUE(batched.finished) << what;
  EXPECT_TRUE(batched.status.ok()) << what << ": " << batched.status;
  EXPECT_EQ(batched.ids, alone.ids) << what;
  EXPECT_EQ(batched.text, alone.text) << what;
  EXPECT_EQ(batched.finish, alone.finish) << what;
  EXPECT_EQ(batched.speculation.verify_steps, alone.speculation.verify_steps) << what;
  EXPECT_EQ(batched.speculation.accepted_tokens, alone.speculation.accepted_tokens) << what;
}

TEST(SchedulerTest, BatchedEqualsAloneForOneToTwelveRequests) {
  Driver alone(Options());
  std::vector<Result> reference;
  for (int i = 0; i < 12; ++i) reference.push_back(alone.Alone(Mixed(alone.tokenizer(), i)));
  // Stop strings taken from the middle of each request's own text.
  std::vector<std::string> stops;
  std::vector<Result> stopped_reference;
  for (int i = 0; i < 12; ++i) {
    const std::string& text = reference[i].text;
    stops.push_back(i % 3 == 0 && text.size() > 12 ? text.substr(text.size() / 2, 3) : "");
    stopped_reference.push_back(alone.Alone(Mixed(alone.tokenizer(), i, stops[i])));
  }
  for (int n = 1; n <= 12; ++n) {
    for (bool staggered : {false, true}) {
      Driver batched(Options());
      std::vector<Result> results(n);
      for (int i = 0; i < n; ++i) {
        batched.Add(Mixed(batched.tokenizer(), i, stops[i]), &results[i]);
        if (staggered) batched.Step();
      }
      int max_decoding = 0;
      while (batched.scheduler().has_work()) {
        max_decoding = std::max(max_decoding, batched.Step().decoding);
      }
      if (n >= 4) EXPECT_GT(max_decoding, 1) << "requests should share steps";
      for (int i = 0; i < n; ++i) {
        ExpectSame(results[i], stopped_reference[i],
                   "request " + std::to_string(i) + " of " + std::to_string(n) +
                       (staggered ? " staggered" : " together"));
      }
    }
  }
  EXPECT_EQ(alone.target_cache().free_blocks() + alone.scheduler().prefix_cache().cached_blocks(),
            alone.target_cache().num_blocks());
}

TEST(SchedulerTest, DynamicTreesAreLosslessForGreedyRequests) {
  Driver reference_driver(Options());
  EngineOptions dynamic = Options();
  dynamic.tree_policy = EngineOptions::TreePolicy::kDynamic;
  Driver batched(dynamic);
  std::vector<Result> results(12);
  std::vector<int> greedy;
  for (int i = 0; i < 12; i += 2) greedy.push_back(i);
  for (int i : greedy) batched.Add(Mixed(batched.tokenizer(), i), &results[i]);
  batched.RunAll();
  for (int i : greedy) {
    const Result alone = reference_driver.Alone(Mixed(reference_driver.tokenizer(), i));
    ASSERT_TRUE(results[i].finished);
    EXPECT_EQ(results[i].ids, alone.ids) << "request " << i;
    EXPECT_EQ(results[i].text, alone.text) << "request " << i;
  }
}

TEST(SchedulerTest, PreemptionIsInvisible) {
  // 16 blocks of 16 slots: each request needs up to ~8 as it grows, so 8 of them cannot
  // all stay resident and the most recently admitted ones are preempted and recomputed.
  Driver ample(Options());
  Driver tight(Options(64, 256));
  std::vector<Result> results(8);
  for (int i = 0; i < 8; ++i) {
    GenerationRequest r = Mixed(tight.tokenizer(), i);
    r.prompt_ids.resize(std::min<size_t>(r.prompt_ids.size(), 40));
    tight.Add(r, &results[i]);
  }
  tight.RunAll();
  EXPECT_GT(tight.scheduler().preemptions(), 0) << "the budget should force preemptions";
  for (int i = 0; i < 8; ++i) {
    GenerationRequest r = Mixed(ample.tokenizer(), i);
    r.prompt_ids.resize(std::min<size_t>(r.prompt_ids.size(), 40));
    ExpectSame(results[i], ample.Alone(r), "request " + std::to_string(i));
  }
  EXPECT_EQ(tight.target_cache().free_blocks() + tight.scheduler().prefix_cache().cached_blocks(),
            tight.target_cache().num_blocks());
}

// Under KV pressure a step that preempts admits nobody; every victim held blocks
// (preempting a request that holds none frees nothing); a preempted request is not
// preempted again before it has emitted a token; the gauges count preempted requests apart
// from the queue (which bounds new submissions). Outputs still equal each request alone.
TEST(SchedulerTest, PreemptionTakesBlockHoldersThatProgressedAndNeverAdmits) {
  Driver ample(Options());
  Driver tight(Options(64, 256));
  const int n = 12;
  std::vector<Result> results(n);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < n; ++i) {
    GenerationRequest r = Mixed(tight.tokenizer(), i);
    r.prompt_ids.resize(std::min<size_t>(r.prompt_ids.size(), 40));
    requests.push_back(r);
    tight.Add(r, &results[i]);
  }
  struct Seen {
    int preemptions = 0;
    size_t tokens_at_preemption = 0;
  };
  std::map<const Sequence*, Seen> seen;
  int steps_preempting = 0;
  for (int guard = 0; guard < 100000 && tight.scheduler().has_work(); ++guard) {
    std::set<const Sequence*> holders;
    for (const auto& seq : tight.scheduler().running()) {
      if (!seq->target_blocks.blocks.empty()) holders.insert(seq.get());
    }
    const StepReport step = tight.Step();
    if (step.preempted > 0) {
      ++steps_preempting;
      EXPECT_EQ(step.admitted, 0) << "step " << guard;
    }
    int preempted_waiting = 0;
    auto check = [&](const Sequence& seq) {
      Seen& s = seen[&seq];
      if (seq.preemptions > s.preemptions) {
        EXPECT_EQ(seq.preemptions, s.preemptions + 1) << "step " << guard;
        EXPECT_TRUE(holders.count(&seq)) << "a victim that held no blocks, step " << guard;
        if (s.preemptions > 0) {
          EXPECT_GT(seq.tokens.size(), s.tokens_at_preemption)
              << "preempted again before any progress, step " << guard;
        }
        s.preemptions = seq.preemptions;
        s.tokens_at_preemption = seq.tokens.size();
      }
    };
    for (const auto& seq : tight.scheduler().running()) check(*seq);
    for (const auto& seq : tight.scheduler().waiting()) {
      check(*seq);
      preempted_waiting += seq->admitted >= 0 ? 1 : 0;
    }
    EXPECT_EQ(tight.stats().preempted.load(), preempted_waiting);
    EXPECT_EQ(tight.stats().queue_depth.load(),
              static_cast<int>(tight.scheduler().waiting().size()) - preempted_waiting);
  }
  ASSERT_FALSE(tight.scheduler().has_work());
  EXPECT_GT(steps_preempting, 0) << "the budget should force preemptions";
  // Thrash bound: at most a few preemptions per request on this load.
  EXPECT_LE(tight.scheduler().preemptions(), 2 * n);
  for (int i = 0; i < n; ++i) {
    ExpectSame(results[i], ample.Alone(requests[i]), "request " + std::to_string(i));
  }
  EXPECT_EQ(tight.stats().kv_blocks_used.load(), 0);
}

TEST(SchedulerTest, ALongPromptDelaysRunningStreamsByAtMostOneChunkPerStep) {
  const int step_tokens = 64;
  Driver driver(Options(step_tokens));
  std::vector<Result> streams(4);
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r;
    r.prompt_ids = driver.tokenizer().Encode(Words(4, i), true);
    r.max_tokens = 60;
    r.ignore_eos = true;
    r.speculation.expansion = {1, 1};
    driver.Add(r, &streams[i]);
  }
  // Let the four streams start decoding.
  for (int s = 0; s < 3; ++s) driver.Step();
  ASSERT_EQ(driver.Step().decoding, 4);
  Result long_prompt;
  GenerationRequest r;
  r.prompt_ids = driver.tokenizer().Encode(Words(160, 1), true);
  ASSERT_GT(static_cast<int>(r.prompt_ids.size()), 2 * step_tokens);
  r.max_tokens = 8;
  driver.Add(r, &long_prompt);
  int prefill_steps = 0;
  int prefilled = 0;
  while (prefilled < static_cast<int>(r.prompt_ids.size()) - 1) {
    const std::vector<int> before = {streams[0].events, streams[1].events, streams[2].events,
                                     streams[3].events};
    const StepReport step = driver.Step();
    // Every stream got its step, and the step carried at most one chunk.
    EXPECT_EQ(step.decoding, 4) << "step " << prefill_steps;
    EXPECT_EQ(step.prefilling, 1);
    EXPECT_LE(step.prefill_tokens + step.tree_tokens, step_tokens);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(streams[i].events, before[i] + 1);
    prefilled += step.prefill_tokens;
    ++prefill_steps;
    ASSERT_LT(prefill_steps, 20);
  }
  EXPECT_GE(prefill_steps, 3) << "the prompt should take several chunks";
  driver.RunAll();
  EXPECT_EQ(long_prompt.ids.size(), 8u);
}

// An operator's flags (--max-batch 32 or 64, --max-step-tokens 64), 32 streams of
// 5-token prompts and one 200-token prompt at once, under the dynamic policy. Forced
// exploration nodes used to be added after the policy had used the whole tree room, so
// the target forward outgrew max_step_tokens and the process aborted in Runner.
TEST(SchedulerTest, ManyShortStreamsAndALongPromptStayWithinTheStepBudget) {
  for (int max_batch : {32, 64}) {
    EngineOptions options = Options(64);
    options.max_batch = max_batch;
    options.tree_policy = EngineOptions::TreePolicy::kDynamic;
    Driver driver(options);
    std::vector<Result> results(33);
    for (int i = 0; i < 32; ++i) {
      GenerationRequest r;
      r.prompt_ids = driver.tokenizer().Encode(Words(4, i), true);
      r.prompt_ids.resize(std::min<size_t>(r.prompt_ids.size(), 5));
      r.max_tokens = 24;
      r.ignore_eos = true;
      driver.Add(r, &results[i]);
    }
    GenerationRequest long_prompt;
    long_prompt.prompt_ids = driver.tokenizer().Encode(Words(400, 3), true);
    long_prompt.prompt_ids.resize(200);
    long_prompt.max_tokens = 16;
    long_prompt.ignore_eos = true;
    driver.Add(long_prompt, &results[32]);
    for (int guard = 0; guard < 10000 && driver.scheduler().has_work(); ++guard) {
      const StepReport step = driver.Step();
      ASSERT_LE(step.tree_tokens + step.prefill_tokens, 64) << "max_batch " << max_batch;
    }
    for (int i = 0; i < 33; ++i) {
      ASSERT_TRUE(results[i].finished) << i;
      EXPECT_TRUE(results[i].status.ok()) << results[i].status;
      EXPECT_EQ(results[i].ids.size(), i < 32 ? 24u : 16u) << i;
    }
  }
}

// Property: whatever the batch, the step budget, the trees and the prompts, no step's
// target forward holds more than max_step_tokens tokens (the Runner's check would abort
// otherwise), and every request completes.
TEST(SchedulerTest, NoStepExceedsItsBudgetForRandomLoads) {
  std::mt19937 rng(16);
  for (int trial = 0; trial < 16; ++trial) {
    EngineOptions options = Options(std::uniform_int_distribution<int>(64, 96)(rng));
    options.max_batch = std::uniform_int_distribution<int>(1, 64)(rng);
    options.tree_policy = trial % 3 == 2 ? EngineOptions::TreePolicy::kStatic
                                         : EngineOptions::TreePolicy::kDynamic;
    Driver driver(options);
    const int n = std::uniform_int_distribution<int>(1, 64)(rng);
    std::vector<Result> results(n);
    for (int i = 0; i < n; ++i) {
      GenerationRequest r;
      const int len = std::uniform_int_distribution<int>(1, 4)(rng) == 1
                          ? std::uniform_int_distribution<int>(60, 180)(rng)
                          : std::uniform_int_distribution<int>(1, 12)(rng);
      r.prompt_ids = driver.tokenizer().Encode(Words(len * 2, i + trial), true);
      r.prompt_ids.resize(std::min<size_t>(r.prompt_ids.size(), len));
      r.max_tokens = std::uniform_int_distribution<int>(1, 30)(rng);
      r.ignore_eos = true;
      // Random expansions of up to 64 nodes (max_step_tokens >= 64 >= any tree).
      std::vector<int> shape;
      int nodes = 1, width = 1;
      for (int d = std::uniform_int_distribution<int>(0, 6)(rng); d > 0; --d) {
        const int k = std::uniform_int_distribution<int>(1, 3)(rng);
        if (nodes + width * k > 64) break;
        width *= k;
        nodes += width;
        shape.push_back(k);
      }
      r.speculation.expansion = shape;
      r.speculation.disable = shape.empty();
      if (i % 3 == 1) {
        r.sampling.temperature = 0.7f;
        r.sampling.seed = i;
      }
      driver.Add(r, &results[i]);
    }
    for (int guard = 0; guard < 20000 && driver.scheduler().has_work(); ++guard) {
      const StepReport step = driver.Step();
      ASSERT_LE(step.tree_tokens + step.prefill_tokens, options.max_step_tokens)
          << "trial " << trial;
    }
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(results[i].finished) << "trial " << trial << " request " << i;
      EXPECT_TRUE(results[i].status.ok()) << results[i].status;
    }
  }
}

// The tree room the dynamic policy does not use goes to the prompt chunks of the
// same step, so while a long prompt has at least a step's worth left every step is full.
TEST(SchedulerTest, UnusedTreeRoomGoesToPrefillInTheSameStep) {
  const int step_tokens = 64;
  EngineOptions options = Options(step_tokens);
  options.tree_policy = EngineOptions::TreePolicy::kDynamic;
  Driver driver(options);
  std::vector<Result> streams(4);
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r;
    r.prompt_ids = driver.tokenizer().Encode(Words(4, i), true);
    r.max_tokens = 60;
    r.ignore_eos = true;
    driver.Add(r, &streams[i]);
  }
  for (int s = 0; s < 3; ++s) driver.Step();
  Result long_prompt;
  GenerationRequest r;
  r.prompt_ids = driver.tokenizer().Encode(Words(400, 2), true);
  r.prompt_ids.resize(230);
  r.max_tokens = 8;
  r.ignore_eos = true;
  driver.Add(r, &long_prompt);
  int prefilled = 0;
  int full_steps = 0;
  while (prefilled < static_cast<int>(r.prompt_ids.size()) - 1) {
    const int left = static_cast<int>(r.prompt_ids.size()) - 1 - prefilled;
    const StepReport step = driver.Step();
    EXPECT_LE(step.prefill_tokens + step.tree_tokens, step_tokens);
    if (left >= step_tokens) {
      EXPECT_EQ(step.prefill_tokens + step.tree_tokens, step_tokens)
          << "a step with room left while " << left << " prompt tokens wait";
      ++full_steps;
    }
    prefilled += step.prefill_tokens;
  }
  EXPECT_GE(full_steps, 2);
  driver.RunAll();
  EXPECT_EQ(long_prompt.ids.size(), 8u);
  for (const Result& stream : streams) EXPECT_EQ(stream.ids.size(), 60u);
}

TEST(SchedulerTest, ARequestThatCouldNeverFitIsRefusedAtSubmit) {
  EngineOptions options = Options(64, 128);
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  GenerationRequest r;
  r.prompt_ids = {1, 5, 6};
  r.max_tokens = 100;  // 3 + 100 + 64 tree slots > 128
  absl::StatusOr<std::shared_ptr<RequestHandle>> handle =
      (*engine)->Submit(r, [](GenerationEvent) {});
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(handle.status().message().find("KV slots"), std::string::npos);
}

}  // namespace
}  // namespace specmoe::engine
