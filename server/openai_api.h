// server/openai_api.h — the OpenAI HTTP API's JSON <-> engine terms, field by field and
// nothing more (as server/request_conversion.h is for gRPC): parsing checks JSON types and
// the transport's own fields (n, stream, echo, logprobs, the refused OpenAI fields); every
// engine rule is left to engine/serving/request_validator.h. Also the error bodies
// ({"error": {"message", "type", "param", "code"}}) and the response objects.
// Tested by tests/openai_api_test.cc and tests/http_e2e_test.py.
#ifndef SPECMOE_SERVER_OPENAI_API_H_
#define SPECMOE_SERVER_OPENAI_API_H_

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/serving/request.h"
#include "server/chat_template.h"

namespace specmoe::server {

inline constexpr int kMaxChoices = 8;      // n
inline constexpr int kMaxTopLogprobs = 20;

// What the client asked about logprobs. Completions: `logprobs` N (0-20: the chosen token
// plus the N most likely); chat: `logprobs` true plus `top_logprobs` N.
struct LogprobsRequest {
  bool enabled = false;
  int top = 0;
};

// A parsed /v1/completions or /v1/chat/completions body. Contract: plain value type.
struct OpenAiRequest {
  bool chat = false;
  std::string model;                    // empty: not given
  engine::GenerationRequest generation;  // prompt (completions), sampling, stops, ...
  std::vector<ChatMessage> messages;    // chat
  int n = 1;                            // choices; choice i is sampled with seed + i
  bool stream = false;
  bool include_usage = false;           // stream_options.include_usage
  // Completions: the prompt before each choice's text; with logprobs, the prompt tokens'
  // entries before the generated ones (GenerationRequest::prompt_logprobs); with an explicit
  // max_tokens 0, the prompt alone (GenerationRequest::prompt_only).
  bool echo = false;
  bool return_token_ids = false;        // specmoe/vLLM extension: each choice's token ids
  LogprobsRequest logprobs;
};

// An OpenAI error: HTTP status and the body's fields. INVALID_ARGUMENT statuses made by the
// parsers carry the offending field in `param`.
struct ApiError {
  int http_status = 500;
  std::string message;
  std::string type;   // invalid_request_error, authentication_error, ...
  std::string param;  // the request field at fault, or empty (null in JSON)
  std::string code;   // e.g. model_not_found, or empty (null)
};

// The error for an engine or parser status: INVALID_ARGUMENT/OUT_OF_RANGE 400,
// UNAUTHENTICATED 401, NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, CANCELLED
// 499, DEADLINE_EXCEEDED 504, anything else 500. `param` comes from the status (parsers) or,
// for the engine's messages, from the field they begin with, in OpenAI's naming.
ApiError ToApiError(const absl::Status& status);
ApiError MakeApiError(int http_status, std::string message, std::string param = "",
                      std::string code = "");
nlohmann::json ErrorBody(const ApiError& error);

// INVALID_ARGUMENT with `param` attached (read back by ToApiError).
absl::Status InvalidParam(const std::string& param, const std::string& message);

// Parse a request body (already parsed as JSON). Unknown fields are ignored, as OpenAI's
// own server does not; known fields this server does not implement (presence_penalty,
// frequency_penalty, logit_bias, best_of, suffix, tools, response_format) are refused
// naming them unless they hold their neutral value.
absl::StatusOr<OpenAiRequest> ParseCompletionRequest(const nlohmann::json& body);
absl::StatusOr<OpenAiRequest> ParseChatRequest(const nlohmann::json& body);

// "stop" / "length"; "cancelled" for a request the server cancelled.
const char* OpenAiFinishReason(engine::FinishReason reason);

// One finished choice, as the unary responses and the usage need it.
struct ChoiceResult {
  std::string text;
  std::vector<int32_t> token_ids;
  engine::FinishReason finish_reason = engine::FinishReason::kNone;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_prompt_tokens = 0;
  uint64_t seed = 0;  // the effective sampling seed (the server's choice when none was sent)
  engine::SpeculationStats speculation;
};

// {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details":
// {"cached_tokens"}, "speculation": {...}} over all choices (prompt counted once, as OpenAI
// does; cached_tokens: the most any choice found in the prefix cache).
nlohmann::json UsageJson(const std::vector<ChoiceResult>& choices);

// specmoe's top-level extra object: {"seed": choice 0's effective seed}, plus "seeds" (one
// per choice, each reproducing its choice as a single request) when there are several.
nlohmann::json SpecmoeJson(const std::vector<ChoiceResult>& choices);

// The bytes a token contributes to the text (engine::Tokenizer::TokenBytes).
using TokenBytesFn = std::function<std::string(int32_t)>;

// A choice's (or one streamed chunk's) "logprobs" for the engine's entries of its tokens.
// Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
// "bytes"}]}]}. Completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
// "text_offset"}, the offsets counting characters (code points) of the choice's text from
// *text_offset, which is advanced past these tokens. An entry whose logprob is NaN (the
// first prompt token of an echo) has null as its logprob and its top_logprobs. Token strings may
// hold a partial UTF-8 character (a byte-fallback token); the JSON writer replaces it, "bytes"
// keeps it exact.
nlohmann::json LogprobsJson(bool chat, const std::vector<engine::TokenLogprob>& logprobs,
                            const TokenBytesFn& token_bytes, int64_t* text_offset);

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_OPENAI_API_H_
