// tests/server_e2e_test.cc — end-to-end tests of the real specmoe-server binary (server/README.md):
// each suite starts the binary on 127.0.0.1 port 0 with
// tiny committed models, waits for grpc.health.v1 SERVING, then talks gRPC to it (and runs
// specmoe-cli against it). The server is stopped with SIGTERM and must exit 0.
#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "specmoe/v1/completion.grpc.pb.h"
#include "tests/server_child.h"

namespace specmoe {
namespace {

namespace v1 = ::specmoe::v1;
using ::testing::HasSubstr;

const std::string kServerBinary = SPECMOE_BINARY_DIR "/server/specmoe-server";
const std::string kCliBinary = SPECMOE_BINARY_DIR "/client/specmoe-cli";
const std::string kTarget = SPECMOE_FIXTURES "/models/e2e_target";  // context 256, vocab 4096, f16
const std::string kDraft = SPECMOE_FIXTURES "/models/e2e_draft";
// The issue-6 reproducer's model: its logits are large enough that a tiny repetition
// penalty overflowed them to +inf (e2e_target's are not).
const std::string kTiny = SPECMOE_FIXTURES "/models/llama_tiny";
// lm_head all NaN (tests/fixtures/make_nan_model.py): every logit it produces is NaN.
const std::string kNanModel = SPECMOE_FIXTURES "/models/nan_lm_head";
constexpr int kVocab = 4096;
constexpr int kContext = 256;
constexpr int kDefaultMaxTokens = 12;
constexpr int kMaxTokensLimit = 250;  // prompt + 250 still fits the context

// A specmoe-server child process with the suite's flags, then `extra_args` (later ones win);
// killed on destruction if still running.
class ServerProcess : public ServerChild {
 public:
  explicit ServerProcess(const std::vector<std::string>& extra_args)
      : ServerChild("e2e", Args(extra_args)) {}

 private:
  static std::vector<std::string> Args(const std::vector<std::string>& extra_args) {
    std::vector<std::string> args = {kServerBinary, "--listen", "127.0.0.1:0", "--target", kTarget,
                                     "--draft", kDraft,
                                     "--default-max-tokens", std::to_string(kDefaultMaxTokens),
                                     "--max-tokens-limit", std::to_string(kMaxTokensLimit),
                                     "--tree", "1,2,1", "--threads", "1",
                                     // Fixed trees: for fixture models this small the
                                     // dynamic policy rightly prefers plain decoding.
                                     "--tree-policy", "static", "--drain-seconds", "5"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    return args;
  }
};

// grpc.health.v1.Health/Check through the vendored proto's generated stub: the serving
// status (SERVING = 1, NOT_SERVING = 2), or -1 on an RPC error, storing it in *error.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                 grpc::Status* error = nullptr) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status =
      grpc::health::v1::Health::NewStub(channel)->Check(&context, request, &response);
  if (error != nullptr) *error = status;
  if (!status.ok()) return -1;
  return response.status();
}

// Asks server reflection to list the services (ServerReflectionRequest.list_services, field 7,
// hand-encoded: the reflection proto is not vendored) through the generic stub; true when
// the answer names specmoe.v1.Completion. An unanswered call's status goes to *status.
bool ReflectionListsTheService(const std::shared_ptr<grpc::Channel>& channel,
                               const char* authorization, grpc::Status* status = nullptr) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (authorization != nullptr) context.AddMetadata("authorization", authorization);
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag = nullptr;
  bool ok = false;
  auto step = [&](intptr_t expected) {
    return cq.Next(&tag, &ok) && reinterpret_cast<intptr_t>(tag) == expected && ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  bool answered = step(1);
  const std::string request_bytes("\x3a\x00", 2);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  if (answered) {
    call->Write(request, reinterpret_cast<void*>(2));
    answered = step(2);
  }
  if (answered) {
    call->Read(&response, reinterpret_cast<void*>(3));
    answered = step(3);
  }
  std::string bytes;
  if (answered) {
    std::vector<grpc::Slice> slices;
    (void)response.Dump(&slices);
    for (const grpc::Slice& part : slices) {
      bytes.append(reinterpret_cast<const char*>(part.begin()), part.size());
    }
  }
  if (answered) context.TryCancel();  // else the server has ended the call: keep its status
  grpc::Status final_status;
  call->Finish(&final_status, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  if (status != nullptr) *status = final_status;
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return answered && bytes.find("specmoe.v1.Completion") != std::string::npos;
}

constexpr int kServing = 1;
constexpr int kNotServing = 2;

// Polls health until SERVING (models loaded); false after a minute.
bool WaitForServing(const std::shared_ptr<grpc::Channel>& channel) {
  for (int i = 0; i < 600; ++i) {
    if (HealthStatus(channel, "") == kServing) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// A unary call with hand-made request bytes (what a broken client might send).
grpc::Status RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& request_bytes) {
  grpc::GenericStub stub(channel);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status status) { done.set_value(status); });
  return done.get_future().get();
}

// The tiny-penalty reproducer: sampling with a tiny repetition penalty, plain decoding.
v1::CompleteRequest B1Request() {
  v1::CompleteRequest request;
  request.set_prompt("In the beginning");
  request.set_max_tokens(8);
  request.mutable_sampling()->set_temperature(1.0f);
  request.mutable_sampling()->set_repetition_penalty(1e-38f);
  request.mutable_sampling()->set_seed(7);
  request.mutable_speculation()->set_disable(true);
  return request;
}

// Runs a command, returning its stdout and exit code.
std::pair<std::string, int> RunCommand(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int status = pclose(pipe);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

class ServerE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({});
    ASSERT_TRUE(server_->WaitForPort()) << server_->log();
    channel_ = new std::shared_ptr<grpc::Channel>(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
    ASSERT_TRUE(WaitForServing(*channel_)) << server_->log();
    stub_ = v1::Completion::NewStub(*channel_).release();
  }

  static void TearDownTestSuite() {
    delete stub_;
    delete channel_;
    delete server_;
  }

  static grpc::Status Complete(const v1::CompleteRequest& request, v1::CompleteResponse* response,
                               int timeout_ms = 60000) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(timeout_ms));
    return stub_->Complete(&context, request, response);
  }

