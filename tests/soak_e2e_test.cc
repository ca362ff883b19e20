// tests/soak_e2e_test.cc — a soak run of the real specmoe-server: one server
// on 127.0.0.1 with a KV budget small enough to force preemptions, a few hundred requests
// from many client threads at once (greedy unary and streamed with several trees, cancels
// after the first chunk, 5-60 ms deadlines, invalid requests, dropped connections, seeded
// sampling sent twice). Every greedy answer must equal plain target-only decoding of the
// same prompt (asked first, alone), the two answers of a seed must be equal, and afterwards
// the server is healthy (SERVING, no KV block in use, preemptions counted, RSS bounded).
// Finally a SIGTERM lands while streams are provably in flight (the server is stopped while
// its log is read and the signal sent) and every stream still completes, then exit 0.
// Sized to run in seconds, and well under 2 minutes under ASan.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
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

const std::string kServerBinary = SPECMOE_BINARY_DIR "/server/specmoe-server";
const std::string kTarget = SPECMOE_FIXTURES "/models/e2e_target";  // context 256
const std::string kDraft = SPECMOE_FIXTURES "/models/e2e_draft";

// The server under test, started with the soak's flags; port() is 0 if it did not come up.
class Server : public ServerChild {
 public:
  // 512 KV slots (32 blocks) for up to 32 requests of up to ~100 tokens plus their trees:
  // the running set outgrows the cache and requests are preempted and recomputed.
  Server()
      : ServerChild("soak",
                    {kServerBinary, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                     "--target", kTarget, "--draft", kDraft, "--threads", "1", "--max-batch",
                     "32", "--kv-cache-tokens", "512", "--max-step-tokens", "64", "--tree",
                     "1,2,1", "--tree-policy", "static", "--drain-seconds", "60", "--max-queue",
                     "256"}) {
    WaitForPort(120);
  }
};

// A TCP connection to 127.0.0.1:port (-1 on failure).
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// The value of a metric series (its first line starting with `name`), -1 if absent.
double Metric(int port, const std::string& name) {
  const int fd = Connect(port);
  if (fd < 0) return -1;
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, request.data(), request.size()) < 0) {
    close(fd);
    return -1;
  }
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, n);
  close(fd);
  std::istringstream lines(response);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

int Health(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  if (!stub->Check(&context, request, &response).ok()) return -1;
  return response.status();
}

