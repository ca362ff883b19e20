// tests/request_validator_test.cc — the one request validator (engine/serving/request_validator.h):
// one table over every rule, each case naming the field its error must
// name, plus the defaults it applies and the token limit that stops tokenizing early.
#include "engine/serving/request_validator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace specmoe::engine {
namespace {

using ::testing::HasSubstr;

constexpr int kVocab = 4096;
constexpr int kContext = 256;

const Tokenizer& TheTokenizer() {
  static const Tokenizer* tokenizer =
      Tokenizer::Load(SPECMOE_FIXTURES "/models/e2e_target")->release();
  return *tokenizer;
}

ModelLimits Model() { return {kVocab, kContext, &TheTokenizer()}; }

RequestLimits Limits() {
  RequestLimits limits;
  limits.default_max_tokens = 12;
  limits.max_tokens_limit = 250;
  return limits;
}

GenerationRequest Valid() {
  GenerationRequest r;
  r.request_id = "id";
  r.prompt_text = "Hello";
  r.max_tokens = 4;
  r.sampling.top_p = 0.0f;               // the wire's "unset"
  r.sampling.repetition_penalty = 0.0f;  // the wire's "unset"
  return r;
}

struct Case {
  const char* name;
  std::function<void(GenerationRequest&, RequestLimits&)> mutate;
  const char* message;  // empty: the request is valid
};

TEST(RequestValidatorTest, EveryRule) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<Case> cases = {
      {"valid", [](auto&, auto&) {}, ""},
      // Sizes first.
      {"request_id 256 bytes", [](auto& r, auto&) { r.request_id = std::string(256, 'x'); }, ""},
      {"request_id 257 bytes", [](auto& r, auto&) { r.request_id = std::string(257, 'x'); },
       "request_id is 257 bytes; at most 256"},
      {"16 stop strings", [](auto& r, auto&) { r.stop.assign(16, "x"); }, ""},
      {"17 stop strings", [](auto& r, auto&) { r.stop.assign(17, "x"); }, "stop has 17"},
      {"empty stop string", [](auto& r, auto&) { r.stop = {"a", ""}; }, "stop[1] is empty"},
      {"stop string 257 bytes", [](auto& r, auto&) { r.stop = {std::string(257, 's')}; },
       "stop[0] is 257 bytes"},
      {"prompt over --max-prompt-bytes",
       [](auto& r, auto& l) {
         l.max_prompt_bytes = 10;
         r.prompt_text = "Hello world";
       },
       "prompt is 11 bytes; the server's limit is 10 (--max-prompt-bytes)"},
      {"prompt over the default byte limit",
       [](auto& r, auto&) { r.prompt_text = std::string(16 * kContext + 1, 'a'); },
       "(--max-prompt-bytes)"},
      // The prompt.
      {"both prompts", [](auto& r, auto&) { r.prompt_ids = {1}; }, "both are"},
      {"neither prompt", [](auto& r, auto&) { r.prompt_text.clear(); }, "neither is"},
      {"id above the vocabulary",
       [](auto& r, auto&) {
         r.prompt_text.clear();
         r.prompt_ids = {1, kVocab};
       },
       "prompt_token_ids[1] = 4096 is outside the vocabulary"},
      {"negative id",
       [](auto& r, auto&) {
         r.prompt_text.clear();
         r.prompt_ids = {-1};
       },
       "prompt_token_ids[0] = -1"},
      {"ids fill the context",
       [](auto& r, auto&) {
         r.prompt_text.clear();
         r.prompt_ids.assign(kContext, 100);
       },
       "prompt_token_ids is 256 tokens; the context holds 256"},
      {"ids one short of the context",
       [](auto& r, auto&) {
         r.prompt_text.clear();
         r.prompt_ids.assign(kContext - 1, 100);
       },
       ""},
      {"text longer than the context",
       [](auto& r, auto&) {
         r.prompt_text.clear();
         for (int i = 0; i < kContext; ++i) r.prompt_text += " world";
       },
       "prompt is more than 255 tokens; the context holds 256"},
      {"ids over --max-prompt-tokens",
       [](auto& r, auto& l) {
         l.max_prompt_tokens = 8;
         r.prompt_text.clear();
         r.prompt_ids.assign(9, 100);
       },
       "prompt_token_ids is 9 tokens; the server's limit is 8 (--max-prompt-tokens)"},
      {"text over --max-prompt-tokens",
       [](auto& r, auto& l) {
         l.max_prompt_tokens = 2;
         r.prompt_text = "Hello world again";
       },
       "prompt is more than 2 tokens; the server's limit is 2 (--max-prompt-tokens)"},
      // Lengths.
      {"max_tokens at the limit", [](auto& r, auto&) { r.max_tokens = 250; }, ""},
      {"max_tokens above the limit", [](auto& r, auto&) { r.max_tokens = 251; },
       "max_tokens 251 exceeds the server's limit of 250 (--max-tokens-limit)"},
      // Sampling.
      {"negative temperature", [](auto& r, auto&) { r.sampling.temperature = -0.5f; },
       "sampling.temperature"},
      {"NaN temperature", [nan](auto& r, auto&) { r.sampling.temperature = nan; },
       "sampling.temperature"},
      {"infinite temperature", [inf](auto& r, auto&) { r.sampling.temperature = inf; },
       "sampling.temperature"},
      {"tiny temperature", [](auto& r, auto&) { r.sampling.temperature = 1e-45f; }, ""},
      {"top_p 1", [](auto& r, auto&) { r.sampling.top_p = 1.0f; }, ""},
      {"top_p above 1", [](auto& r, auto&) { r.sampling.top_p = 1.5f; }, "sampling.top_p"},
      {"negative top_p", [](auto& r, auto&) { r.sampling.top_p = -0.1f; }, "sampling.top_p"},
      {"NaN top_p", [nan](auto& r, auto&) { r.sampling.top_p = nan; }, "sampling.top_p"},
      {"negative top_k", [](auto& r, auto&) { r.sampling.top_k = -1; }, "sampling.top_k"},
      {"negative penalty", [](auto& r, auto&) { r.sampling.repetition_penalty = -1.0f; },
       "sampling.repetition_penalty"},
      {"infinite penalty", [inf](auto& r, auto&) { r.sampling.repetition_penalty = inf; },
       "sampling.repetition_penalty"},
      {"NaN penalty", [nan](auto& r, auto&) { r.sampling.repetition_penalty = nan; },
       "sampling.repetition_penalty"},
      {"tiny penalty (the maths is clamped)",
       [](auto& r, auto&) { r.sampling.repetition_penalty = 1e-38f; }, ""},
      // Logprobs.
      {"top_logprobs 20", [](auto& r, auto&) { r.top_logprobs = 20; }, ""},
      {"top_logprobs 21", [](auto& r, auto&) { r.top_logprobs = 21; }, "top_logprobs"},
      {"negative top_logprobs", [](auto& r, auto&) { r.top_logprobs = -1; }, "top_logprobs"},
      // Stop token ids.
      {"stop token id above the vocabulary", [](auto& r, auto&) { r.stop_token_ids = {kVocab}; },
       "stop_token_ids[0] = 4096"},
      // Speculation: the same shape rules as --tree.
      {"zero expansion", [](auto& r, auto&) { r.speculation.expansion = {2, 0}; },
       "speculation.expansion[1] = 0"},
      {"expansion entry above 8", [](auto& r, auto&) { r.speculation.expansion = {9}; },
       "speculation.expansion[0] = 9"},
      {"expansion over 64 nodes", [](auto& r, auto&) { r.speculation.expansion = {8, 8}; },
       "speculation.expansion[1]"},
      {"expansion deeper than 16",
       [](auto& r, auto&) { r.speculation.expansion.assign(17, 1); }, "speculation.expansion"},
  };
  for (const Case& c : cases) {
    GenerationRequest request = Valid();
    RequestLimits limits = Limits();
    c.mutate(request, limits);
    const absl::Status status = PrepareRequest(request, limits, Model());
    if (std::string(c.message).empty()) {
      EXPECT_TRUE(status.ok()) << c.name << ": " << status;
    } else {
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.name;
      EXPECT_THAT(status.message(), HasSubstr(c.message)) << c.name;
    }
  }
}

