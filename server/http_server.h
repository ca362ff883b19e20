// server/http_server.h — the OpenAI-compatible HTTP front, a second transport over
// the same engine: POST /v1/completions and /v1/chat/completions (unary JSON, or Server-Sent
// Events with stream: true), GET /v1/models and GET /health, on cpp-httplib (TLS through its
// OpenSSL build). It converts only (server/openai_api.h; the engine's validator decides),
// and shares the gRPC front's API key, limits, metrics (transport="http"), request log
// lines and drain. Tested by tests/http_e2e_test.py against the real binary.
#ifndef SPECMOE_SERVER_HTTP_SERVER_H_
#define SPECMOE_SERVER_HTTP_SERVER_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "engine/serving/engine.h"
#include "server/chat_template.h"
#include "server/metrics.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace specmoe::server {

struct HttpServerConfig {
  std::string listen;         // HOST:PORT, or PORT for 127.0.0.1:PORT; port 0: a free one
  std::string api_key;        // empty: no authentication
  std::string tls_cert;       // PEM paths; empty: plain HTTP
  std::string tls_key;
  std::string tls_client_ca;  // mutual TLS
  int threads = 88;           // worker threads = connections served at once
  size_t max_body_bytes = 4 << 20;  // larger bodies: 413
  ChatTemplate chat_template = ChatTemplate::kRaw;
  std::optional<CustomChatTemplate> custom_chat_template;  // --chat-template-file: used instead
  std::chrono::seconds stream_stall_limit{30};  // a stream write blocked this long ends it
};

// Contract: owned by main; Start once, Stop (or the destructor) joins the listener. Requests
// before SetEngine (loading) or after StartDraining get 503; streams running at the drain
// finish. Handlers block their worker thread for the request's lifetime (cpp-httplib's
// thread-per-connection model), so `threads` bounds the open streams.
class OpenAiHttpServer {
 public:
  OpenAiHttpServer(HttpServerConfig config, Metrics* metrics);
  ~OpenAiHttpServer();

  // Binds and starts serving on its own thread. INVALID_ARGUMENT for a bad address or TLS
  // files, UNAVAILABLE when the port cannot be bound.
  absl::Status Start();
  int port() const { return port_; }
  void SetEngine(std::shared_ptr<engine::Engine> engine);
  void StartDraining();
  // Generation requests (and open streams) not yet ended.
  int active_calls() const { return active_calls_.load(); }
  void Stop();

 private:
  void HandleGeneration(bool chat, const httplib::Request& request, httplib::Response& response);
  void HandleModels(const httplib::Request& request, httplib::Response& response);
  void HandleHealth(httplib::Response& response) const;
  // The API key and readiness; on success stores the engine.
  absl::Status Admit(const httplib::Request& request,
                     std::shared_ptr<engine::Engine>* engine) const;

  const HttpServerConfig config_;
  Metrics* const metrics_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
  mutable std::mutex mu_;
  std::shared_ptr<engine::Engine> engine_;  // guarded by mu_; null while loading
  std::atomic<bool> draining_{false};
  std::atomic<bool> stopping_{false};  // Stop() began: unary waits give up
  std::atomic<int> active_calls_{0};
};

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_HTTP_SERVER_H_
