// tests/server_options_test.cc — specmoe-server flag parsing (server/options.h, CLI11):
// defaults, both value syntaxes, errors that name the flag, --threads bounded by the cores,
// the scheduler's flags (step tokens, KV budget, tree policy) and their way into EngineOptions.
#include "server/options.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace specmoe::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::StatusOr<ServerOptions> Parse(std::vector<const char*> args) {
  args.insert(args.begin(), "specmoe-server");
  return ParseServerOptions(static_cast<int>(args.size()), args.data());
}

TEST(ServerOptionsTest, DefaultsMatchTheDesign) {
  absl::StatusOr<ServerOptions> options = Parse({"--target", "/models/t"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->target_dir, "/models/t");
  EXPECT_EQ(options->draft_dir, "");
  EXPECT_EQ(options->listen, "127.0.0.1:50051");
  EXPECT_EQ(options->device, "auto");
  EXPECT_THAT(options->tree, ElementsAre(1, 1, 3, 1, 1, 1, 1, 1));
  EXPECT_EQ(options->default_max_tokens, 128);
  EXPECT_EQ(options->max_tokens_limit, 4096);
  EXPECT_EQ(options->log_format, "text");
  EXPECT_FALSE(options->help);
  const engine::EngineOptions engine = ToEngineOptions(*options);
  EXPECT_EQ(engine.target_dir, "/models/t");
  EXPECT_THAT(engine.expansion, ElementsAre(1, 1, 3, 1, 1, 1, 1, 1));
}

TEST(ServerOptionsTest, AcceptsBothValueSyntaxes) {
  absl::StatusOr<ServerOptions> options =
      Parse({"--target=/t", "--draft", "/d", "--tree=2,2,1", "--threads", "1",
             "--listen=0.0.0.0:0", "--log-format", "json", "--max-tokens-limit=64",
             "--default-max-tokens", "16", "--drain-seconds=0", "--stream-stall-seconds", "2"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->draft_dir, "/d");
  EXPECT_THAT(options->tree, ElementsAre(2, 2, 1));
  EXPECT_EQ(options->threads, 1);
  EXPECT_EQ(options->listen, "0.0.0.0:0");
  EXPECT_EQ(options->log_format, "json");
  EXPECT_EQ(options->max_tokens_limit, 64);
  EXPECT_EQ(options->default_max_tokens, 16);
  EXPECT_EQ(options->drain_seconds, 0);
  EXPECT_EQ(options->stream_stall_seconds, 2);
  EXPECT_EQ(Parse({"--target=/t"})->stream_stall_seconds, 30);
}

TEST(ServerOptionsTest, HttpFlagsDefaultOff) {
  absl::StatusOr<ServerOptions> options = Parse({"--target", "/t"});
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->http_listen, "");
  EXPECT_EQ(options->http_threads, 0);
  EXPECT_EQ(options->chat_template, "auto");
  options = Parse({"--target", "/t", "--http-listen", "8000", "--http-threads=12",
                   "--chat-template", "chatml"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->http_listen, "8000");
  EXPECT_EQ(options->http_threads, 12);
  EXPECT_EQ(options->chat_template, "chatml");
  EXPECT_EQ(options->chat_template_file, "");
  options = Parse({"--target", "/t", "--chat-template-file", "/c.json"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->chat_template_file, "/c.json");
  // Either chooses the template, not both (even --chat-template auto, given explicitly).
  for (const char* name : {"raw", "auto"}) {
    options = Parse({"--target", "/t", "--chat-template", name, "--chat-template-file", "/c.json"});
    ASSERT_FALSE(options.ok());
    EXPECT_THAT(std::string(options.status().message()),
                HasSubstr("--chat-template and --chat-template-file both choose"));
  }
}

TEST(ServerOptionsTest, ErrorsNameTheFlag) {
  const std::vector<std::pair<std::vector<const char*>, std::string>> cases = {
      {{}, "--target is required"},
      {{"--target"}, "--target: 1 required"},
      {{"--target", "/t", "--max-queue"}, "--max-queue: 1 required"},
      {{"--target", "/t", "--bogus"}, "not expected: --bogus"},
      {{"--target", "/t", "--threads", "many"}, "--threads: expected an integer"},
      {{"--target", "/t", "--threads", "-1"}, "--threads: must be at least 0"},
      {{"--target", "/t", "--threads", "100000"}, "--threads: must be at most"},
      {{"--target", "/t", "--max-prompt-bytes", "x"}, "--max-prompt-bytes: expected an integer"},
      {{"--target", "/t", "--max-batch", "0"}, "--max-batch: must be at least 1"},
      {{"--target", "/t", "--stream-stall-seconds", "0"},
       "--stream-stall-seconds: must be at least 1"},
      {{"--target", "/t", "--tree", "1,0,2"}, "--tree"},
      {{"--target", "/t", "--tree", "1,,2"}, "--tree"},
      {{"--target", "/t", "--log-format", "xml"}, "--log-format: expected one of text|json"},
      {{"--target", "/t", "--device", "tpu"}, "--device: expected one of cpu|cuda|auto"},
      {{"--target", "/t", "--kv-dtype", "bf16"}, "--kv-dtype: expected one of auto|f32|f16"},
      {{"--target", "/t", "--dtype", "f8"}, "--dtype: expected one of auto|f32|f16|bf16"},
      {{"--target", "/t", "--tls-cert", "c.pem"}, "--tls-cert and --tls-key"},
      {{"--target", "/t", "--tls-client-ca", "ca.pem"}, "--tls-client-ca needs --tls-cert"},
      {{"--target", "/t", "--default-max-tokens", "500", "--max-tokens-limit", "100"},
       "--default-max-tokens"},
      {{"--target", "/t", "stray"}, "not expected: stray"},
      {{"--target", "/t", "--tree", "9"}, "--tree: "},
      {{"--target", "/t", "--max-step-tokens", "0"}, "--max-step-tokens: must be at least 64"},
      {{"--target", "/t", "--max-step-tokens", "40000"},
       "--max-step-tokens: must be at most 32768 (activation buffers grow with it), got 40000"},
      {{"--target", "/t", "--max-step-tokens", "64", "--max-batch", "100"},
       "--max-step-tokens (64) must be at least --max-batch (100)"},
      {{"--target", "/t", "--kv-cache-tokens", "-1"}, "--kv-cache-tokens: must be at least 0"},
      {{"--target", "/t", "--kv-cache-fraction", "1.5"},
       "--kv-cache-fraction: must be in [0, 1], got 1.5"},
      {{"--target", "/t", "--kv-cache-fraction", "-0.1"}, "--kv-cache-fraction: must be in"},
      {{"--target", "/t", "--kv-cache-fraction", "half"},
       "--kv-cache-fraction: expected a number, got 'half'"},
      {{"--target", "/t", "--kv-cache-fraction", "nan"}, "--kv-cache-fraction: expected a number"},
      {{"--target", "/t", "--kv-cache-tokens", "4096", "--kv-cache-fraction", "0.5"},
       "--kv-cache-tokens and --kv-cache-fraction both set the KV budget"},
      {{"--target", "/t", "--tree-policy", "greedy"},
       "--tree-policy: expected one of static|dynamic, got 'greedy'"},
      {{"--target", "/t", "--sampled-verification", "exact"},
       "--sampled-verification: expected one of coupled|rejection, got 'exact'"},
      {{"--target", "/t", "--chat-template", "jinja"},
       "--chat-template: expected one of auto|llama-2|chatml|vicuna|raw, got 'jinja'"},
      {{"--target", "/t", "--http-threads", "-1"}, "--http-threads: must be at least 0"},
  };
  for (const auto& [args, message] : cases) {
    absl::StatusOr<ServerOptions> options = Parse(args);
    ASSERT_FALSE(options.ok()) << message;
    EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(options.status().message(), HasSubstr(message));
  }
}

TEST(ServerOptionsTest, DtypesDefaultToTheDevicesAndReachTheEngine) {
  absl::StatusOr<ServerOptions> options = Parse({"--target", "/t"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->kv_dtype, "auto");
  EXPECT_EQ(options->dtype, "auto");
  EXPECT_FALSE(ToEngineOptions(*options).kv_dtype.has_value());  // the device decides
  EXPECT_FALSE(ToEngineOptions(*options).weight_dtype.has_value());  // as stored
  options = Parse({"--target", "/t", "--kv-dtype", "f16", "--dtype", "bf16"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(ToEngineOptions(*options).kv_dtype, kernels::DType::kF16);
  EXPECT_EQ(ToEngineOptions(*options).weight_dtype, kernels::DType::kBF16);
  options = Parse({"--target", "/t", "--kv-dtype", "f32", "--dtype", "f16", "--device", "cpu"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(ToEngineOptions(*options).kv_dtype, kernels::DType::kF32);
  EXPECT_EQ(ToEngineOptions(*options).weight_dtype, kernels::DType::kF16);
  EXPECT_EQ(ToEngineOptions(*options).device, "cpu");
}

TEST(ServerOptionsTest, SchedulerFlagsDefaultAndReachTheEngine) {
  absl::StatusOr<ServerOptions> options = Parse({"--target", "/t"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->max_batch, 16);
  EXPECT_EQ(options->max_step_tokens, 256);
  EXPECT_EQ(options->kv_cache_tokens, 0);
  EXPECT_EQ(options->kv_cache_fraction, 0);
  EXPECT_EQ(options->tree_policy, "dynamic");
  engine::EngineOptions engine = ToEngineOptions(*options);
  EXPECT_EQ(engine.max_batch, 16);
  EXPECT_EQ(engine.max_step_tokens, 256);
  EXPECT_EQ(engine.kv_cache_tokens, 0);
  EXPECT_EQ(engine.kv_cache_fraction, 0);
  EXPECT_EQ(engine.tree_policy, engine::EngineOptions::TreePolicy::kDynamic);
  EXPECT_EQ(engine.sampled_verification, engine::SampledVerification::kCoupled);

  options = Parse({"--target", "/t", "--max-batch", "3", "--max-step-tokens=512",
                   "--kv-cache-tokens", "4096", "--tree-policy", "static",
                   "--sampled-verification", "rejection"});
  ASSERT_TRUE(options.ok()) << options.status();
  engine = ToEngineOptions(*options);
  EXPECT_EQ(engine.max_batch, 3);
  EXPECT_EQ(engine.max_step_tokens, 512);
  EXPECT_EQ(engine.kv_cache_tokens, 4096);
  EXPECT_EQ(engine.kv_cache_fraction, 0);
  EXPECT_EQ(engine.tree_policy, engine::EngineOptions::TreePolicy::kStatic);
  EXPECT_EQ(engine.sampled_verification, engine::SampledVerification::kRejection);

  options = Parse({"--target", "/t", "--kv-cache-fraction=0.25", "--tree-policy", "dynamic"});
  ASSERT_TRUE(options.ok()) << options.status();
  engine = ToEngineOptions(*options);
  EXPECT_EQ(engine.kv_cache_fraction, 0.25);
  EXPECT_EQ(engine.kv_cache_tokens, 0);
  EXPECT_EQ(engine.tree_policy, engine::EngineOptions::TreePolicy::kDynamic);
}

TEST(ServerOptionsTest, StepTokensBoundsAreInclusive) {
  // The smallest budget: the largest tree a request may ask for (64 nodes, root included),
  // with one request per token.
  absl::StatusOr<ServerOptions> options =
      Parse({"--target", "/t", "--max-step-tokens", "64", "--max-batch", "64"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(ToEngineOptions(*options).max_step_tokens, 64);
  EXPECT_FALSE(Parse({"--target", "/t", "--max-step-tokens", "63", "--max-batch", "1"}).ok());
  options = Parse({"--target", "/t", "--max-step-tokens", "32768", "--kv-cache-fraction", "1"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->max_step_tokens, 32768);
  EXPECT_EQ(options->kv_cache_fraction, 1.0);
}

TEST(ServerOptionsTest, HelpSkipsRequiredFlagsAndListsEveryFlag) {
  absl::StatusOr<ServerOptions> options = Parse({"--help"});
  ASSERT_TRUE(options.ok());
  EXPECT_TRUE(options->help);
  const std::string usage = ServerUsage();
  for (const char* flag :
       {"--target DIR", "--draft DIR", "--listen HOST:PORT", "--port-file PATH", "--device",
        "--tree", "--threads", "--max-queue", "--max-batch", "--max-context",
        "--max-step-tokens N", "--kv-cache-tokens N", "--kv-cache-fraction F",
        "--tree-policy static|dynamic", "--kv-dtype", "--dtype auto|f32|f16|bf16",
        "--default-max-tokens",
        "--max-tokens-limit", "--max-prompt-tokens", "--max-prompt-bytes",
        "--max-message-bytes", "--api-key-file",
        "--tls-cert", "--tls-key", "--tls-client-ca", "--log-format", "--log-level", "--drain-seconds",
        "--stream-stall-seconds", "--http-listen HOST:PORT", "--http-threads N",
        "--chat-template auto|llama-2|chatml|vicuna|raw", "--chat-template-file PATH"}) {
    EXPECT_THAT(usage, HasSubstr(flag));
  }
  EXPECT_THAT(usage, HasSubstr("(default 127.0.0.1:50051)"));
  EXPECT_THAT(usage, HasSubstr("(default 1,1,3,1,1,1,1,1)"));
  EXPECT_THAT(usage, HasSubstr("(default 4096)"));
  EXPECT_THAT(usage, HasSubstr("(default dynamic)"));
  EXPECT_THAT(usage, HasSubstr("(default 256)"));
}

TEST(ServerOptionsTest, ThreadsAreBoundedByTheCores) {
  const std::string cores = std::to_string(AvailableCores());
  absl::StatusOr<ServerOptions> options = Parse({"--target", "/t", "--threads", cores.c_str()});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->threads, AvailableCores());
  const std::string more = std::to_string(AvailableCores() + 1);
  options = Parse({"--target", "/t", "--threads", more.c_str()});
  ASSERT_FALSE(options.ok());
  EXPECT_THAT(options.status().message(),
              HasSubstr("--threads: must be at most " + cores + " (the cores available)"));
}

TEST(ServerOptionsTest, LaterValueWins) {
  absl::StatusOr<ServerOptions> options =
      Parse({"--target", "/a", "--target", "/b", "--max-queue=3", "--max-queue", "5"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->target_dir, "/b");
  EXPECT_EQ(options->max_queue, 5);
}

TEST(ServerOptionsTest, ParseIntListRejectsNonPositiveEntries) {
  EXPECT_THAT(*ParseIntList("4"), ElementsAre(4));
  EXPECT_THAT(*ParseIntList("1,2,3"), ElementsAre(1, 2, 3));
  EXPECT_FALSE(ParseIntList("").ok());
  EXPECT_FALSE(ParseIntList("0").ok());
  EXPECT_FALSE(ParseIntList("1,x").ok());
  EXPECT_FALSE(ParseIntList("1, 2").ok());
}

}  // namespace
}  // namespace specmoe::server
