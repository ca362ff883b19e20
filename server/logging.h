// server/logging.h — spdlog set-up for specmoe-server: text lines or one JSON object per
// line (for log collectors), at a chosen level. Text lines escape control characters (a
// request id holding "\n" or ANSI escapes cannot forge a line); JSON lines are valid even
// for invalid UTF-8 (nlohmann-json's dump with replacement); a request's id is a field of
// its own in JSON, and so are the fields a finished or refused request's line carries (rpc,
// peer, status, tokens, timings, speculation). protobuf's and gRPC's own log lines are routed here too.
// Tested by tests/logging_test.cc and tests/server_e2e_test.cc, which reads the server's log.
#ifndef SPECMOE_SERVER_LOGGING_H_
#define SPECMOE_SERVER_LOGGING_H_

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace specmoe::server {

// format "text" or "json"; level one of spdlog's names (trace ... off). Logs go to stderr.
// Call once, from main, before other threads start.
void ConfigureLogging(const std::string& format, const std::string& level);

// One line about a request: text "request <id> <message>", JSON {"request_id":..,"msg":..}.
void LogRequest(spdlog::level::level_enum level, std::string_view request_id,
                std::string_view message);
// The same with `fields` (a JSON object) as fields of their own in JSON lines, after msg;
// text lines show the message only, which should carry the same facts as key=value.
void LogRequest(spdlog::level::level_enum level, std::string_view request_id,
                std::string_view message, const nlohmann::json& fields);

// `text` with control characters and backslashes escaped (\n, \t, \r, \\, \xHH).
std::string EscapeControl(std::string_view text);

// Formats one log record as ConfigureLogging's format would (for tests): `payload` as
// logged (LogRequest's or a plain message).
std::string FormatForTest(const std::string& format, std::string_view request_id,
                          std::string_view message);

// While alive, protobuf error lines on this thread are also collected (to name the
// problem of a request that does not parse).
class ProtobufErrorCapture {
 public:
  ProtobufErrorCapture();
  ~ProtobufErrorCapture();
  const std::string& errors() const { return errors_; }

 private:
  std::string errors_;
  ProtobufErrorCapture* previous_;
};

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_LOGGING_H_
