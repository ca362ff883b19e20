// engine/serving/request.h — what a generation request asks for and what it gets back, in engine
// terms (no protobuf here: the server translates the wire messages, engine/README.md, Layers).
#ifndef SPECMOE_ENGINE_SERVING_REQUEST_H_
#define SPECMOE_ENGINE_SERVING_REQUEST_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/spec/params.h"

namespace specmoe::engine {

// max_tokens when the request gives none: GenerationRequest's default and the server's
// --default-max-tokens.
inline constexpr int kDefaultMaxTokens = 128;

struct SpeculationParams {
  bool disable = false;
  std::vector<int> expansion;       // empty: the engine's default expansion
};

// As the transport converts it from the wire (server/README.md, Wire contract), then completed by
// PrepareRequest (engine/serving/request_validator.h): a text prompt is tokenized into prompt_ids
// (BOS first), and the wire's zeros become the defaults.
struct GenerationRequest {
  std::string request_id;
  std::string prompt_text;          // a text prompt, tokenized by PrepareRequest
  std::vector<int32_t> prompt_ids;  // token ids, used as given (BOS included when wanted)
  int max_tokens = kDefaultMaxTokens;  // 0: the server's default
  SamplingParams sampling;
  std::vector<std::string> stop;           // stop strings
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  SpeculationParams speculation;
  // Per-token logprobs (GenerationEvent::logprobs): on when logprobs is set or
  // top_logprobs > 0; top_logprobs (0..kMaxTopLogprobs) adds that many most likely tokens.
  bool logprobs = false;
  int top_logprobs = 0;
  bool wants_logprobs() const { return logprobs || top_logprobs > 0; }
  // Prompt logprobs (GenerationEvent::prompt_logprobs; engine/README.md, Prompt logprobs):
  // every prompt token's logprob under the target given the tokens before it, with
  // top_logprobs alternatives, computed while prefilling (the prefix cache supplies no
  // position whose logprobs are still owed, so they are never skipped).
  bool prompt_logprobs = false;
  // Generate nothing (max_tokens is ignored): the request ends with FinishReason::kLength
  // once its prompt is prefilled (with prompt_logprobs: once they are all delivered).
  bool prompt_only = false;
};

enum class FinishReason { kNone = 0, kLength = 1, kStop = 2, kEos = 3, kCancelled = 4 };

// One delivery to the request's result channel. Several tokens may arrive at once (one
// verify step). The last event has finished = true and carries the totals; an event with a
// non-OK status is also the last one.
struct GenerationEvent {
  std::vector<int32_t> token_ids;   // new tokens
  std::string text;                 // their text delta (never splits a UTF-8 character)
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_prompt_tokens = 0;     // prompt tokens whose K/V the prefix cache supplied
  SpeculationStats speculation;
  // When the request wants logprobs: one entry per token in token_ids, in order, from the
  // target logits row that chose the token (bit-identical with speculation on and off).
  std::vector<TokenLogprob> logprobs;
  // When the request wants prompt logprobs: the next prompt tokens' entries, in prompt order
  // across events, all before the first generated token. The first prompt token's entry has
  // logprob NaN and no top (nothing precedes it: OpenAI's null).
  std::vector<TokenLogprob> prompt_logprobs;
  uint64_t seed = 0;                // last event: the request's effective sampling seed
                                    // (the server's choice when the request sent 0)
  absl::Status status;              // non-OK: the request failed (finished is true)
};

// The per-request result channel: called on the engine's worker thread, in order, and must
// not block (push into a queue and wake the transport).
using EventSink = std::function<void(GenerationEvent)>;

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_REQUEST_H_
