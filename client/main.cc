// client/main.cc — specmoe-cli: command-line client for specmoe.v1.Completion (client/README.md).
//   specmoe-cli complete|stream [flags] "prompt"      (or --prompt-ids 1,2,3)
//   specmoe-cli info | tokenize "text" | health
//   specmoe-cli bench [bench flags]             (the load tester: client/bench.h)
// Plain output prints the text (stream: deltas as they arrive) and a timing summary on
// stderr; --json prints the proto3 JSON mapping of the response (stream: one line per
// chunk). Flags through CLI11; --help lists each with its default. Exit codes: 0 OK, 1 RPC
// error, 2 bad flags. Tested by tests/server_e2e_test.cc.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>

#include <cctype>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "client/bench.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "specmoe/v1/completion.grpc.pb.h"

namespace specmoe::client {
namespace {

namespace v1 = ::specmoe::v1;
using Clock = std::chrono::steady_clock;

struct CliOptions {
  std::string command;
  std::string server = "127.0.0.1:50051";
  std::optional<std::string> prompt;
  std::vector<int32_t> prompt_ids;
  v1::CompleteRequest request;
  bool add_bos = false;
  std::string health_service;
  std::string api_key_file;
  std::string tls_ca;
  std::string tls_cert;  // client certificate (mutual TLS), with tls_key
  std::string tls_key;
  int64_t timeout_ms = 0;
  bool json = false;
  bool help = false;
  std::string help_text;  // the --help output, set with help
  BenchOptions bench;     // command "bench"
};

constexpr char kDescription[] =
    "specmoe-cli <command> [flags] [PROMPT]\n"
    "\n"
    "commands:\n"
    "  complete   generate a completion and print it when done\n"
    "  stream     generate a completion, printing text as it arrives\n"
    "  tokenize   print the token ids and pieces of PROMPT\n"
    "  info       print the served models (GetModelInfo)\n"
    "  health     print grpc.health.v1 status; exit 0 only when SERVING\n"
    "  bench      load-test the server (specmoe-cli bench --help for its flags)\n";

// Help entries as "--flag VALUE   description (default X)".
class DefaultsFormatter final : public CLI::Formatter {
 public:
  DefaultsFormatter() { column_width(30); }
  std::string make_option_desc(const CLI::Option* opt) const override {
    std::string desc = opt->get_description();
    if (!opt->get_default_str().empty()) desc += " (default " + opt->get_default_str() + ")";
    return desc;
  }
};

// A CLI11 check: a comma-separated list of integers, each at least `min_value` (token ids
// are sent as given: the server names a bad one).
CLI::Validator IntList(int64_t min_value = INT32_MIN) {
  return CLI::Validator(
      [min_value](std::string& text) -> std::string {
        std::vector<std::string> parts = CLI::detail::split(text, ',');
        for (const std::string& part : parts) {
          int64_t value = 0;
          const char* end = part.data() + part.size();
          const auto [ptr, ec] = std::from_chars(part.data(), end, value);
          if (part.empty() || ec != std::errc() || ptr != end || value < min_value) {
            return "expected a comma-separated list of integers" +
                   (min_value > INT32_MIN ? " >= " + std::to_string(min_value) : std::string()) +
                   ", got '" + text + "'";
          }
        }
        return parts.empty() ? "expected a comma-separated list of integers" : "";
      },
      "");
}

std::vector<int64_t> SplitInts(const std::string& text) {
  std::vector<int64_t> values;
  for (const std::string& part : CLI::detail::split(text, ',')) values.push_back(std::stoll(part));
  return values;
}

// The bench subcommand and its own flags, bound to *bench; the shared flags fall through
// to the top-level app.
CLI::App* AddBenchCommand(CLI::App& app, BenchOptions* bench) {
  CLI::App* command = app.add_subcommand(
      "bench",
      "Load-tests the server (modelled on vllm bench serve): N streaming requests from a "
      "dataset at a concurrency or an arrival rate; prints TTFT, TPOT, ITL, E2EL, "
      "throughput, goodput, errors by gRPC code and speculation statistics.");
  command->fallthrough();
  command->footer(
      "Also the top-level flags: --server, --api-key-file, --tls-ca, --timeout-ms (each "
      "request's deadline), --temperature, --seed, --tree, --ignore-eos, --no-speculation, "
      "--logprobs.");
  command->formatter(std::make_shared<DefaultsFormatter>());
  command->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  command->add_option("--num-requests", bench->num_requests, "requests to send")
      ->option_text("N")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--concurrency", bench->concurrency,
                      "requests in flight at most (0: 1 without --request-rate, unbounded with)")
      ->option_text("C")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  command->add_option("--request-rate", bench->request_rate,
                      "arrivals per second, Poisson (0: all at once, bounded by --concurrency)")
      ->option_text("R")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e6));
  command->add_option("--burstiness", bench->burstiness,
                      "shape of the gamma-distributed gaps (1: Poisson; < 1 burstier)")
      ->option_text("F")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--warmup", bench->warmup, "requests sent first and not measured")
      ->option_text("N")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  command->add_option("--dataset-name", bench->dataset_name, "where the prompts come from")
      ->option_text("jsonl|sharegpt|random")
      ->capture_default_str()
      ->check(CLI::IsMember({"jsonl", "sharegpt", "random"}));
  command->add_option("--dataset-path", bench->dataset_path,
                      "JSONL ({\"prompt\": ..., optional \"max_tokens\"} per line) or ShareGPT "
                      "JSON (default for jsonl: client/data/prompts.jsonl)")
      ->option_text("PATH");
  command->add_option("--input-len", bench->input_len, "random: prompt tokens")
      ->option_text("N")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--shared-prefix-tokens", bench->shared_prefix_tokens,
                      "every prompt starts with the same N random tokens (a system prompt: "
                      "measures the prefix cache)")
      ->option_text("N")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  command->add_option("--multi-turn", bench->multi_turn,
                      "each request is a conversation of T turns, each resending the history "
                      "(prompt, completion) plus the next prompt of the dataset")
      ->option_text("T")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  command->add_option("--output-len", bench->output_len,
                      "max_tokens of each request (unless the dataset line gives one)")
      ->option_text("N")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--percentiles", bench->percentiles, "percentiles to report")
      ->option_text("50,90,99")
      ->delimiter(',')
      ->default_str("50,90,99")
      ->check(CLI::Range(0.0, 100.0));
  command->add_flag("--ab", bench->ab,
                    "the same requests with speculation on and off, interleaved, side by side");
  command->add_option("--sweep-concurrency", bench->sweep_concurrency,
                      "one run per concurrency, one row each")
      ->option_text("1,2,4,8,16")
      ->delimiter(',')
      ->check(CLI::Range(1, 1 << 20));
  command->add_option("--json", bench->json_path,
                      "write the report as JSON (vllm bench serve's field names)")
      ->option_text("FILE");
  command->add_option("--plot", bench->plot_path,
                      "draw tokens/s and p99 latency against concurrency (python3-matplotlib)")
      ->option_text("FILE.png");
  command->add_option("--backend", bench->backend,
                      "specmoe: specmoe's gRPC CompleteStream; openai: streamed POST "
                      "/v1/completions to any OpenAI-compatible server at --base-url")
      ->option_text("specmoe|openai")
      ->capture_default_str()
      ->check(CLI::IsMember({"specmoe", "openai"}));
  command->add_option("--base-url", bench->base_url,
                      "openai: the API's base, e.g. http://127.0.0.1:8000/v1 (https: with "
                      "--tls-ca)")
      ->option_text("URL");
  command->add_option("--model", bench->model,
                      "openai: the model to ask for (default: the first of GET /v1/models)")
      ->option_text("ID");
  command->add_option("--connect-timeout-ms", bench->connect_timeout_ms,
                      "give up when the server does not answer within this")
      ->option_text("N")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  return command;
}

