// server/options.cc — the flag table of specmoe-server (server/README.md) on CLI11: "--flag value"
// and "--flag=value"; every error names the flag; --help shows each flag with its default.
// Tested by tests/server_options_test.cc.
#include "server/options.h"

#include <sched.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <climits>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/spec/token_tree.h"

namespace specmoe::server {
namespace {

// The largest --max-step-tokens: the forward's activation buffers hold this many tokens
// (logits alone are [tokens, vocab] floats: 4.2 GB at this bound for LLaMA's vocabulary of 32000).
constexpr int kMaxStepTokens = 32768;

// Help entries as "--flag VALUE   description (default X)".
class DefaultsFormatter final : public CLI::Formatter {
 public:
  DefaultsFormatter() { column_width(32); }
  std::string make_option_desc(const CLI::Option* opt) const override {
    std::string desc = opt->get_description();
    if (!opt->get_default_str().empty()) {
      absl::StrAppend(&desc, " (default ", opt->get_default_str(), ")");
    }
    return desc;
  }
};

// A CLI11 check: an integer in [min_value, max_value]; `why_max` explains the upper bound.
CLI::Validator IntIn(int min_value, int max_value = INT_MAX, std::string why_max = "") {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        int value = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, value);
        if (text.empty() || ec != std::errc() || ptr != end) {
          return absl::StrCat("expected an integer, got '", text, "'");
        }
        if (value < min_value) return absl::StrCat("must be at least ", min_value, ", got ", value);
        if (value > max_value) {
          return absl::StrCat("must be at most ", max_value, why_max, ", got ", value);
        }
        return "";
      },
      "");
}

// A CLI11 check: a finite number in [min_value, max_value].
CLI::Validator DoubleIn(double min_value, double max_value) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        double value = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, value);
        if (text.empty() || ec != std::errc() || ptr != end || !std::isfinite(value)) {
          return absl::StrCat("expected a number, got '", text, "'");
        }
        if (value < min_value || value > max_value) {
          return absl::StrCat("must be in [", min_value, ", ", max_value, "], got ", text);
        }
        return "";
      },
      "");
}

CLI::Validator OneOf(std::vector<std::string> choices) {
  return CLI::Validator(
      [choices](std::string& text) -> std::string {
        for (const std::string& choice : choices) {
          if (text == choice) return "";
        }
        return absl::StrCat("expected one of ", absl::StrJoin(choices, "|"), ", got '", text, "'");
      },
      "");
}