  static grpc::Status Stream(const v1::CompleteRequest& request,
                             std::vector<v1::CompleteChunk>* chunks) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto reader = stub_->CompleteStream(&context, request);
    v1::CompleteChunk chunk;
    while (reader->Read(&chunk)) chunks->push_back(chunk);
    return reader->Finish();
  }

  static std::vector<int32_t> Tokenize(const std::string& text, bool add_bos) {
    grpc::ClientContext context;
    v1::TokenizeRequest request;
    request.set_text(text);
    request.set_add_bos(add_bos);
    v1::TokenizeResponse response;
    EXPECT_TRUE(stub_->Tokenize(&context, request, &response).ok());
    return {response.token_ids().begin(), response.token_ids().end()};
  }

  // Waits until the server's log has a line containing every one of `parts`.
  static bool LogHasLine(const std::vector<std::string>& parts) {
    for (int i = 0; i < 300; ++i) {
      std::istringstream log(server_->log());
      for (std::string line; std::getline(log, line);) {
        bool all = true;
        for (const std::string& part : parts) all = all && line.find(part) != std::string::npos;
        if (all) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  static v1::CompleteRequest Greedy(const std::string& prompt, int max_tokens) {
    v1::CompleteRequest request;
    request.set_prompt(prompt);
    request.set_max_tokens(max_tokens);
    request.set_ignore_eos(true);
    return request;
  }

  static ServerProcess* server_;
  static std::shared_ptr<grpc::Channel>* channel_;
  static v1::Completion::Stub* stub_;
};

ServerProcess* ServerE2eTest::server_ = nullptr;
std::shared_ptr<grpc::Channel>* ServerE2eTest::channel_ = nullptr;
v1::Completion::Stub* ServerE2eTest::stub_ = nullptr;

TEST_F(ServerE2eTest, HealthIsServingForTheServerAndTheService) {
  EXPECT_EQ(HealthStatus(*channel_, ""), kServing);
  EXPECT_EQ(HealthStatus(*channel_, "specmoe.v1.Completion"), kServing);
  grpc::Status error;
  EXPECT_EQ(HealthStatus(*channel_, "no.such.Service", &error), -1);
  EXPECT_EQ(error.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerE2eTest, ASharedPromptPrefixComesFromThePrefixCacheWithTheSameTokens) {
  // 16-token blocks: a 45-token prompt caches 2 blocks, and asking it again finds them
  // (the last prompt token is always computed).
  v1::CompleteRequest first;
  first.set_max_tokens(8);
  first.set_ignore_eos(true);
  for (int i = 0; i < 45; ++i) first.add_prompt_token_ids(1 + (i * 37 + 11) % 250);
  v1::CompleteResponse a, b, c;
  ASSERT_TRUE(Complete(first, &a).ok());
  EXPECT_EQ(a.usage().cached_prompt_tokens(), 0u);
  ASSERT_TRUE(Complete(first, &b).ok());
  EXPECT_EQ(b.usage().cached_prompt_tokens(), 32u);
  EXPECT_EQ(std::vector<int32_t>(a.token_ids().begin(), a.token_ids().end()),
            std::vector<int32_t>(b.token_ids().begin(), b.token_ids().end()));
  EXPECT_EQ(a.text(), b.text());
  // The same first 20 tokens, then another tail: one block found.
  v1::CompleteRequest other = first;
  other.set_prompt_token_ids(20, 7);
  ASSERT_TRUE(Complete(other, &c).ok());
  EXPECT_EQ(c.usage().cached_prompt_tokens(), 16u);
  EXPECT_TRUE(LogHasLine({"cached_prompt_tokens=32 ", "prompt_tokens=45 "}));
}

TEST_F(ServerE2eTest, RequestWithOnlyAPromptTakesTheDefaults) {
  v1::CompleteRequest request;
  request.set_prompt("Once upon a time");
  v1::CompleteResponse first;
  const grpc::Status status = Complete(request, &first);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // max_tokens 0 -> --default-max-tokens; temperature 0 -> greedy, so it repeats exactly.
  EXPECT_EQ(first.usage().prompt_tokens(), Tokenize("Once upon a time", true).size());
  EXPECT_EQ(first.usage().completion_tokens(), static_cast<uint32_t>(first.token_ids_size()));
  if (first.finish_reason() == v1::FINISH_REASON_LENGTH) {
    EXPECT_EQ(first.token_ids_size(), kDefaultMaxTokens);
  } else {
    EXPECT_EQ(first.finish_reason(), v1::FINISH_REASON_EOS);
    EXPECT_LT(first.token_ids_size(), kDefaultMaxTokens);
  }
  EXPECT_THAT(first.request_id(), HasSubstr("cmpl-"));
  v1::CompleteResponse second;
  ASSERT_TRUE(Complete(request, &second).ok());
  EXPECT_EQ(std::vector<int32_t>(second.token_ids().begin(), second.token_ids().end()),
            std::vector<int32_t>(first.token_ids().begin(), first.token_ids().end()));
  EXPECT_EQ(second.text(), first.text());
  EXPECT_TRUE(LogHasLine({"request " + first.request_id(), "rpc=Complete",
                          "prompt_tokens=" + std::to_string(first.usage().prompt_tokens()),
                          "tokens_per_s=", "mean_tokens_per_step="}))
      << server_->log();
}

TEST_F(ServerE2eTest, StreamChunksConcatenateToTheCompleteResponse) {
  v1::CompleteRequest request = Greedy("The king said", 24);
  request.set_request_id("stream-vs-complete");
  v1::CompleteResponse whole;
  ASSERT_TRUE(Complete(request, &whole).ok());
  ASSERT_EQ(whole.token_ids_size(), 24);
  EXPECT_EQ(whole.request_id(), "stream-vs-complete");
  EXPECT_EQ(whole.finish_reason(), v1::FINISH_REASON_LENGTH);

  std::vector<v1::CompleteChunk> chunks;
  const grpc::Status status = Stream(request, &chunks);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(chunks.empty());
  std::string text;
  std::vector<int32_t> ids;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const v1::CompleteChunk& chunk = chunks[i];
    EXPECT_EQ(chunk.request_id(), "stream-vs-complete");
    text += chunk.text();
    ids.insert(ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    const bool last = i + 1 == chunks.size();
    EXPECT_EQ(chunk.has_usage(), last) << i;
    EXPECT_EQ(chunk.has_speculation(), last) << i;
    EXPECT_EQ(chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED, last) << i;
  }
  EXPECT_EQ(text, whole.text());
  EXPECT_EQ(ids, std::vector<int32_t>(whole.token_ids().begin(), whole.token_ids().end()));
  const v1::CompleteChunk& last = chunks.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().prompt_tokens(), whole.usage().prompt_tokens());
  EXPECT_EQ(last.usage().completion_tokens(), 24u);
  // With a draft loaded, statistics describe the speculation (tree 1,2,1: depth 3).
  const v1::SpeculationStats& stats = last.speculation();
  EXPECT_GT(stats.verify_steps(), 0u);
  EXPECT_GT(stats.drafted_tokens(), 0u);
  EXPECT_EQ(stats.acceptance_by_depth_size(), 3);
  EXPECT_GE(stats.mean_tokens_per_step(), 1.0f);
  EXPECT_EQ(whole.speculation().verify_steps(), stats.verify_steps());
}

TEST_F(ServerE2eTest, PromptTokenIdsAreUsedAsGiven) {
  const std::vector<int32_t> ids = Tokenize("The king said", /*add_bos=*/true);
  ASSERT_EQ(ids.front(), 1);
  v1::CompleteRequest by_text = Greedy("The king said", 8);
  v1::CompleteRequest by_ids = by_text;
  by_ids.clear_prompt();
  for (int32_t id : ids) by_ids.add_prompt_token_ids(id);
  v1::CompleteResponse a, b;
  ASSERT_TRUE(Complete(by_text, &a).ok());
  ASSERT_TRUE(Complete(by_ids, &b).ok());
  EXPECT_EQ(b.usage().prompt_tokens(), ids.size());
  EXPECT_EQ(std::vector<int32_t>(a.token_ids().begin(), a.token_ids().end()),
            std::vector<int32_t>(b.token_ids().begin(), b.token_ids().end()));
}

TEST_F(ServerE2eTest, TokenizeReturnsIdsAndPieces) {
  grpc::ClientContext context;
  v1::TokenizeRequest request;
  request.set_text("Hello world");
  request.set_add_bos(true);
  v1::TokenizeResponse response;
  ASSERT_TRUE(stub_->Tokenize(&context, request, &response).ok());
  EXPECT_THAT(response.pieces(), ::testing::ElementsAre("<s>", "▁H", "ell", "o", "▁world"));
  ASSERT_EQ(response.token_ids_size(), 5);
  EXPECT_EQ(response.token_ids(0), 1);
}

TEST_F(ServerE2eTest, GetModelInfoDescribesTheModels) {
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_THAT(info.target(), HasSubstr("e2e_target"));
  EXPECT_THAT(info.draft(), HasSubstr("e2e_draft"));
  EXPECT_EQ(info.vocab_size(), static_cast<uint32_t>(kVocab));
  EXPECT_EQ(info.max_context(), static_cast<uint32_t>(kContext));
  EXPECT_THAT(info.default_expansion(), ::testing::ElementsAre(1u, 2u, 1u));
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.dtype(), "F16");
}

TEST_F(ServerE2eTest, BadRequestsAreInvalidArgumentNamingTheField) {
  struct Case {
    const char* name;
    std::function<void(v1::CompleteRequest&)> mutate;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"both prompts", [](auto& r) { r.add_prompt_token_ids(1); }, "prompt_token_ids"},
      {"neither prompt", [](auto& r) { r.clear_prompt(); }, "prompt"},
      {"id above vocab",
       [](auto& r) {
         r.clear_prompt();
         r.add_prompt_token_ids(1);
         r.add_prompt_token_ids(kVocab);
       },
       "prompt_token_ids[1]"},
      {"negative id",
       [](auto& r) {
         r.clear_prompt();
         r.add_prompt_token_ids(-1);
       },
       "prompt_token_ids[0]"},
      {"max_tokens above limit", [](auto& r) { r.set_max_tokens(kMaxTokensLimit + 1); },
       "max_tokens"},
      {"negative temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); },
       "sampling.temperature"},
      {"NaN temperature",
       [](auto& r) {
         r.mutable_sampling()->set_temperature(std::numeric_limits<float>::quiet_NaN());
       },
       "sampling.temperature"},
      {"top_p above 1", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); },
       "sampling.top_p"},
      {"negative top_p", [](auto& r) { r.mutable_sampling()->set_top_p(-0.1f); },
       "sampling.top_p"},
      {"negative penalty",
       [](auto& r) { r.mutable_sampling()->set_repetition_penalty(-1.0f); },
       "sampling.repetition_penalty"},
      {"prompt ids fill the context",
       [](auto& r) {
         r.clear_prompt();
         for (int i = 0; i < kContext; ++i) r.add_prompt_token_ids(100);
       },
       "prompt_token_ids"},
      {"text prompt longer than the context",
       [](auto& r) {
         std::string long_text;
         for (int i = 0; i < kContext; ++i) long_text += " world";
         r.set_prompt(long_text);
       },
       "prompt"},
      {"zero expansion",
       [](auto& r) {
         r.mutable_speculation()->add_expansion(2);
         r.mutable_speculation()->add_expansion(0);
       },
       "speculation.expansion[1]"},
      {"empty stop string", [](auto& r) { r.add_stop(""); }, "stop[0]"},
      {"too many top logprobs", [](auto& r) { r.set_top_logprobs(21); }, "top_logprobs"},
  };
  for (const Case& c : cases) {
    v1::CompleteRequest request = Greedy("Hello", 4);
    c.mutate(request);
    v1::CompleteResponse response;
    const grpc::Status status = Complete(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(status.error_message(), HasSubstr(c.field)) << c.name;
    // Streaming validates the same way.
    std::vector<v1::CompleteChunk> chunks;
    const grpc::Status stream_status = Stream(request, &chunks);
    EXPECT_EQ(stream_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_TRUE(chunks.empty()) << c.name;
  }
  // The exactly-fitting prompt (context - 1 tokens) is accepted, and the server still serves.
  v1::CompleteRequest fits;
  for (int i = 0; i < kContext - 1; ++i) fits.add_prompt_token_ids(100);
  fits.set_max_tokens(1);
  v1::CompleteResponse response;
  const grpc::Status status = Complete(fits, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.token_ids_size(), 1);
  ASSERT_TRUE(Complete(Greedy("Hello", 4), &response).ok());
  EXPECT_EQ(response.token_ids_size(), 4);
}

TEST_F(ServerE2eTest, DeadlineCancelsTheRequestAndTheServerKeepsServing) {
  // A wide tree makes each step slow (56 tree tokens verified per step, over a second for the
  // 250 tokens here on a 2-core machine), so the 100 ms deadline ends the request early.
  v1::CompleteRequest request = Greedy("A long story", kMaxTokensLimit);
  request.set_request_id("deadline-request");
  request.mutable_speculation()->add_expansion(7);
  request.mutable_speculation()->add_expansion(7);
  v1::CompleteResponse response;
  const grpc::Status status = Complete(request, &response, /*timeout_ms=*/100);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The engine was told: the request ends, before its 250 tokens, logged as a deadline.
  EXPECT_TRUE(LogHasLine({"request deadline-request", "finish=deadline"})) << server_->log();
  ASSERT_TRUE(Complete(Greedy("Hello", 4), &response).ok());
  EXPECT_EQ(response.token_ids_size(), 4);
}

TEST_F(ServerE2eTest, ClientCancellingAStreamCancelsTheRequest) {
  v1::CompleteRequest request = Greedy("A long story", kMaxTokensLimit);
  request.set_request_id("cancelled-stream");
  request.mutable_speculation()->add_expansion(7);  // slow steps, as in the deadline test
  request.mutable_speculation()->add_expansion(7);
  grpc::ClientContext context;
  auto reader = stub_->CompleteStream(&context, request);
  v1::CompleteChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(LogHasLine({"request cancelled-stream", "finish=cancelled"})) << server_->log();
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(Greedy("Hello", 4), &response).ok());
}