// Parses argv into *options. Returns an error message naming the flag, or "" on success.
std::string ParseArgs(int argc, char** argv, CliOptions* options) {
  v1::CompleteRequest& request = options->request;
  v1::Sampling* sampling = request.mutable_sampling();
  CLI::App app(kDescription, "specmoe-cli");
  app.set_help_flag();
  app.formatter(std::make_shared<DefaultsFormatter>());
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::vector<std::string> positional;
  std::string prompt_ids, tree;
  uint32_t max_tokens = 0, top_k = 0;
  float temperature = 0, top_p = 1, repetition_penalty = 1;
  uint64_t seed = 0;
  uint32_t logprobs = 0;
  std::vector<std::string> stops;
  bool ignore_eos = false, no_speculation = false;
  app.add_option("command", positional, "the command, then the prompt (one argument: quote it)")
      ->option_text("COMMAND [PROMPT]");
  app.add_option("--server", options->server, "server address")
      ->option_text("HOST:PORT")
      ->capture_default_str();
  app.add_option("--prompt-ids", prompt_ids, "prompt as token ids (used as given; no BOS added)")
      ->option_text("1,2,3")
      ->check(IntList());
  CLI::Option* max_tokens_flag =
      app.add_option("--max-tokens", max_tokens, "tokens to generate (default: the server's)")
          ->option_text("N");
  CLI::Option* temperature_flag =
      app.add_option("--temperature", temperature, "0 = greedy")
          ->option_text("F")
          ->capture_default_str();
  CLI::Option* top_p_flag = app.add_option("--top-p", top_p, "nucleus sampling mass")
                                ->option_text("F")
                                ->capture_default_str();
  CLI::Option* top_k_flag =
      app.add_option("--top-k", top_k, "0 = no top-k")->option_text("N")->capture_default_str();
  CLI::Option* seed_flag =
      app.add_option("--seed", seed, "sampling seed (default: chosen by the server)")
          ->option_text("N");
  CLI::Option* logprobs_flag =
      app.add_option("--logprobs", logprobs,
                     "return each token's logprob and its N most likely alternatives (0-20)")
          ->option_text("N")
          ->check(CLI::Range(0, 20));
  CLI::Option* penalty_flag =
      app.add_option("--repetition-penalty", repetition_penalty, "1 = off")
          ->option_text("F")
          ->capture_default_str();
  app.add_option("--stop", stops, "stop string (repeatable)")
      ->option_text("S")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->allow_extra_args(false);
  app.add_flag("--ignore-eos", ignore_eos, "keep generating after the end-of-sequence token");
  app.add_flag("--no-speculation", no_speculation, "plain target-only decoding");
  app.add_option("--tree", tree, "expansion for this request (default: the server's)")
      ->option_text("K1,K2,...")
      ->check(IntList(1));
  app.add_flag("--add-bos", options->add_bos, "tokenize: prepend the BOS token");
  app.add_option("--service", options->health_service,
                 "health: the service to ask about (default: the server)")
      ->option_text("NAME");
  app.add_option("--api-key-file", options->api_key_file,
                 "send 'authorization: Bearer <key>' read from PATH")
      ->option_text("PATH");
  app.add_option("--tls-ca", options->tls_ca, "connect with TLS, trusting the PEM roots in PATH")
      ->option_text("PATH");
  app.add_option("--tls-cert", options->tls_cert,
                 "mutual TLS: present the PEM client certificate in PATH (with --tls-key)")
      ->option_text("PATH");
  app.add_option("--tls-key", options->tls_key, "mutual TLS: the PEM private key of --tls-cert")
      ->option_text("PATH");
  app.add_option("--timeout-ms", options->timeout_ms, "deadline for the call (default: none)")
      ->option_text("N")
      ->check(CLI::PositiveNumber);
  app.add_flag("--json", options->json, "print JSON (stream: one object per chunk)");
  app.add_flag("--help", options->help, "print this help");
  CLI::App* bench = AddBenchCommand(app, &options->bench);
  std::string slo;
  bench->add_option("--slo", slo, "goodput counts requests within every limit (milliseconds)")
      ->option_text("ttft:200,tpot:50");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return error.what();
  }
  if (options->help) {
    options->help_text = *bench ? bench->help() : app.help();
    return "";
  }
  if (*bench) {
    // The connection and request flags are the top-level ones (--server, --api-key-file,
    // --tls-ca, --timeout-ms, --temperature, --seed, --tree, --ignore-eos, --no-speculation).
    options->command = "bench";
    if (!positional.empty()) return "bench takes no PROMPT argument (see --dataset-name)";
    BenchOptions& b = options->bench;
    b.server = options->server;
    b.tls_ca = options->tls_ca;
    b.timeout_ms = options->timeout_ms;
    if (b.backend == "openai" && b.base_url.empty()) {
      return "bench --backend openai needs --base-url http://HOST:PORT/v1";
    }
    b.temperature = temperature;
    b.seed = seed;
    b.ignore_eos = ignore_eos;
    b.no_speculation = no_speculation;
    if (logprobs_flag->count() > 0) b.logprobs = static_cast<int>(logprobs);
    if (!tree.empty()) {
      for (int64_t k : SplitInts(tree)) b.tree.push_back(static_cast<uint32_t>(k));
    }
    if (!slo.empty()) return ParseSlo(slo, &b.slo_ms);
    return "";
  }
  if (max_tokens_flag->count() > 0) request.set_max_tokens(max_tokens);
  if (temperature_flag->count() > 0) sampling->set_temperature(temperature);
  if (top_p_flag->count() > 0) sampling->set_top_p(top_p);
  if (top_k_flag->count() > 0) sampling->set_top_k(top_k);
  if (seed_flag->count() > 0) sampling->set_seed(seed);
  if (penalty_flag->count() > 0) sampling->set_repetition_penalty(repetition_penalty);
  if (logprobs_flag->count() > 0) {
    request.set_logprobs(true);
    request.set_top_logprobs(logprobs);
  }
  for (const std::string& stop : stops) request.add_stop(stop);
  request.set_ignore_eos(ignore_eos);
  if (no_speculation) request.mutable_speculation()->set_disable(true);
  if (!tree.empty()) {
    for (int64_t k : SplitInts(tree)) {
      request.mutable_speculation()->add_expansion(static_cast<uint32_t>(k));
    }
  }
  if (!prompt_ids.empty()) {
    for (int64_t id : SplitInts(prompt_ids)) {
      options->prompt_ids.push_back(static_cast<int32_t>(id));
    }
  }

  if (positional.empty()) return "missing command (complete, stream, tokenize, info or health)";
  options->command = positional[0];
  positional.erase(positional.begin());
  const std::string& command = options->command;
  if (command != "complete" && command != "stream" && command != "tokenize" &&
      command != "info" && command != "health") {
    return "unknown command '" + command + "'";
  }
  if (positional.size() > 1) return "give the prompt as one argument (quote it)";
  if (!positional.empty()) options->prompt = positional[0];
  if (command == "complete" || command == "stream") {
    if (options->prompt.has_value() == !options->prompt_ids.empty()) {
      return "give exactly one of a PROMPT argument or --prompt-ids";
    }
  } else if (command == "tokenize" && !options->prompt.has_value()) {
    return "tokenize needs the text as an argument";
  }
  return "";
}

