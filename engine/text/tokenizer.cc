// engine/text/tokenizer.cc — SentencePiece or byte-level BPE behind one interface, and the
// incremental detokenizer (engine/README.md, Tokenizer).
//
// Encode/Decode follow SentencePiece exactly (LLaMA's tokenizer.model: dummy-prefix space,
// byte fallback). The incremental detokenizer follows the windowed scheme of Hugging Face
// TGI / vLLM: decode a short window of recent ids with and without the newest tokens and
// emit the difference, holding byte-fallback tokens until their UTF-8 character is complete.
// Tested by tests/tokenizer_test.cc.
#include "engine/text/tokenizer.h"

// Debian's sentencepiece_processor.h declares `namespace absl { using std::string_view; }`,
// which makes absl::string_view ambiguous next to Abseil's own. Rename its shim namespace;
// the declarations still name std::string_view, so the ABI is unchanged.
#define absl specmoe_sentencepiece_absl_shim
#include <sentencepiece_processor.h>
#undef absl

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/text/bpe_tokenizer.h"

namespace specmoe::engine {
namespace {

// Prompt tokens decoded in front of the first generated token: enough for the decoder to see
// that the generated text does not start the sequence (so a leading space is kept).
constexpr size_t kContextTokens = 4;

// The byte of a byte-fallback piece "<0xHH>", or -1 for any other piece.
int ByteOfPiece(const std::string& piece) {
  if (piece.size() != 6 || piece[0] != '<' || piece[1] != '0' || piece[2] != 'x' ||
      piece[5] != '>') {
    return -1;
  }
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(piece[3]);
  const int lo = hex(piece[4]);
  if (hi < 0 || lo < 0) return -1;
  return hi * 16 + lo;
}

// Total length of the UTF-8 sequence that `lead` starts; 0 for a continuation byte
// (10xxxxxx) or an invalid lead.
int Utf8SequenceLength(int lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 0;
}

// True when ids[pending_start..] ends with byte-fallback tokens that start a UTF-8 character
// without completing it (a lead byte followed by fewer continuation bytes than it needs).
// Orphan continuation bytes are not pending: they are invalid and decode to U+FFFD.
bool SentencePieceEndsInsideCharacter(const Tokenizer& tokenizer,
                                      const std::vector<int32_t>& ids, size_t pending_start) {
  int continuation = 0;
  for (size_t i = ids.size(); i > pending_start && continuation <= 3; --i) {
    const int byte = ByteOfPiece(tokenizer.piece(ids[i - 1]));
    if (byte < 0) return false;  // a normal piece ends the run: nothing is pending
    const int length = Utf8SequenceLength(byte);
    if (length == 0) {
      ++continuation;
      continue;
    }
    return continuation + 1 < length;
  }
  return false;
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  const std::filesystem::path path = dir / "tokenizer.model";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    const std::filesystem::path json = dir / "tokenizer.json";
    if (!std::filesystem::is_regular_file(json, ec)) {
      return absl::NotFoundError(absl::StrCat(
          path.string(), " (SentencePiece) not found, nor ", json.string(),
          " (byte-level BPE): the model folder needs one of them"));
    }
    absl::StatusOr<std::unique_ptr<BpeTokenizer>> bpe =
        BpeTokenizer::Load(json.string(), (dir / "tokenizer_config.json").string());
    if (!bpe.ok()) return bpe.status();
    if ((*bpe)->vocab_size() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(json.string(), ": empty vocabulary"));
    }
    std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
    tokenizer->bpe_ = *std::move(bpe);
    return tokenizer;
  }
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  tokenizer->sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const sentencepiece::util::Status status = tokenizer->sp_->Load(path.string());
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(), ": not a valid SentencePiece model: ", status.ToString()));
  }
  if (tokenizer->sp_->GetPieceSize() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": empty vocabulary"));
  }
  return tokenizer;
}