TEST_F(ServerE2eTest, OversizedFieldsAreRefusedAndLogged) {
  v1::CompleteRequest request = Greedy("Hello", 4);
  request.set_request_id(std::string(257, 'r'));
  v1::CompleteResponse response;
  grpc::Status status = Complete(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("request_id is 257 bytes; at most 256"));
  EXPECT_TRUE(LogHasLine({"rpc=Complete refused code=INVALID_ARGUMENT", "peer=",
                          "(257 bytes)", "reason=request_id is 257 bytes"}))
      << server_->log();
  request.set_request_id(std::string(256, 'r'));
  EXPECT_TRUE(Complete(request, &response).ok());

  // The prompt's bytes are checked before tokenizing (default 16 bytes per context token).
  v1::CompleteRequest big = Greedy(std::string(16 * kContext + 1, 'a'), 4);
  big.set_request_id("too-many-bytes");
  status = Complete(big, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("(--max-prompt-bytes)"));
  EXPECT_TRUE(LogHasLine({"request too-many-bytes", "refused code=INVALID_ARGUMENT"}))
      << server_->log();
  // Tokenize obeys the same limits.
  grpc::ClientContext context;
  v1::TokenizeRequest tokenize;
  tokenize.set_text(std::string(16 * kContext + 1, 'a'));
  v1::TokenizeResponse tokens;
  status = stub_->Tokenize(&context, tokenize, &tokens);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("(--max-prompt-bytes)"));
  grpc::ClientContext context2;
  std::string words;
  for (int i = 0; i < kContext; ++i) words += " world";
  tokenize.set_text(words);
  status = stub_->Tokenize(&context2, tokenize, &tokens);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("tokens"));
}

TEST_F(ServerE2eTest, ControlCharactersInTheRequestIdCannotForgeLogLines) {
  v1::CompleteRequest request = Greedy("Hello", 2);
  request.set_request_id("inj\n2026-01-01T00:00:00.000Z I FORGED\x1b[31m");
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(request, &response).ok());
  EXPECT_TRUE(LogHasLine({"request inj\\n2026-01-01T00:00:00.000Z I FORGED\\x1b[31m",
                          "rpc=Complete"}))
      << server_->log();
  std::istringstream log(server_->log());
  for (std::string line; std::getline(log, line);) {
    EXPECT_NE(line.rfind("2026-01-01T00:00:00.000Z", 0), 0u) << line;
    EXPECT_EQ(line.find('\x1b'), std::string::npos) << line;
  }
}

