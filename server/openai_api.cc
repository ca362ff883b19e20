// server/openai_api.cc — see openai_api.h. Field names and defaults follow OpenAI's API
// reference: an absent temperature is 1 (sampling), an absent max_tokens the server's
// --default-max-tokens.
#include "server/openai_api.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace specmoe::server {
namespace {

using nlohmann::json;

constexpr char kParamPayload[] = "type.specmoe/openai-param";

// The field `name` of `body`, or null when absent (absent and null mean the same).
const json& Field(const json& body, const char* name) {
  static const json kNull;
  const auto it = body.find(name);
  return it == body.end() ? kNull : *it;
}

absl::Status TypeError(const std::string& name, const char* expected, const json& value) {
  return InvalidParam(name, absl::StrCat(name, " must be ", expected, " (got ",
                                         value.type_name(), ")"));
}

absl::StatusOr<std::optional<bool>> GetBool(const json& body, const char* name) {
  const json& value = Field(body, name);
  if (value.is_null()) return std::optional<bool>();
  if (!value.is_boolean()) return TypeError(name, "a boolean", value);
  return std::optional<bool>(value.get<bool>());
}

absl::StatusOr<std::optional<double>> GetNumber(const json& body, const char* name) {
  const json& value = Field(body, name);
  if (value.is_null()) return std::optional<double>();
  if (!value.is_number()) return TypeError(name, "a number", value);
  const double number = value.get<double>();
  if (!std::isfinite(number) || std::fabs(number) > 3.4e38) {
    return InvalidParam(name, absl::StrCat(name, " must be a finite number"));
  }
  return std::optional<double>(number);
}

// An integer in [min_value, max_value] (a number with a fraction is refused).
absl::StatusOr<std::optional<int64_t>> GetInt(const json& body, const char* name,
                                              int64_t min_value, int64_t max_value) {
  const json& value = Field(body, name);
  if (value.is_null()) return std::optional<int64_t>();
  if (!value.is_number_integer()) return TypeError(name, "an integer", value);
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(max_value)) {
    return InvalidParam(name, absl::StrCat(name, " must be at most ", max_value, " (got ",
                                           value.dump(), ")"));
  }
  const int64_t number = value.get<int64_t>();
  if (number < min_value || number > max_value) {
    return InvalidParam(name, absl::StrCat(name, " must be in [", min_value, ", ", max_value,
                                           "] (got ", number, ")"));
  }
  return std::optional<int64_t>(number);
}

// An OpenAI field this server does not implement: refused unless absent or `neutral`.
absl::Status RefuseUnlessNeutral(const json& body, const char* name,
                                 bool (*neutral)(const json&), const char* why) {
  const json& value = Field(body, name);
  if (value.is_null() || neutral(value)) return absl::OkStatus();
  return InvalidParam(name, absl::StrCat(name, " is not supported by this server (", why, ")"));
}

bool IsZero(const json& v) { return v.is_number() && v.get<double>() == 0.0; }
bool IsOne(const json& v) { return v.is_number_integer() && v.get<int64_t>() == 1; }
bool IsEmpty(const json& v) { return (v.is_object() || v.is_array() || v.is_string()) && v.empty(); }

