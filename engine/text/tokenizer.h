// engine/text/tokenizer.h — a model folder's tokenizer: SentencePiece (tokenizer.model, LLaMA
// conventions: <unk>=0, <s>=1, </s>=2, byte fallback) or a Hugging Face byte-level BPE
// (tokenizer.json, engine/text/bpe_tokenizer.h), and incremental detokenization for streaming.
// Tested by tests/tokenizer_test.cc and tests/bpe_exact_test.py.
#ifndef SPECMOE_ENGINE_TEXT_TOKENIZER_H_
#define SPECMOE_ENGINE_TEXT_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace specmoe::engine {

class BpeTokenizer;

// Immutable after Load(); thread-safe for concurrent Encode/Decode.
class Tokenizer {
 public:
  // Loads `<model_dir>/tokenizer.model` when present, else `<model_dir>/tokenizer.json`
  // (with tokenizer_config.json's eos_token). NotFound when the folder has neither.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);
  ~Tokenizer();

  // OK when `text` can be encoded; a tokenizer.json model refuses invalid UTF-8 (naming the
  // offset of the first bad byte). SentencePiece accepts any bytes.
  absl::Status CheckText(std::string_view text) const;
  // Token ids of `text`, with BOS first when add_bos (and the tokenizer has one).
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;
  // Encode, but gives up (nullopt) once the text is known to have more than `max_tokens`
  // tokens (BOS counted): a long text is first encoded in ~4 KiB pieces cut at spaces, and
  // the work stops as soon as their count, less a margin per cut, passes max_tokens. A text
  // that fits is always encoded whole, so the ids equal Encode's.
  std::optional<std::vector<int32_t>> EncodeAtMost(std::string_view text, bool add_bos,
                                                   size_t max_tokens) const;
  // The pieces of `text` (for the Tokenize RPC).
  std::vector<std::string> EncodePieces(std::string_view text) const;
  // Text of `ids` (as SentencePiece decodes a whole sequence).
  std::string Decode(const std::vector<int32_t>& ids) const;

  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  std::string piece(int id) const;
  // The bytes token `id` contributes inside a decoded text (SentencePiece: the piece with
  // U+2581 as a space, a byte-fallback piece as its one byte; byte-level BPE: its bytes).
  // Not always valid UTF-8 on its own; empty for control/special tokens and ids outside the
  // vocabulary. For the OpenAI API's per-token logprobs (server/openai_api.h).
  std::string TokenBytes(int id) const;
  // All pieces in id order (compared between draft and target, engine/README.md, Tokenizer).
  std::vector<std::string> pieces() const;
  // Which file the vocabulary came from: "tokenizer.model" or "tokenizer.json".
  const char* source() const;
  // True when ids[pending_start..] ends in the middle of a UTF-8 character (the detokenizer
  // holds such tokens until the character is complete).
  bool EndsInsideCharacter(const std::vector<int32_t>& ids, size_t pending_start) const;

 private:
  Tokenizer();
  // Exactly one of the two is set.
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::unique_ptr<BpeTokenizer> bpe_;
};

// Turns a stream of generated token ids into text deltas that never split a UTF-8 character
// and that concatenate to Decode(all ids) (byte-fallback pieces such as <0xE2> are held until
// their character is complete). Not thread-safe; one per request.
class IncrementalDetokenizer {
 public:
  // `prefix` are tokens already seen (the prompt), used for leading-space handling.
  IncrementalDetokenizer(const Tokenizer* tokenizer, std::vector<int32_t> prefix);
  // Appends one token and returns the newly completed text (possibly empty).
  std::string Add(int32_t id);
  // The text decoded so far (all deltas concatenated).
  const std::string& text() const { return text_; }

 private:
  const Tokenizer* tokenizer_;
  std::vector<int32_t> ids_;
  size_t prefix_len_;
  std::string text_;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_TEXT_TOKENIZER_H_
