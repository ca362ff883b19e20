// server/main.cc — specmoe-server: parse flags, start the gRPC server (health NOT_SERVING)
// and, with --http-listen, the OpenAI-compatible HTTP front (/health 503), load the engine,
// serve (health SERVING), drain both on SIGTERM/SIGINT and exit 0 (server/README.md, Drain).
// Exit codes: 0 after a drain, 1 when the models or the listening port fail, 2 for bad flags.
// Tested by tests/server_e2e_test.cc, which runs this binary.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <unistd.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/serving/engine.h"
#include "server/chat_template.h"
#include "server/completion_service.h"
#include "server/http_server.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/options.h"

namespace {

using specmoe::server::ServerOptions;

constexpr char kServiceName[] = "specmoe.v1.Completion";

absl::StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": cannot read ", path));
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const ServerOptions& options) {
  if (options.tls_cert.empty()) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadFile("tls-cert", options.tls_cert);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile("tls-key", options.tls_key);
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions ssl(
      options.tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                    : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!options.tls_client_ca.empty()) {
    absl::StatusOr<std::string> client_ca = ReadFile("tls-client-ca", options.tls_client_ca);
    if (!client_ca.ok()) return client_ca.status();
    ssl.pem_root_certs = *client_ca;
  }
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::string> ReadApiKey(const std::string& flag, const std::string& path) {
  if (path.empty()) return std::string();
  absl::StatusOr<std::string> key = ReadFile(flag, path);
  if (!key.ok()) return key.status();
  std::string trimmed(absl::StripAsciiWhitespace(*key));
  if (trimmed.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", path, " is empty"));
  }
  return trimmed;
}

// Writes the port through a temporary file and a rename, so readers never see a partial file.
absl::Status WritePortFile(const std::string& path, int port) {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << port << "\n";
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", temporary));
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", ec.message()));
  return absl::OkStatus();
}

// Why the main thread wakes up: a signal, or the engine failing to load.
struct StopState {
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  int exit_code = 0;
  void Stop(int code) {
    std::lock_guard<std::mutex> lock(mu);
    if (stop) return;
    stop = true;
    exit_code = code;
    cv.notify_all();
  }
};

// True for 127.0.0.0/8, [::1] and localhost listen addresses.
bool IsLoopback(const std::string& listen) {
  const std::string host = listen.substr(0, listen.rfind(':'));
  return host == "localhost" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

int g_signal_pipe[2] = {-1, -1};

void OnSignal(int signal_number) {
  const unsigned char byte = static_cast<unsigned char>(signal_number);
  [[maybe_unused]] const ssize_t written = write(g_signal_pipe[1], &byte, 1);
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<ServerOptions> parsed = specmoe::server::ParseServerOptions(argc, argv);
  if (!parsed.ok()) {
    std::cerr << "specmoe-server: " << parsed.status().message()
              << "\n(run specmoe-server --help for the flags)\n";
    return 2;
  }
  const ServerOptions& options = *parsed;
  if (options.help) {
    std::cout << specmoe::server::ServerUsage();
    return 0;
  }
  absl::StatusOr<std::string> api_key = ReadApiKey("api-key-file", options.api_key_file);
  absl::StatusOr<std::string> metrics_key =
      ReadApiKey("metrics-api-key-file", options.metrics_api_key_file);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeCredentials(options);
  for (const absl::Status& status :
       {api_key.status(), metrics_key.status(), credentials.status()}) {
    if (!status.ok()) {
      std::cerr << "specmoe-server: " << status.message() << "\n";
      return 2;
    }
  }
  specmoe::server::ConfigureLogging(options.log_format, options.log_level);

  // SIGTERM / SIGINT: the handler only writes the signal number to a pipe (async-signal-safe;
  // gRPC starts threads before main, so any thread may take the signal); a watcher thread
  // reads it and wakes main, which drains.
  static StopState stop_state;
  if (pipe(g_signal_pipe) != 0) {
    std::cerr << "specmoe-server: cannot create the signal pipe\n";
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up is a failed write, not a signal
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  std::thread([] {
    unsigned char signal_number = 0;
    while (read(g_signal_pipe[0], &signal_number, 1) < 0 && errno == EINTR) {
    }
    spdlog::info("received signal {}: draining", static_cast<int>(signal_number));
    stop_state.Stop(0);
  }).detach();

  // The metrics outlive the service and the engine (the engine holds them as its observer).
  auto metrics = std::make_shared<specmoe::server::Metrics>();
  specmoe::server::MetricsHttpServer metrics_http(metrics.get());
  if (!options.metrics_listen.empty()) {
    if (absl::Status status = metrics_http.Start(options.metrics_listen, *metrics_key);
        !status.ok()) {
      spdlog::error("{}", std::string(status.message()));
      return 1;
    }
    spdlog::info("metrics listening on {} (port {}) at /metrics{}", options.metrics_listen,
                 metrics_http.port(), metrics_key->empty() ? "" : " with an API key");
  }
  specmoe::server::CompletionService service(
      *api_key, metrics.get(), std::chrono::seconds(options.stream_stall_seconds));
  if (!api_key->empty() && options.tls_cert.empty() && !IsLoopback(options.listen)) {
    spdlog::warn("--api-key-file without TLS on {}: the key crosses the network in clear "
                 "text (give --tls-cert/--tls-key, or listen on a loopback address)",
                 options.listen);
  }

  // The HTTP front, when asked: up before the models load (its /health says 503 meanwhile).
  std::unique_ptr<specmoe::server::OpenAiHttpServer> http;
  if (!options.http_listen.empty()) {
    specmoe::server::HttpServerConfig http_config;
    http_config.listen = options.http_listen;
    http_config.api_key = *api_key;
    http_config.tls_cert = options.tls_cert;
    http_config.tls_key = options.tls_key;
    http_config.tls_client_ca = options.tls_client_ca;
    http_config.threads = options.http_threads > 0
                              ? options.http_threads
                              : options.max_batch + options.max_queue + 8;
    http_config.max_body_bytes = static_cast<size_t>(options.max_message_bytes);
    http_config.stream_stall_limit = std::chrono::seconds(options.stream_stall_seconds);
    if (!options.chat_template_file.empty()) {
      absl::StatusOr<specmoe::server::CustomChatTemplate> custom =
          specmoe::server::LoadChatTemplateFile(options.chat_template_file);
      if (!custom.ok()) {
        spdlog::error("{}", std::string(custom.status().message()));
        return 1;
      }
      http_config.custom_chat_template = *std::move(custom);
    } else if (options.chat_template == "auto") {
      const specmoe::server::DetectedChatTemplate detected =
          specmoe::server::DetectChatTemplate(options.target_dir);
      if (!detected.warning.empty()) spdlog::warn("{}", detected.warning);
      http_config.chat_template = detected.chat_template;
    } else {
      http_config.chat_template =
          *specmoe::server::ParseChatTemplateName(options.chat_template);  // flag-checked
    }
    http = std::make_unique<specmoe::server::OpenAiHttpServer>(http_config, metrics.get());
    if (absl::Status status = http->Start(); !status.ok()) {
      spdlog::error("{}", std::string(status.message()));
      return 1;
    }
    spdlog::info("HTTP (OpenAI API) listening on {} (port {}){}; chat template {}; {} threads",
                 options.http_listen.find(':') == std::string::npos
                     ? "127.0.0.1:" + options.http_listen
                     : options.http_listen,
                 http->port(), options.tls_cert.empty() ? "" : " with TLS",
                 http_config.custom_chat_template.has_value()
                     ? http_config.custom_chat_template->path
                     : specmoe::server::ChatTemplateName(http_config.chat_template),
                 http_config.threads);
    if (!api_key->empty() && options.tls_cert.empty() && !IsLoopback(options.http_listen) &&
        options.http_listen.find(':') != std::string::npos) {
      spdlog::warn("--api-key-file without TLS on {}: the key crosses the network in clear "
                   "text", options.http_listen);
    }
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(specmoe::server::MakeReflectionAuthInterceptorFactory(*api_key));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  int port = 0;
  builder.AddListeningPort(options.listen, *credentials, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    spdlog::error("cannot listen on {}", options.listen);
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus("", false);
  health->SetServingStatus(kServiceName, false);
  spdlog::info("listening on {} (port {}){}; loading models", options.listen, port,
               options.tls_cert.empty() ? "" : " with TLS");
  if (!options.port_file.empty()) {
    if (absl::Status status = WritePortFile(options.port_file, port); !status.ok()) {
      spdlog::error("{}", status.ToString());
      server->Shutdown();
      return 1;
    }
  }

  // Load on another thread so a signal during loading is still answered by a drain.
  std::shared_ptr<specmoe::engine::Engine> engine;
  std::atomic<bool> loader_done{false};
  std::thread loader([&] {
    const auto start = std::chrono::steady_clock::now();
    specmoe::engine::EngineOptions engine_options = specmoe::server::ToEngineOptions(options);
    engine_options.observer = metrics;
    absl::StatusOr<std::unique_ptr<specmoe::engine::Engine>> created =
        specmoe::engine::Engine::Create(engine_options);
    if (!created.ok()) {
      spdlog::error("cannot load the models: {}", created.status().ToString());
      loader_done.store(true);
      stop_state.Stop(1);
      return;
    }
    engine = *std::move(created);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    service.SetEngine(engine);
    if (http != nullptr) http->SetEngine(engine);
    metrics->SetEngine(engine);
    loader_done.store(true);
    {
      std::lock_guard<std::mutex> lock(stop_state.mu);
      if (stop_state.stop) return;  // draining already: stay NOT_SERVING
      health->SetServingStatus("", true);
      health->SetServingStatus(kServiceName, true);
    }
    spdlog::info(
        "serving: target {}{}{} on {}, vocab {}, context {}; max batch {}, {} tokens per step, "
        "{} trees (loaded in {:.1f} s)",
        engine->target_name(), engine->draft_name().empty() ? "" : ", draft ",
        engine->draft_name(), engine->device(), engine->vocab_size(), engine->max_context(),
        options.max_batch, options.max_step_tokens, options.tree_policy, seconds);
  });

  int exit_code = 0;
  {
    std::unique_lock<std::mutex> lock(stop_state.mu);
    stop_state.cv.wait(lock, [] { return stop_state.stop; });
    exit_code = stop_state.exit_code;
    // NOT_SERVING from now on, for every service name; the listener stays open through the
    // grace period so that probes see it, while new Completion calls get UNAVAILABLE.
    health->SetServingStatus("", false);
    health->SetServingStatus(kServiceName, false);
  }
  service.StartDraining();
  if (http != nullptr) http->StartDraining();
  auto active_calls = [&] {
    return service.active_calls() + (http != nullptr ? http->active_calls() : 0);
  };
  const auto drain_end =
      std::chrono::steady_clock::now() + std::chrono::seconds(options.drain_seconds);
  const int in_flight = active_calls();
  while (active_calls() > 0 && std::chrono::steady_clock::now() < drain_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  spdlog::info("drain: {} call(s) were in flight, {} still are; closing",
               in_flight, active_calls());
  health->Shutdown();
  // Every generation call has ended (or the grace period is over): cancel whatever is left
  // (health and reflection calls) at once.
  server->Shutdown(std::chrono::system_clock::now());
  if (!loader_done.load()) {
    // Stopped while Engine::Create is still reading the models: nothing is in flight, and
    // waiting for a large model to finish loading would only delay the exit.
    spdlog::info("stopped while loading the models");
    spdlog::shutdown();
    std::_Exit(exit_code);
  }
  loader.join();
  if (http != nullptr) http->Stop();  // after the drain: streams still open are cut
  server.reset();
  metrics_http.Stop();
  metrics->SetEngine(nullptr);
  engine.reset();
  spdlog::info("stopped");
  return exit_code;
}