bool ReadFile(const std::string& path, std::string* contents) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  *contents = buffer.str();
  return true;
}

int Fail(const grpc::Status& status) {
  std::cerr << "error: " << CodeName(status.error_code()) << ": " << status.error_message()
            << "\n";
  return 1;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  print.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, print);
  return out;
}

// The summary line of plain mode, on stderr.
void PrintSummary(double ttft_s, double total_s, const v1::Usage& usage,
                  const v1::SpeculationStats& stats) {
  const double tokens_per_s = total_s > 0 ? usage.completion_tokens() / total_s : 0.0;
  std::fprintf(stderr,
               "[%u prompt + %u completion tokens; time to first token %.1f ms, total %.1f ms, "
               "%.1f tokens/s",
               usage.prompt_tokens(), usage.completion_tokens(), ttft_s * 1e3, total_s * 1e3,
               tokens_per_s);
  if (stats.verify_steps() > 0) {
    std::fprintf(stderr, ", %.2f tokens per step over %u steps", stats.mean_tokens_per_step(),
                 stats.verify_steps());
  }
  std::fprintf(stderr, "]\n");
}

// Plain mode's logprobs, on stdout after the text: one line per token,
// "<token id>\t<logprob>" then "\t<id>:<logprob>" per alternative.
void PrintLogprobs(const google::protobuf::RepeatedPtrField<v1::TokenLogprob>& logprobs) {
  for (const v1::TokenLogprob& lp : logprobs) {
    std::printf("%d\t%.6f", lp.token_id(), lp.logprob());
    for (const v1::TopLogprob& top : lp.top()) std::printf("\t%d:%.6f", top.token_id(), top.logprob());
    std::printf("\n");
  }
  std::fflush(stdout);
}

