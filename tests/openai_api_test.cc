// tests/openai_api_test.cc — the OpenAI JSON conversion (server/openai_api.h): every field
// lands in the engine request as sent (defaults left to the validator, except OpenAI's own:
// temperature 1), JSON type errors and unsupported fields are INVALID_ARGUMENT naming the
// field (ApiError.param), the engine's messages get their field named in OpenAI's terms, and
// the statuses map to OpenAI's HTTP codes and error bodies.
#include "server/openai_api.h"

#include <gtest/gtest.h>

#include <limits>

namespace specmoe::server {
namespace {

using nlohmann::json;

TEST(OpenAiApiTest, CompletionFieldsConvert) {
  absl::StatusOr<OpenAiRequest> r = ParseCompletionRequest(json::parse(R"({
      "model": "m", "prompt": "Hello", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
      "top_k": 40, "seed": 11, "stop": ["a", "b"], "n": 3, "echo": true, "stream": true,
      "stream_options": {"include_usage": true}, "repetition_penalty": 1.1,
      "ignore_eos": true, "stop_token_ids": [2], "return_token_ids": true,
      "speculation": {"disable": true, "expansion": [1, 2]}, "user": "ignored",
      "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "best_of": 1})"));
  ASSERT_TRUE(r.ok()) << r.status();
  const engine::GenerationRequest& g = r->generation;
  EXPECT_EQ(r->model, "m");
  EXPECT_EQ(g.prompt_text, "Hello");
  EXPECT_EQ(g.max_tokens, 7);
  EXPECT_FLOAT_EQ(g.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(g.sampling.top_p, 0.9f);
  EXPECT_EQ(g.sampling.top_k, 40);
  EXPECT_EQ(g.sampling.seed, 11u);
  EXPECT_FLOAT_EQ(g.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(g.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(g.stop_token_ids, std::vector<int32_t>{2});
  EXPECT_TRUE(g.ignore_eos);
  EXPECT_TRUE(g.speculation.disable);
  EXPECT_EQ(g.speculation.expansion, (std::vector<int>{1, 2}));
  EXPECT_EQ(r->n, 3);
  EXPECT_TRUE(r->echo && r->stream && r->include_usage && r->return_token_ids);
  EXPECT_FALSE(r->logprobs.enabled);
}

TEST(OpenAiApiTest, DefaultsAndTokenPrompts) {
  absl::StatusOr<OpenAiRequest> r =
      ParseCompletionRequest(json::parse(R"({"prompt": [1, 5, 9], "stop": "x", "top_k": -1})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->generation.prompt_ids, (std::vector<int32_t>{1, 5, 9}));
  EXPECT_FLOAT_EQ(r->generation.sampling.temperature, 1.0f);  // OpenAI's default
  EXPECT_EQ(r->generation.max_tokens, 0);                      // the server's default
  EXPECT_EQ(r->generation.sampling.top_k, 0);
  EXPECT_EQ(r->generation.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(r->n, 1);
}

// The param an invalid body is refused for.
std::string RefusedParam(const char* body, bool chat = false) {
  absl::StatusOr<OpenAiRequest> r =
      chat ? ParseChatRequest(json::parse(body)) : ParseCompletionRequest(json::parse(body));
  const absl::Status status = r.status();
  if (status.ok()) return "<accepted>";
  const ApiError error = ToApiError(status);
  EXPECT_EQ(error.http_status, 400) << body;
  // The message names the field too (its first word, as in "messages[0].content").
  const std::string word = error.param.substr(0, error.param.find_first_of("_.["));
  EXPECT_NE(status.message().find(word), std::string::npos) << status.message();
  return error.param;
}

TEST(OpenAiApiTest, RefusalsNameTheField) {
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "temperature": "hot"})"), "temperature");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "max_tokens": 1.5})"), "max_tokens");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "max_tokens": -1})"), "max_tokens");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "n": 9})"), "n");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "n": 0})"), "n");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "seed": -3})"), "seed");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "presence_penalty": 0.1})"), "presence_penalty");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "frequency_penalty": -1})"), "frequency_penalty");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "logit_bias": {"5": 1}})"), "logit_bias");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "best_of": 2})"), "best_of");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "suffix": "y"})"), "suffix");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "stop": [1]})"), "stop");
  EXPECT_EQ(RefusedParam(R"({"prompt": ["a", "b"]})"), "prompt");
  EXPECT_EQ(RefusedParam(R"({"prompt": {"a": 1}})"), "prompt");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "stream_options": {"include_usage": true}})"),
            "stream_options");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "speculation": {"expansion": [-1]}})"),
            "speculation.expansion");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "logprobs": 21})"), "logprobs");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "logprobs": 0})"), "<accepted>");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "logprobs": 20})"), "<accepted>");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "logprobs": 0, "echo": true})"), "<accepted>");
  EXPECT_EQ(RefusedParam(R"([1, 2])"), "");
  EXPECT_EQ(RefusedParam(R"({"messages": []})", true), "messages");
  EXPECT_EQ(RefusedParam(R"({"messages": [{"role": "user", "content": 5}]})", true),
            "messages[0].content");
  EXPECT_EQ(RefusedParam(R"({"messages": [{"role": "user", "content": "a"}], "tools": []})",
                         true),
            "tools");
  EXPECT_EQ(RefusedParam(R"({"messages": [{"role": "user", "content": "a"}],
                             "max_tokens": 3, "max_completion_tokens": 4})", true),
            "max_completion_tokens");
  EXPECT_EQ(RefusedParam(R"({"messages": [{"role": "user", "content": "a"}],
                             "top_logprobs": 2})", true),
            "top_logprobs");
  EXPECT_EQ(RefusedParam(R"({"messages": [{"role": "user", "content": "a"}],
                             "logprobs": true, "top_logprobs": 21})", true),
            "top_logprobs");
  EXPECT_EQ(RefusedParam(R"({"messages": [{"role": "user", "content": "a"}],
                             "logprobs": true, "top_logprobs": 20})", true),
            "<accepted>");
}

