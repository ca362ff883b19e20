// tests/prompt_logprobs_test.cc — prompt logprobs (GenerationRequest::prompt_logprobs) and
// prompt-only requests through the engine (engine/README.md, Prompt logprobs).
//
// On the CPU every kernel is batch-invariant, so the prompt's entries are compared bit for
// bit: chunked prefill (--max-step-tokens 64 over a 200-token prompt) against one chunk, a
// request whose prompt the prefix cache holds against the first one, the speculating engine
// against a plain one, requests preempted mid-prefill by a tight KV budget (each entry sent
// once); and each entry against an independent reference, the logprob of the
// FIRST generated token of a greedy request whose prompt is the tokens before it.
// Label: cpu.
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/serving/engine.h"
#include "gtest/gtest.h"
#include "tests/event_collector.h"

namespace specmoe::engine {
namespace {

const std::string kFixtures = SPECMOE_FIXTURES;

using Collector = EventCollector;

std::unique_ptr<Engine> MakeEngine(int max_step_tokens, bool draft, int kv_cache_tokens = 0) {
  EngineOptions options;
  options.kv_cache_tokens = kv_cache_tokens;
  options.target_dir = kFixtures + "/models/e2e_target";
  if (draft) options.draft_dir = kFixtures + "/models/e2e_draft";
  options.threads = 1;
  options.max_batch = 4;
  options.max_step_tokens = max_step_tokens;
  options.tree_policy = EngineOptions::TreePolicy::kStatic;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

// A 200-token prompt (BOS first), past three chunks of 64.
std::vector<int32_t> LongPrompt(const Engine& engine) {
  std::vector<int32_t> ids = engine.tokenizer().Encode(
      "In the beginning God created the heaven and the earth. And the earth was without form, "
      "and void; and darkness was upon the face of the deep.",
      true);
  const size_t base = ids.size();
  for (size_t i = 0; ids.size() < 200; ++i) ids.push_back(ids[1 + i % (base - 1)]);
  return ids;
}

GenerationRequest PromptRequest(const std::vector<int32_t>& prompt, int top, int max_tokens) {
  GenerationRequest r;
  r.prompt_ids = prompt;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.prompt_logprobs = true;
  r.logprobs = true;
  r.top_logprobs = top;
  return r;
}

Collector* Start(Engine& engine, GenerationRequest r,
                 std::vector<std::unique_ptr<Collector>>& out) {
  out.push_back(std::make_unique<Collector>());
  absl::StatusOr<std::shared_ptr<RequestHandle>> handle =
      engine.Submit(std::move(r), out.back()->Sink());
  EXPECT_TRUE(handle.ok()) << handle.status();
  return out.back().get();
}

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// Entry by entry, bit for bit (logprob and every alternative).
void ExpectIdentical(const std::vector<TokenLogprob>& a, const std::vector<TokenLogprob>& b,
                     const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].token_id, b[i].token_id) << what << " entry " << i;
    EXPECT_TRUE(SameBits(a[i].logprob, b[i].logprob))
        << what << " entry " << i << ": " << a[i].logprob << " vs " << b[i].logprob;
    ASSERT_EQ(a[i].top.size(), b[i].top.size()) << what << " entry " << i;
    for (size_t k = 0; k < a[i].top.size(); ++k) {
      EXPECT_EQ(a[i].top[k].token_id, b[i].top[k].token_id) << what << " entry " << i;
      EXPECT_TRUE(SameBits(a[i].top[k].logprob, b[i].top[k].logprob)) << what << " entry " << i;
    }
  }
}