absl::Status Tokenizer::CheckText(std::string_view text) const {
  return bpe_ != nullptr ? CheckUtf8(text) : absl::OkStatus();
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  if (bpe_ != nullptr) return bpe_->Encode(text, add_bos);
  std::vector<int> ids;
  sp_->Encode(text, &ids).IgnoreError();  // Encoding never fails on a loaded model.
  std::vector<int32_t> out;
  out.reserve(ids.size() + 1);
  if (add_bos && bos_id() >= 0) out.push_back(bos_id());
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

std::optional<std::vector<int32_t>> Tokenizer::EncodeAtMost(std::string_view text, bool add_bos,
                                                            size_t max_tokens) const {
  // A cut changes the count by a few tokens at most (the piece's dummy-prefix space, a merge
  // lost across the cut); kCutMargin per cut keeps the early exit on the safe side.
  constexpr size_t kPieceBytes = 4096;
  constexpr size_t kCutMargin = 4;
  if (text.size() > kPieceBytes) {
    size_t count = add_bos ? 1 : 0;
    size_t cuts = 0;
    std::vector<int> ids;
    for (size_t start = 0; start < text.size();) {
      size_t end = std::min(text.size(), start + kPieceBytes);
      if (end < text.size()) {
        const size_t space = text.rfind(' ', end);
        if (space != std::string_view::npos && space > start) end = space;
        while (end > start + 1 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
        ++cuts;
      }
      const std::string_view part = text.substr(start, end - start);
      if (bpe_ != nullptr) {
        count += bpe_->Encode(part, false).size();
      } else {
        sp_->Encode(part, &ids).IgnoreError();
        count += ids.size();
      }
      if (count > max_tokens + kCutMargin * cuts) return std::nullopt;
      start = end;
    }
  }
  std::vector<int32_t> ids = Encode(text, add_bos);
  if (ids.size() > max_tokens) return std::nullopt;
  return ids;
}

std::vector<std::string> Tokenizer::EncodePieces(std::string_view text) const {
  if (bpe_ != nullptr) return bpe_->EncodePieces(text);
  std::vector<std::string> pieces;
  sp_->Encode(text, &pieces).IgnoreError();
  return pieces;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  if (bpe_ != nullptr) return bpe_->Decode(ids);
  // Ids outside the vocabulary have no text; SentencePiece would reject the whole sequence.
  const int size = vocab_size();
  std::vector<int> valid;
  valid.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < size) valid.push_back(id);
  }
  std::string text;
  sp_->Decode(valid, &text).IgnoreError();
  return text;
}

int Tokenizer::vocab_size() const {
  return bpe_ != nullptr ? bpe_->vocab_size() : sp_->GetPieceSize();
}
int Tokenizer::bos_id() const { return bpe_ != nullptr ? bpe_->bos_id() : sp_->bos_id(); }
int Tokenizer::eos_id() const { return bpe_ != nullptr ? bpe_->eos_id() : sp_->eos_id(); }
const char* Tokenizer::source() const {
  return bpe_ != nullptr ? "tokenizer.json" : "tokenizer.model";
}

std::string Tokenizer::piece(int id) const {
  if (id < 0 || id >= vocab_size()) return std::string();
  return bpe_ != nullptr ? bpe_->piece(id) : sp_->IdToPiece(id);
}

std::string Tokenizer::TokenBytes(int id) const {
  if (id < 0 || id >= vocab_size()) return std::string();
  if (bpe_ != nullptr) return bpe_->DecodeBytes({id});
  if (sp_->IsControl(id)) return std::string();
  const std::string text = sp_->IdToPiece(id);
  if (sp_->IsByte(id)) {
    const int byte = ByteOfPiece(text);
    if (byte >= 0) return std::string(1, static_cast<char>(byte));
  }
  return absl::StrReplaceAll(text, {{"\xE2\x96\x81", " "}});
}

bool Tokenizer::EndsInsideCharacter(const std::vector<int32_t>& ids,
                                    size_t pending_start) const {
  if (bpe_ == nullptr) return SentencePieceEndsInsideCharacter(*this, ids, pending_start);
  return EndsInsideUtf8Character(bpe_->DecodeBytes(
      std::vector<int32_t>(ids.begin() + std::min(pending_start, ids.size()), ids.end())));
}

std::vector<std::string> Tokenizer::pieces() const {
  if (bpe_ != nullptr) return bpe_->pieces();
  const int size = vocab_size();
  std::vector<std::string> out;
  out.reserve(size);
  for (int id = 0; id < size; ++id) out.push_back(sp_->IdToPiece(id));
  return out;
}

// State: ids_ = [context | pending]. The first prefix_len_ ids are context whose text was
// already emitted (or is the prompt's); the rest are pending (held because they end inside a
// UTF-8 character). Each Add decodes the context with and without the new ids and emits the
// difference, so a leading space is kept exactly when the whole sequence would keep it
// (SentencePiece strips the dummy-prefix space only at the very start of a decode, in both).
// After emitting, the context shrinks to the tokens just emitted (at most 4: one token plus
// held bytes), so a call costs O(1) in the sequence length.
IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer* tokenizer,
                                               std::vector<int32_t> prefix)
    : tokenizer_(tokenizer) {
  const size_t keep = std::min(prefix.size(), kContextTokens);
  ids_.assign(prefix.end() - keep, prefix.end());
  prefix_len_ = ids_.size();
}

std::string IncrementalDetokenizer::Add(int32_t id) {
  ids_.push_back(id);
  if (tokenizer_->EndsInsideCharacter(ids_, prefix_len_)) return std::string();

  const std::string before =
      tokenizer_->Decode(std::vector<int32_t>(ids_.begin(), ids_.begin() + prefix_len_));
  const std::string after = tokenizer_->Decode(ids_);
  // `before` is a prefix of `after` because the context ends on a character boundary; the
  // comparison only matters for a prompt that itself ends inside a character.
  size_t common = 0;
  while (common < before.size() && common < after.size() && before[common] == after[common]) {
    ++common;
  }
  std::string delta = after.substr(common);

  // The tokens just emitted become the next call's context.
  ids_.erase(ids_.begin(), ids_.begin() + prefix_len_);
  prefix_len_ = ids_.size();
  text_ += delta;
  return delta;
}

}  // namespace specmoe::engine
