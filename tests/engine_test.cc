// tests/engine_test.cc — the worker loop around the Scheduler (engine/serving/engine.cc).
//
// Requests submitted together run concurrently, taking turns step by step in separate KV
// blocks; each must produce exactly what it produces alone, deliver its tokens in order with
// one final event carrying usage and statistics, and a cancelled request must end as
// cancelled while the others finish.
#include <condition_variable>
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

std::unique_ptr<Engine> MakeEngine() {
  EngineOptions options;
  options.target_dir = kFixtures + "/models/e2e_target";
  options.draft_dir = kFixtures + "/models/e2e_draft";
  options.threads = 1;
  options.max_batch = 3;
  // The fixture's fixed trees (the dynamic policy may well choose plain decoding for models
  // this small; its own tests are tree_policy_test and scheduler_test).
  options.tree_policy = EngineOptions::TreePolicy::kStatic;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

GenerationRequest Request(const Engine& engine, const std::string& prompt, int max_tokens) {
  GenerationRequest r;
  r.prompt_ids = engine.tokenizer().Encode(prompt, true);
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  return r;
}

TEST(EngineTest, ConcurrentRequestsEqualRequestsAlone) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  const std::vector<std::string> prompts = {"In the beginning", "And the LORD said unto Moses",
                                            "Blessed are"};
  std::vector<GenerationRequest> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    requests.push_back(Request(*engine, prompts[i], 30 + 7 * static_cast<int>(i)));
  }
  requests[1].speculation.disable = true;  // one plain request among speculating ones
  requests[2].speculation.expansion = {2, 2, 1};

  // Alone, one after the other.
  std::vector<std::vector<int32_t>> alone;
  std::vector<std::string> alone_text;
  for (const GenerationRequest& r : requests) {
    Collector c;
    ASSERT_TRUE(engine->Submit(r, c.Sink()).ok());
    c.Wait();
    alone.push_back(c.ids());
    alone_text.push_back(c.text());
  }
  // Together.
  std::vector<std::unique_ptr<Collector>> together;
  for (const GenerationRequest& r : requests) {
    together.push_back(std::make_unique<Collector>());
    ASSERT_TRUE(engine->Submit(r, together.back()->Sink()).ok());
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    together[i]->Wait();
    const GenerationEvent& last = together[i]->final_event();
    EXPECT_TRUE(last.status.ok()) << last.status;
    EXPECT_EQ(last.finish_reason, FinishReason::kLength);
    EXPECT_EQ(last.completion_tokens, requests[i].max_tokens);
    EXPECT_EQ(last.prompt_tokens, static_cast<int>(requests[i].prompt_ids.size()));
    EXPECT_EQ(together[i]->ids(), alone[i]) << "request " << i;
    EXPECT_EQ(together[i]->text(), alone_text[i]) << "request " << i;
    EXPECT_GT(together[i]->events_before_final(), 0);
    if (requests[i].speculation.disable) {
      EXPECT_EQ(last.speculation.verify_steps, 0);
    } else {
      EXPECT_GT(last.speculation.verify_steps, 0);
      EXPECT_LT(last.speculation.verify_steps, requests[i].max_tokens);
    }
  }
}

TEST(EngineTest, CancelledRequestEndsAsCancelledAndOthersFinish) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  Collector long_one, short_one;
  absl::StatusOr<std::shared_ptr<RequestHandle>> handle =
      engine->Submit(Request(*engine, "In the beginning", 200), long_one.Sink());
  ASSERT_TRUE(handle.ok());
  ASSERT_TRUE(engine->Submit(Request(*engine, "Blessed are", 20), short_one.Sink()).ok());
  (*handle)->Cancel();
  long_one.Wait();
  short_one.Wait();
  EXPECT_EQ(long_one.final_event().finish_reason, FinishReason::kCancelled);
  EXPECT_LT(long_one.final_event().completion_tokens, 200);
  EXPECT_EQ(short_one.final_event().finish_reason, FinishReason::kLength);
  EXPECT_EQ(short_one.final_event().completion_tokens, 20);
}

TEST(EngineTest, SubmitRejectsBadRequestsWithTheField) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  Collector unused;
  GenerationRequest r = Request(*engine, "Blessed are", 5);
  r.prompt_ids.push_back(engine->vocab_size());
  absl::StatusOr<std::shared_ptr<RequestHandle>> bad = engine->Submit(r, unused.Sink());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("prompt_token_ids"), std::string::npos);
  r = Request(*engine, "Blessed are", 5);
  r.speculation.expansion = {8, 8};
  bad = engine->Submit(r, unused.Sink());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("speculation.expansion"), std::string::npos);
}

}  // namespace
}  // namespace specmoe::engine