TEST(OpenAiApiTest, ChatConverts) {
  absl::StatusOr<OpenAiRequest> r = ParseChatRequest(json::parse(R"({
      "messages": [{"role": "system", "content": "s"},
                   {"role": "user", "content": [{"type": "text", "text": "a"},
                                                {"type": "text", "text": "b"}]},
                   {"role": "assistant", "content": null}],
      "max_completion_tokens": 5, "temperature": 0})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->chat);
  ASSERT_EQ(r->messages.size(), 3u);
  EXPECT_EQ(r->messages[1].content, "ab");
  EXPECT_EQ(r->messages[2].content, "");
  EXPECT_EQ(r->generation.max_tokens, 5);
  EXPECT_FLOAT_EQ(r->generation.sampling.temperature, 0.0f);
}

TEST(OpenAiApiTest, StatusesMapToOpenAiErrors) {
  const ApiError engine_error =
      ToApiError(absl::InvalidArgumentError("sampling.top_p must be in [0, 1]"));
  EXPECT_EQ(engine_error.param, "top_p");
  EXPECT_EQ(ToApiError(absl::InvalidArgumentError("prompt_token_ids[3] = 9 is outside")).param,
            "prompt");
  EXPECT_EQ(ToApiError(absl::InvalidArgumentError("stop[1] is empty")).param, "stop");
  EXPECT_EQ(ToApiError(absl::UnauthenticatedError("k")).http_status, 401);
  EXPECT_EQ(ToApiError(absl::NotFoundError("m")).http_status, 404);
  EXPECT_EQ(ToApiError(absl::ResourceExhaustedError("q")).http_status, 429);
  EXPECT_EQ(ToApiError(absl::UnavailableError("d")).http_status, 503);
  EXPECT_EQ(ToApiError(absl::InternalError("nan")).http_status, 500);
  const json body = ErrorBody(MakeApiError(400, "bad", "n"));
  EXPECT_EQ(body, json::parse(R"({"error": {"message": "bad", "type": "invalid_request_error",
                                           "param": "n", "code": null}})"));
}

