// engine/serving/request_validator.h — the ONE place where a generation request is checked and its
// defaults applied (server/README.md, Wire contract). The transport only converts wire
// messages into a GenerationRequest; Engine::Submit calls PrepareRequest once. Size limits
// come first (request_id, stop strings, prompt bytes), so no heavy work is done for an
// oversized request; tokenizing stops once the prompt passes its token limit.
// Tested by tests/request_validator_test.cc (one table over every rule) and fuzzed through
// tests/fuzz_request.cc.
#ifndef SPECMOE_ENGINE_SERVING_REQUEST_VALIDATOR_H_
#define SPECMOE_ENGINE_SERVING_REQUEST_VALIDATOR_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/serving/request.h"
#include "engine/text/tokenizer.h"

namespace specmoe::engine {

inline constexpr size_t kMaxRequestIdBytes = 256;
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopBytes = 256;
inline constexpr int kMaxTopLogprobs = 20;
// Default --max-prompt-bytes: this many bytes per token of context.
inline constexpr int kPromptBytesPerContextToken = 16;

// The default --max-tokens-limit.
inline constexpr int kDefaultMaxTokensLimit = 4096;

// The server's request limits (server/README.md, Limits).
struct RequestLimits {
  int default_max_tokens = kDefaultMaxTokens;     // max_tokens 0 means this
  int max_tokens_limit = kDefaultMaxTokensLimit;  // larger max_tokens is INVALID_ARGUMENT
  int max_prompt_tokens = 0;                      // 0: only the context bounds the prompt
  int max_prompt_bytes = 0;                       // 0: kPromptBytesPerContextToken x the context
};

// What PrepareRequest checks against. `tokenizer` must outlive the call.
struct ModelLimits {
  int vocab_size = 0;
  int max_context = 0;
  const Tokenizer* tokenizer = nullptr;
};

// Checks `request` and completes it in place: tokenizes prompt_text (BOS first), maps the
// wire's zeros to the defaults (max_tokens, top_p, repetition_penalty; seed 0 -> a random
// odd seed), clamps top_k to the vocabulary. INVALID_ARGUMENT names the field and the rule.
absl::Status PrepareRequest(GenerationRequest& request, const RequestLimits& limits,
                            const ModelLimits& model);

// The Tokenize RPC's path: the same byte and token limits as a text prompt.
absl::StatusOr<std::vector<int32_t>> TokenizeWithinLimits(std::string_view text, bool add_bos,
                                                          const RequestLimits& limits,
                                                          const ModelLimits& model);

// The effective --max-prompt-bytes for a context of `max_context` tokens.
int MaxPromptBytes(const RequestLimits& limits, int max_context);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_REQUEST_VALIDATOR_H_
