// tests/server_child.h — the real specmoe-server as a child process of an e2e test
// (tests/server_e2e_test.cc, tests/soak_e2e_test.cc): its output goes to a log file in a
// temporary folder of its own, its port comes back through --port-file, and it is killed
// when the test lets go of it.
#ifndef SPECMOE_TESTS_SERVER_CHILD_H_
#define SPECMOE_TESTS_SERVER_CHILD_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace specmoe {

// A file's whole contents ("" when it cannot be read).
std::string ReadAll(const std::string& path);

// Contract: one child process per object, started by the constructor; the destructor kills
// it if it still runs (also a stopped one) and removes its folder. Not thread-safe.
class ServerChild {
 public:
  // Runs `args` (args[0]: the binary) with "--port-file <folder>/port" appended; `name`
  // tells the temporary folders of several suites apart.
  ServerChild(const std::string& name, std::vector<std::string> args);
  ~ServerChild();
  ServerChild(const ServerChild&) = delete;
  ServerChild& operator=(const ServerChild&) = delete;

  // Waits for the port file; false if the server exited first or took over `seconds`.
  bool WaitForPort(int seconds = 60);
  // Waits for the exit (after a signal): its exit code, -1 if it did not exit normally within
  // `seconds`.
  int WaitExit(int seconds = 120);
  // SIGTERM, then WaitExit(60).
  int Terminate();

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string log() const { return ReadAll(log_file_); }
  // The metrics port, from the log line "metrics listening on ... (port N)"; 0 without one.
  int metrics_port() const;
  // Resident memory in KiB (VmRSS); -1 when unknown.
  long rss_kib() const;

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string dir_;
  std::string port_file_;
  std::string log_file_;
};

}  // namespace specmoe

#endif  // SPECMOE_TESTS_SERVER_CHILD_H_
