// tests/stop_matcher_test.cc — engine/text/stop_matcher.h: stop strings within and across
// deltas, the held-back text, the earliest-completion rule, UTF-8, and independence of how
// the text is split into deltas.
#include "engine/text/stop_matcher.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace specmoe::engine {
namespace {

// Feeds `deltas` in order; returns everything emitted (plus the flushed rest when no stop
// string matched) and whether it stopped.
std::pair<std::string, bool> Feed(const std::vector<std::string>& stops,
                                  const std::vector<std::string>& deltas) {
  StopMatcher matcher(stops);
  std::string out;
  for (const std::string& d : deltas) {
    StopMatcher::Result r = matcher.Push(d);
    out += r.emit;
    if (r.stopped) return {out, true};
  }
  return {out + matcher.Flush(), false};
}

TEST(StopMatcherTest, NoStopStringsPassesEverythingThrough) {
  StopMatcher matcher({});
  EXPECT_TRUE(matcher.empty());
  StopMatcher::Result r = matcher.Push("hello");
  EXPECT_EQ(r.emit, "hello");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(matcher.pending_size(), 0u);
}

TEST(StopMatcherTest, EmptyStopStringsAreIgnored) {
  StopMatcher matcher({"", ""});
  EXPECT_TRUE(matcher.empty());
  EXPECT_EQ(matcher.Push("abc").emit, "abc");
}

TEST(StopMatcherTest, StopInsideOneDelta) {
  StopMatcher matcher({"END"});
  StopMatcher::Result r = matcher.Push("abcENDxyz");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "abc");
  EXPECT_TRUE(matcher.stopped());
  // Input after the stop is ignored.
  r = matcher.Push("more");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
}

TEST(StopMatcherTest, HoldsBackAPossibleStartAndReleasesIt) {
  StopMatcher matcher({"END"});
  StopMatcher::Result r = matcher.Push("abcE");
  EXPECT_EQ(r.emit, "abc");
  EXPECT_EQ(matcher.pending_size(), 1u);
  r = matcher.Push("N");
  EXPECT_EQ(r.emit, "");
  EXPECT_EQ(matcher.pending_size(), 2u);
  r = matcher.Push("tering");  // "ENtering" is not "END": all of it goes out
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.emit, "ENtering");
  EXPECT_EQ(matcher.pending_size(), 0u);
}

TEST(StopMatcherTest, StopAcrossDeltas) {
  StopMatcher matcher({"\n\nUser:"});
  EXPECT_EQ(matcher.Push("Hi there.\n").emit, "Hi there.");
  EXPECT_EQ(matcher.Push("\nUs").emit, "");
  StopMatcher::Result r = matcher.Push("er: next");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
}

TEST(StopMatcherTest, HeldTextIsFlushedAtTheEnd) {
  StopMatcher matcher({"###"});
  EXPECT_EQ(matcher.Push("a##").emit, "a");
  EXPECT_EQ(matcher.Flush(), "##");
  EXPECT_EQ(matcher.pending_size(), 0u);
}

TEST(StopMatcherTest, EarliestCompletionWins) {
  // "bc" completes at byte 3, "abcd" only at byte 4: the cut is before "bc".
  EXPECT_EQ(Feed({"abcd", "bc"}, {"abcd"}), std::make_pair(std::string("a"), true));
  EXPECT_EQ(Feed({"abcd", "bc"}, {"a", "b", "c", "d"}), std::make_pair(std::string("a"), true));
  // Two strings ending at the same byte: the longer (earlier-starting) one is cut.
  EXPECT_EQ(Feed({"c", "bc"}, {"xabcx"}), std::make_pair(std::string("xa"), true));
  // Order in the stop list does not matter.
  EXPECT_EQ(Feed({"bc", "abcd"}, {"ab", "cd"}), std::make_pair(std::string("a"), true));
}

TEST(StopMatcherTest, OverlappingPrefixes) {
  // "aab" inside "aaab": the held suffix must move forward correctly.
  EXPECT_EQ(Feed({"aab"}, {"a", "a", "a", "b", "z"}), std::make_pair(std::string("a"), true));
  EXPECT_EQ(Feed({"aab"}, {"aa", "ac"}), std::make_pair(std::string("aaac"), false));
}

TEST(StopMatcherTest, Utf8StopStringsCutOnCharacterBoundaries) {
  // "é" is two bytes; "→" three. The stop string "→ fin" spans deltas.
  EXPECT_EQ(Feed({"\xE2\x86\x92 fin"}, {"caf\xC3\xA9 ", "\xE2\x86\x92", " f", "in!"}),
            std::make_pair(std::string("caf\xC3\xA9 "), true));
  StopMatcher matcher({"\xE2\x86\x92 fin"});
  StopMatcher::Result r = matcher.Push("caf\xC3\xA9 \xE2\x86\x92");
  EXPECT_EQ(r.emit, "caf\xC3\xA9 ");  // the arrow is held back whole
  EXPECT_EQ(matcher.pending_size(), 3u);
}

TEST(StopMatcherTest, SplittingDoesNotChangeTheResult) {
  const std::vector<std::string> stops = {"STOP", "TOPS", "xyx"};
  const std::vector<std::string> texts = {"abcSTOPdef",   "aSTOxyxTOPS", "xyTOPSTOP",
                                          "no stop here", "xyxyx",       "STSTOP"};
  for (const std::string& text : texts) {
    const auto whole = Feed(stops, {text});
    std::vector<std::string> bytes;
    for (char c : text) bytes.emplace_back(1, c);
    EXPECT_EQ(Feed(stops, bytes), whole) << text;
    for (size_t cut = 0; cut <= text.size(); ++cut) {
      EXPECT_EQ(Feed(stops, {text.substr(0, cut), text.substr(cut)}), whole) << text << " @" << cut;
    }
  }
  EXPECT_EQ(Feed(stops, {"aSTOxyxTOPS"}), std::make_pair(std::string("aSTO"), true));
  EXPECT_EQ(Feed(stops, {"xyTOPSTOP"}), std::make_pair(std::string("xy"), true));
  EXPECT_EQ(Feed(stops, {"no stop here"}), std::make_pair(std::string("no stop here"), false));
}

}  // namespace
}  // namespace specmoe::engine
