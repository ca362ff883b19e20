// engine/text/bpe_tokenizer.h — the byte-level BPE of a Hugging Face tokenizer.json (GPT-2,
// LLaMA-3, SmolLM): added tokens matched first, then the pre-tokenizer (Split regexes via
// PCRE2, Digits, ByteLevel), the byte-to-unicode mapping, merges by rank; decoding maps the
// characters back to bytes. Exact against the `tokenizers` Python package
// (tests/bpe_exact_test.py).
#ifndef SPECMOE_ENGINE_TEXT_BPE_TOKENIZER_H_
#define SPECMOE_ENGINE_TEXT_BPE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace specmoe::engine {

// OK for well-formed UTF-8; otherwise InvalidArgument naming the first bad byte's offset.
absl::Status CheckUtf8(std::string_view text);
// `bytes` as UTF-8 with each maximal invalid subsequence replaced by U+FFFD (as Rust's
// String::from_utf8_lossy and Python's errors="replace" do).
std::string LossyUtf8(std::string_view bytes);
// True when `bytes` ends with the start of a UTF-8 character that more bytes could still
// complete (a lead byte and fewer continuation bytes than it needs, all valid so far).
bool EndsInsideUtf8Character(std::string_view bytes);

// One pre-tokenizer step (a Split regex, Digits, or the ByteLevel GPT-2 regex).
struct PreTokenizerStep;

// Immutable after Load(); thread-safe for concurrent use (each call has its own PCRE2 match
// data).
class BpeTokenizer {
 public:
  // Parses `path` (tokenizer.json); `config_path` (tokenizer_config.json, may be absent)
  // names the EOS token. Unsupported features (another model type, a normalizer, a
  // pre-tokenizer or split behaviour other than those above) are refused by name.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Load(const std::string& path,
                                                            const std::string& config_path);
  ~BpeTokenizer();

  // Token ids of `text` (invalid UTF-8 is first replaced by U+FFFD; CheckUtf8 refuses it),
  // with the post-processor's leading special token first when add_bos.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;
  // The token strings of Encode(text, false).
  std::vector<std::string> EncodePieces(std::string_view text) const;
  // Text of `ids`; special added tokens and unknown ids are skipped.
  std::string Decode(const std::vector<int32_t>& ids) const;
  // The raw bytes of `ids` before the UTF-8 repair of Decode.
  std::string DecodeBytes(const std::vector<int32_t>& ids) const;

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  // The token string of `id` ("" for a gap or an id out of range).
  const std::string& piece(int id) const;
  const std::vector<std::string>& pieces() const { return pieces_; }

 private:
  struct AddedToken {
    std::string content;
    int32_t id = 0;
    bool special = false;
    bool lstrip = false;
    bool rstrip = false;
  };
  // A stretch of the input: an added token (id >= 0) or text for the BPE (id < 0).
  struct Segment {
    std::string_view text;
    int32_t id = -1;
  };

  BpeTokenizer();
  absl::Status ParseModel(const void* json);
  absl::Status ParseAddedTokens(const void* json);
  absl::Status ParsePreTokenizer(const void* json);
  absl::Status ParsePostProcessor(const void* json);
  // Splits `segments`' text parts on the added tokens of one pass.
  void SplitOnAddedTokens(const std::vector<const AddedToken*>& tokens,
                          std::vector<Segment>& segments) const;
  // The BPE of one pre-tokenized word (bytes already mapped to characters).
  void EncodeWord(const std::string& word, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  // (left id << 32 | right id) -> (rank, merged id).
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  std::vector<AddedToken> added_;
  // The two matching passes of the added tokens (not normalized first, then normalized).
  std::vector<const AddedToken*> raw_pass_, normalized_pass_;
  std::vector<std::string> pieces_;
  std::vector<bool> special_;
  std::vector<std::unique_ptr<PreTokenizerStep>> steps_;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  int32_t unk_id_ = -1;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  std::array<std::string, 256> byte_chars_;           // byte -> its character (UTF-8)
  std::unordered_map<uint32_t, uint8_t> char_bytes_;  // character code point -> byte
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_TEXT_BPE_TOKENIZER_H_
