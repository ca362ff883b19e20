// tests/logging_test.cc — server/logging.h: text lines escape control characters (no log
// injection through a request id), JSON lines stay valid JSON for invalid UTF-8 and carry
// the request id as a field of its own.
#include "server/logging.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

namespace specmoe::server {
namespace {

using ::testing::HasSubstr;

TEST(LoggingTest, EscapeControlEscapesEveryControlCharacter) {
  EXPECT_EQ(EscapeControl("plain text"), "plain text");
  EXPECT_EQ(EscapeControl("a\nb\r\tc\\d"), "a\\nb\\r\\tc\\\\d");
  EXPECT_EQ(EscapeControl("\x1b[31mred\x7f"), "\\x1b[31mred\\x7f");
  EXPECT_EQ(EscapeControl("caf\xc3\xa9"), "caf\xc3\xa9");  // UTF-8 is kept
}

TEST(LoggingTest, ATextLineCannotBeForgedThroughTheRequestId) {
  const std::string forged = "x\n2026-01-01T00:00:00.000Z I request admin finish=ok\x1b[2K";
  const std::string line = FormatForTest("text", forged, "rpc=Complete finish=stop");
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.find('\n'), line.size() - 1) << line;  // one line, ended by the sink
  EXPECT_EQ(line.find('\x1b'), std::string::npos) << line;
  EXPECT_THAT(line, HasSubstr("request x\\n2026-01-01"));
  EXPECT_THAT(line, HasSubstr("\\x1b[2K rpc=Complete finish=stop"));
}

TEST(LoggingTest, JsonLinesAreValidForInvalidUtf8AndCarryTheRequestId) {
  const std::string id = "bad-\xff\xfe-id\n";
  const std::string line = FormatForTest("json", id, "rpc=Complete text \xc3 cut");
  ASSERT_TRUE(nlohmann::json::accept(line)) << line;
  const nlohmann::json parsed = nlohmann::json::parse(line);
  EXPECT_EQ(parsed["request_id"], "bad-\xef\xbf\xbd\xef\xbf\xbd-id\n");  // U+FFFD replacements
  EXPECT_EQ(parsed["msg"], "rpc=Complete text \xef\xbf\xbd cut");
  EXPECT_EQ(parsed["level"], "info");
  const nlohmann::json plain = nlohmann::json::parse(FormatForTest("json", "", "listening"));
  EXPECT_FALSE(plain.contains("request_id"));
  EXPECT_EQ(plain["msg"], "listening");
}

}  // namespace
}  // namespace specmoe::server
