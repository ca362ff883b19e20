// server/logging.h — spdlog set-up for specmoe-server: text lines or one JSON object per
// line (for log collectors), at a chosen level. Tested by tests/server_e2e_test.cc, which
// reads the server's log.
#ifndef SPECMOE_SERVER_LOGGING_H_
#define SPECMOE_SERVER_LOGGING_H_

#include <string>

namespace specmoe::server {

// format "text" or "json"; level one of spdlog's names (trace ... off). Logs go to stderr.
// Call once, from main, before other threads start.
void ConfigureLogging(const std::string& format, const std::string& level);

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_LOGGING_H_
