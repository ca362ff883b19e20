// engine/serving/request_validator.cc — see request_validator.h. Every rule of server/README.md,
// Wire contract, in one function, in the order: sizes, prompt, lengths, sampling, stops,
// speculation.
#include "engine/serving/request_validator.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/spec/token_tree.h"

namespace specmoe::engine {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(message); }

uint64_t RandomSeed() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  return generator() | 1;
}

// The most prompt tokens a request may have: the context less one generated token, and
// --max-prompt-tokens.
int PromptTokenLimit(const RequestLimits& limits, const ModelLimits& model) {
  int limit = model.max_context - 1;
  if (limits.max_prompt_tokens > 0) limit = std::min(limit, limits.max_prompt_tokens);
  return std::max(limit, 0);
}

std::string PromptTokensMessage(const char* field, const std::string& count,
                                const RequestLimits& limits, const ModelLimits& model) {
  if (limits.max_prompt_tokens > 0 && limits.max_prompt_tokens < model.max_context - 1) {
    return absl::StrCat(field, " is ", count, " tokens; the server's limit is ",
                        limits.max_prompt_tokens, " (--max-prompt-tokens)");
  }
  return absl::StrCat(field, " is ", count, " tokens; the context holds ", model.max_context,
                      " (prompt plus at least one generated token)");
}

absl::StatusOr<std::vector<int32_t>> TokenizeText(const char* field, std::string_view text,
                                                  bool add_bos, const RequestLimits& limits,
                                                  const ModelLimits& model, int token_limit) {
  const int max_bytes = MaxPromptBytes(limits, model.max_context);
  if (text.size() > static_cast<size_t>(max_bytes)) {
    return Invalid(absl::StrCat(field, " is ", text.size(), " bytes; the server's limit is ",
                                max_bytes, " (--max-prompt-bytes)"));
  }
  const absl::Status encodable = model.tokenizer->CheckText(text);
  if (!encodable.ok()) return Invalid(absl::StrCat(field, ": ", encodable.message()));
  std::optional<std::vector<int32_t>> ids =
      model.tokenizer->EncodeAtMost(text, add_bos, static_cast<size_t>(token_limit));
  if (!ids.has_value()) {
    return Invalid(PromptTokensMessage(field, absl::StrCat("more than ", token_limit), limits,
                                       model));
  }
  return *std::move(ids);
}

}  // namespace

int MaxPromptBytes(const RequestLimits& limits, int max_context) {
  if (limits.max_prompt_bytes > 0) return limits.max_prompt_bytes;
  return static_cast<int>(std::min<int64_t>(
      static_cast<int64_t>(max_context) * kPromptBytesPerContextToken, INT32_MAX));
}

absl::StatusOr<std::vector<int32_t>> TokenizeWithinLimits(std::string_view text, bool add_bos,
                                                          const RequestLimits& limits,
                                                          const ModelLimits& model) {
  return TokenizeText("text", text, add_bos, limits, model, model.max_context);
}

