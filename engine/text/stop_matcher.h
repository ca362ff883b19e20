// engine/text/stop_matcher.h — stop strings over streamed text (engine/README.md, The step, g: the
// output is cut at the first stop string, which is not itself emitted, as in vLLM / OpenAI).
//
// The caller feeds the detokenized text deltas in order (one per token, so it knows which
// token completed a stop string). A stop string may span several deltas, so text that
// could still become the start of a stop string is held back; everything before it is
// safe to stream at once. The result does not depend on how the text was split into
// deltas. Tested in tests/stop_matcher_test.cc.
#ifndef SPECMOE_ENGINE_TEXT_STOP_MATCHER_H_
#define SPECMOE_ENGINE_TEXT_STOP_MATCHER_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace specmoe::engine {

// One request's matcher. Holds the pending (not yet emitted) text, which is always shorter
// than the longest stop string. Not thread-safe; Push costs O(pending + delta) per stop
// string.
class StopMatcher {
 public:
  // Empty stop strings are ignored (they would match before any text).
  explicit StopMatcher(std::vector<std::string> stops);

  struct Result {
    // Text safe to emit now, in order after everything emitted before. When `stopped`, it
    // ends right before the stop string (the stop string and anything after it are
    // dropped); the matcher then ignores further input.
    std::string emit;
    bool stopped = false;
  };

  // Appends `delta` to the pending text. Stop-string semantics: the match that COMPLETES
  // earliest in the text wins (the first one a reader of the stream sees); among matches
  // ending at the same byte the one starting earliest. Otherwise holds back the longest
  // suffix of the pending text that is a proper prefix of some stop string and emits the
  // rest. Since stop strings and deltas are whole UTF-8 characters, every cut falls on a
  // character boundary.
  Result Push(std::string_view delta);

  // Bytes of the pending text currently held back.
  size_t pending_size() const { return pending_.size(); }

  // At the end of generation without a stop string (EOS, max_tokens): returns the
  // held-back text, which is no longer a possible stop string, and clears it.
  std::string Flush();

  bool stopped() const { return stopped_; }
  bool empty() const { return stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_TEXT_STOP_MATCHER_H_
