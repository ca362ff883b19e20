// engine/text/bpe_tokenizer.cc — see bpe_tokenizer.h. Follows the Hugging Face `tokenizers`
// pipeline for byte-level BPE: added tokens (leftmost-longest, not-normalized tokens first),
// pre-tokenizers in order, bytes mapped to GPT-2's printable characters, then the merges of
// each word, lowest rank first and leftmost among equals.
#include "engine/text/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace specmoe::engine {

using Json = nlohmann::json;

namespace {

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex).
constexpr char kByteLevelRegex[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Length of the UTF-8 character at s[i] when well formed (shortest form, no surrogates,
// at most U+10FFFF); 0 otherwise.
size_t ValidCharLength(std::string_view s, size_t i) {
  const unsigned char c = s[i];
  if (c < 0x80) return 1;
  size_t length;
  unsigned char low = 0x80, high = 0xBF;  // the second byte's range
  if (c >= 0xC2 && c <= 0xDF) {
    length = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    length = 3;
    if (c == 0xE0) low = 0xA0;
    if (c == 0xED) high = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    length = 4;
    if (c == 0xF0) low = 0x90;
    if (c == 0xF4) high = 0x8F;
  } else {
    return 0;
  }
  if (i + length > s.size()) return 0;
  const unsigned char second = s[i + 1];
  if (second < low || second > high) return 0;
  for (size_t k = 2; k < length; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  }
  return length;
}

// How many bytes from s[i] form a valid prefix of a character (the maximal subpart that
// U+FFFD replaces); at least 1.
size_t InvalidSubpartLength(std::string_view s, size_t i) {
  const unsigned char c = s[i];
  size_t need;
  unsigned char low = 0x80, high = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) low = 0xA0;
    if (c == 0xED) high = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) low = 0x90;
    if (c == 0xF4) high = 0x8F;
  } else {
    return 1;
  }
  size_t n = 1;
  while (n < need && i + n < s.size()) {
    const unsigned char b = s[i + n];
    const bool ok = n == 1 ? (b >= low && b <= high) : (b & 0xC0) == 0x80;
    if (!ok) break;
    ++n;
  }
  return n;
}

void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// The code point of the valid UTF-8 character of `length` bytes at s[i].
uint32_t DecodeChar(std::string_view s, size_t i, size_t length) {
  const unsigned char c = s[i];
  if (length == 1) return c;
  uint32_t cp = c & (0x7F >> length);
  for (size_t k = 1; k < length; ++k)
    cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return cp;
}

bool IsWhitespace(uint32_t cp) {
  // Rust's char::is_whitespace (the Unicode White_Space property).
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

absl::StatusOr<Json> ReadJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  Json json = Json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  }
  return json;
}

// The "type" of a JSON object, or "" when absent or not a string.
std::string TypeOf(const Json& json) {
  if (!json.is_object()) return std::string();
  auto it = json.find("type");
  return it != json.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool BoolField(const Json& json, const char* key, bool fallback) {
  auto it = json.find(key);
  return it != json.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// A token named in tokenizer_config.json: a string or {"content": ...}.
std::string TokenContent(const Json& json) {
  if (json.is_string()) return json.get<std::string>();
  if (json.is_object() && json.contains("content") && json["content"].is_string()) {
    return json["content"].get<std::string>();
  }
  return std::string();
}

}  // namespace

absl::Status CheckUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t length = ValidCharLength(text, i);
    if (length == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("text is not valid UTF-8: byte 0x%02X at offset %d",
                          static_cast<unsigned char>(text[i]), i));
    }
    i += length;
  }
  return absl::OkStatus();
}

std::string LossyUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const size_t length = ValidCharLength(bytes, i);
    if (length > 0) {
      out.append(bytes.substr(i, length));
      i += length;
    } else {
      out += "\xEF\xBF\xBD";
      i += InvalidSubpartLength(bytes, i);
    }
  }
  return out;
}