class Cli {
 public:
  explicit Cli(const CliOptions& options) : options_(options) {}

  int Run() {
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (options_.tls_cert.empty() != options_.tls_key.empty() ||
        (!options_.tls_cert.empty() && options_.tls_ca.empty())) {
      std::cerr << "specmoe-cli: --tls-cert and --tls-key go together, with --tls-ca\n";
      return 2;
    }
    if (!options_.tls_ca.empty()) {
      grpc::SslCredentialsOptions ssl;
      if (!ReadFile(options_.tls_ca, &ssl.pem_root_certs)) {
        std::cerr << "specmoe-cli: --tls-ca: cannot read " << options_.tls_ca << "\n";
        return 2;
      }
      if (!options_.tls_cert.empty() &&
          (!ReadFile(options_.tls_cert, &ssl.pem_cert_chain) ||
           !ReadFile(options_.tls_key, &ssl.pem_private_key))) {
        std::cerr << "specmoe-cli: --tls-cert/--tls-key: cannot read " << options_.tls_cert
                  << " or " << options_.tls_key << "\n";
        return 2;
      }
      credentials = grpc::SslCredentials(ssl);
    }
    if (!options_.api_key_file.empty()) {
      std::string key;
      if (!ReadFile(options_.api_key_file, &key)) {
        std::cerr << "specmoe-cli: --api-key-file: cannot read " << options_.api_key_file
                  << "\n";
        return 2;
      }
      while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
      api_key_ = key;
    }
    channel_ = grpc::CreateChannel(options_.server, credentials);
    if (options_.command == "bench") return RunBench(options_.bench, channel_, api_key_);
    stub_ = v1::Completion::NewStub(channel_);

    v1::CompleteRequest request = options_.request;
    if (options_.prompt.has_value()) request.set_prompt(*options_.prompt);
    for (int32_t id : options_.prompt_ids) request.add_prompt_token_ids(id);
    if (options_.command == "complete") return Complete(request);
    if (options_.command == "stream") return Stream(request);
    if (options_.command == "tokenize") return Tokenize();
    if (options_.command == "health") return Health();
    return Info();
  }

