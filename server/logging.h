// server/logging.h — spdlog set-up for specmoe-server: text lines or one JSON object per
// line (for log collectors), at a chosen level. Tested by tests/server_e2e_test.cc, which
// reads the server's log.
#ifndef SPECMOE_SERVER_LOGGING_H_
#define SPECMOE_SERVER_LOGGING_H_

#include <string>
#include <vector>

namespace specmoe::server {

// format "text" or "json"; level one of spdlog's names (trace ... off). Logs go to stderr.
// Call once, from main, before other threads start.
void ConfigureLogging(const std::string& format, const std::string& level);

// What the one line per finished or refused request carries (DESIGN §7).
struct RequestLogLine {
  std::string request_id;  // empty for a request refused before it got one
  std::string rpc;
  std::string peer;        // gRPC's peer string, e.g. ipv4:127.0.0.1:40000
  std::string status;      // gRPC code name, e.g. OK, INVALID_ARGUMENT
  std::string error;       // the status message when not OK
  bool refused = false;    // refused before generation (validation, auth, queue, draining)
  // Generation requests only:
  int prompt_tokens = 0;
  int completion_tokens = 0;
  std::string finish;      // length, stop, eos, cancelled
  double duration_ms = 0;
  double ttft_ms = -1;     // < 0: no token was generated
  double tokens_per_s = 0;
  int verify_steps = 0;
  int drafted_tokens = 0;
  int accepted_tokens = 0;
  double mean_tokens_per_step = 0;
  std::vector<float> acceptance_by_depth;
};

// Writes the line: in JSON format every field is a key of its own in the line's object
// (next to time, level, thread, msg); in text format key=value pairs. OK lines are info,
// others warn.
void LogRequest(const RequestLogLine& line);

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_LOGGING_H_
