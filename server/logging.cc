// server/logging.cc — see logging.h. A request line's payload is "\x1e<id>\x1f<message>",
// optionally followed by "\x1d<fields as a JSON object>"; the custom flag %* renders it per
// format (and escapes every message).
#include "server/logging.h"

#include <google/protobuf/stubs/logging.h>
#include <grpc/support/log.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

namespace specmoe::server {
namespace {

constexpr char kIdStart = '\x1e';
constexpr char kIdEnd = '\x1f';
constexpr char kFieldsStart = '\x1d';

thread_local ProtobufErrorCapture* t_capture = nullptr;
thread_local std::string* t_capture_text = nullptr;

// Splits a payload into (request id, message); has_id is false for a plain message.
struct Parts {
  bool has_id = false;
  std::string_view id;
  std::string_view message;
  std::string_view fields;  // a JSON object's text, or empty
};
Parts Split(std::string_view payload) {
  Parts parts;
  parts.message = payload;
  if (!payload.empty() && payload[0] == kIdStart) {
    const size_t end = payload.find(kIdEnd);
    if (end != std::string_view::npos) {
      parts.has_id = true;
      parts.id = payload.substr(1, end - 1);
      parts.message = payload.substr(end + 1);
      const size_t fields = parts.message.find(kFieldsStart);
      if (fields != std::string_view::npos) {
        parts.fields = parts.message.substr(fields + 1);
        parts.message = parts.message.substr(0, fields);
      }
    }
  }
  return parts;
}

std::string JsonString(std::string_view text) {
  return nlohmann::json(std::string(text))
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void Append(spdlog::memory_buf_t& dest, const std::string& text) {
  dest.append(text.data(), text.data() + text.size());
}

// %* in text: "request <id> <message>", escaped.
class TextMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const Parts parts = Split(std::string_view(msg.payload.data(), msg.payload.size()));
    if (parts.has_id) {
      Append(dest, "request " + EscapeControl(parts.id) + " ");
    }
    Append(dest, EscapeControl(parts.message));
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<TextMessage>();
  }
};

// %* in JSON: ["request_id":"<id>",]"msg":"<message>", valid JSON for any bytes.
class JsonMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const Parts parts = Split(std::string_view(msg.payload.data(), msg.payload.size()));
    if (parts.has_id) Append(dest, "\"request_id\":" + JsonString(parts.id) + ",");
    Append(dest, "\"msg\":" + JsonString(parts.message));
    // The fields' text is an object dumped by LogRequest: its members follow msg.
    if (parts.fields.size() > 2 && parts.fields.front() == '{' && parts.fields.back() == '}') {
      Append(dest, "," + std::string(parts.fields.substr(1, parts.fields.size() - 2)));
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessage>();
  }
};

std::unique_ptr<spdlog::pattern_formatter> MakeFormatter(const std::string& format) {
  auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  if (format == "json") {
    formatter->add_flag<JsonMessage>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","thread":%t,%*})");
  } else {
    formatter->add_flag<TextMessage>('*').set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %L %*");
  }
  return formatter;
}

void ProtobufLog(google::protobuf::LogLevel level, const char* file, int line,
                 const std::string& message) {
  if (t_capture_text != nullptr && level >= google::protobuf::LOGLEVEL_ERROR) {
    if (!t_capture_text->empty()) t_capture_text->append("; ");
    t_capture_text->append(message);
  }
  const spdlog::level::level_enum spd = level >= google::protobuf::LOGLEVEL_ERROR
                                            ? spdlog::level::err
                                        : level == google::protobuf::LOGLEVEL_WARNING
                                            ? spdlog::level::warn
                                            : spdlog::level::info;
  spdlog::log(spd, "protobuf {}:{}: {}", file, line, message);
}

void GrpcLog(gpr_log_func_args* args) {
  const spdlog::level::level_enum spd = args->severity == GPR_LOG_SEVERITY_ERROR
                                            ? spdlog::level::err
                                        : args->severity == GPR_LOG_SEVERITY_INFO
                                            ? spdlog::level::info
                                            : spdlog::level::debug;
  spdlog::log(spd, "grpc {}:{}: {}", args->file, args->line, args->message);
}

}  // namespace

std::string EscapeControl(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\\': out += "\\\\"; break;
      default:
        if (u < 0x20 || u == 0x7f) {
          out += "\\x";
          out += kHex[u >> 4];
          out += kHex[u & 0xF];
        } else {
          out += c;
        }
    }
  }
  return out;
}

void ConfigureLogging(const std::string& format, const std::string& level) {
  auto logger = std::make_shared<spdlog::logger>(
      "specmoe", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_formatter(MakeFormatter(format));
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
  google::protobuf::SetLogHandler(&ProtobufLog);
  gpr_set_log_function(&GrpcLog);
}

namespace {

// The payload: the id, the message (neither may hold the separators), then the fields.
void Emit(spdlog::level::level_enum level, std::string_view request_id,
          std::string_view message, const nlohmann::json* fields) {
  std::string payload;
  payload.reserve(request_id.size() + message.size() + 2);
  payload += kIdStart;
  for (char c : request_id) payload += c == kIdEnd ? '?' : c;
  payload += kIdEnd;
  for (char c : message) payload += c == kFieldsStart ? '?' : c;
  if (fields != nullptr) {
    payload += kFieldsStart;
    // ASCII only (ensure_ascii) with invalid UTF-8 replaced: valid JSON, no separator bytes.
    payload += fields->dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
  }
  spdlog::log(level, "{}", payload);
}

}  // namespace

void LogRequest(spdlog::level::level_enum level, std::string_view request_id,
                std::string_view message) {
  Emit(level, request_id, message, nullptr);
}

void LogRequest(spdlog::level::level_enum level, std::string_view request_id,
                std::string_view message, const nlohmann::json& fields) {
  Emit(level, request_id, message, &fields);
}

std::string FormatForTest(const std::string& format, std::string_view request_id,
                          std::string_view message) {
  std::ostringstream out;
  auto logger = std::make_shared<spdlog::logger>(
      "test", std::make_shared<spdlog::sinks::ostream_sink_st>(out));
  logger->set_formatter(MakeFormatter(format));
  std::string payload = std::string(1, kIdStart) + std::string(request_id) + kIdEnd +
                        std::string(message);
  logger->info("{}", request_id.empty() ? std::string(message) : payload);
  logger->flush();
  return out.str();
}

ProtobufErrorCapture::ProtobufErrorCapture() : previous_(t_capture) {
  t_capture = this;
  t_capture_text = &errors_;
}

ProtobufErrorCapture::~ProtobufErrorCapture() {
  t_capture = previous_;
  t_capture_text = previous_ != nullptr ? &previous_->errors_ : nullptr;
}

}  // namespace specmoe::server