bool EndsInsideUtf8Character(std::string_view bytes) {
  // The last lead byte within the final 3 bytes, with only continuation bytes after it.
  for (size_t back = 1; back <= std::min<size_t>(3, bytes.size()); ++back) {
    const size_t i = bytes.size() - back;
    const unsigned char c = bytes[i];
    if ((c & 0xC0) == 0x80) continue;
    const size_t need = c >= 0xC2 && c <= 0xDF   ? 2
                        : c >= 0xE0 && c <= 0xEF ? 3
                        : c >= 0xF0 && c <= 0xF4 ? 4
                                                 : 0;
    return back < need && InvalidSubpartLength(bytes, i) == back;
  }
  return false;
}

// A compiled regex and what to do with its matches (Split's "Isolated" or "Removed").
struct PreTokenizerStep {
  pcre2_code* code = nullptr;
  bool remove_matches = false;
  ~PreTokenizerStep() { pcre2_code_free(code); }

  // Appends the pieces of `text` to `out`.
  void Apply(const std::string& text, std::vector<std::string>& out) const {
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(code, nullptr);
    size_t offset = 0, gap_start = 0;
    while (offset <= text.size()) {
      const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                                 offset, PCRE2_NO_UTF_CHECK, match, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      const size_t start = ovector[0], end = ovector[1];
      if (end == start) {  // an empty match: move on by one character
        if (start >= text.size()) break;
        offset = start + std::max<size_t>(1, ValidCharLength(text, start));
        continue;
      }
      if (start > gap_start) out.push_back(text.substr(gap_start, start - gap_start));
      if (!remove_matches) out.push_back(text.substr(start, end - start));
      gap_start = offset = end;
    }
    if (gap_start < text.size()) out.push_back(text.substr(gap_start));
    pcre2_match_data_free(match);
  }
};

namespace {

// `text` with every regex metacharacter escaped (Split's {"String": ...} pattern).
std::string QuoteRegex(const std::string& text) { return absl::StrCat("\\Q", text, "\\E"); }

// `pattern` with \s and \S spelled as the Unicode White_Space property, which `tokenizers`'
// regex engine (Oniguruma) uses; PCRE2's \s also matches U+180E.
std::string WhiteSpaceAsOniguruma(const std::string& pattern) {
  constexpr char kSpace[] =
      "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
      "\\x{205F}\\x{3000}";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[++i];
      if (next == 's') {
        out += in_class ? std::string(kSpace) : absl::StrCat("[", kSpace, "]");
      } else if (next == 'S' && !in_class) {
        out += absl::StrCat("[^", kSpace, "]");
      } else {
        out += c;
        out += next;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<PreTokenizerStep>> CompileStep(const std::string& pattern,
                                                              bool remove_matches) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  const std::string rewritten = WhiteSpaceAsOniguruma(pattern);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex '", pattern,
                                                   "' does not compile at offset ", error_offset,
                                                   ": ", reinterpret_cast<char*>(message)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
  auto step = std::make_unique<PreTokenizerStep>();
  step->code = code;
  step->remove_matches = remove_matches;
  return step;
}

}  // namespace

BpeTokenizer::BpeTokenizer() {
  // GPT-2's byte-to-unicode table: printable bytes stand for themselves, the rest take the
  // code points from U+0100 on, in byte order.
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    const uint32_t cp = printable ? b : 256 + next++;
    AppendUtf8(cp, byte_chars_[b]);
    char_bytes_[cp] = static_cast<uint8_t>(b);
  }
}