TEST(PromptLogprobsTest, ChunkedCachedAndSpeculatingEqualOneChunk) {
  std::unique_ptr<Engine> whole = MakeEngine(256, /*draft=*/false);
  std::unique_ptr<Engine> chunked = MakeEngine(64, /*draft=*/true);
  ASSERT_NE(whole, nullptr);
  ASSERT_NE(chunked, nullptr);
  const std::vector<int32_t> prompt = LongPrompt(*whole);
  std::vector<std::unique_ptr<Collector>> runs;
  Collector* reference = Start(*whole, PromptRequest(prompt, 5, 6), runs);
  reference->Wait();
  ASSERT_TRUE(reference->final_event().status.ok()) << reference->final_event().status;
  const std::vector<TokenLogprob>& entries = reference->prompt();
  ASSERT_EQ(entries.size(), prompt.size());
  EXPECT_TRUE(std::isnan(entries[0].logprob));
  EXPECT_TRUE(entries[0].top.empty());
  for (size_t i = 0; i < prompt.size(); ++i) {
    EXPECT_EQ(entries[i].token_id, prompt[i]) << "entry " << i;
    if (i > 0) {
      EXPECT_LE(entries[i].logprob, 0.0f);
      EXPECT_EQ(entries[i].top.size(), 5u);
    }
  }
  EXPECT_FALSE(reference->prompt_after_tokens());
  EXPECT_EQ(reference->final_event().completion_tokens, 6);

  // Chunked, with another request prefilling beside it, then again with the prompt in the
  // prefix cache (which must not supply the owed positions).
  GenerationRequest other = PromptRequest(prompt, 0, 20);
  other.prompt_logprobs = false;
  other.prompt_ids.resize(150);
  Collector* beside = Start(*chunked, other, runs);
  Collector* first = Start(*chunked, PromptRequest(prompt, 5, 6), runs);
  first->Wait();
  beside->Wait();
  Collector* cached = Start(*chunked, PromptRequest(prompt, 5, 6), runs);
  cached->Wait();
  ExpectIdentical(first->prompt(), entries, "chunked");
  ExpectIdentical(cached->prompt(), entries, "cached");
  EXPECT_EQ(cached->final_event().cached_prompt_tokens, 0);
  EXPECT_EQ(first->ids(), reference->ids());
  EXPECT_EQ(cached->ids(), reference->ids());
  ExpectIdentical(first->logprobs(), reference->logprobs(), "generated");

  // A prompt-only request without prompt logprobs: the cache supplies what it can.
  GenerationRequest only = PromptRequest(prompt, 0, 0);
  only.prompt_only = true;
  only.prompt_logprobs = false;
  Collector* plain_only = Start(*chunked, only, runs);
  plain_only->Wait();
  EXPECT_TRUE(plain_only->final_event().status.ok());
  EXPECT_EQ(plain_only->final_event().finish_reason, FinishReason::kLength);
  EXPECT_EQ(plain_only->final_event().completion_tokens, 0);
  EXPECT_TRUE(plain_only->ids().empty());
  EXPECT_TRUE(plain_only->prompt().empty());
  EXPECT_GT(plain_only->final_event().cached_prompt_tokens, 0);
}

TEST(PromptLogprobsTest, PreemptedRequestsSendEachEntryOnce) {
  std::unique_ptr<Engine> whole = MakeEngine(256, /*draft=*/false);
  // Room for one 200-token request and a bit: three together preempt each other mid-prefill.
  std::unique_ptr<Engine> tight = MakeEngine(64, /*draft=*/true, 352);
  ASSERT_NE(whole, nullptr);
  ASSERT_NE(tight, nullptr);
  const std::vector<int32_t> prompt = LongPrompt(*whole);
  std::vector<std::unique_ptr<Collector>> runs;
  Collector* reference = Start(*whole, PromptRequest(prompt, 4, 8), runs);
  reference->Wait();
  std::vector<Collector*> together;
  for (int i = 0; i < 3; ++i) together.push_back(Start(*tight, PromptRequest(prompt, 4, 8), runs));
  for (Collector* c : together) {
    c->Wait();
    ASSERT_TRUE(c->final_event().status.ok()) << c->final_event().status;
    ExpectIdentical(c->prompt(), reference->prompt(), "preempted");
    EXPECT_EQ(c->ids(), reference->ids());
    EXPECT_FALSE(c->prompt_after_tokens());
  }
  EXPECT_GT(tight->stats().preemptions_total.load(), 0);
}

