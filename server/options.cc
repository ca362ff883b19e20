// server/options.cc — flag table and parser for specmoe-server (DESIGN §7). Accepts
// "--flag value" and "--flag=value"; every error names the flag.
// Tested by tests/server_options_test.cc.
#include "server/options.h"

#include <charconv>
#include <functional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace specmoe::server {
namespace {

absl::StatusOr<int> ParseInt(const std::string& flag, const std::string& text, int min_value) {
  int value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected an integer, got '", text, "'"));
  }
  if (value < min_value) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": must be at least ", min_value, ", got ", value));
  }
  return value;
}

using Setter = std::function<absl::Status(ServerOptions&, const std::string&)>;

struct Flag {
  const char* name;
  const char* value_name;  // empty for a boolean switch
  const char* help;
  std::function<std::string(const ServerOptions&)> show_default;
  Setter set;
};

Setter StringSetter(std::string ServerOptions::*field) {
  return [field](ServerOptions& o, const std::string& v) {
    o.*field = v;
    return absl::OkStatus();
  };
}

Setter IntSetter(const char* name, int ServerOptions::*field, int min_value) {
  return [name, field, min_value](ServerOptions& o, const std::string& v) -> absl::Status {
    absl::StatusOr<int> value = ParseInt(name, v, min_value);
    if (!value.ok()) return value.status();
    o.*field = *value;
    return absl::OkStatus();
  };
}

Setter ChoiceSetter(const char* name, std::string ServerOptions::*field,
                    std::vector<std::string> choices) {
  return [name, field, choices](ServerOptions& o, const std::string& v) -> absl::Status {
    for (const std::string& choice : choices) {
      if (v == choice) {
        o.*field = v;
        return absl::OkStatus();
      }
    }
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": expected one of ",
                                                    absl::StrJoin(choices, "|"), ", got '",
                                                    v, "'"));
  };
}

auto Show(std::string ServerOptions::*field) {
  return [field](const ServerOptions& o) { return o.*field; };
}
auto Show(int ServerOptions::*field) {
  return [field](const ServerOptions& o) { return std::to_string(o.*field); };
}

const std::vector<Flag>& Flags() {
  static const std::vector<Flag>* flags = new std::vector<Flag>{
      {"target", "DIR", "target model: a Hugging Face folder; required",
       Show(&ServerOptions::target_dir),
       StringSetter(&ServerOptions::target_dir)},
      {"draft", "DIR", "draft model folder; enables speculative decoding",
       Show(&ServerOptions::draft_dir), StringSetter(&ServerOptions::draft_dir)},
      {"listen", "HOST:PORT", "address to serve on (port 0 picks a free port)",
       Show(&ServerOptions::listen), StringSetter(&ServerOptions::listen)},
      {"port-file", "PATH", "write the bound port to PATH once listening",
       Show(&ServerOptions::port_file), StringSetter(&ServerOptions::port_file)},
      {"device", "cpu|cuda", "compute device", Show(&ServerOptions::device),
       ChoiceSetter("device", &ServerOptions::device, {"cpu", "cuda"})},
      {"tree", "K1,K2,...", "default expansion <k1,...,km>: children per node at each depth",
       [](const ServerOptions& o) { return absl::StrJoin(o.tree, ","); },
       [](ServerOptions& o, const std::string& v) -> absl::Status {
         absl::StatusOr<std::vector<int>> tree = ParseIntList(v);
         if (!tree.ok()) {
           return absl::InvalidArgumentError(absl::StrCat("--tree: ", tree.status().message()));
         }
         o.tree = *std::move(tree);
         return absl::OkStatus();
       }},
      {"threads", "N", "CPU worker threads (0: all cores)", Show(&ServerOptions::threads),
       IntSetter("threads", &ServerOptions::threads, 0)},
      {"max-queue", "N", "waiting requests before RESOURCE_EXHAUSTED",
       Show(&ServerOptions::max_queue), IntSetter("max-queue", &ServerOptions::max_queue, 1)},
      {"max-batch", "N", "requests generating at once (KV room is reserved for each)",
       Show(&ServerOptions::max_batch), IntSetter("max-batch", &ServerOptions::max_batch, 1)},
      {"max-context", "N", "context length in tokens (0: the target's max_position_embeddings)",
       Show(&ServerOptions::max_context),
       IntSetter("max-context", &ServerOptions::max_context, 0)},
      {"default-max-tokens", "N", "max_tokens of a request that leaves it unset",
       Show(&ServerOptions::default_max_tokens),
       IntSetter("default-max-tokens", &ServerOptions::default_max_tokens, 1)},
      {"max-tokens-limit", "N", "largest max_tokens a request may ask for",
       Show(&ServerOptions::max_tokens_limit),
       IntSetter("max-tokens-limit", &ServerOptions::max_tokens_limit, 1)},
      {"max-prompt-tokens", "N", "longest prompt in tokens (0: limited by the context only)",
       Show(&ServerOptions::max_prompt_tokens),
       IntSetter("max-prompt-tokens", &ServerOptions::max_prompt_tokens, 0)},
      {"max-message-bytes", "N", "largest request message accepted",
       Show(&ServerOptions::max_message_bytes),
       IntSetter("max-message-bytes", &ServerOptions::max_message_bytes, 1024)},
      {"api-key-file", "PATH", "require 'authorization: Bearer <key>' (key read from PATH) "
       "on every RPC but health", Show(&ServerOptions::api_key_file),
       StringSetter(&ServerOptions::api_key_file)},
      {"metrics-listen", "HOST:PORT", "serve Prometheus metrics at http://HOST:PORT/metrics "
       "(off when not given; use a loopback HOST unless scraped from elsewhere)",
       Show(&ServerOptions::metrics_listen), StringSetter(&ServerOptions::metrics_listen)},
      {"metrics-api-key-file", "PATH", "require 'Authorization: Bearer <key>' on /metrics",
       Show(&ServerOptions::metrics_api_key_file),
       StringSetter(&ServerOptions::metrics_api_key_file)},
      {"tls-cert", "PATH", "PEM certificate chain; serve TLS (needs --tls-key)",
       Show(&ServerOptions::tls_cert), StringSetter(&ServerOptions::tls_cert)},
      {"tls-key", "PATH", "PEM private key for --tls-cert", Show(&ServerOptions::tls_key),
       StringSetter(&ServerOptions::tls_key)},
      {"log-format", "text|json", "log line format", Show(&ServerOptions::log_format),
       ChoiceSetter("log-format", &ServerOptions::log_format, {"text", "json"})},
      {"log-level", "LEVEL", "trace|debug|info|warn|error|critical|off",
       Show(&ServerOptions::log_level),
       ChoiceSetter("log-level", &ServerOptions::log_level,
                    {"trace", "debug", "info", "warn", "error", "critical", "off"})},
      {"drain-seconds", "N", "on SIGTERM/SIGINT, grace period for in-flight requests",
       Show(&ServerOptions::drain_seconds),
       IntSetter("drain-seconds", &ServerOptions::drain_seconds, 0)},
      {"help", "", "print this help and exit", [](const ServerOptions&) { return std::string(); },
       [](ServerOptions& o, const std::string&) {
         o.help = true;
         return absl::OkStatus();
       }},
  };
  return *flags;
}

}  // namespace