 private:
  void Prepare(grpc::ClientContext* context) const {
    if (!api_key_.empty()) context->AddMetadata("authorization", "Bearer " + api_key_);
    if (options_.timeout_ms > 0) {
      context->set_deadline(std::chrono::system_clock::now() +
                            std::chrono::milliseconds(options_.timeout_ms));
    }
  }

  int Complete(const v1::CompleteRequest& request) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::CompleteResponse response;
    const Clock::time_point start = Clock::now();
    const grpc::Status status = stub_->Complete(&context, request, &response);
    const double total_s = std::chrono::duration<double>(Clock::now() - start).count();
    if (!status.ok()) return Fail(status);
    if (options_.json) {
      std::cout << ToJson(response) << std::endl;
    } else {
      std::cout << response.text() << std::endl;
      PrintLogprobs(response.logprobs());
      PrintSummary(total_s, total_s, response.usage(), response.speculation());
    }
    return 0;
  }

  int Stream(const v1::CompleteRequest& request) {
    grpc::ClientContext context;
    Prepare(&context);
    const Clock::time_point start = Clock::now();
    std::optional<double> ttft_s;
    std::unique_ptr<grpc::ClientReader<v1::CompleteChunk>> reader =
        stub_->CompleteStream(&context, request);
    v1::CompleteChunk chunk;
    v1::CompleteChunk last;
    google::protobuf::RepeatedPtrField<v1::TokenLogprob> logprobs;
    while (reader->Read(&chunk)) {
      logprobs.MergeFrom(chunk.logprobs());
      if (!ttft_s.has_value() && chunk.token_ids_size() > 0) {
        ttft_s = std::chrono::duration<double>(Clock::now() - start).count();
      }
      if (options_.json) {
        std::cout << ToJson(chunk) << std::endl;
      } else {
        std::cout << chunk.text() << std::flush;
      }
      last = chunk;
    }
    const grpc::Status status = reader->Finish();
    const double total_s = std::chrono::duration<double>(Clock::now() - start).count();
    if (!options_.json) std::cout << std::endl;
    if (!status.ok()) return Fail(status);
    if (!options_.json) {
      PrintLogprobs(logprobs);
      PrintSummary(ttft_s.value_or(total_s), total_s, last.usage(), last.speculation());
    }
    return 0;
  }

  int Tokenize() {
    grpc::ClientContext context;
    Prepare(&context);
    v1::TokenizeRequest request;
    request.set_text(*options_.prompt);
    request.set_add_bos(options_.add_bos);
    v1::TokenizeResponse response;
    const grpc::Status status = stub_->Tokenize(&context, request, &response);
    if (!status.ok()) return Fail(status);
    if (options_.json) {
      std::cout << ToJson(response) << std::endl;
    } else {
      for (int i = 0; i < response.token_ids_size(); ++i) {
        std::cout << response.token_ids(i) << "\t" << response.pieces(i) << "\n";
      }
    }
    return 0;
  }

  int Info() {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ModelInfo info;
    const grpc::Status status = stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!status.ok()) return Fail(status);
    if (options_.json) {
      std::cout << ToJson(info) << std::endl;
    } else {
      std::cout << info.DebugString();
    }
    return 0;
  }

  // grpc.health.v1.Health/Check through the vendored proto's generated stub.
  int Health() {
    grpc::ClientContext context;
    Prepare(&context);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(options_.health_service);
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status =
        grpc::health::v1::Health::NewStub(channel_)->Check(&context, request, &response);
    if (!status.ok()) return Fail(status);
    const std::string name =
        grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
    if (options_.json) {
      std::cout << "{\"status\":\"" << name << "\"}" << std::endl;
    } else {
      std::cout << name << std::endl;
    }
    return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
  }

  const CliOptions& options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::string api_key_;
  std::unique_ptr<v1::Completion::Stub> stub_;
};

}  // namespace
}  // namespace specmoe::client

int main(int argc, char** argv) {
  specmoe::client::CliOptions options;
  const std::string error = specmoe::client::ParseArgs(argc, argv, &options);
  if (options.help) {
    std::cout << options.help_text;
    return 0;
  }
  if (!error.empty()) {
    std::cerr << "specmoe-cli: " << error
              << "\n(run specmoe-cli --help for the commands and flags)\n";
    return 2;
  }
  return specmoe::client::Cli(options).Run();
}