// server/README.md, Wire contract: with a stop string, token_ids and usage.completion_tokens agree
// with text; the token that completed the stop string is returned only if some of its text is.
TEST_F(ServerE2eTest, StopStringTokensAgreeWithTheText) {
  // Each token's own text: greedy output is deterministic, so the completion of n + 1
  // tokens extends that of n by token n's text.
  v1::CompleteRequest request = Greedy("The king said", 24);
  std::vector<std::string> texts;
  std::vector<int32_t> ids;
  std::string previous;
  for (int n = 1; n <= 24; ++n) {
    request.set_max_tokens(n);
    v1::CompleteResponse response;
    ASSERT_TRUE(Complete(request, &response).ok());
    ASSERT_EQ(response.token_ids_size(), n);
    ASSERT_EQ(response.text().substr(0, previous.size()), previous);
    texts.push_back(response.text().substr(previous.size()));
    ids.push_back(response.token_ids(n - 1));
    previous = response.text();
  }
  request.set_max_tokens(24);
  ASSERT_EQ(ids.size(), 24u);
  // A token k whose whole text is a stop string first seen exactly where token k starts.
  std::string before;
  int k = -1;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (i >= 2 && texts[i].size() >= 2 && (before + texts[i]).find(texts[i]) == before.size()) {
      k = static_cast<int>(i);
      break;
    }
    before += texts[i];
  }
  ASSERT_GE(k, 0) << "no usable stop token in this output";
  request.add_stop(texts[k]);
  v1::CompleteResponse stopped;
  ASSERT_TRUE(Complete(request, &stopped).ok());
  EXPECT_EQ(stopped.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(stopped.text(), before);
  EXPECT_EQ(std::vector<int32_t>(stopped.token_ids().begin(), stopped.token_ids().end()),
            std::vector<int32_t>(ids.begin(), ids.begin() + k));
  EXPECT_EQ(stopped.usage().completion_tokens(), static_cast<uint32_t>(k));
}

// Requests gRPC cannot parse are INVALID_ARGUMENT naming the problem, and
// protobuf's own complaint is a line in the server's log format.
TEST_F(ServerE2eTest, UnparseableRequestsAreInvalidArgumentNamingTheProblem) {
  // CompleteRequest.prompt (field 1) holding the bytes ff fe: not UTF-8.
  const std::string bad_utf8("\x0a\x02\xff\xfe", 4);
  grpc::Status status = RawUnary(*channel_, "/specmoe.v1.Completion/Complete", bad_utf8);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("not a valid specmoe.v1.CompleteRequest"));
  EXPECT_THAT(status.error_message(), HasSubstr("specmoe.v1.CompleteRequest.prompt"));
  EXPECT_THAT(status.error_message(), HasSubstr("invalid UTF-8"));
  status = RawUnary(*channel_, "/specmoe.v1.Completion/CompleteStream", bad_utf8);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  status = RawUnary(*channel_, "/specmoe.v1.Completion/Tokenize", bad_utf8);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("specmoe.v1.TokenizeRequest.text"));
  // Not protobuf at all (a field tag with a truncated varint).
  status = RawUnary(*channel_, "/specmoe.v1.Completion/Complete", std::string("\x08\xff", 2));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("not a valid specmoe.v1.CompleteRequest"));
  EXPECT_TRUE(LogHasLine({"rpc=Complete refused code=INVALID_ARGUMENT", "invalid UTF-8"}))
      << server_->log();
  // protobuf's line is in the server's format ("<time>Z E protobuf ..."), not libprotobuf's.
  EXPECT_TRUE(LogHasLine({"Z E protobuf ", "invalid UTF-8"})) << server_->log();
  EXPECT_THAT(server_->log(), ::testing::Not(HasSubstr("[libprotobuf")));
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(Greedy("Hello", 4), &response).ok());
}

// A sampled request without a seed gets the server's, echoed on the response and
// the last chunk; sending it back reproduces the text with speculation off; logprobs come
// one per token (and each stream chunk carries exactly its tokens' entries), equal with
// speculation on and off.
TEST_F(ServerE2eTest, SeedIsEchoedAndLogprobsFollowTheTokens) {
  v1::CompleteRequest request = Greedy("The king said", 20);
  request.mutable_sampling()->set_temperature(0.8f);
  request.set_logprobs(true);
  request.set_top_logprobs(3);
  v1::CompleteResponse first;
  ASSERT_TRUE(Complete(request, &first).ok());
  EXPECT_NE(first.seed(), 0u);
  ASSERT_EQ(first.token_ids_size(), 20);
  ASSERT_EQ(first.logprobs_size(), 20);
  for (int i = 0; i < first.logprobs_size(); ++i) {
    const v1::TokenLogprob& lp = first.logprobs(i);
    EXPECT_EQ(lp.token_id(), first.token_ids(i)) << i;
    EXPECT_LE(lp.logprob(), 0.0f) << i;
    ASSERT_EQ(lp.top_size(), 3) << i;
    EXPECT_GE(lp.top(0).logprob(), lp.top(1).logprob()) << i;
    EXPECT_GE(lp.top(0).logprob(), lp.logprob()) << i;
  }

  v1::CompleteRequest again = request;
  again.mutable_sampling()->set_seed(first.seed());
  again.mutable_speculation()->set_disable(true);
  v1::CompleteResponse plain;
  ASSERT_TRUE(Complete(again, &plain).ok());
  EXPECT_EQ(plain.seed(), first.seed());
  EXPECT_EQ(plain.text(), first.text());
  ASSERT_EQ(plain.logprobs_size(), first.logprobs_size());
  for (int i = 0; i < plain.logprobs_size(); ++i) {
    EXPECT_EQ(plain.logprobs(i).SerializeAsString(), first.logprobs(i).SerializeAsString()) << i;
  }

  again.clear_speculation();
  std::vector<v1::CompleteChunk> chunks;
  ASSERT_TRUE(Stream(again, &chunks).ok());
  ASSERT_FALSE(chunks.empty());
  int at = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const v1::CompleteChunk& chunk = chunks[c];
    ASSERT_EQ(chunk.logprobs_size(), chunk.token_ids_size()) << "chunk " << c;
    for (int i = 0; i < chunk.logprobs_size(); ++i, ++at) {
      EXPECT_EQ(chunk.token_ids(i), first.token_ids(at));
      EXPECT_EQ(chunk.logprobs(i).SerializeAsString(), first.logprobs(at).SerializeAsString());
    }
    EXPECT_EQ(chunk.seed(), c + 1 == chunks.size() ? first.seed() : 0u) << "chunk " << c;
  }
  EXPECT_EQ(at, 20);

  // Without logprobs asked for, none are sent; greedy requests echo a seed too.
  v1::CompleteResponse greedy;
  ASSERT_TRUE(Complete(Greedy("The king said", 4), &greedy).ok());
  EXPECT_EQ(greedy.logprobs_size(), 0);

  // The CLI: --logprobs N prints one line per token after the text: id, logprob, N more.
  v1::CompleteRequest five = Greedy("The king said", 5);
  five.set_top_logprobs(2);
  v1::CompleteResponse expected;
  ASSERT_TRUE(Complete(five, &expected).ok());
  const auto [out, code] =
      RunCommand(kCliBinary + " complete --server " + server_->address() +
                 " --max-tokens 5 --ignore-eos --logprobs 2 'The king said'");
  ASSERT_EQ(code, 0) << out;
  std::istringstream lines(out);
  std::vector<std::string> rows;
  for (std::string line; std::getline(lines, line);) rows.push_back(line);
  ASSERT_GE(rows.size(), 6u) << out;  // the text (maybe several lines), then 5 tokens
  for (int i = 0; i < 5; ++i) {
    const std::string& row = rows[rows.size() - 5 + i];
    EXPECT_EQ(std::count(row.begin(), row.end(), '\t'), 3) << row;
    EXPECT_EQ(row.substr(0, row.find('\t')), std::to_string(expected.token_ids(i))) << row;
    const std::string top = std::to_string(expected.logprobs(i).top(1).token_id()) + ":";
    EXPECT_THAT(row, HasSubstr(top)) << row;
  }
}

