// server/options.h — specmoe-server command-line flags (server/README.md), parsed by CLI11.
// Tested by tests/server_options_test.cc.
#ifndef SPECMOE_SERVER_OPTIONS_H_
#define SPECMOE_SERVER_OPTIONS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/serving/engine_options.h"
#include "engine/serving/request.h"
#include "engine/serving/request_validator.h"

namespace specmoe::server {

// Every flag of specmoe-server with its default. Plain value type.
struct ServerOptions {
  std::string target_dir;                          // --target (required)
  std::string draft_dir;                           // --draft
  std::string listen = "127.0.0.1:50051";          // --listen (port 0: a free port)
  std::string port_file;                           // --port-file
  std::string device = "auto";                     // --device cpu|cuda|auto
  std::vector<int> tree{engine::kDefaultExpansion.begin(),  // --tree
                        engine::kDefaultExpansion.end()};
  int threads = 0;                                 // --threads (0: all cores; at most the cores)
  int max_queue = engine::kDefaultMaxQueue;        // --max-queue
  int max_batch = engine::kDefaultMaxBatch;        // --max-batch
  int max_context = 0;                             // --max-context (0: the model's)
  int max_step_tokens = engine::kDefaultMaxStepTokens;  // --max-step-tokens
  int kv_cache_tokens = 0;                         // --kv-cache-tokens (0: the fraction,
                                                   //   else --max-batch full contexts)
  double kv_cache_fraction = 0;                    // --kv-cache-fraction (0: unset)
  std::string tree_policy = "dynamic";             // --tree-policy static|dynamic
  std::string sampled_verification = "coupled";   // --sampled-verification coupled|rejection
  std::string kv_dtype = "auto";                   // --kv-dtype auto|f32|f16
  std::string prefix_cache = "on";                 // --prefix-cache on|off
  std::string dtype = "auto";                      // --dtype auto|f32|f16|bf16 (weights)
  int default_max_tokens = engine::kDefaultMaxTokens;  // --default-max-tokens
  int max_tokens_limit = engine::kDefaultMaxTokensLimit;  // --max-tokens-limit
  int max_prompt_tokens = 0;                       // --max-prompt-tokens (0: the context)
  int max_prompt_bytes = 0;                        // --max-prompt-bytes (0: 16 x the context)
  int max_message_bytes = 4 << 20;                 // --max-message-bytes
  std::string api_key_file;                        // --api-key-file
  std::string metrics_listen;                      // --metrics-listen HOST:PORT (empty: off)
  std::string http_listen;                         // --http-listen HOST:PORT (empty: off)
  int http_threads = 0;                            // --http-threads (0: max_batch + max_queue
                                                   //   + 8)
  std::string chat_template = "auto";              // --chat-template auto|llama-2|chatml|
                                                   //   vicuna|raw
  std::string chat_template_file;                  // --chat-template-file (not with
                                                   //   --chat-template)
  std::string metrics_api_key_file;                // --metrics-api-key-file
  std::string tls_cert;                            // --tls-cert
  std::string tls_key;                             // --tls-key
  std::string tls_client_ca;                       // --tls-client-ca (mutual TLS)
  std::string log_format = "text";                 // --log-format text|json
  std::string log_level = "info";                  // --log-level
  int drain_seconds = 30;                          // --drain-seconds
  int stream_stall_seconds = 30;                   // --stream-stall-seconds
  bool help = false;                               // --help
};

// Parses argv (argv[0] is the program). INVALID_ARGUMENT names the flag and what is wrong.
// With --help, returns options with help = true and skips the required-flag checks.
absl::StatusOr<ServerOptions> ParseServerOptions(int argc, const char* const* argv);

// The --help text: usage and one entry per flag with its default.
std::string ServerUsage();

// The number of cores this process may run on (the bound of --threads); at least 1.
int AvailableCores();

// The engine's share of the options.
engine::EngineOptions ToEngineOptions(const ServerOptions& options);

// Parses "1,1,3" into {1, 1, 3}; every entry must be a positive integer.
absl::StatusOr<std::vector<int>> ParseIntList(const std::string& text);

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_OPTIONS_H_