// The fields both endpoints share: sampling, stops, lengths, n, streaming, extensions.
absl::Status ParseCommon(const json& body, OpenAiRequest& out) {
  if (!body.is_object()) {
    return InvalidParam("", absl::StrCat("the request body must be a JSON object (got ",
                                         body.type_name(), ")"));
  }
  engine::GenerationRequest& g = out.generation;
  const json& model = Field(body, "model");
  if (!model.is_null()) {
    if (!model.is_string()) return TypeError("model", "a string", model);
    out.model = model.get<std::string>();
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (absl::Status s = RefuseUnlessNeutral(body, penalty, IsZero,
                                             "only 0; use repetition_penalty");
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = RefuseUnlessNeutral(body, "logit_bias", IsEmpty, "only {}"); !s.ok()) {
    return s;
  }
  if (absl::Status s = RefuseUnlessNeutral(body, "best_of", IsOne, "only 1"); !s.ok()) return s;

  absl::StatusOr<std::optional<double>> temperature = GetNumber(body, "temperature");
  if (!temperature.ok()) return temperature.status();
  g.sampling.temperature = static_cast<float>(temperature->value_or(1.0));
  absl::StatusOr<std::optional<double>> top_p = GetNumber(body, "top_p");
  if (!top_p.ok()) return top_p.status();
  g.sampling.top_p = static_cast<float>(top_p->value_or(1.0));
  // -1 (vLLM's "off") and 0 both mean no top-k.
  absl::StatusOr<std::optional<int64_t>> top_k =
      GetInt(body, "top_k", -1, std::numeric_limits<int32_t>::max());
  if (!top_k.ok()) return top_k.status();
  g.sampling.top_k = static_cast<int>(std::max<int64_t>(top_k->value_or(0), 0));
  // Any uint64 (the server's own seeds, echoed in specmoe.seed, use the whole range).
  if (const json& seed = Field(body, "seed"); seed.is_number_unsigned()) {
    g.sampling.seed = seed.get<uint64_t>();
  } else {
    absl::StatusOr<std::optional<int64_t>> signed_seed =
        GetInt(body, "seed", 0, std::numeric_limits<int64_t>::max());
    if (!signed_seed.ok()) return signed_seed.status();
    g.sampling.seed = static_cast<uint64_t>(signed_seed->value_or(0));
  }
  absl::StatusOr<std::optional<double>> repetition = GetNumber(body, "repetition_penalty");
  if (!repetition.ok()) return repetition.status();
  g.sampling.repetition_penalty = static_cast<float>(repetition->value_or(1.0));
  absl::StatusOr<std::optional<bool>> ignore_eos = GetBool(body, "ignore_eos");
  if (!ignore_eos.ok()) return ignore_eos.status();
  g.ignore_eos = ignore_eos->value_or(false);

  const json& stop = Field(body, "stop");
  if (stop.is_string()) {
    g.stop.push_back(stop.get<std::string>());
  } else if (stop.is_array()) {
    for (const json& s : stop) {
      if (!s.is_string()) return TypeError("stop", "a string or an array of strings", stop);
      g.stop.push_back(s.get<std::string>());
    }
  } else if (!stop.is_null()) {
    return TypeError("stop", "a string or an array of strings", stop);
  }
  const json& stop_ids = Field(body, "stop_token_ids");
  if (!stop_ids.is_null()) {
    if (!stop_ids.is_array()) return TypeError("stop_token_ids", "an array of integers", stop_ids);
    for (const json& id : stop_ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < std::numeric_limits<int32_t>::min() ||
          id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return TypeError("stop_token_ids", "an array of integers", stop_ids);
      }
      g.stop_token_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  }

  absl::StatusOr<std::optional<int64_t>> n = GetInt(body, "n", 1, kMaxChoices);
  if (!n.ok()) return n.status();
  out.n = static_cast<int>(n->value_or(1));
  absl::StatusOr<std::optional<bool>> stream = GetBool(body, "stream");
  if (!stream.ok()) return stream.status();
  out.stream = stream->value_or(false);
  const json& stream_options = Field(body, "stream_options");
  if (!stream_options.is_null()) {
    if (!stream_options.is_object()) {
      return TypeError("stream_options", "an object", stream_options);
    }
    if (!out.stream) {
      return InvalidParam("stream_options", "stream_options is only allowed with stream: true");
    }
    const json& include = Field(stream_options, "include_usage");
    if (!include.is_null() && !include.is_boolean()) {
      return TypeError("stream_options.include_usage", "a boolean", include);
    }
    out.include_usage = include.is_boolean() && include.get<bool>();
  }
  absl::StatusOr<std::optional<bool>> token_ids = GetBool(body, "return_token_ids");
  if (!token_ids.ok()) return token_ids.status();
  out.return_token_ids = token_ids->value_or(false);

  const json& speculation = Field(body, "speculation");
  if (!speculation.is_null()) {
    if (!speculation.is_object()) return TypeError("speculation", "an object", speculation);
    const json& disable = Field(speculation, "disable");
    if (!disable.is_null() && !disable.is_boolean()) {
      return TypeError("speculation.disable", "a boolean", disable);
    }
    g.speculation.disable = disable.is_boolean() && disable.get<bool>();
    const json& expansion = Field(speculation, "expansion");
    if (!expansion.is_null()) {
      if (!expansion.is_array()) {
        return TypeError("speculation.expansion", "an array of integers", expansion);
      }
      for (const json& k : expansion) {
        if (!k.is_number_integer() || k.get<int64_t>() < 0 ||
            k.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
          return InvalidParam("speculation.expansion",
                              "speculation.expansion must be an array of positive integers");
        }
        g.speculation.expansion.push_back(static_cast<int>(k.get<int64_t>()));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> MaxTokens(const json& body, const char* name) {
  absl::StatusOr<std::optional<int64_t>> value =
      GetInt(body, name, 0, std::numeric_limits<int32_t>::max());
  if (!value.ok()) return value.status();
  return static_cast<int>(value->value_or(0));  // 0: the server's --default-max-tokens
}

}  // namespace

absl::Status InvalidParam(const std::string& param, const std::string& message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kParamPayload, absl::Cord(param));
  return status;
}

ApiError MakeApiError(int http_status, std::string message, std::string param,
                      std::string code) {
  ApiError error;
  error.http_status = http_status;
  error.message = std::move(message);
  error.param = std::move(param);
  error.code = std::move(code);
  switch (http_status) {
    case 400: case 404: case 413: error.type = "invalid_request_error"; break;
    case 401: error.type = "authentication_error"; break;
    case 429: error.type = "rate_limit_error"; break;
    case 503: error.type = "service_unavailable_error"; break;
    default: error.type = "server_error"; break;
  }
  return error;
}

ApiError ToApiError(const absl::Status& status) {
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: {
      std::string param;
      if (auto payload = status.GetPayload(kParamPayload)) {
        param = std::string(*payload);
      } else {
        // The engine's messages begin with the field: "sampling.top_p must ...",
        // "stop[2] is empty", "prompt_token_ids[0] = ...": name it as OpenAI does.
        std::string field(message.substr(0, message.find_first_of(" [")));
        if (field.rfind("sampling.", 0) == 0) field = field.substr(9);
        if (field == "prompt_token_ids" || field == "exactly") field = "prompt";
        if (field == "request_id") field.clear();
        param = field;
      }
      return MakeApiError(400, message, param);
    }
    case absl::StatusCode::kUnauthenticated: return MakeApiError(401, message);
    case absl::StatusCode::kNotFound: return MakeApiError(404, message);
    case absl::StatusCode::kResourceExhausted: return MakeApiError(429, message);
    case absl::StatusCode::kUnavailable: return MakeApiError(503, message);
    case absl::StatusCode::kCancelled: return MakeApiError(499, message);
    case absl::StatusCode::kDeadlineExceeded: return MakeApiError(504, message);
    default: return MakeApiError(500, message);
  }
}

nlohmann::json ErrorBody(const ApiError& error) {
  return {{"error",
           {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"code", error.code.empty() ? json(nullptr) : json(error.code)}}}};
}

absl::StatusOr<OpenAiRequest> ParseCompletionRequest(const nlohmann::json& body) {
  OpenAiRequest out;
  if (absl::Status s = ParseCommon(body, out); !s.ok()) return s;
  engine::GenerationRequest& g = out.generation;
  const json& prompt = Field(body, "prompt");
  if (prompt.is_string()) {
    g.prompt_text = prompt.get<std::string>();
  } else if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) {
    g.prompt_text = prompt[0].get<std::string>();
  } else if (prompt.is_array() && !prompt.empty() && prompt[0].is_number_integer()) {
    for (const json& id : prompt) {
      if (!id.is_number_integer() || id.get<int64_t>() < std::numeric_limits<int32_t>::min() ||
          id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return InvalidParam("prompt", "prompt must be a string or an array of token ids");
      }
      g.prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  } else if (prompt.is_array() && prompt.size() > 1 &&
             (prompt[0].is_string() || prompt[0].is_array())) {
    return InvalidParam("prompt", "one prompt per request: send several requests (or n)");
  } else if (!prompt.is_null() && !(prompt.is_array() && prompt.empty())) {
    return TypeError("prompt", "a string or an array of token ids", prompt);
  }
  absl::StatusOr<int> max_tokens = MaxTokens(body, "max_tokens");
  if (!max_tokens.ok()) return max_tokens.status();
  g.max_tokens = *max_tokens;
  absl::StatusOr<std::optional<bool>> echo = GetBool(body, "echo");
  if (!echo.ok()) return echo.status();
  out.echo = echo->value_or(false);
  absl::StatusOr<std::optional<int64_t>> logprobs = GetInt(body, "logprobs", 0, kMaxTopLogprobs);
  if (!logprobs.ok()) return logprobs.status();
  out.logprobs.enabled = logprobs->has_value();
  out.logprobs.top = static_cast<int>(logprobs->value_or(0));
  out.generation.logprobs = out.logprobs.enabled;
  out.generation.top_logprobs = out.logprobs.top;
  // Scoring a prompt (evaluation harnesses): echo with logprobs returns the prompt tokens'
  // logprobs too, and an explicit max_tokens 0 generates nothing.
  g.prompt_logprobs = out.echo && out.logprobs.enabled;
  g.prompt_only = out.echo && Field(body, "max_tokens").is_number_integer() && *max_tokens == 0;
  if (absl::Status s = RefuseUnlessNeutral(body, "suffix", IsEmpty, "no insertion"); !s.ok()) {
    return s;
  }
  return out;
}

absl::StatusOr<OpenAiRequest> ParseChatRequest(const nlohmann::json& body) {
  OpenAiRequest out;
  out.chat = true;
  if (absl::Status s = ParseCommon(body, out); !s.ok()) return s;
  for (const char* name : {"tools", "tool_choice", "functions", "function_call",
                           "response_format"}) {
    if (absl::Status s = RefuseUnlessNeutral(
            body, name, [](const json&) { return false; }, "no tool calls or formats");
        !s.ok()) {
      return s;
    }
  }
  const json& messages = Field(body, "messages");
  if (!messages.is_array() || messages.empty()) {
    return InvalidParam("messages", "messages must be a non-empty array of messages");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return TypeError(where, "an object", m);
    const json& role = Field(m, "role");
    if (!role.is_string()) return TypeError(where + ".role", "a string", role);
    ChatMessage message;
    message.role = role.get<std::string>();
    const json& content = Field(m, "content");
    if (content.is_string()) {
      message.content = content.get<std::string>();
    } else if (content.is_array()) {  // parts: only {"type": "text", "text": ...}
      for (const json& part : content) {
        if (!part.is_object() || Field(part, "type") != "text" || !Field(part, "text").is_string()) {
          return InvalidParam(where + ".content",
                              where + ".content: only text parts are supported");
        }
        message.content += Field(part, "text").get<std::string>();
      }
    } else if (!content.is_null()) {
      return TypeError(where + ".content", "a string or an array of text parts", content);
    }
    out.messages.push_back(std::move(message));
  }
  absl::StatusOr<int> max_tokens = MaxTokens(body, "max_tokens");
  if (!max_tokens.ok()) return max_tokens.status();
  absl::StatusOr<int> max_completion = MaxTokens(body, "max_completion_tokens");
  if (!max_completion.ok()) return max_completion.status();
  if (*max_tokens != 0 && *max_completion != 0 && *max_tokens != *max_completion) {
    return InvalidParam("max_completion_tokens",
                        "max_tokens and max_completion_tokens differ: give one");
  }
  out.generation.max_tokens = *max_completion != 0 ? *max_completion : *max_tokens;
  absl::StatusOr<std::optional<bool>> logprobs = GetBool(body, "logprobs");
  if (!logprobs.ok()) return logprobs.status();
  absl::StatusOr<std::optional<int64_t>> top = GetInt(body, "top_logprobs", 0, kMaxTopLogprobs);
  if (!top.ok()) return top.status();
  out.logprobs.enabled = logprobs->value_or(false);
  out.logprobs.top = static_cast<int>(top->value_or(0));
  if (top->has_value() && !out.logprobs.enabled) {
    return InvalidParam("top_logprobs", "top_logprobs needs logprobs: true");
  }
  out.generation.logprobs = out.logprobs.enabled;
  out.generation.top_logprobs = out.logprobs.top;
  return out;
}

const char* OpenAiFinishReason(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kLength: return "length";
    case engine::FinishReason::kStop:
    case engine::FinishReason::kEos: return "stop";
    case engine::FinishReason::kCancelled: return "cancelled";
    case engine::FinishReason::kNone: break;
  }
  return "stop";
}