// Registers every flag on `app`, bound to the fields of `options`; --tree goes through
// `tree_text` (converted after parsing).
void AddFlags(CLI::App& app, ServerOptions& options, std::string& tree_text) {
  app.set_help_flag();  // --help is ours, so that it skips the required-flag checks
  app.formatter(std::make_shared<DefaultsFormatter>());
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  auto text = [&](const char* name, std::string* field, const char* value_name,
                  const char* help) {
    return app.add_option(name, *field, help)->option_text(value_name)->capture_default_str();
  };
  auto integer = [&](const char* name, int* field, const char* help, int min_value,
                     int max_value = INT_MAX, std::string why_max = "") {
    return app.add_option(name, *field, help)
        ->option_text("N")
        ->capture_default_str()
        ->check(IntIn(min_value, max_value, std::move(why_max)));
  };
  text("--target", &options.target_dir, "DIR", "target model: a Hugging Face folder; required");
  text("--draft", &options.draft_dir, "DIR", "draft model folder; enables speculative decoding");
  text("--listen", &options.listen, "HOST:PORT", "address to serve on (port 0 picks a free port)");
  text("--port-file", &options.port_file, "PATH", "write the bound port to PATH once listening");
  text("--device", &options.device, "cpu|cuda|auto",
       "compute device (auto: cuda when this build has it and a GPU is visible, else cpu)")
      ->check(OneOf({"cpu", "cuda", "auto"}));
  app.add_option("--tree", tree_text,
                 "default expansion <k1,...,km>: children per node at each depth")
      ->option_text("K1,K2,...")
      ->default_str(absl::StrJoin(options.tree, ","))
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            absl::StatusOr<std::vector<int>> tree = ParseIntList(value);
            return tree.ok() ? "" : std::string(tree.status().message());
          },
          ""));
  integer("--threads", &options.threads,
          "CPU worker threads (0: all cores; at most the cores available)", 0, AvailableCores(),
          " (the cores available)");
  integer("--max-queue", &options.max_queue, "waiting requests before RESOURCE_EXHAUSTED", 1);
  integer("--max-batch", &options.max_batch,
          "requests running at once; every step runs them all in one target forward", 1);
  integer("--max-context", &options.max_context,
          "context length in tokens (0: the target's max_position_embeddings)", 0);
  integer("--max-step-tokens", &options.max_step_tokens,
          "tokens in one target forward: every running request's root + tree first, then "
          "prompt chunks (chunked prefill; also the largest chunk); at least 64, the largest "
          "tree a request may ask for",
          engine::kMaxTreeNodes, kMaxStepTokens, " (activation buffers grow with it)");
  integer("--kv-cache-tokens", &options.kv_cache_tokens,
          "KV budget in tokens, each of the target's and the draft's cache (0: "
          "--kv-cache-fraction, or room for --max-batch full contexts)",
          0);
  app.add_option("--kv-cache-fraction", options.kv_cache_fraction,
                 "KV budget as a fraction of the memory left after the weights (0: unset)")
      ->option_text("F")
      ->capture_default_str()
      ->check(DoubleIn(0, 1));
  text("--tree-policy", &options.tree_policy, "static|dynamic",
       "dynamic: each step sizes every request's tree to the load (--tree is the most it "
       "holds); static: every request gets its full expansion")
      ->check(OneOf({"static", "dynamic"}));
  text("--sampled-verification", &options.sampled_verification, "coupled|rejection",
       "how sampled requests pick tokens: coupled (Gumbel-max keyed on seed and position: "
       "the same text for a seed under any load, tree or draft) or rejection (recursive "
       "rejection sampling: higher acceptance, text depends on the trees)")
      ->check(OneOf({"coupled", "rejection"}));
  text("--kv-dtype", &options.kv_dtype, "auto|f32|f16",
       "KV cache element type (f16: half the KV bytes, logits within rounding of f32; "
       "auto: f32 on the cpu, f16 on cuda)")
      ->check(OneOf({"auto", "f32", "f16"}));
  text("--prefix-cache", &options.prefix_cache, "on|off",
       "automatic prefix caching: requests sharing a prompt prefix (a system prompt, a chat's "
       "history, a preempted request) reuse its full 16-token blocks of target and draft KV; "
       "outputs are bit-identical either way")
      ->check(OneOf({"on", "off"}));
  text("--dtype", &options.dtype, "auto|f32|f16|bf16",
       "weight type served, converted at load when the checkpoint stores another (auto: as "
       "stored)")
      ->check(OneOf({"auto", "f32", "f16", "bf16"}));
  integer("--default-max-tokens", &options.default_max_tokens,
          "max_tokens of a request that leaves it unset", 1);
  integer("--max-tokens-limit", &options.max_tokens_limit,
          "largest max_tokens a request may ask for", 1);
  integer("--max-prompt-tokens", &options.max_prompt_tokens,
          "longest prompt in tokens (0: limited by the context only)", 0);
  integer("--max-prompt-bytes", &options.max_prompt_bytes,
          "longest text prompt in bytes, checked before tokenizing (0: 16 bytes per context "
          "token)", 0);
  integer("--max-message-bytes", &options.max_message_bytes, "largest request message accepted",
          1024);
  text("--api-key-file", &options.api_key_file, "PATH",
       "require 'authorization: Bearer <key>' (key read from PATH) on every RPC but health");
  text("--metrics-listen", &options.metrics_listen, "HOST:PORT",
       "serve Prometheus metrics at http://HOST:PORT/metrics (off when not given; a bare PORT "
       "is 127.0.0.1:PORT; port 0 picks a free port)");
  text("--http-listen", &options.http_listen, "HOST:PORT",
       "also serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
       "/v1/models, /health) on HOST:PORT (off when not given; a bare PORT is 127.0.0.1:PORT; "
       "port 0 picks a free port); same API key, TLS files and limits as gRPC");
  integer("--http-threads", &options.http_threads,
          "HTTP worker threads, i.e. connections served at once (0: --max-batch + --max-queue "
          "+ 8, so that every admitted request can stream)",
          0, 4096);
  text("--chat-template", &options.chat_template, "auto|llama-2|chatml|vicuna|raw",
       "how /v1/chat/completions renders messages (auto: from the target's "
       "tokenizer_config.json when it holds a known one, else raw with a warning)")
      ->check(OneOf({"auto", "llama-2", "chatml", "vicuna", "raw"}));
  text("--chat-template-file", &options.chat_template_file, "PATH",
       "a custom chat template instead: a JSON file of per-role prefix/suffix strings, a "
       "generation prompt, BOS and stop strings (server/README.md, Chat templates); not with "
       "--chat-template");
  text("--metrics-api-key-file", &options.metrics_api_key_file, "PATH",
       "require 'Authorization: Bearer <key>' (key read from PATH) on /metrics");
  text("--tls-cert", &options.tls_cert, "PATH",
       "PEM certificate chain; serve TLS (needs --tls-key)");
  text("--tls-key", &options.tls_key, "PATH", "PEM private key for --tls-cert");
  text("--tls-client-ca", &options.tls_client_ca, "PATH",
       "mutual TLS: require a client certificate signed by the PEM roots in PATH (needs "
       "--tls-cert)");
  text("--log-format", &options.log_format, "text|json", "log line format")
      ->check(OneOf({"text", "json"}));
  text("--log-level", &options.log_level, "LEVEL", "trace|debug|info|warn|error|critical|off")
      ->check(OneOf({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  integer("--drain-seconds", &options.drain_seconds,
          "on SIGTERM/SIGINT, grace period for in-flight requests", 0);
  integer("--stream-stall-seconds", &options.stream_stall_seconds,
          "a CompleteStream whose client takes no message for this long is cancelled", 1);
  app.add_flag("--help", options.help, "print this help and exit");
}

constexpr char kDescription[] =
    "Serves specmoe.v1.Completion (gRPC) with token-tree speculative decoding, plus\n"
    "grpc.health.v1.Health and server reflection. SIGTERM/SIGINT drain and exit 0.\n";

}  // namespace

int AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

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
  std::string tree_text;
  CLI::App app(kDescription, "specmoe-server");
  AddFlags(app, options, tree_text);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return absl::InvalidArgumentError(error.what());
  }
  if (!tree_text.empty()) options.tree = *ParseIntList(tree_text);  // checked by the validator
  if (options.help) return options;

  if (options.target_dir.empty()) {
    return absl::InvalidArgumentError("--target is required (a model folder)");
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
  }
  if (!options.tls_client_ca.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  if (options.default_max_tokens > options.max_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--default-max-tokens (", options.default_max_tokens,
        ") must not exceed --max-tokens-limit (", options.max_tokens_limit, ")"));
  }
  if (absl::Status tree = engine::ValidateExpansion(options.tree); !tree.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--tree: ", tree.message()));
  }
  if (options.max_step_tokens < options.max_batch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-step-tokens (", options.max_step_tokens, ") must be at least --max-batch (",
        options.max_batch, "): every running request takes one token of each step"));
  }
  if (!options.chat_template_file.empty() && app.count("--chat-template") > 0) {
    return absl::InvalidArgumentError(
        "--chat-template and --chat-template-file both choose the chat template: give one");
  }
  if (options.kv_cache_tokens > 0 && options.kv_cache_fraction > 0) {
    return absl::InvalidArgumentError(
        "--kv-cache-tokens and --kv-cache-fraction both set the KV budget: give one");
  }
  return options;
}

