// client/main.cc — specmoe-cli: command-line client for specmoe.v1.Completion (DESIGN §7).
//   specmoe-cli complete|stream [flags] "prompt"      (or --prompt-ids 1,2,3)
//   specmoe-cli info | tokenize "text" | health
// Plain output prints the text (stream: deltas as they arrive) and a timing summary on
// stderr; --json prints the proto3 JSON mapping of the response (stream: one line per
// chunk). Exit codes: 0 OK, 1 RPC error, 2 bad flags. Tested by tests/server_e2e_test.cc.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "specmoe/v1/completion.grpc.pb.h"

namespace specmoe::client {
namespace {

namespace v1 = ::specmoe::v1;
using Clock = std::chrono::steady_clock;

constexpr char kUsage[] =
    "usage: specmoe-cli <command> [flags] [PROMPT]\n"
    "\n"
    "commands:\n"
    "  complete   generate a completion and print it when done\n"
    "  stream     generate a completion, printing text as it arrives\n"
    "  tokenize   print the token ids and pieces of PROMPT\n"
    "  info       print the served models (GetModelInfo)\n"
    "  health     print grpc.health.v1 status; exit 0 only when SERVING\n"
    "\n"
    "flags:\n"
    "  --server HOST:PORT          server address (default 127.0.0.1:50051)\n"
    "  --prompt-ids 1,2,3          prompt as token ids (used as given; no BOS added)\n"
    "  --max-tokens N              tokens to generate (default: the server's)\n"
    "  --temperature F             0 = greedy (default 0)\n"
    "  --top-p F                   nucleus sampling mass (default 1)\n"
    "  --top-k N                   0 = no top-k (default 0)\n"
    "  --seed N                    sampling seed (default: chosen by the server)\n"
    "  --repetition-penalty F      1 = off (default 1)\n"
    "  --stop S                    stop string (repeatable)\n"
    "  --ignore-eos                keep generating after the end-of-sequence token\n"
    "  --no-speculation            plain target-only decoding\n"
    "  --tree K1,K2,...            expansion for this request (default: the server's)\n"
    "  --add-bos                   tokenize: prepend the BOS token\n"
    "  --service NAME              health: the service to ask about (default: the server)\n"
    "  --api-key-file PATH         send 'authorization: Bearer <key>' read from PATH\n"
    "  --tls-ca PATH               connect with TLS, trusting the PEM roots in PATH\n"
    "  --timeout-ms N              deadline for the call (default: none)\n"
    "  --json                      print JSON (stream: one object per chunk)\n"
    "  --help                      print this help\n";

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
  int64_t timeout_ms = 0;
  bool json = false;
  bool help = false;
};

template <typename T>
bool ParseNumber(const std::string& text, T* value) {
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, *value);
  return !text.empty() && ec == std::errc() && ptr == end;
}

bool ParseList(const std::string& text, std::vector<int64_t>* values) {
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    int64_t value = 0;
    if (!ParseNumber(part, &value)) return false;
    values->push_back(value);
  }
  return !values->empty();
}