nlohmann::json UsageJson(const std::vector<ChoiceResult>& choices) {
  int prompt = 0;
  int cached = 0;
  int completion = 0;
  int steps = 0;
  int drafted = 0;
  int accepted = 0;
  for (const ChoiceResult& c : choices) {
    prompt = std::max(prompt, c.prompt_tokens);
    cached = std::max(cached, c.cached_prompt_tokens);
    completion += c.completion_tokens;
    steps += c.speculation.verify_steps;
    drafted += c.speculation.drafted_tokens;
    accepted += c.speculation.accepted_tokens;
  }
  json speculation = {{"verify_steps", steps},
                      {"drafted_tokens", drafted},
                      {"accepted_tokens", accepted},
                      {"mean_tokens_per_step",
                       steps > 0 ? static_cast<double>(completion) / steps : 0.0}};
  if (choices.size() == 1) {
    json by_depth = json::array();
    for (float rate : choices[0].speculation.acceptance_by_depth) {
      by_depth.push_back(std::round(rate * 1e4) / 1e4);
    }
    speculation["acceptance_by_depth"] = by_depth;
    speculation["mean_tokens_per_step"] = choices[0].speculation.mean_tokens_per_step;
  }
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}},
          {"speculation", speculation}};
}

nlohmann::json SpecmoeJson(const std::vector<ChoiceResult>& choices) {
  json out = {{"seed", choices.empty() ? 0 : choices[0].seed}};
  if (choices.size() > 1) {
    json seeds = json::array();
    for (const ChoiceResult& c : choices) seeds.push_back(c.seed);
    out["seeds"] = std::move(seeds);
  }
  return out;
}

