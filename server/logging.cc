// server/logging.cc — see logging.h. The JSON format escapes the message with a custom
// spdlog flag (%*), so any message text yields valid JSON.
#include "server/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace specmoe::server {
namespace {

// %* : the log message as the inside of a JSON string (RFC 8259 escaping).
class JsonEscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    static constexpr char kHex[] = "0123456789abcdef";
    for (char c : msg.payload) {
      switch (c) {
        case '"':
          dest.append(std::string_view("\\\""));
          break;
        case '\\':
          dest.append(std::string_view("\\\\"));
          break;
        case '\n':
          dest.append(std::string_view("\\n"));
          break;
        case '\t':
          dest.append(std::string_view("\\t"));
          break;
        case '\r':
          dest.append(std::string_view("\\r"));
          break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            const char escaped[] = {'\\', 'u', '0', '0', kHex[(c >> 4) & 0xF], kHex[c & 0xF]};
            dest.append(escaped, escaped + sizeof(escaped));
          } else {
            dest.push_back(c);
          }
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonEscapedMessage>();
  }
};

// The JSON request lines go through their own logger whose pattern ends in the raw fields
// (%v is a JSON object's members, written by nlohmann::json, so they are escaped).
std::shared_ptr<spdlog::logger>& JsonRequestLogger() {
  static std::shared_ptr<spdlog::logger> logger;
  return logger;
}

// Rounds to `digits` decimals, so that JSON shows 0.8182, not a float's 0.8181818127632141.
double Round(double value, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(value * scale) / scale;
}

}  // namespace

void ConfigureLogging(const std::string& format, const std::string& level) {
  auto logger = std::make_shared<spdlog::logger>(
      "specmoe", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  if (format == "json") {
    formatter->add_flag<JsonEscapedMessage>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","thread":%t,"msg":"%*"})");
  } else {
    formatter->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %L %v");
  }
  logger->set_formatter(std::move(formatter));
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::info);
  if (format == "json") {
    // A sink of its own: in spdlog the formatter belongs to the sink. Both write whole lines
    // to stderr through stdio, so lines never interleave.
    auto requests = std::make_shared<spdlog::logger>(
        "specmoe.request", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    requests->set_formatter(std::make_unique<spdlog::pattern_formatter>(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","thread":%t,%v})",
        spdlog::pattern_time_type::utc));
    requests->set_level(spdlog::level::from_str(level));
    requests->flush_on(spdlog::level::info);
    JsonRequestLogger() = std::move(requests);
  }
  spdlog::set_default_logger(std::move(logger));
}

void LogRequest(const RequestLogLine& line) {
  const bool ok = line.status == "OK";
  const spdlog::level::level_enum level = ok ? spdlog::level::info : spdlog::level::warn;
  // The message repeats the id so that a human reading the JSON sees which request it was.
  const std::string what = absl::StrCat("request ", line.request_id.empty() ? "" : line.request_id,
                                        line.request_id.empty() ? "" : " ",
                                        line.refused ? "refused" : "finished");
  const bool generation = !line.refused && !line.finish.empty();
  if (const std::shared_ptr<spdlog::logger>& json = JsonRequestLogger(); json != nullptr) {
    nlohmann::json fields = {{"msg", what},          {"request_id", line.request_id},
                             {"rpc", line.rpc},      {"peer", line.peer},
                             {"status", line.status}};
    if (!ok) fields["error"] = line.error;
    if (generation) {
      fields["prompt_tokens"] = line.prompt_tokens;
      fields["completion_tokens"] = line.completion_tokens;
      fields["finish"] = line.finish;
      fields["duration_ms"] = Round(line.duration_ms, 3);
      if (line.ttft_ms >= 0) fields["ttft_ms"] = Round(line.ttft_ms, 3);
      fields["tokens_per_s"] = Round(line.tokens_per_s, 2);
      fields["verify_steps"] = line.verify_steps;
      fields["drafted_tokens"] = line.drafted_tokens;
      fields["accepted_tokens"] = line.accepted_tokens;
      fields["mean_tokens_per_step"] = Round(line.mean_tokens_per_step, 4);
      std::vector<double> by_depth;
      for (float rate : line.acceptance_by_depth) by_depth.push_back(Round(rate, 4));
      fields["acceptance_by_depth"] = by_depth;
    }
    const std::string object = fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    json->log(level, "{}", std::string_view(object).substr(1, object.size() - 2));
    return;
  }
  std::string text = absl::StrFormat("request %s rpc=%s peer=%s status=%s%s",
                                     line.request_id.empty() ? "-" : line.request_id, line.rpc,
                                     line.peer, line.status, line.refused ? " refused" : "");
  if (!ok) absl::StrAppendFormat(&text, " error=\"%s\"", line.error);
  if (generation) {
    absl::StrAppendFormat(
        &text,
        " prompt_tokens=%d completion_tokens=%d finish=%s duration_ms=%.1f ttft_ms=%.1f "
        "tokens_per_s=%.1f verify_steps=%d drafted=%d accepted=%d mean_tokens_per_step=%.2f "
        "acceptance_by_depth=[%s]",
        line.prompt_tokens, line.completion_tokens, line.finish, line.duration_ms,
        line.ttft_ms, line.tokens_per_s, line.verify_steps, line.drafted_tokens,
        line.accepted_tokens, line.mean_tokens_per_step,
        absl::StrJoin(line.acceptance_by_depth, ",", [](std::string* out, float r) {
          absl::StrAppendFormat(out, "%.3f", r);
        }));
  }
  spdlog::log(level, "{}", text);
}

}  // namespace specmoe::server