TEST(OpenAiApiTest, UsageSumsChoices) {
  ChoiceResult a;
  a.prompt_tokens = 5;
  a.completion_tokens = 4;
  a.speculation.verify_steps = 2;
  a.speculation.drafted_tokens = 6;
  a.speculation.accepted_tokens = 2;
  ChoiceResult b = a;
  b.completion_tokens = 6;
  b.speculation.verify_steps = 3;
  const json usage = UsageJson({a, b});
  EXPECT_EQ(usage["prompt_tokens"], 5);
  EXPECT_EQ(usage["completion_tokens"], 10);
  EXPECT_EQ(usage["total_tokens"], 15);
  EXPECT_EQ(usage["speculation"]["verify_steps"], 5);
  EXPECT_EQ(usage["speculation"]["drafted_tokens"], 12);
  EXPECT_DOUBLE_EQ(usage["speculation"]["mean_tokens_per_step"].get<double>(), 2.0);
  EXPECT_EQ(usage["prompt_tokens_details"]["cached_tokens"], 0);
}

TEST(OpenAiApiTest, UsageCachedTokensAndSeeds) {
  ChoiceResult a;
  a.prompt_tokens = 40;
  a.cached_prompt_tokens = 16;
  a.seed = 7;
  ChoiceResult b = a;
  b.cached_prompt_tokens = 32;
  b.seed = 8;
  EXPECT_EQ(UsageJson({a, b})["prompt_tokens_details"]["cached_tokens"], 32);
  EXPECT_EQ(SpecmoeJson({a}), json::parse(R"({"seed": 7})"));
  EXPECT_EQ(SpecmoeJson({a, b}), json::parse(R"({"seed": 7, "seeds": [7, 8]})"));
}

TEST(OpenAiApiTest, SeedTakesTheWholeUint64Range) {
  absl::StatusOr<OpenAiRequest> r =
      ParseCompletionRequest(json::parse(R"({"prompt": "x", "seed": 18446744073709551615})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->generation.sampling.seed, 18446744073709551615u);
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "seed": -1})"), "seed");
  EXPECT_EQ(RefusedParam(R"({"prompt": "x", "seed": 1.5})"), "seed");
}

TEST(OpenAiApiTest, LogprobsRequestsReachTheEngine) {
  absl::StatusOr<OpenAiRequest> c = ParseCompletionRequest(json::parse(R"({"prompt": "x",
      "logprobs": 3})"));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->generation.logprobs);
  EXPECT_EQ(c->generation.top_logprobs, 3);
  absl::StatusOr<OpenAiRequest> chat = ParseChatRequest(json::parse(
      R"({"messages": [{"role": "user", "content": "a"}], "logprobs": true})"));
  ASSERT_TRUE(chat.ok());
  EXPECT_TRUE(chat->generation.logprobs);
  EXPECT_EQ(chat->generation.top_logprobs, 0);
  absl::StatusOr<OpenAiRequest> off = ParseCompletionRequest(json::parse(R"({"prompt": "x"})"));
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->generation.wants_logprobs());
}

// Token texts of a toy vocabulary: 1 "He", 2 " llo", 3 "\xC3" and 4 "\xA9" (the two bytes of
// "é"), 5 "" (a control token), 6 "he" (a second id sharing no text), 7 "He" again.
std::string ToyBytes(int32_t id) {
  switch (id) {
    case 1: case 7: return "He";
    case 2: return " llo";
    case 3: return "\xC3";
    case 4: return "\xA9";
    case 6: return "he";
    default: return "";
  }
}

std::vector<engine::TokenLogprob> ToyLogprobs() {
  std::vector<engine::TokenLogprob> out(3);
  out[0] = {1, -0.5f, {{1, -0.5f}, {7, -1.0f}, {6, -2.0f}}};
  out[1] = {3, -0.25f, {{3, -0.25f}}};
  out[2] = {4, -0.125f, {}};
  return out;
}