BpeTokenizer::~BpeTokenizer() = default;

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Load(const std::string& path,
                                                                 const std::string& config_path) {
  absl::StatusOr<Json> json = ReadJson(path);
  if (!json.ok()) return json.status();
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  auto fail = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  };
  if (!json->is_object()) return fail(absl::InvalidArgumentError("not a JSON object"));
  if (json->contains("normalizer") && !(*json)["normalizer"].is_null()) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "normalizer '", TypeOf((*json)["normalizer"]), "' is not supported (only none)")));
  }
  if (json->contains("decoder") && !(*json)["decoder"].is_null() &&
      TypeOf((*json)["decoder"]) != "ByteLevel") {
    return fail(absl::InvalidArgumentError(absl::StrCat("decoder '", TypeOf((*json)["decoder"]),
                                                        "' is not supported (only ByteLevel)")));
  }
  for (const absl::Status& s :
       {t->ParseModel(&(*json)["model"]), t->ParseAddedTokens(&(*json)["added_tokens"]),
        t->ParsePreTokenizer(&(*json)["pre_tokenizer"]),
        t->ParsePostProcessor(&(*json)["post_processor"])}) {
    if (!s.ok()) return fail(s);
  }
  // The vocabulary in id order: the model's tokens, then the added ones.
  int32_t size = 0;
  for (const auto& [token, id] : t->vocab_) size = std::max(size, id + 1);
  for (const AddedToken& a : t->added_) size = std::max(size, a.id + 1);
  t->pieces_.assign(size, std::string());
  t->special_.assign(size, false);
  for (const auto& [token, id] : t->vocab_) t->pieces_[id] = token;
  for (const AddedToken& a : t->added_) {
    t->pieces_[a.id] = a.content;
    t->special_[a.id] = a.special;
  }

  absl::StatusOr<Json> config = ReadJson(config_path);
  if (config.ok() && config->is_object() && config->contains("eos_token")) {
    const std::string eos = TokenContent((*config)["eos_token"]);
    for (int32_t id = 0; id < size; ++id) {
      if (!eos.empty() && t->pieces_[id] == eos) t->eos_id_ = id;
    }
  } else if (!config.ok() && !absl::IsNotFound(config.status())) {
    return config.status();
  }
  return t;
}

