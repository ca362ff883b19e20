// tests/bpe_exact_check.cc — checks engine::Tokenizer on a tokenizer.json folder against cases
// whose expected values come from the Hugging Face `tokenizers` package (written by
// tests/bpe_exact_test.py, which runs this program). Usage:
//   bpe_exact_check <cases.json>
// cases.json: {"dir": <model folder>, "bos": <id or -1>,
//              "encode": [{"hex": <text bytes>, "ids": [...] | null (invalid UTF-8),
//                          "bos_ids": [...] (optional), "decoded": <text>}...],
//              "decode": [{"ids": [...], "decoded": <text>}...]}
// Every encode case is also streamed through the IncrementalDetokenizer: each delta must be
// whole UTF-8 and the deltas must concatenate to the decoded text. Exit status 1 on any
// mismatch (the first few are printed), 0 when every case agrees.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_join.h"
#include "engine/text/bpe_tokenizer.h"
#include "engine/text/tokenizer.h"

namespace specmoe::engine {
namespace {

// Streams `ids` through an IncrementalDetokenizer and returns the deltas joined. Each delta
// must be whole UTF-8, and (for up to 64 ids) whenever the text of the ids so far is a prefix
// of `whole` (Decode of all ids) and does not end in U+FFFD (bytes that a later token might
// still complete), nothing may be held back: the deltas so far equal it.
template <typename Fail>
std::string Stream(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                   const std::string& whole, const std::string& shown, Fail& fail) {
  IncrementalDetokenizer detokenizer(&tokenizer, {});
  std::string joined;
  for (size_t k = 0; k < ids.size(); ++k) {
    const std::string delta = detokenizer.Add(ids[k]);
    if (!CheckUtf8(delta).ok()) fail("stream delta splits a character in '" + shown + "'");
    joined += delta;
    if (ids.size() <= 64) {
      const std::string so_far =
          tokenizer.Decode(std::vector<int32_t>(ids.begin(), ids.begin() + k + 1));
      const bool ends_replaced =
          so_far.size() >= 3 && so_far.compare(so_far.size() - 3, 3, "\xEF\xBF\xBD") == 0;
      if (!ends_replaced && whole.compare(0, so_far.size(), so_far) == 0 && joined != so_far) {
        fail("stream of '" + shown + "' holds text back after token " + std::to_string(k) + ": '" +
             absl::CHexEscape(joined) + "' vs '" + absl::CHexEscape(so_far) + "'");
      }
    }
  }
  return joined;
}

int Main(const std::string& cases_path) {
  std::ifstream in(cases_path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const nlohmann::json cases = nlohmann::json::parse(buffer.str());
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded =
      Tokenizer::Load(cases["dir"].get<std::string>());
  if (!loaded.ok()) {
    std::cerr << "load: " << loaded.status() << "\n";
    return 1;
  }
  const Tokenizer& tokenizer = **loaded;
  int failures = 0, checked = 0;
  auto fail = [&](const std::string& what) {
    if (++failures <= 10) std::cerr << "MISMATCH " << what << "\n";
  };
  if (tokenizer.bos_id() != cases["bos"].get<int>()) {
    fail("bos_id " + std::to_string(tokenizer.bos_id()));
  }
  for (const nlohmann::json& c : cases["encode"]) {
    const std::string text = absl::HexStringToBytes(c["hex"].get<std::string>());
    ++checked;
    const std::string shown = absl::CHexEscape(text);
    const absl::Status valid = tokenizer.CheckText(text);
    if (c["ids"].is_null()) {
      if (valid.ok()) fail("accepted invalid UTF-8 '" + shown + "'");
      continue;
    }
    if (!valid.ok()) {
      fail("refused '" + shown + "': " + std::string(valid.message()));
      continue;
    }
    const std::vector<int32_t> expected = c["ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> ids = tokenizer.Encode(text, false);
    if (ids != expected) {
      fail("encode '" + shown + "': got [" + absl::StrJoin(ids, ",") + "] want [" +
           absl::StrJoin(expected, ",") + "]");
    }
    if (c.contains("bos_ids") &&
        tokenizer.Encode(text, true) != c["bos_ids"].get<std::vector<int32_t>>()) {
      fail("encode with BOS '" + shown + "'");
    }
    const std::string decoded = c["decoded"].get<std::string>();
    if (tokenizer.Decode(expected) != decoded) {
      fail("decode of '" + shown + "': got '" + absl::CHexEscape(tokenizer.Decode(expected)) + "'");
    }
    const std::string joined = Stream(tokenizer, expected, decoded, shown, fail);
    if (joined != decoded)
      fail("stream of '" + shown + "': got '" + absl::CHexEscape(joined) + "'");
  }
  for (const nlohmann::json& c : cases["decode"]) {
    ++checked;
    const std::vector<int32_t> ids = c["ids"].get<std::vector<int32_t>>();
    const std::string got = tokenizer.Decode(ids);
    if (got != c["decoded"].get<std::string>()) {
      fail("decode [" + absl::StrJoin(ids, ",") + "]: got '" + absl::CHexEscape(got) + "' want '" +
           absl::CHexEscape(c["decoded"].get<std::string>()) + "'");
    }
    const std::string joined = Stream(tokenizer, ids, got, absl::StrJoin(ids, ","), fail);
    // Only an unfinished character at the very end may stay held (it decodes to U+FFFD).
    if (joined != got && !(got.compare(0, joined.size(), joined) == 0 && got.size() >= 3 &&
                           got.compare(got.size() - 3, 3, "\xEF\xBF\xBD") == 0)) {
      fail("stream of [" + absl::StrJoin(ids, ",") + "]: got '" + absl::CHexEscape(joined) +
           "' want '" + absl::CHexEscape(got) + "'");
    }
  }
  std::printf("%d cases checked, %d mismatches (%s)\n", checked, failures,
              cases["dir"].get<std::string>().c_str());
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace specmoe::engine

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: bpe_exact_check <cases.json>\n");
    return 2;
  }
  return specmoe::engine::Main(argv[1]);
}