absl::StatusOr<std::vector<int>> ParseIntList(const std::string& text) {
  std::vector<int> values;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int value = 0;
    const char* end = part.data() + part.size();
    const auto [ptr, ec] = std::from_chars(part.data(), end, value);
    if (part.empty() || ec != std::errc() || ptr != end || value < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expected a comma-separated list of positive integers, got '", text, "'"));
    }
    values.push_back(value);
  }
  return values;
}

absl::StatusOr<ServerOptions> ParseServerOptions(int argc, const char* const* argv) {
  ServerOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "' (flags start with --)"));
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const Flag* flag = nullptr;
    for (const Flag& candidate : Flags()) {
      if (name == candidate.name) flag = &candidate;
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    const bool is_switch = flag->value_name[0] == '\0';
    if (is_switch && has_value) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
    }
    if (!is_switch && !has_value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " needs a value (", flag->value_name, ")"));
      }
      value = argv[++i];
    }
    if (absl::Status status = flag->set(options, value); !status.ok()) return status;
  }
  if (options.help) return options;

  if (options.target_dir.empty()) {
    return absl::InvalidArgumentError("--target is required (a model folder)");
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
  }
  if (options.default_max_tokens > options.max_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--default-max-tokens (", options.default_max_tokens,
        ") must not exceed --max-tokens-limit (", options.max_tokens_limit, ")"));
  }
  if (options.device == "cuda") {
    return absl::InvalidArgumentError(
        "--device cuda: this build has no CUDA backend yet; use --device cpu");
  }
  return options;
}

std::string ServerUsage() {
  const ServerOptions defaults;
  std::string out =
      "usage: specmoe-server --target DIR [--draft DIR] [flags]\n\n"
      "Serves specmoe.v1.Completion (gRPC) with token-tree speculative decoding, plus\n"
      "grpc.health.v1.Health and server reflection. SIGTERM/SIGINT drain and exit 0.\n\n"
      "flags:\n";
  for (const Flag& flag : Flags()) {
    std::string left = absl::StrCat("  --", flag.name);
    if (flag.value_name[0] != '\0') absl::StrAppend(&left, " ", flag.value_name);
    if (left.size() < 30) left.resize(30, ' ');
    else absl::StrAppend(&left, "\n", std::string(30, ' '));
    absl::StrAppend(&out, left, flag.help);
    const std::string shown = flag.show_default(defaults);
    if (!shown.empty()) absl::StrAppend(&out, " (default ", shown, ")");
    absl::StrAppend(&out, "\n");
  }
  return out;
}

engine::EngineOptions ToEngineOptions(const ServerOptions& options) {
  engine::EngineOptions engine_options;
  engine_options.target_dir = options.target_dir;
  engine_options.draft_dir = options.draft_dir;
  engine_options.device = options.device;
  engine_options.threads = options.threads;
  engine_options.expansion = options.tree;
  engine_options.max_queue = options.max_queue;
  engine_options.max_batch = options.max_batch;
  engine_options.max_context = options.max_context;
  return engine_options;
}

}  // namespace specmoe::server