nlohmann::json LogprobsJson(bool chat, const std::vector<engine::TokenLogprob>& logprobs,
                            const TokenBytesFn& token_bytes, int64_t* text_offset) {
  auto byte_array = [](const std::string& text) {
    json bytes = json::array();
    for (char c : text) bytes.push_back(static_cast<int>(static_cast<unsigned char>(c)));
    return bytes;
  };
  if (chat) {
    json content = json::array();
    for (const engine::TokenLogprob& lp : logprobs) {
      const std::string text = token_bytes(lp.token_id);
      json top = json::array();
      for (const engine::TopLogprob& t : lp.top) {
        const std::string alt = token_bytes(t.token_id);
        top.push_back({{"token", alt}, {"logprob", t.logprob}, {"bytes", byte_array(alt)}});
      }
      content.push_back({{"token", text},
                         {"logprob", lp.logprob},
                         {"bytes", byte_array(text)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  json tokens = json::array();
  json values = json::array();
  json tops = json::array();
  json offsets = json::array();
  for (const engine::TokenLogprob& lp : logprobs) {
    const std::string text = token_bytes(lp.token_id);
    tokens.push_back(text);
    if (std::isnan(lp.logprob)) {  // the first prompt token: nothing precedes it
      values.push_back(nullptr);
      tops.push_back(nullptr);
    } else {
      values.push_back(lp.logprob);
      json top = json::object();
      for (const engine::TopLogprob& t : lp.top) {
        // Two ids with the same text share one key: the more likely (first) one is kept.
        const std::string alt = token_bytes(t.token_id);
        if (!top.contains(alt)) top[alt] = t.logprob;
      }
      tops.push_back(std::move(top));
    }
    offsets.push_back(*text_offset);
    for (char c : text) {
      if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++*text_offset;  // a code point
    }
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(values)},
          {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offsets)}};
}

}  // namespace specmoe::server