// Prompt logprobs (field 12): one entry per prompt token (the first NaN), each equal bit for
// bit to the first generated token's entry of a greedy request for the tokens before it;
// streamed chunks carry the same entries, before any token.
TEST_F(ServerE2eTest, PromptLogprobsEqualTheFirstTokenOfEachPrefix) {
  v1::CompleteRequest request = Greedy("And the king said unto the people", 3);
  request.set_prompt_logprobs(true);
  request.set_top_logprobs(3);
  v1::CompleteResponse scored;
  ASSERT_TRUE(Complete(request, &scored).ok());
  const int prompt_tokens = static_cast<int>(scored.usage().prompt_tokens());
  ASSERT_EQ(scored.prompt_logprobs_size(), prompt_tokens);
  ASSERT_EQ(scored.logprobs_size(), 3);
  EXPECT_TRUE(std::isnan(scored.prompt_logprobs(0).logprob()));
  EXPECT_EQ(scored.prompt_logprobs(0).top_size(), 0);
  std::vector<int32_t> ids;
  for (const v1::TokenLogprob& lp : scored.prompt_logprobs()) ids.push_back(lp.token_id());
  for (int i = 1; i < prompt_tokens; ++i) {
    v1::CompleteRequest prefix;
    for (int k = 0; k < i; ++k) prefix.add_prompt_token_ids(ids[k]);
    prefix.set_max_tokens(1);
    prefix.set_top_logprobs(3);
    v1::CompleteResponse next;
    ASSERT_TRUE(Complete(prefix, &next).ok());
    ASSERT_EQ(next.logprobs_size(), 1);
    const v1::TokenLogprob& want = next.logprobs(0);
    const v1::TokenLogprob& got = scored.prompt_logprobs(i);
    ASSERT_EQ(got.top_size(), 3) << i;
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(got.top(k).SerializeAsString(), want.top(k).SerializeAsString()) << i;
    }
    if (want.token_id() == got.token_id()) {
      EXPECT_EQ(got.SerializeAsString(), want.SerializeAsString()) << i;
    }
  }
  std::vector<v1::CompleteChunk> chunks;
  ASSERT_TRUE(Stream(request, &chunks).ok());
  std::vector<std::string> streamed;
  bool tokens_seen = false;
  for (const v1::CompleteChunk& chunk : chunks) {
    if (chunk.prompt_logprobs_size() > 0) EXPECT_FALSE(tokens_seen);
    tokens_seen = tokens_seen || chunk.token_ids_size() > 0;
    for (const v1::TokenLogprob& lp : chunk.prompt_logprobs()) {
      streamed.push_back(lp.SerializeAsString());
    }
  }
  ASSERT_EQ(static_cast<int>(streamed.size()), prompt_tokens);
  for (int i = 0; i < prompt_tokens; ++i) {
    EXPECT_EQ(streamed[i], scored.prompt_logprobs(i).SerializeAsString()) << i;
  }
  // Not asked for: none.
  v1::CompleteResponse plain;
  ASSERT_TRUE(Complete(Greedy("And the king said unto the people", 2), &plain).ok());
  EXPECT_EQ(plain.prompt_logprobs_size(), 0);
}

