// tests/server_child.cc — the specmoe-server child process of the e2e tests (server_child.h).
#include "tests/server_child.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace specmoe {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

ServerChild::ServerChild(const std::string& name, std::vector<std::string> args) {
  static int instance = 0;
  dir_ = ::testing::TempDir() + "/specmoe_" + name + "_" + std::to_string(getpid()) + "_" +
         std::to_string(++instance);
  std::filesystem::create_directories(dir_);
  port_file_ = dir_ + "/port";
  log_file_ = dir_ + "/server.log";
  args.push_back("--port-file");
  args.push_back(port_file_);
  pid_ = fork();
  if (pid_ == 0) {
    const int fd = open(log_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
}

ServerChild::~ServerChild() {
  if (pid_ > 0) {
    kill(pid_, SIGCONT);
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

bool ServerChild::WaitForPort(int seconds) {
  if (pid_ <= 0) return false;
  for (int i = 0; i < seconds * 100; ++i) {
    // The server writes the file once; an empty one is still being written.
    if (std::filesystem::exists(port_file_)) {
      const std::string text = ReadAll(port_file_);
      if (!text.empty()) {
        port_ = std::stoi(text);
        return true;
      }
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

int ServerChild::WaitExit(int seconds) {
  if (pid_ <= 0) return -1;  // never started, or already reaped
  for (int i = 0; i < seconds * 100; ++i) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

int ServerChild::Terminate() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  return WaitExit(60);
}

int ServerChild::metrics_port() const {
  const std::string text = log();
  const size_t at = text.find("metrics listening on");
  if (at == std::string::npos) return 0;
  const size_t port = text.find("(port ", at);
  return port == std::string::npos ? 0 : std::stoi(text.substr(port + 6));
}

long ServerChild::rss_kib() const {
  std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

}  // namespace specmoe