TEST(OpenAiApiTest, CompletionLogprobsShape) {
  int64_t offset = 10;
  const json lp = LogprobsJson(false, ToyLogprobs(), ToyBytes, &offset);
  EXPECT_EQ(lp["tokens"][0], "He");
  EXPECT_EQ(lp["tokens"][1].get<std::string>(), "\xC3");
  EXPECT_EQ(lp["token_logprobs"], json::parse("[-0.5, -0.25, -0.125]"));
  // Same text, two ids: the more likely one keeps the key.
  EXPECT_EQ(lp["top_logprobs"][0], json::parse(R"({"He": -0.5, "he": -2.0})"));
  EXPECT_EQ(lp["top_logprobs"][2], json::object());
  // Code points: "He" is 2; the two bytes of "é" are one character together.
  EXPECT_EQ(lp["text_offset"], json::parse("[10, 12, 13]"));
  EXPECT_EQ(offset, 13);
}

TEST(OpenAiApiTest, EchoWithLogprobsScoresThePrompt) {
  absl::StatusOr<OpenAiRequest> score = ParseCompletionRequest(json::parse(R"({"prompt": "x",
      "echo": true, "logprobs": 2, "max_tokens": 0})"));
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_TRUE(score->generation.prompt_logprobs && score->generation.prompt_only);
  EXPECT_EQ(score->generation.top_logprobs, 2);
  absl::StatusOr<OpenAiRequest> one = ParseCompletionRequest(json::parse(R"({"prompt": "x",
      "echo": true, "logprobs": 0, "max_tokens": 1})"));
  ASSERT_TRUE(one.ok());
  EXPECT_TRUE(one->generation.prompt_logprobs);
  EXPECT_FALSE(one->generation.prompt_only);
  EXPECT_EQ(one->generation.max_tokens, 1);
  // max_tokens 0 without echo, or absent, is the server's default; echo alone computes none.
  for (const char* body :
       {R"({"prompt": "x", "max_tokens": 0, "logprobs": 1})", R"({"prompt": "x", "echo": true})"}) {
    absl::StatusOr<OpenAiRequest> r = ParseCompletionRequest(json::parse(body));
    ASSERT_TRUE(r.ok()) << body;
    EXPECT_FALSE(r->generation.prompt_logprobs || r->generation.prompt_only) << body;
  }
  // The first prompt token's entry (NaN: nothing precedes it) is null; its text counts.
  std::vector<engine::TokenLogprob> entries = ToyLogprobs();
  entries[0].logprob = std::numeric_limits<float>::quiet_NaN();
  entries[0].top.clear();
  int64_t offset = 0;
  const json lp = LogprobsJson(false, entries, ToyBytes, &offset);
  EXPECT_EQ(lp["token_logprobs"], json::parse("[null, -0.25, -0.125]"));
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_EQ(lp["text_offset"], json::parse("[0, 2, 3]"));
}

TEST(OpenAiApiTest, ChatLogprobsShape) {
  int64_t offset = 0;
  const json lp = LogprobsJson(true, ToyLogprobs(), ToyBytes, &offset);
  ASSERT_EQ(lp["content"].size(), 3u);
  EXPECT_EQ(lp["content"][0]["token"], "He");
  EXPECT_EQ(lp["content"][0]["logprob"], -0.5);
  EXPECT_EQ(lp["content"][0]["bytes"], json::parse("[72, 101]"));
  EXPECT_EQ(lp["content"][0]["top_logprobs"].size(), 3u);
  EXPECT_EQ(lp["content"][0]["top_logprobs"][1],
            json::parse(R"({"token": "He", "logprob": -1.0, "bytes": [72, 101]})"));
  EXPECT_EQ(lp["content"][1]["bytes"], json::parse("[195]"));
  EXPECT_EQ(lp["content"][2]["bytes"], json::parse("[169]"));
  EXPECT_EQ(lp["content"][2]["top_logprobs"], json::array());
}

}  // namespace
}  // namespace specmoe::server