absl::Status PrepareRequest(GenerationRequest& r, const RequestLimits& limits,
                            const ModelLimits& model) {
  const int vocab = model.vocab_size;
  // 1. Sizes, before any work.
  if (r.request_id.size() > kMaxRequestIdBytes) {
    return Invalid(absl::StrCat("request_id is ", r.request_id.size(), " bytes; at most ",
                                kMaxRequestIdBytes));
  }
  if (r.stop.size() > kMaxStopStrings) {
    return Invalid(absl::StrCat("stop has ", r.stop.size(), " strings; at most ",
                                kMaxStopStrings));
  }
  for (size_t i = 0; i < r.stop.size(); ++i) {
    if (r.stop[i].empty()) return Invalid(absl::StrCat("stop[", i, "] is empty"));
    if (r.stop[i].size() > kMaxStopBytes) {
      return Invalid(absl::StrCat("stop[", i, "] is ", r.stop[i].size(), " bytes; at most ",
                                  kMaxStopBytes));
    }
  }

  // 2. The prompt: exactly one form; a text prompt is tokenized with BOS, within the limits.
  const bool has_text = !r.prompt_text.empty();
  const bool has_ids = !r.prompt_ids.empty();
  if (has_text == has_ids) {
    return Invalid(absl::StrCat("exactly one of prompt / prompt_token_ids must be set (",
                                has_text ? "both are" : "neither is", ")"));
  }
  const int token_limit = PromptTokenLimit(limits, model);
  if (has_text) {
    absl::StatusOr<std::vector<int32_t>> ids =
        TokenizeText("prompt", r.prompt_text, /*add_bos=*/true, limits, model, token_limit);
    if (!ids.ok()) return ids.status();
    r.prompt_ids = *std::move(ids);
    r.prompt_text.clear();
  } else {
    for (size_t i = 0; i < r.prompt_ids.size(); ++i) {
      const int32_t id = r.prompt_ids[i];
      if (id < 0 || id >= vocab) {
        return Invalid(absl::StrCat("prompt_token_ids[", i, "] = ", id,
                                    " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    if (r.prompt_ids.size() > static_cast<size_t>(token_limit)) {
      return Invalid(PromptTokensMessage("prompt_token_ids", absl::StrCat(r.prompt_ids.size()),
                                         limits, model));
    }
  }

  // 3. Lengths.
  if (r.max_tokens < 0 || r.max_tokens > limits.max_tokens_limit) {
    return Invalid(absl::StrCat("max_tokens ", r.max_tokens, " exceeds the server's limit of ",
                                limits.max_tokens_limit, " (--max-tokens-limit)"));
  }
  if (r.max_tokens == 0) r.max_tokens = limits.default_max_tokens;

  // 4. Sampling (unset = 0 means the default).
  SamplingParams& s = r.sampling;
  if (!(s.temperature >= 0.0f) || std::isinf(s.temperature)) {
    return Invalid(absl::StrCat("sampling.temperature must be finite and >= 0 (got ",
                                s.temperature, ")"));
  }
  if (!(s.top_p >= 0.0f && s.top_p <= 1.0f)) {
    return Invalid(absl::StrCat("sampling.top_p must be in [0, 1], 0 meaning 1 (got ", s.top_p,
                                ")"));
  }
  if (s.top_p == 0.0f) s.top_p = 1.0f;
  if (s.top_k < 0) return Invalid(absl::StrCat("sampling.top_k must be >= 0 (got ", s.top_k, ")"));
  s.top_k = std::min(s.top_k, vocab);
  if (!(s.repetition_penalty >= 0.0f) || std::isinf(s.repetition_penalty)) {
    return Invalid(absl::StrCat("sampling.repetition_penalty must be finite and >= 0, 0 meaning "
                                "1 (got ", s.repetition_penalty, ")"));
  }
  if (s.repetition_penalty == 0.0f) s.repetition_penalty = 1.0f;
  if (s.seed == 0) s.seed = RandomSeed();

  // 5. Stop token ids.
  for (size_t i = 0; i < r.stop_token_ids.size(); ++i) {
    const int32_t id = r.stop_token_ids[i];
    if (id < 0 || id >= vocab) {
      return Invalid(absl::StrCat("stop_token_ids[", i, "] = ", id,
                                  " is outside the vocabulary [0, ", vocab, ")"));
    }
  }

  // 6. Logprobs.
  if (r.top_logprobs < 0 || r.top_logprobs > kMaxTopLogprobs) {
    return Invalid(absl::StrCat("top_logprobs must be in [0, ", kMaxTopLogprobs, "] (got ",
                                r.top_logprobs, ")"));
  }

  // 7. Speculation: the expansion's limits (token_tree.h).
  if (!r.speculation.expansion.empty()) {
    absl::Status shape = ValidateExpansion(r.speculation.expansion);
    if (!shape.ok()) return shape;
  }
  return absl::OkStatus();
}

}  // namespace specmoe::engine