std::vector<int32_t> Ids(const google::protobuf::RepeatedField<int32_t>& ids) {
  return {ids.begin(), ids.end()};
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

constexpr int kPrompts = 12;

v1::CompleteRequest GreedyRequest(int prompt) {
  static const char* kPromptTexts[kPrompts] = {
      "And God said",         "In the beginning",   "the LORD spake unto Moses",
      "Hear O Israel",        "blessed are they",   "and the earth was",
      "God created the heaven", "unto Moses and",   "they that hear",
      "the beginning of",     "Israel said unto",   "and God"};
  v1::CompleteRequest request;
  request.set_prompt(kPromptTexts[prompt % kPrompts]);
  request.set_max_tokens(30 + 5 * (prompt % kPrompts));
  request.set_ignore_eos(true);
  return request;
}

// Streams `request`; the tokens and the final status.
grpc::Status Stream(v1::Completion::Stub& stub, grpc::ClientContext& context,
                    const v1::CompleteRequest& request, std::vector<int32_t>* ids,
                    bool cancel_after_first = false) {
  auto reader = stub.CompleteStream(&context, request);
  v1::CompleteChunk chunk;
  while (reader->Read(&chunk)) {
    ids->insert(ids->end(), chunk.token_ids().begin(), chunk.token_ids().end());
    if (cancel_after_first) context.TryCancel();
  }
  return reader->Finish();
}

TEST(SoakTest, ManyClientsUnderKvPressureThenADrainingSigterm) {
  Server server;
  ASSERT_GT(server.port(), 0) << server.log();
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  for (int i = 0; i < 600 && Health(channel) != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(Health(channel), 1) << server.log();
  auto stub = v1::Completion::NewStub(channel);

  // References: plain target-only decoding of every prompt, one request at a time.
  std::vector<std::vector<int32_t>> reference(kPrompts);
  for (int p = 0; p < kPrompts; ++p) {
    v1::CompleteRequest request = GreedyRequest(p);
    request.mutable_speculation()->set_disable(true);
    grpc::ClientContext context;
    v1::CompleteResponse response;
    ASSERT_TRUE(stub->Complete(&context, request, &response).ok());
    reference[p] = Ids(response.token_ids());
    ASSERT_EQ(static_cast<int>(reference[p].size()), 30 + 5 * p);
  }
  const long rss_before = server.rss_kib();

  // The load: 24 client threads, 12 requests each (8 under the sanitizers, which run the
  // server several times slower), kinds interleaved.
  constexpr int kThreads = 24;
  constexpr int kPerThread = kSanitized ? 8 : 12;
  std::mutex mu;
  std::map<int, std::vector<std::vector<int32_t>>> by_seed;  // seed -> answers
  std::atomic<int> greedy_checked{0}, cancelled{0}, deadlines{0}, invalid{0}, dropped{0};
  std::vector<std::string> failures;
  auto fail = [&](const std::string& what) {
    std::lock_guard<std::mutex> lock(mu);
    failures.push_back(what);
  };
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([&, t] {
      std::mt19937 rng(1000 + t);
      for (int k = 0; k < kPerThread; ++k) {
        const int i = t * kPerThread + k;
        const int prompt = static_cast<int>(rng() % kPrompts);
        v1::CompleteRequest request = GreedyRequest(prompt);
        request.set_request_id("soak-" + std::to_string(i));
        static const std::vector<std::vector<uint32_t>> kTrees = {{1, 2, 1}, {2, 1}, {1}, {}};
        for (uint32_t e : kTrees[i % 4]) request.mutable_speculation()->add_expansion(e);
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(90));
        const std::string what = "request " + std::to_string(i);
        switch (i % 8) {
          case 0:
          case 1: {  // greedy, unary
            v1::CompleteResponse response;
            const grpc::Status status = stub->Complete(&context, request, &response);
            if (!status.ok()) {
              fail(what + ": " + status.error_message());
            } else if (Ids(response.token_ids()) != reference[prompt]) {
              fail(what + ": greedy answer differs from plain decoding");
            } else {
              ++greedy_checked;
            }
            break;
          }
          case 2: {  // greedy, streamed
            std::vector<int32_t> ids;
            const grpc::Status status = Stream(*stub, context, request, &ids);
            if (!status.ok() || ids != reference[prompt]) {
              fail(what + ": streamed greedy answer differs: " + status.error_message());
            } else {
              ++greedy_checked;
            }
            break;
          }
          case 3: {  // cancelled after the first chunk
            request.set_max_tokens(200);
            std::vector<int32_t> ids;
            const grpc::Status status = Stream(*stub, context, request, &ids, true);
            if (status.error_code() != grpc::StatusCode::CANCELLED) {
              fail(what + ": a cancelled stream ended " + std::to_string(status.error_code()));
            }
            ++cancelled;
            break;
          }
          case 4: {  // a 5-60 ms deadline: ends early, or completes exactly
            request.set_max_tokens(200);
            grpc::ClientContext short_context;
            short_context.set_deadline(std::chrono::system_clock::now() +
                                       std::chrono::milliseconds(5 + rng() % 56));
            v1::CompleteResponse response;
            const grpc::Status status = stub->Complete(&short_context, request, &response);
            if (status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED &&
                !(status.ok() && response.token_ids_size() == 200)) {
              fail(what + ": deadline ended " + std::to_string(status.error_code()));
            }
            ++deadlines;
            break;
          }
          case 5: {  // invalid: a token id past the vocabulary, or too many tokens
            if (k % 2 == 0) {
              request.clear_prompt();
              request.add_prompt_token_ids(1);
              request.add_prompt_token_ids(1 << 20);
            } else {
              request.set_max_tokens(100000);
            }
            v1::CompleteResponse response;
            const grpc::Status status = stub->Complete(&context, request, &response);
            if (status.error_code() != grpc::StatusCode::INVALID_ARGUMENT) {
              fail(what + ": an invalid request ended " + std::to_string(status.error_code()));
            }
            ++invalid;
            break;
          }
          case 6: {  // seeded sampling (each seed is asked by two threads)
            const int seed = 1 + (i / 16) % 18;  // i = 6, 14 mod 16: two asks each
            request.mutable_sampling()->set_temperature(0.8f);
            request.mutable_sampling()->set_top_k(40);
            request.mutable_sampling()->set_seed(seed);
            request.set_prompt(GreedyRequest(seed).prompt());
            request.set_max_tokens(30);
            v1::CompleteResponse response;
            const grpc::Status status = stub->Complete(&context, request, &response);
            if (!status.ok()) {
              fail(what + ": " + status.error_message());
            } else {
              std::lock_guard<std::mutex> lock(mu);
              by_seed[seed].push_back(Ids(response.token_ids()));
            }
            break;
          }
          case 7: {  // dropped connections: half a request on a raw socket, and a stream
                     // whose channel goes away after the first chunk
            const int fd = Connect(server.port());
            const std::string partial = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
            if (fd >= 0) {
              if (write(fd, partial.data(), partial.size()) < 0) fail(what + ": raw write");
              close(fd);
            }
            auto own = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
            auto own_stub = v1::Completion::NewStub(own);
            grpc::ClientContext own_context;
            request.set_max_tokens(200);
            std::vector<int32_t> ids;
            Stream(*own_stub, own_context, request, &ids, true);
            ++dropped;
            break;
          }
        }
      }
    });
  }
  for (std::thread& client : clients) client.join();
  for (const std::string& f : failures) ADD_FAILURE() << f;
  ASSERT_TRUE(failures.empty()) << server.log().substr(0, 20000);
  EXPECT_GE(greedy_checked.load(), kThreads * kPerThread * 3 / 8 - 1);
  for (const auto& [seed, answers] : by_seed) {
    EXPECT_EQ(answers.size(), 2u) << "seed " << seed;
    for (const auto& answer : answers) EXPECT_EQ(answer, answers[0]) << "seed " << seed;
  }

  // Healthy afterwards: SERVING, no block in use once the cancelled requests are gone,
  // preemptions happened, memory bounded.
  EXPECT_EQ(Health(channel), 1);
  const int metrics_port = server.metrics_port();
  ASSERT_GT(metrics_port, 0) << server.log().substr(0, 5000);
  double used = -1;
  for (int i = 0; i < 200 && used != 0; ++i) {
    used = Metric(metrics_port, "specmoe_kv_cache_used_blocks");
    if (used != 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(used, 0);
  const double preemptions = Metric(metrics_port, "specmoe_preemptions_total");
  EXPECT_GT(preemptions, 0);
  std::printf("soak: %d greedy answers checked, %d cancelled, %d deadlines, %d invalid, "
              "%d dropped, %zu seeds, %.0f preemptions\n",
              greedy_checked.load(), cancelled.load(), deadlines.load(), invalid.load(),
              dropped.load(), by_seed.size(), preemptions);
  EXPECT_EQ(Metric(metrics_port, "specmoe_running_requests"), 0);
  const long rss_after = server.rss_kib();
  EXPECT_LT(rss_after, rss_before + 512 * 1024) << "RSS grew from " << rss_before << " KiB";

  // SIGTERM while 6 streams are provably in flight: the server is stopped after their first
  // chunks, its log shows none finished, the signal is sent, and it continues.
  constexpr int kStreams = 6;
  std::vector<std::vector<int32_t>> drained(kStreams);
  std::vector<grpc::Status> drained_status(kStreams);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::CompleteChunk>>> readers;
  for (int s = 0; s < kStreams; ++s) {
    v1::CompleteRequest request = GreedyRequest(s);
    request.set_request_id("drain-" + std::to_string(s));
    request.set_max_tokens(200);
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub->CompleteStream(contexts.back().get(), request));
    v1::CompleteChunk chunk;
    ASSERT_TRUE(readers.back()->Read(&chunk));
    drained[s].assign(chunk.token_ids().begin(), chunk.token_ids().end());
  }
  ASSERT_EQ(kill(server.pid(), SIGSTOP), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the stop takes effect
  std::istringstream before(server.log());
  int finished_before = 0;
  for (std::string line; std::getline(before, line);) {
    finished_before += line.find("request drain-") != std::string::npos &&
                               line.find("completion_tokens=") != std::string::npos
                           ? 1
                           : 0;
  }
  ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
  ASSERT_EQ(kill(server.pid(), SIGCONT), 0);
  for (int s = 0; s < kStreams; ++s) {
    v1::CompleteChunk chunk;
    while (readers[s]->Read(&chunk)) {
      drained[s].insert(drained[s].end(), chunk.token_ids().begin(), chunk.token_ids().end());
    }
    drained_status[s] = readers[s]->Finish();
    EXPECT_TRUE(drained_status[s].ok()) << s << ": " << drained_status[s].error_message();
    EXPECT_EQ(drained[s].size(), 200u) << s;
  }
  EXPECT_EQ(server.WaitExit(), 0) << server.log().substr(0, 5000);
  EXPECT_LT(finished_before, kStreams) << "no stream was in flight at the SIGTERM";
  EXPECT_NE(server.log().find("received signal 15"), std::string::npos);
}

}  // namespace
}  // namespace specmoe