TEST_F(ServerE2eTest, CliCompleteStreamAndHealth) {
  v1::CompleteResponse expected;
  ASSERT_TRUE(Complete(Greedy("The king said", 10), &expected).ok());
  const std::vector<int64_t> expected_ids(expected.token_ids().begin(),
                                          expected.token_ids().end());
  const std::string common = " --server " + server_->address() +
                             " --max-tokens 10 --ignore-eos --json 'The king said'";

  const auto [complete_out, complete_code] = RunCommand(kCliBinary + " complete" + common);
  ASSERT_EQ(complete_code, 0) << complete_out;
  const nlohmann::json complete = nlohmann::json::parse(complete_out);
  EXPECT_EQ(complete["token_ids"].get<std::vector<int64_t>>(), expected_ids);
  EXPECT_EQ(complete["text"], expected.text());
  EXPECT_EQ(complete["finish_reason"], "FINISH_REASON_LENGTH");
  EXPECT_EQ(complete["usage"]["completion_tokens"], 10);
  EXPECT_TRUE(complete["speculation"].contains("mean_tokens_per_step"));

  const auto [stream_out, stream_code] = RunCommand(kCliBinary + " stream" + common);
  ASSERT_EQ(stream_code, 0) << stream_out;
  std::istringstream lines(stream_out);
  std::vector<int64_t> ids;
  std::string text;
  nlohmann::json last;
  for (std::string line; std::getline(lines, line);) {
    last = nlohmann::json::parse(line);
    for (int64_t id : last["token_ids"]) ids.push_back(id);
    text += last["text"].get<std::string>();
  }
  EXPECT_EQ(ids, expected_ids);
  EXPECT_EQ(text, expected.text());
  EXPECT_EQ(last["finish_reason"], "FINISH_REASON_LENGTH");
  EXPECT_EQ(last["usage"]["prompt_tokens"], expected.usage().prompt_tokens());

  const auto [health_out, health_code] =
      RunCommand(kCliBinary + " health --server " + server_->address());
  EXPECT_EQ(health_code, 0);
  EXPECT_EQ(health_out, "SERVING\n");

  // Errors: the status code on stderr and exit code 1.
  const auto [bad_out, bad_code] = RunCommand(kCliBinary + " complete --server " +
                                              server_->address() + " --top-p 2 hi 2>&1");
  EXPECT_EQ(bad_code, 1);
  EXPECT_THAT(bad_out, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(bad_out, HasSubstr("sampling.top_p"));
}

TEST(ServerProcessTest, ApiKeyIsRequiredOnEveryRpcButHealth) {
  const std::string key_file = ::testing::TempDir() + "/specmoe_e2e_api_key";
  std::ofstream(key_file) << "s3cret-key\n";
  ServerProcess server({"--api-key-file", key_file});
  ASSERT_TRUE(server.WaitForPort()) << server.log();
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  ASSERT_TRUE(WaitForServing(channel)) << server.log();  // health needs no key
  auto stub = v1::Completion::NewStub(channel);

  auto model_info = [&](const char* authorization) {
    grpc::ClientContext context;
    if (authorization != nullptr) context.AddMetadata("authorization", authorization);
    v1::ModelInfo info;
    return stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).error_code();
  };
  EXPECT_EQ(model_info(nullptr), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(model_info("Bearer wrong-key"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(model_info("s3cret-key"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(model_info("Bearer s3cret-key"), grpc::StatusCode::OK);
  // RFC 6750: the scheme is case-insensitive.
  EXPECT_EQ(model_info("bearer s3cret-key"), grpc::StatusCode::OK);
  EXPECT_EQ(model_info("BEARER s3cret-key"), grpc::StatusCode::OK);
  EXPECT_EQ(model_info("Bearers3cret-key"), grpc::StatusCode::UNAUTHENTICATED);

  // Reflection is behind the key too: without it the call ends UNAUTHENTICATED, unanswered.
  grpc::Status reflection_status;
  EXPECT_FALSE(ReflectionListsTheService(channel, nullptr, &reflection_status));
  EXPECT_EQ(reflection_status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << reflection_status.error_message();
  EXPECT_THAT(reflection_status.error_message(), HasSubstr("authorization"));
  EXPECT_FALSE(ReflectionListsTheService(channel, "Bearer wrong-key", &reflection_status));
  EXPECT_EQ(reflection_status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(ReflectionListsTheService(channel, "Bearer s3cret-key"));

  v1::CompleteRequest request;
  request.set_prompt("Hello");
  request.set_max_tokens(2);
  {
    grpc::ClientContext context;
    v1::CompleteResponse response;
    EXPECT_EQ(stub->Complete(&context, request, &response).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    auto reader = stub->CompleteStream(&context, request);
    v1::CompleteChunk chunk;
    EXPECT_FALSE(reader->Read(&chunk));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer s3cret-key");
    v1::CompleteResponse response;
    EXPECT_TRUE(stub->Complete(&context, request, &response).ok());
    EXPECT_EQ(response.token_ids_size(), 2);
  }
  // The CLI sends the key from a file.
  const auto [out, code] = RunCommand(kCliBinary + " complete --json --max-tokens 2 --server " +
                                      server.address() + " --api-key-file " + key_file + " hi");
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(server.Terminate(), 0) << server.log();
  // Each refusal is one line with the rpc, code, peer and reason, never the key.
  const std::string log = server.log();
  EXPECT_THAT(log, HasSubstr("rpc=GetModelInfo refused code=UNAUTHENTICATED peer=ipv4:127.0.0.1"));
  EXPECT_THAT(log, HasSubstr("rpc=Complete refused code=UNAUTHENTICATED"));
  EXPECT_THAT(log, HasSubstr("rpc=CompleteStream refused code=UNAUTHENTICATED"));
  EXPECT_THAT(log, HasSubstr("ServerReflectionInfo refused code=UNAUTHENTICATED"));
  EXPECT_EQ(log.find("s3cret-key"), std::string::npos) << log;
  EXPECT_EQ(log.find("without TLS"), std::string::npos) << log;  // loopback: no warning
  std::filesystem::remove(key_file);
}

TEST(ServerProcessTest, ApiKeyWithoutTlsOnANonLoopbackAddressWarns) {
  const std::string key_file = ::testing::TempDir() + "/specmoe_e2e_api_key_warn";
  std::ofstream(key_file) << "k\n";
  ServerProcess server({"--api-key-file", key_file, "--listen", "0.0.0.0:0"});
  ASSERT_TRUE(server.WaitForPort()) << server.log();
  EXPECT_EQ(server.Terminate(), 0) << server.log();
  EXPECT_THAT(server.log(), HasSubstr("--api-key-file without TLS on 0.0.0.0:0"));
  std::filesystem::remove(key_file);
}

// engine/README.md, Errors: no request and no model file ends the process. The target is
// llama_tiny, on which the B1 request (tiny repetition penalty) used to abort the server; the draft
// has an all-NaN lm_head, so every speculating request meets a NaN (INTERNAL naming the model and
// the step) while plain decoding (target only) is unaffected: afterwards health is SERVING
// and a normal request gives exactly the tokens of a server without the broken draft.
TEST(ServerProcessTest, NanModelsFailTheRequestAndTheServerKeepsServing) {
  v1::CompleteRequest normal;
  normal.set_prompt("The king said");
  normal.set_max_tokens(10);
  normal.set_ignore_eos(true);
  normal.mutable_speculation()->set_disable(true);
  std::vector<int32_t> expected;
  {
    ServerProcess reference({"--target", kTiny, "--draft", ""});
    ASSERT_TRUE(reference.WaitForPort()) << reference.log();
    auto channel = grpc::CreateChannel(reference.address(), grpc::InsecureChannelCredentials());
    ASSERT_TRUE(WaitForServing(channel)) << reference.log();
    grpc::ClientContext context;
    v1::CompleteResponse response;
    ASSERT_TRUE(v1::Completion::NewStub(channel)->Complete(&context, normal, &response).ok());
    expected.assign(response.token_ids().begin(), response.token_ids().end());
    ASSERT_EQ(expected.size(), 10u);
  }

  ServerProcess server({"--target", kTiny, "--draft", kNanModel});
  ASSERT_TRUE(server.WaitForPort()) << server.log();
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  ASSERT_TRUE(WaitForServing(channel)) << server.log();
  auto stub = v1::Completion::NewStub(channel);
  auto complete = [&](const v1::CompleteRequest& request, v1::CompleteResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return stub->Complete(&context, request, response);
  };
  v1::CompleteResponse response;
  const grpc::Status b1 = complete(B1Request(), &response);
  EXPECT_TRUE(b1.ok()) << b1.error_message() << server.log();
  EXPECT_GT(response.token_ids_size(), 0);
  for (float temperature : {0.0f, 0.8f}) {
    v1::CompleteRequest nan_request = normal;
    nan_request.set_request_id("nan-request");
    nan_request.mutable_speculation()->set_disable(false);
    nan_request.mutable_sampling()->set_temperature(temperature);
    const grpc::Status status = complete(nan_request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << temperature;
    EXPECT_THAT(status.error_message(), HasSubstr("draft model " + kNanModel));
    EXPECT_THAT(status.error_message(), HasSubstr("NaN logit"));
    EXPECT_THAT(status.error_message(), HasSubstr("decode step 1"));
  }
  EXPECT_EQ(HealthStatus(channel, ""), kServing);
  ASSERT_TRUE(complete(normal, &response).ok());
  EXPECT_EQ(std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end()),
            expected);
  EXPECT_EQ(server.Terminate(), 0) << server.log();
  EXPECT_THAT(server.log(), HasSubstr("request nan-request rpc=Complete failed: INTERNAL"));

  // The broken model as the target: greedy used to return token 0 forever, sampling to abort.
  ServerProcess broken({"--target", kNanModel, "--draft", ""});
  ASSERT_TRUE(broken.WaitForPort()) << broken.log();
  auto broken_channel =
      grpc::CreateChannel(broken.address(), grpc::InsecureChannelCredentials());
  ASSERT_TRUE(WaitForServing(broken_channel)) << broken.log();
  auto broken_stub = v1::Completion::NewStub(broken_channel);
  for (float temperature : {0.0f, 1.0f}) {
    v1::CompleteRequest request = normal;
    request.mutable_sampling()->set_temperature(temperature);
    grpc::ClientContext context;
    const grpc::Status status = broken_stub->Complete(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << temperature;
    EXPECT_THAT(status.error_message(), HasSubstr("target model " + kNanModel));
  }
  EXPECT_EQ(HealthStatus(broken_channel, ""), kServing);
  EXPECT_EQ(broken.Terminate(), 0) << broken.log();
}

// A stream whose client stops reading is cancelled once a write has waited
// --stream-stall-seconds behind flow control, is logged, and the server keeps serving.
TEST(ServerProcessTest, AStreamLeftUnreadIsCancelledAndLogged) {
  ServerProcess server({"--stream-stall-seconds", "1"});
  ASSERT_TRUE(server.WaitForPort()) << server.log();
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  ASSERT_TRUE(WaitForServing(channel)) << server.log();
  auto stub = v1::Completion::NewStub(channel);
  v1::CompleteRequest normal;
  normal.set_prompt("The king said");
  normal.set_max_tokens(20);
  normal.set_ignore_eos(true);
  auto complete = [&](v1::CompleteResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return stub->Complete(&context, normal, response);
  };
  v1::CompleteResponse before;
  ASSERT_TRUE(complete(&before).ok());
  ASSERT_EQ(before.token_ids_size(), 20);

  // A client with a 1 KiB stream window (no BDP growth) that never reads: each chunk echoes
  // a 250-byte id, so the server's writes soon wait on flow control.
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  arguments.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  auto slow_channel = grpc::CreateCustomChannel(
      server.address(), grpc::InsecureChannelCredentials(), arguments);
  auto slow_stub = v1::Completion::NewStub(slow_channel);
  v1::CompleteRequest unread;
  unread.set_prompt("Nobody reads this");
  unread.set_request_id("unread-" + std::string(243, 'x'));
  unread.set_max_tokens(240);
  unread.set_ignore_eos(true);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  const auto started = std::chrono::steady_clock::now();
  auto reader = slow_stub->CompleteStream(&context, unread);
  bool logged = false;
  for (int i = 0; i < 200 && !logged; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    logged = server.log().find("rpc=CompleteStream cancelled: the client did not read the "
                               "stream for 1 s (--stream-stall-seconds)") != std::string::npos;
  }
  ASSERT_TRUE(logged) << server.log();
  // Cancelled well before the client's own 30 s deadline (1 s stall plus generation time).
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(10));
  // Now the client reads: the few chunks that fitted in its window, then the cancellation.
  v1::CompleteChunk chunk;
  int tokens = 0;
  while (reader->Read(&chunk)) tokens += chunk.token_ids_size();
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  EXPECT_LT(tokens, 240);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(10));

  // The server keeps serving: the same request gives the same tokens.
  v1::CompleteResponse after;
  ASSERT_TRUE(complete(&after).ok());
  EXPECT_EQ(std::vector<int32_t>(after.token_ids().begin(), after.token_ids().end()),
            std::vector<int32_t>(before.token_ids().begin(), before.token_ids().end()));
  EXPECT_EQ(HealthStatus(channel, ""), kServing);
  EXPECT_EQ(server.Terminate(), 0) << server.log();
  EXPECT_THAT(server.log(), HasSubstr("request unread-xxx"));
}

TEST(ServerProcessTest, SigtermLetsInFlightRequestsFinishAndExitsZero) {
  ServerProcess server({"--log-format", "json", "--max-prompt-tokens", "8"});
  ASSERT_TRUE(server.WaitForPort()) << server.log();
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  ASSERT_TRUE(WaitForServing(channel)) << server.log();
  auto stub = v1::Completion::NewStub(channel);

  // --max-prompt-tokens bounds prompts below the context.
  {
    grpc::ClientContext context;
    v1::CompleteRequest request;
    for (int i = 0; i < 9; ++i) request.add_prompt_token_ids(100);
    v1::CompleteResponse response;
    const grpc::Status status = stub->Complete(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("--max-prompt-tokens"));
  }

  // A stream in flight when SIGTERM arrives still completes within the drain period (5 s).
  // In flight whatever the host's speed: its client has a 1 KiB stream window (no BDP
  // growth) and reads nothing more until the checks below are done, and every chunk echoes
  // a 250-byte request id, so the server's writes wait on flow control and the call cannot
  // end before the client reads (a fast host may well have generated all 30 tokens).
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  arguments.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  auto slow_channel = grpc::CreateCustomChannel(server.address(),
                                                grpc::InsecureChannelCredentials(), arguments);
  auto slow_stub = v1::Completion::NewStub(slow_channel);
  const std::string drained_id = "drained-request-" + std::string(234, 'x');
  grpc::ClientContext context;
  v1::CompleteRequest request;
  request.set_prompt("Drain me");
  request.set_request_id(drained_id);
  request.set_max_tokens(30);
  request.set_ignore_eos(true);
  request.mutable_speculation()->add_expansion(7);
  request.mutable_speculation()->add_expansion(7);
  auto reader = slow_stub->CompleteStream(&context, request);
  v1::CompleteChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  int tokens = chunk.token_ids_size();
  std::future<int> exit_code = std::async(std::launch::async, [&] { return server.Terminate(); });
  // While the stream drains, health answers NOT_SERVING and new calls get UNAVAILABLE.
  int health = kServing;
  for (int i = 0; i < 200 && health == kServing; ++i) {
    health = HealthStatus(channel, "");
    if (health == kServing) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(health, kNotServing);
  EXPECT_EQ(HealthStatus(channel, "specmoe.v1.Completion"), kNotServing);
  {
    grpc::ClientContext late_context;
    v1::CompleteRequest late;
    late.set_prompt("Too late");
    v1::CompleteResponse late_response;
    const grpc::Status late_status = stub->Complete(&late_context, late, &late_response);
    EXPECT_EQ(late_status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(late_status.error_message(), HasSubstr("shutting down"));
  }
  while (reader->Read(&chunk)) tokens += chunk.token_ids_size();
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(tokens, 30);
  EXPECT_EQ(chunk.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(exit_code.get(), 0) << server.log();
  const std::string text = server.log();
  // (The request's line may come before "draining": the engine logs a request when it has
  // generated its tokens, which a fast host does before the client has read them.)
  ASSERT_NE(text.find("draining"), std::string::npos) << text;
  ASSERT_NE(text.find("\"request_id\":\"" + drained_id + "\""), std::string::npos) << text;

  // JSON logs: every line is one JSON object; a request's id is a field of its own.
  std::istringstream log(server.log());
  int lines = 0;
  bool drained_line = false;
  for (std::string line; std::getline(log, line); ++lines) {
    ASSERT_TRUE(nlohmann::json::accept(line)) << line;
    const nlohmann::json parsed = nlohmann::json::parse(line);
    if (parsed.value("request_id", "") == drained_id) {
      drained_line = true;
      EXPECT_THAT(parsed["msg"].get<std::string>(), HasSubstr("finish=length"));
    }
  }
  EXPECT_TRUE(drained_line) << server.log();
  EXPECT_GE(lines, 4);  // listening, serving, the request, draining
  EXPECT_THAT(server.log(), HasSubstr("draining"));
}

TEST(ServerProcessTest, ServesTlsWithTheGivenCertificate) {
  if (RunCommand("command -v openssl >/dev/null 2>&1").second != 0) {
    GTEST_SKIP() << "openssl is needed to make a test certificate";
  }
  const std::string dir = ::testing::TempDir() + "/specmoe_e2e_tls_" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  const std::string cert = dir + "/cert.pem";
  const std::string key = dir + "/key.pem";
  ASSERT_EQ(RunCommand("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost"
                       " -addext subjectAltName=IP:127.0.0.1 -keyout " + key + " -out " + cert +
                       " 2>&1").second, 0);
  ServerProcess server({"--tls-cert", cert, "--tls-key", key});
  ASSERT_TRUE(server.WaitForPort()) << server.log();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadAll(cert);
  auto channel = grpc::CreateChannel(server.address(), grpc::SslCredentials(ssl));
  ASSERT_TRUE(WaitForServing(channel)) << server.log();
  {
    grpc::ClientContext context;
    v1::ModelInfo info;
    EXPECT_TRUE(v1::Completion::NewStub(channel)
                    ->GetModelInfo(&context, v1::GetModelInfoRequest(), &info)
                    .ok());
    EXPECT_EQ(info.vocab_size(), static_cast<uint32_t>(kVocab));
  }
  {
    // A plaintext client cannot talk to it.
    auto plain = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ModelInfo info;
    EXPECT_FALSE(v1::Completion::NewStub(plain)
                     ->GetModelInfo(&context, v1::GetModelInfoRequest(), &info)
                     .ok());
  }
  const auto [out, code] = RunCommand(kCliBinary + " complete --json --max-tokens 2 --server " +
                                      server.address() + " --tls-ca " + cert + " hi");
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["usage"]["completion_tokens"], 2);
  EXPECT_EQ(server.Terminate(), 0) << server.log();
  std::filesystem::remove_all(dir);
}

TEST(ServerProcessTest, MutualTlsRequiresAClientCertificateSignedByTheClientCa) {
  if (RunCommand("command -v openssl >/dev/null 2>&1").second != 0) {
    GTEST_SKIP() << "openssl is needed to make test certificates";
  }
  const std::string dir = ::testing::TempDir() + "/specmoe_e2e_mtls_" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  // A server certificate, a client CA, a client certificate it signed, and a stranger's
  // self-signed certificate.
  const std::string make =
      "cd " + dir + " && "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost"
      " -addext subjectAltName=IP:127.0.0.1 -keyout server.key -out server.pem && "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=clients"
      " -keyout ca.key -out ca.pem && "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr &&"
      " openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1"
      " -out client.pem && "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=stranger"
      " -keyout stranger.key -out stranger.pem";
  ASSERT_EQ(RunCommand("(" + make + ") 2>&1").second, 0);
  ServerProcess server({"--tls-cert", dir + "/server.pem", "--tls-key", dir + "/server.key",
                        "--tls-client-ca", dir + "/ca.pem"});
  ASSERT_TRUE(server.WaitForPort()) << server.log();
  const std::string tls = " --server " + server.address() + " --tls-ca " + dir + "/server.pem";
  const auto health = [&](const std::string& client) {
    return RunCommand(kCliBinary + " health --timeout-ms 5000" + tls + client + " 2>&1");
  };
  for (int i = 0; i < 100 && health(" --tls-cert " + dir + "/client.pem --tls-key " + dir +
                                    "/client.key").second != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  // Signed by the client CA: served, health included.
  const auto [out, code] = RunCommand(kCliBinary + " complete --json --max-tokens 2" + tls +
                                      " --tls-cert " + dir + "/client.pem --tls-key " + dir +
                                      "/client.key hi");
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["usage"]["completion_tokens"], 2);
  // No client certificate, or one the client CA did not sign: the handshake fails.
  EXPECT_NE(health("").second, 0);
  EXPECT_NE(health(" --tls-cert " + dir + "/stranger.pem --tls-key " + dir + "/stranger.key")
                .second,
            0);
  // A client certificate without --tls-ca is a usage error naming the flags.
  const auto [usage, usage_code] = RunCommand(kCliBinary + " health --server " +
                                              server.address() + " --tls-cert " + dir +
                                              "/client.pem --tls-key " + dir + "/client.key 2>&1");
  EXPECT_EQ(usage_code, 2) << usage;
  EXPECT_THAT(usage, HasSubstr("--tls-ca"));
  EXPECT_EQ(server.Terminate(), 0) << server.log();
  std::filesystem::remove_all(dir);
}

// A model folder whose config.json is a FIFO: the engine's load blocks on it until the test
// writes the real config, which holds the server in its loading phase for as long as needed.
class SlowModelFolder {
 public:
  SlowModelFolder() {
    dir_ = ::testing::TempDir() + "/specmoe_e2e_fifo_" + std::to_string(getpid()) + "_" +
           std::to_string(++instances_);
    std::filesystem::create_directories(dir_);
    for (const char* file : {"model.safetensors", "tokenizer.model"}) {
      std::filesystem::create_symlink(kTarget + "/" + file, dir_ + "/" + file);
    }
    EXPECT_EQ(mkfifo((dir_ + "/config.json").c_str(), 0600), 0);
  }
  ~SlowModelFolder() { std::filesystem::remove_all(dir_); }
  // Lets the load continue: waits (up to a minute, never forever) for the server to open the
  // FIFO, then writes the real config. False if the server never opened it.
  bool Release() {
    const std::string path = dir_ + "/config.json";
    for (int i = 0; i < 6000; ++i) {
      const int fd = open(path.c_str(), O_WRONLY | O_NONBLOCK);  // ENXIO until a reader
      if (fd >= 0) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        const std::string config = ReadAll(kTarget + "/config.json");
        const bool written = write(fd, config.data(), config.size()) ==
                             static_cast<ssize_t>(config.size());
        close(fd);
        return written;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  const std::string& dir() const { return dir_; }

 private:
  static inline int instances_ = 0;
  std::string dir_;
};

TEST(ServerProcessTest, NotServingAndUnavailableWhileTheModelsLoad) {
  SlowModelFolder folder;
  ServerProcess server({"--target", folder.dir()});
  ASSERT_TRUE(server.WaitForPort()) << server.log();
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  EXPECT_EQ(HealthStatus(channel, ""), kNotServing);
  EXPECT_EQ(HealthStatus(channel, "specmoe.v1.Completion"), kNotServing);
  auto stub = v1::Completion::NewStub(channel);
  {
    grpc::ClientContext context;
    v1::CompleteRequest request;
    request.set_prompt("Hello");
    v1::CompleteResponse response;
    const grpc::Status status = stub->Complete(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(status.error_message(), HasSubstr("loading"));
  }
  ASSERT_TRUE(folder.Release()) << server.log();
  ASSERT_TRUE(WaitForServing(channel)) << server.log();
  EXPECT_EQ(HealthStatus(channel, "specmoe.v1.Completion"), kServing);
  grpc::ClientContext context;
  v1::ModelInfo info;
  EXPECT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(server.Terminate(), 0) << server.log();
}

TEST(ServerProcessTest, SigtermWhileLoadingExitsZero) {
  SlowModelFolder folder;
  ServerProcess server({"--target", folder.dir()});
  ASSERT_TRUE(server.WaitForPort()) << server.log();
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  EXPECT_EQ(HealthStatus(channel, ""), kNotServing);
  EXPECT_EQ(server.Terminate(), 0) << server.log();
  EXPECT_THAT(server.log(), HasSubstr("stopped while loading the models"));
}

TEST(ServerProcessTest, PrefixCacheOffServesTheSameTokensWithNothingCached) {
  v1::CompleteRequest request;
  request.set_max_tokens(12);
  request.set_ignore_eos(true);
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_seed(5);
  for (int i = 0; i < 40; ++i) request.add_prompt_token_ids(1 + (i * 53 + 3) % 250);
  std::vector<std::vector<int32_t>> outputs;
  for (const char* mode : {"on", "off"}) {
    ServerProcess server({"--prefix-cache", mode});
    ASSERT_TRUE(server.WaitForPort()) << server.log();
    auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
    ASSERT_TRUE(WaitForServing(channel)) << server.log();
    auto stub = v1::Completion::NewStub(channel);
    for (int turn = 0; turn < 2; ++turn) {
      grpc::ClientContext context;
      v1::CompleteResponse response;
      ASSERT_TRUE(stub->Complete(&context, request, &response).ok()) << server.log();
      EXPECT_EQ(response.usage().cached_prompt_tokens(),
                std::string(mode) == "on" && turn == 1 ? 32u : 0u)
          << mode << " turn " << turn;
      outputs.emplace_back(response.token_ids().begin(), response.token_ids().end());
    }
  }
  for (const auto& output : outputs) EXPECT_EQ(output, outputs[0]);
  const auto [bad_out, bad_code] =
      RunCommand(kServerBinary + " --target " + kTarget + " --prefix-cache maybe 2>&1");
  EXPECT_EQ(bad_code, 2);
  EXPECT_THAT(bad_out, HasSubstr("--prefix-cache"));
}

TEST(ServerProcessTest, BadFlagsExitTwoAndBadModelsExitOne) {
  const auto [flag_out, flag_code] = RunCommand(kServerBinary + " --target 2>&1");
  EXPECT_EQ(flag_code, 2);
  EXPECT_THAT(flag_out, HasSubstr("--target: 1 required"));
  const auto [tpu_out, tpu_code] =
      RunCommand(kServerBinary + " --target " + kTarget + " --device tpu 2>&1");
  EXPECT_EQ(tpu_code, 2);
  EXPECT_THAT(tpu_out, HasSubstr("--device: expected one of cpu|cuda|auto"));
  // Without a visible GPU (or a CUDA build) --device cuda fails start-up naming why; with
  // one the server would serve, so `timeout` ends it (124) and there is nothing to check.
  const auto [cuda_out, cuda_code] = RunCommand("timeout 20 " + kServerBinary + " --target " +
                                                kTarget + " --listen 127.0.0.1:0" +
                                                " --device cuda 2>&1");
  if (cuda_code != 124) {
    EXPECT_EQ(cuda_code, 1) << cuda_out;
    EXPECT_THAT(cuda_out, HasSubstr("--device cuda: "));
  }
  const auto [missing_out, missing_code] = RunCommand(
      kServerBinary + " --listen 127.0.0.1:0 --target /nonexistent/model_dir 2>&1");
  EXPECT_EQ(missing_code, 1);
  EXPECT_THAT(missing_out, HasSubstr("/nonexistent/model_dir"));
}

}  // namespace
}  // namespace specmoe