std::string ServerUsage() {
  ServerOptions options;
  std::string tree_text;
  CLI::App app(kDescription, "specmoe-server");
  AddFlags(app, options, tree_text);
  return app.help();
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
  engine_options.max_step_tokens = options.max_step_tokens;
  engine_options.kv_cache_tokens = options.kv_cache_tokens;
  engine_options.kv_cache_fraction = options.kv_cache_fraction;
  engine_options.tree_policy = options.tree_policy == "static"
                                   ? engine::EngineOptions::TreePolicy::kStatic
                                   : engine::EngineOptions::TreePolicy::kDynamic;
  engine_options.sampled_verification = options.sampled_verification == "rejection"
                                            ? engine::SampledVerification::kRejection
                                            : engine::SampledVerification::kCoupled;
  if (options.kv_dtype != "auto") {
    engine_options.kv_dtype =
        options.kv_dtype == "f16" ? kernels::DType::kF16 : kernels::DType::kF32;
  }
  engine_options.prefix_cache = options.prefix_cache == "on";
  if (options.dtype == "f32") engine_options.weight_dtype = kernels::DType::kF32;
  if (options.dtype == "f16") engine_options.weight_dtype = kernels::DType::kF16;
  if (options.dtype == "bf16") engine_options.weight_dtype = kernels::DType::kBF16;
  engine_options.limits.default_max_tokens = options.default_max_tokens;
  engine_options.limits.max_tokens_limit = options.max_tokens_limit;
  engine_options.limits.max_prompt_tokens = options.max_prompt_tokens;
  engine_options.limits.max_prompt_bytes = options.max_prompt_bytes;
  return engine_options;
}

}  // namespace specmoe::server