// Returns an error message, or an empty string on success.
std::string ParseArgs(int argc, char** argv, CliOptions* options) {
  v1::CompleteRequest& request = options->request;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto is_switch = [&](const char* flag) { return name == flag && !inline_value; };
    if (is_switch("help")) {
      options->help = true;
      continue;
    }
    if (is_switch("json")) {
      options->json = true;
      continue;
    }
    if (is_switch("ignore-eos")) {
      request.set_ignore_eos(true);
      continue;
    }
    if (is_switch("no-speculation")) {
      request.mutable_speculation()->set_disable(true);
      continue;
    }
    if (is_switch("add-bos")) {
      options->add_bos = true;
      continue;
    }
    std::string value;
    if (inline_value) {
      value = *inline_value;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return "--" + name + " needs a value";
    }
    const std::string bad = "--" + name + ": invalid value '" + value + "'";
    v1::Sampling* sampling = request.mutable_sampling();
    if (name == "server") {
      options->server = value;
    } else if (name == "prompt-ids") {
      std::vector<int64_t> ids;
      if (!ParseList(value, &ids)) return bad;
      for (int64_t id : ids) options->prompt_ids.push_back(static_cast<int32_t>(id));
    } else if (name == "max-tokens") {
      uint32_t n = 0;
      if (!ParseNumber(value, &n)) return bad;
      request.set_max_tokens(n);
    } else if (name == "temperature") {
      float f = 0;
      if (!ParseNumber(value, &f)) return bad;
      sampling->set_temperature(f);
    } else if (name == "top-p") {
      float f = 0;
      if (!ParseNumber(value, &f)) return bad;
      sampling->set_top_p(f);
    } else if (name == "top-k") {
      uint32_t n = 0;
      if (!ParseNumber(value, &n)) return bad;
      sampling->set_top_k(n);
    } else if (name == "seed") {
      uint64_t n = 0;
      if (!ParseNumber(value, &n)) return bad;
      sampling->set_seed(n);
    } else if (name == "repetition-penalty") {
      float f = 0;
      if (!ParseNumber(value, &f)) return bad;
      sampling->set_repetition_penalty(f);
    } else if (name == "stop") {
      request.add_stop(value);
    } else if (name == "tree") {
      std::vector<int64_t> ks;
      if (!ParseList(value, &ks)) return bad;
      for (int64_t k : ks) {
        if (k < 1) return bad;
        request.mutable_speculation()->add_expansion(static_cast<uint32_t>(k));
      }
    } else if (name == "service") {
      options->health_service = value;
    } else if (name == "api-key-file") {
      options->api_key_file = value;
    } else if (name == "tls-ca") {
      options->tls_ca = value;
    } else if (name == "timeout-ms") {
      if (!ParseNumber(value, &options->timeout_ms) || options->timeout_ms <= 0) return bad;
    } else {
      return "unknown flag --" + name;
    }
  }
  if (options->help) return "";
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

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
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

class Cli {
 public:
  explicit Cli(const CliOptions& options) : options_(options) {}

  int Run() {
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (!options_.tls_ca.empty()) {
      grpc::SslCredentialsOptions ssl;
      if (!ReadFile(options_.tls_ca, &ssl.pem_root_certs)) {
        std::cerr << "specmoe-cli: --tls-ca: cannot read " << options_.tls_ca << "\n";
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
    while (reader->Read(&chunk)) {
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

  // grpc.health.v1.Health/Check through the generic stub; the two messages have one field
  // each and are encoded by hand (HealthCheckRequest.service = 1, a string;
  // HealthCheckResponse.status = 1, an enum: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING).
  int Health() {
    const std::string& service = options_.health_service;
    if (service.size() > 127) {
      std::cerr << "specmoe-cli: --service: name too long\n";
      return 2;
    }
    std::string request_bytes;
    if (!service.empty()) {
      request_bytes.push_back(0x0A);
      request_bytes.push_back(static_cast<char>(service.size()));
      request_bytes += service;
    }
    grpc::Slice slice(request_bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    Prepare(&context);
    grpc::GenericStub stub(channel_);
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                   &response, [&done](grpc::Status status) { done.set_value(status); });
    const grpc::Status status = done.get_future().get();
    if (!status.ok()) return Fail(status);
    std::vector<grpc::Slice> slices;
    (void)response.Dump(&slices);
    std::string bytes;
    for (const grpc::Slice& part : slices) {
      bytes.append(reinterpret_cast<const char*>(part.begin()), part.size());
    }
    const int code = bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
    static constexpr const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING",
                                             "SERVICE_UNKNOWN"};
    const char* name = code >= 0 && code <= 3 ? kNames[code] : "UNKNOWN";
    if (options_.json) {
      std::cout << "{\"status\":\"" << name << "\"}" << std::endl;
    } else {
      std::cout << name << std::endl;
    }
    return code == 1 ? 0 : 1;
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
    std::cout << specmoe::client::kUsage;
    return 0;
  }
  if (!error.empty()) {
    std::cerr << "specmoe-cli: " << error
              << "\n(run specmoe-cli --help for the commands and flags)\n";
    return 2;
  }
  return specmoe::client::Cli(options).Run();
}