absl::Status BpeTokenizer::ParseModel(const void* json_ptr) {
  const Json& model = *static_cast<const Json*>(json_ptr);
  if (TypeOf(model) != "BPE") {
    return absl::InvalidArgumentError(
        absl::StrCat("model type '", TypeOf(model), "' is not supported (only BPE)"));
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError("model.vocab is missing or not an object");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("model.", key, " is not supported"));
    }
  }
  if (model.contains("dropout") && model["dropout"].is_number() &&
      model["dropout"].get<double>() > 0) {
    return absl::InvalidArgumentError("model.dropout is not supported (inference is exact)");
  }
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 30)) {
      return absl::InvalidArgumentError(absl::StrCat("model.vocab['", token, "'] is not an id"));
    }
    vocab_[token] = id.get<int32_t>();
  }
  ignore_merges_ = BoolField(model, "ignore_merges", false);
  byte_fallback_ = BoolField(model, "byte_fallback", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = vocab_.find(model["unk_token"].get<std::string>());
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  if (!model.contains("merges") || !model["merges"].is_array()) {
    return absl::InvalidArgumentError("model.merges is missing or not an array");
  }
  int32_t rank = 0;
  for (const Json& merge : model["merges"]) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("merge ", rank, " '", text, "' is not two tokens"));
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(absl::StrCat("merge ", rank, " is not a token pair"));
    }
    auto l = vocab_.find(left), r = vocab_.find(right), m = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end() || m == vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("merge ", rank, " '", left, " ", right,
                                                     "' names a token outside the vocabulary"));
    }
    const uint64_t key =
        (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second);
    merges_.emplace(key, std::make_pair(rank, m->second));
    ++rank;
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseAddedTokens(const void* json_ptr) {
  const Json& list = *static_cast<const Json*>(json_ptr);
  if (list.is_null()) return absl::OkStatus();
  if (!list.is_array()) return absl::InvalidArgumentError("added_tokens is not an array");
  for (const Json& entry : list) {
    if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() ||
        !entry.contains("content") || !entry["content"].is_string() ||
        entry["id"].get<int64_t>() < 0 || entry["id"].get<int64_t>() >= (1 << 30)) {
      return absl::InvalidArgumentError("an added_tokens entry lacks an id or content");
    }
    AddedToken token;
    token.content = entry["content"].get<std::string>();
    token.id = entry["id"].get<int32_t>();
    token.special = BoolField(entry, "special", false);
    token.lstrip = BoolField(entry, "lstrip", false);
    token.rstrip = BoolField(entry, "rstrip", false);
    if (BoolField(entry, "single_word", false)) {
      return absl::InvalidArgumentError(
          absl::StrCat("added token '", token.content, "': single_word is not supported"));
    }
    if (token.content.empty()) continue;
    added_.push_back(token);
  }
  // Pointers once the vector is complete. Special tokens are never normalized.
  size_t index = 0;
  for (const Json& entry : list) {
    if (entry["content"].get<std::string>().empty()) continue;
    const AddedToken* token = &added_[index++];
    const bool normalized = BoolField(entry, "normalized", !token->special);
    (normalized && !token->special ? normalized_pass_ : raw_pass_).push_back(token);
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePreTokenizer(const void* json_ptr) {
  const Json& pre = *static_cast<const Json*>(json_ptr);
  std::vector<const Json*> list;
  if (TypeOf(pre) == "Sequence") {
    if (!pre.contains("pretokenizers") || !pre["pretokenizers"].is_array()) {
      return absl::InvalidArgumentError("pre_tokenizer Sequence has no pretokenizers");
    }
    for (const Json& p : pre["pretokenizers"]) list.push_back(&p);
  } else {
    list.push_back(&pre);
  }
  bool byte_level = false;
  for (const Json* p : list) {
    const std::string type = TypeOf(*p);
    if (byte_level) {
      return absl::InvalidArgumentError(
          absl::StrCat("pre-tokenizer '", type, "' after ByteLevel is not supported"));
    }
    if (type == "ByteLevel") {
      byte_level = true;
      add_prefix_space_ = BoolField(*p, "add_prefix_space", false);
      if (add_prefix_space_ && !steps_.empty()) {
        return absl::InvalidArgumentError(
            "ByteLevel add_prefix_space after other pre-tokenizers is not supported");
      }
      if (BoolField(*p, "use_regex", true)) {
        absl::StatusOr<std::unique_ptr<PreTokenizerStep>> step =
            CompileStep(kByteLevelRegex, false);
        if (!step.ok()) return step.status();
        steps_.push_back(*std::move(step));
      }
    } else if (type == "Digits") {
      absl::StatusOr<std::unique_ptr<PreTokenizerStep>> step =
          CompileStep(BoolField(*p, "individual_digits", false) ? "\\p{N}" : "\\p{N}+", false);
      if (!step.ok()) return step.status();
      steps_.push_back(*std::move(step));
    } else if (type == "Split") {
      const std::string behavior = p->contains("behavior") && (*p)["behavior"].is_string()
                                       ? (*p)["behavior"].get<std::string>()
                                       : "";
      if (behavior != "Isolated" && behavior != "Removed") {
        return absl::InvalidArgumentError(
            absl::StrCat("Split behavior '", behavior, "' is not supported (Isolated or Removed)"));
      }
      if (BoolField(*p, "invert", false)) {
        return absl::InvalidArgumentError("Split with invert is not supported");
      }
      std::string pattern;
      const Json& pat = p->contains("pattern") ? (*p)["pattern"] : Json();
      if (pat.contains("Regex") && pat["Regex"].is_string()) {
        pattern = pat["Regex"].get<std::string>();
      } else if (pat.contains("String") && pat["String"].is_string()) {
        pattern = QuoteRegex(pat["String"].get<std::string>());
      } else {
        return absl::InvalidArgumentError("Split has no Regex or String pattern");
      }
      absl::StatusOr<std::unique_ptr<PreTokenizerStep>> step =
          CompileStep(pattern, behavior == "Removed");
      if (!step.ok()) return step.status();
      steps_.push_back(*std::move(step));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("pre-tokenizer '", type, "' is not supported (ByteLevel, Split, Digits)"));
    }
  }
  if (!byte_level) {
    return absl::InvalidArgumentError(
        "only byte-level BPE is supported: the pre_tokenizer has no ByteLevel step");
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePostProcessor(const void* json_ptr) {
  const Json& post = *static_cast<const Json*>(json_ptr);
  const std::string type = TypeOf(post);
  if (post.is_null() || type == "ByteLevel") return absl::OkStatus();
  if (type == "Sequence") {
    if (!post.contains("processors") || !post["processors"].is_array()) {
      return absl::InvalidArgumentError("post_processor Sequence has no processors");
    }
    for (const Json& p : post["processors"]) {
      absl::Status s = ParsePostProcessor(&p);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") {
    return absl::InvalidArgumentError(absl::StrCat(
        "post_processor '", type, "' is not supported (ByteLevel, TemplateProcessing)"));
  }
  if (!post.contains("single") || !post["single"].is_array()) {
    return absl::InvalidArgumentError("TemplateProcessing has no single template");
  }
  bool seen_sequence = false;
  std::vector<int32_t> leading;
  for (const Json& item : post["single"]) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    if (!item.contains("SpecialToken") || !item["SpecialToken"].contains("id")) {
      return absl::InvalidArgumentError(
          "TemplateProcessing item is neither Sequence nor SpecialToken");
    }
    if (seen_sequence) {
      return absl::InvalidArgumentError(
          "TemplateProcessing adds tokens after the text; not supported");
    }
    const Json& name = item["SpecialToken"]["id"];
    const Json& specials = post.contains("special_tokens") ? post["special_tokens"] : Json();
    if (!name.is_string() || !specials.is_object() || !specials.contains(name.get<std::string>()) ||
        !specials[name.get<std::string>()].contains("ids") ||
        !specials[name.get<std::string>()]["ids"].is_array()) {
      return absl::InvalidArgumentError("TemplateProcessing names an undefined special token");
    }
    for (const Json& id : specials[name.get<std::string>()]["ids"]) {
      if (!id.is_number_integer()) {
        return absl::InvalidArgumentError("TemplateProcessing special token id is not an integer");
      }
      leading.push_back(id.get<int32_t>());
    }
  }
  if (leading.size() > 1) {
    return absl::InvalidArgumentError("TemplateProcessing adds more than one leading token");
  }
  if (leading.size() == 1) bos_id_ = leading[0];
  return absl::OkStatus();
}

void BpeTokenizer::SplitOnAddedTokens(const std::vector<const AddedToken*>& tokens,
                                      std::vector<Segment>& segments) const {
  if (tokens.empty()) return;
  std::vector<Segment> out;
  for (const Segment& segment : segments) {
    if (segment.id >= 0) {
      out.push_back(segment);
      continue;
    }
    const std::string_view text = segment.text;
    size_t emitted = 0;  // text[..emitted] is already in `out`
    for (size_t pos = 0; pos < text.size(); ++pos) {
      const AddedToken* best = nullptr;
      for (const AddedToken* t : tokens) {  // leftmost, then longest
        if (text.compare(pos, t->content.size(), t->content) == 0 &&
            (best == nullptr || t->content.size() > best->content.size())) {
          best = t;
        }
      }
      if (best == nullptr) continue;
      size_t start = pos, end = pos + best->content.size();
      if (best->lstrip) {  // whitespace characters before the token join it
        while (start > emitted) {
          size_t char_start = start - 1;
          while (char_start > emitted &&
                 (static_cast<unsigned char>(text[char_start]) & 0xC0) == 0x80) {
            --char_start;
          }
          const size_t length = ValidCharLength(text, char_start);
          if (length == 0 || !IsWhitespace(DecodeChar(text, char_start, length))) break;
          start = char_start;
        }
      }
      if (best->rstrip) {  // and after it
        while (end < text.size()) {
          const size_t length = ValidCharLength(text, end);
          if (length == 0 || !IsWhitespace(DecodeChar(text, end, length))) break;
          end += length;
        }
      }
      if (start > emitted) out.push_back({text.substr(emitted, start - emitted), -1});
      out.push_back({text.substr(start, end - start), best->id});
      emitted = end;
      pos = end - 1;
    }
    if (emitted < text.size()) out.push_back({text.substr(emitted), -1});
  }
  segments = std::move(out);
}

void BpeTokenizer::EncodeWord(const std::string& word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  bool last_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t length = std::max<size_t>(1, ValidCharLength(word, i));
    const std::string character = word.substr(i, length);
    i += length;
    auto it = vocab_.find(character);
    if (it != vocab_.end()) {
      symbols.push_back({it->second, 0, 0, true});
      last_unk = false;
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (unsigned char b : character) {
        auto byte = vocab_.find(absl::StrFormat("<0x%02X>", b));
        if (byte == vocab_.end()) break;
        bytes.push_back(byte->second);
      }
      if (bytes.size() == character.size()) {
        for (int32_t id : bytes) symbols.push_back({id, 0, 0, true});
        last_unk = false;
        continue;
      }
    }
    if (unk_id_ >= 0 && !last_unk) symbols.push_back({unk_id_, 0, 0, true});
    last_unk = unk_id_ >= 0;
  }
  const int n = static_cast<int>(symbols.size());
  for (int i = 0; i < n; ++i) {
    symbols[i].prev = i - 1;
    symbols[i].next = i + 1 < n ? i + 1 : -1;
  }
  // Candidate merges: lowest rank first, then leftmost position.
  struct Merge {
    int pos;
    int32_t rank, new_id;
  };
  auto later = [](const Merge& a, const Merge& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Merge, std::vector<Merge>, decltype(later)> queue(later);
  auto lookup = [&](int32_t left, int32_t right) -> const std::pair<int32_t, int32_t>* {
    auto it = merges_.find((static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (int i = 0; i + 1 < n; ++i) {
    if (const auto* m = lookup(symbols[i].id, symbols[i + 1].id))
      queue.push({i, m->first, m->second});
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    const Symbol& right = symbols[left.next];
    const auto* m = lookup(left.id, right.id);
    if (m == nullptr || m->second != top.new_id) continue;  // stale candidate
    const int right_index = left.next;
    left.id = top.new_id;
    left.next = right.next;
    symbols[right_index].alive = false;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const auto* p = lookup(symbols[left.prev].id, left.id)) {
        queue.push({left.prev, p->first, p->second});
      }
    }
    if (left.next >= 0) {
      if (const auto* p = lookup(left.id, symbols[left.next].id)) {
        queue.push({top.pos, p->first, p->second});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.alive) out.push_back(s.id);
  }
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view input, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  const std::string text = LossyUtf8(input);
  std::vector<Segment> segments = {{text, -1}};
  SplitOnAddedTokens(raw_pass_, segments);
  SplitOnAddedTokens(normalized_pass_, segments);
  std::vector<std::string> pieces, next;
  for (const Segment& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    if (segment.text.empty()) continue;
    const bool prefix = add_prefix_space_ && segment.text[0] != ' ';
    pieces.assign(1, std::string(prefix ? " " : "") + std::string(segment.text));
    for (const auto& step : steps_) {
      next.clear();
      for (const std::string& piece : pieces) step->Apply(piece, next);
      pieces.swap(next);
    }
    for (const std::string& piece : pieces) {
      std::string word;
      for (unsigned char b : piece) word += byte_chars_[b];
      EncodeWord(word, ids);
    }
  }
  return ids;
}

std::vector<std::string> BpeTokenizer::EncodePieces(std::string_view text) const {
  std::vector<std::string> out;
  for (int32_t id : Encode(text, false)) out.push_back(piece(id));
  return out;
}

std::string BpeTokenizer::DecodeBytes(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || special_[id]) continue;
    // ByteLevel's decoder: a token whose characters all stand for bytes becomes those bytes;
    // any other token (an added token with a space, say) keeps its own text.
    const std::string& token = pieces_[id];
    std::string mapped;
    bool all_mapped = true;
    for (size_t i = 0; i < token.size() && all_mapped;) {
      const size_t length = std::max<size_t>(1, ValidCharLength(token, i));
      auto it = char_bytes_.find(DecodeChar(token, i, length));
      if (it == char_bytes_.end() || ValidCharLength(token, i) == 0) {
        all_mapped = false;
      } else {
        mapped += static_cast<char>(it->second);
      }
      i += length;
    }
    bytes += all_mapped ? mapped : token;
  }
  return bytes;
}

std::string BpeTokenizer::Decode(const std::vector<int32_t>& ids) const {
  return LossyUtf8(DecodeBytes(ids));
}

const std::string& BpeTokenizer::piece(int id) const {
  static const std::string kEmpty;
  return id >= 0 && id < vocab_size() ? pieces_[id] : kEmpty;
}

}  // namespace specmoe::engine