TEST(RequestValidatorTest, AppliesTheDefaultsAndTokenizesWithBos) {
  GenerationRequest request = Valid();
  request.max_tokens = 0;
  request.sampling.top_k = 1 << 30;
  ASSERT_TRUE(PrepareRequest(request, Limits(), Model()).ok());
  EXPECT_EQ(request.max_tokens, 12);
  EXPECT_EQ(request.sampling.top_p, 1.0f);
  EXPECT_EQ(request.sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(request.sampling.top_k, kVocab);
  EXPECT_NE(request.sampling.seed, 0u);
  EXPECT_EQ(request.prompt_ids, TheTokenizer().Encode("Hello", true));
  EXPECT_TRUE(request.prompt_text.empty());
}

TEST(RequestValidatorTest, TokenizeObeysThePromptLimits) {
  RequestLimits limits = Limits();
  absl::StatusOr<std::vector<int32_t>> ids = TokenizeWithinLimits("Hello", true, limits, Model());
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, TheTokenizer().Encode("Hello", true));
  limits.max_prompt_bytes = 4;
  EXPECT_THAT(TokenizeWithinLimits("Hello", true, limits, Model()).status().message(),
              HasSubstr("text is 5 bytes; the server's limit is 4 (--max-prompt-bytes)"));
  std::string long_text;
  for (int i = 0; i < kContext; ++i) long_text += " world";
  EXPECT_THAT(TokenizeWithinLimits(long_text, false, Limits(), Model()).status().message(),
              HasSubstr("text is more than 256 tokens"));
}

TEST(RequestValidatorTest, EncodeAtMostStopsEarlyAndOtherwiseEqualsEncode) {
  const Tokenizer& tokenizer = TheTokenizer();
  std::string text;
  while (text.size() < 20000) text += "And God said, Let there be light: and there was light. ";
  const std::vector<int32_t> all = tokenizer.Encode(text, true);
  std::optional<std::vector<int32_t>> fits = tokenizer.EncodeAtMost(text, true, all.size());
  ASSERT_TRUE(fits.has_value());
  EXPECT_EQ(*fits, all);
  EXPECT_FALSE(tokenizer.EncodeAtMost(text, true, all.size() - 1).has_value());
  EXPECT_FALSE(tokenizer.EncodeAtMost(text, true, 255).has_value());
}

}  // namespace
}  // namespace specmoe::engine