TEST(PromptLogprobsTest, EntriesEqualTheFirstGeneratedTokenOfThePrefix) {
  std::unique_ptr<Engine> engine = MakeEngine(64, /*draft=*/true);
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> prompt = LongPrompt(*engine);
  std::vector<std::unique_ptr<Collector>> runs;
  GenerationRequest only = PromptRequest(prompt, 20, 0);
  only.prompt_only = true;
  Collector* scored = Start(*engine, only, runs);
  scored->Wait();
  ASSERT_TRUE(scored->final_event().status.ok()) << scored->final_event().status;
  EXPECT_EQ(scored->final_event().finish_reason, FinishReason::kLength);
  EXPECT_EQ(scored->final_event().completion_tokens, 0);
  EXPECT_TRUE(scored->ids().empty());
  ASSERT_EQ(scored->prompt().size(), prompt.size());
  for (size_t i : {1, 2, 17, 64, 65, 130, 199}) {
    // Greedy, one token, from the prompt tokens before entry i.
    GenerationRequest r = PromptRequest(
        std::vector<int32_t>(prompt.begin(), prompt.begin() + static_cast<long>(i)), 20, 1);
    r.prompt_logprobs = false;
    r.sampling.temperature = 0;
    Collector* next = Start(*engine, r, runs);
    next->Wait();
    ASSERT_EQ(next->logprobs().size(), 1u);
    const TokenLogprob& want = next->logprobs()[0];
    const TokenLogprob& got = scored->prompt()[i];
    EXPECT_EQ(got.token_id, prompt[i]);
    ASSERT_EQ(got.top.size(), want.top.size()) << "entry " << i;
    for (size_t k = 0; k < want.top.size(); ++k) {
      EXPECT_EQ(got.top[k].token_id, want.top[k].token_id) << "entry " << i;
      EXPECT_TRUE(SameBits(got.top[k].logprob, want.top[k].logprob)) << "entry " << i;
      if (want.top[k].token_id == prompt[i]) {
        EXPECT_TRUE(SameBits(got.logprob, want.top[k].logprob)) << "entry " << i;
      }
    }
  }
  // A 1-token prompt: its one entry, nothing generated.
  GenerationRequest bos = PromptRequest({prompt[0]}, 3, 0);
  bos.prompt_only = true;
  Collector* single = Start(*engine, bos, runs);
  single->Wait();
  ASSERT_EQ(single->prompt().size(), 1u);
  EXPECT_TRUE(std::isnan(single->prompt()[0].logprob));
  EXPECT_EQ(single->final_event().completion_tokens, 0);
}

TEST(PromptLogprobsTest, ABrokenPromptRowFailsTheRequestOnly) {
  EngineOptions options;
  options.target_dir = kFixtures + "/models/nan_lm_head";  // every logit NaN
  options.threads = 1;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<std::unique_ptr<Collector>> runs;
  GenerationRequest r =
      PromptRequest((*engine)->tokenizer().Encode("In the beginning", true), 2, 0);
  r.prompt_only = true;
  Collector* failed = Start(**engine, r, runs);
  failed->Wait();
  EXPECT_EQ(failed->final_event().status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(failed->final_event().status.message().find("NaN logit"), std::string::npos);
  EXPECT_NE(failed->final_event().status.message().find("at prompt position 0"), std::string::npos)
      << failed->final_event().status;
  EXPECT_TRUE(failed->prompt().empty());
  // The engine keeps serving.
  r.prompt_logprobs = false;
  Collector* plain = Start(**engine, r, runs);
  plain->Wait();
  EXPECT_TRUE(plain->final_event().status.ok()) << plain->final_event().status;
}

}  // namespace
}  // namespace specmoe::engine
