// tests/tokenizer_test.cc — engine::Tokenizer and IncrementalDetokenizer (engine/text/tokenizer.h)
// on the demo tokenizer (LLaMA conventions, byte fallback; the fixture models carry a copy
// of deploy/demo/tokenizer.model). Expected ids and pieces come from the Python
// sentencepiece package on the same file.
#include "engine/text/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace specmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kModelDir = SPECMOE_FIXTURES "/models/llama_tiny";

// A well-formed UTF-8 check (no truncated or overlong sequences, no stray continuations).
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    int length = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                              : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (length == 0 || i + length > s.size()) return false;
    for (int k = 1; k < length; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += length;
  }
  return true;
}

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(kModelDir);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = *std::move(loaded);
  }

  int IdOf(const std::string& piece) const {
    const std::vector<std::string> pieces = tokenizer_->pieces();
    for (size_t id = 0; id < pieces.size(); ++id) {
      if (pieces[id] == piece) return static_cast<int>(id);
    }
    ADD_FAILURE() << "no piece " << piece;
    return -1;
  }

  // Feeds `generated` one token at a time after `prompt`; checks every delta is whole UTF-8
  // and returns the deltas.
  std::vector<std::string> Deltas(const std::vector<int32_t>& prompt,
                                  const std::vector<int32_t>& generated) const {
    IncrementalDetokenizer detokenizer(tokenizer_.get(), prompt);
    std::vector<std::string> deltas;
    std::string joined;
    for (int32_t id : generated) {
      deltas.push_back(detokenizer.Add(id));
      EXPECT_TRUE(IsValidUtf8(deltas.back())) << "delta splits a character";
      joined += deltas.back();
    }
    EXPECT_EQ(detokenizer.text(), joined);
    return deltas;
  }

  std::string Joined(const std::vector<int32_t>& prompt,
                     const std::vector<int32_t>& generated) const {
    std::string joined;
    for (const std::string& delta : Deltas(prompt, generated)) joined += delta;
    return joined;
  }

  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TokenizerTest, SpecialTokensFollowLlamaConventions) {
  EXPECT_EQ(tokenizer_->vocab_size(), 4096);
  EXPECT_EQ(tokenizer_->bos_id(), 1);
  EXPECT_EQ(tokenizer_->eos_id(), 2);
  EXPECT_EQ(tokenizer_->piece(0), "<unk>");
  EXPECT_EQ(tokenizer_->piece(1), "<s>");
  EXPECT_EQ(tokenizer_->piece(2), "</s>");
  EXPECT_EQ(tokenizer_->piece(3), "<0x00>");
  EXPECT_EQ(tokenizer_->piece(-1), "");
  EXPECT_EQ(tokenizer_->piece(4096), "");
  const std::vector<std::string> pieces = tokenizer_->pieces();
  ASSERT_EQ(pieces.size(), 4096u);
  EXPECT_EQ(pieces[1], "<s>");
}

TEST_F(TokenizerTest, EncodeMatchesSentencePiece) {
  // Pieces as the Python sentencepiece package gives them for this model.
  EXPECT_THAT(tokenizer_->EncodePieces("Hello world"), ElementsAre("▁H", "ell", "o", "▁world"));
  EXPECT_THAT(tokenizer_->EncodePieces("a\nb"), ElementsAre("▁a", "<0x0A>", "b"));
  EXPECT_THAT(tokenizer_->EncodePieces("€5"),
              ElementsAre("▁", "<0xE2>", "<0x82>", "<0xAC>", "5"));
  const std::vector<int32_t> plain = tokenizer_->Encode("Hello world", false);
  const std::vector<int32_t> with_bos = tokenizer_->Encode("Hello world", true);
  ASSERT_EQ(with_bos.size(), plain.size() + 1);
  EXPECT_EQ(with_bos[0], 1);
  EXPECT_EQ(std::vector<int32_t>(with_bos.begin() + 1, with_bos.end()), plain);
  EXPECT_EQ(plain.back(), IdOf("▁world"));
}

TEST_F(TokenizerTest, DecodeRoundTripsTextIncludingByteFallback) {
  for (const std::string text :
       {"Hello world", "café", "price: 5 €", "日本語のテキスト", "emoji 🙂 and 🚀!",
        "a\nb\n\nc",
        "  two leading spaces", "tabs\tand trailing space "}) {
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(text, false)), text);
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(text, true)), text);
  }
  // Out-of-vocabulary ids have no text.
  EXPECT_EQ(tokenizer_->Decode({IdOf("▁world"), 99999, -3}), "world");
}

// TokenBytes (the OpenAI API's per-token texts): after a prompt, the tokens' bytes make up
// exactly the text SentencePiece decodes for them.
TEST_F(TokenizerTest, TokenBytesMakeUpTheDecodedContinuation) {
  for (const std::string text :
       {"Hello world", "café", "price: 5 €", "日本語のテキスト", "emoji 🙂 and 🚀!", "a\nb\n\nc",
        "  two leading spaces"}) {
    IncrementalDetokenizer detokenizer(tokenizer_.get(), tokenizer_->Encode("Cost:", true));
    std::string bytes;
    for (int32_t id : tokenizer_->Encode(text, false)) {
      detokenizer.Add(id);
      bytes += tokenizer_->TokenBytes(id);
    }
    EXPECT_EQ(bytes, detokenizer.text()) << text;
  }
  EXPECT_EQ(tokenizer_->TokenBytes(IdOf("▁world")), " world");
  EXPECT_EQ(tokenizer_->TokenBytes(IdOf("<0xE2>")), "\xE2");
  EXPECT_EQ(tokenizer_->TokenBytes(tokenizer_->bos_id()), "");
  EXPECT_EQ(tokenizer_->TokenBytes(tokenizer_->eos_id()), "");
  EXPECT_EQ(tokenizer_->TokenBytes(-1), "");
  EXPECT_EQ(tokenizer_->TokenBytes(tokenizer_->vocab_size()), "");
}

TEST_F(TokenizerTest, LoadNamesTheMissingFile) {
  const std::string dir = ::testing::TempDir() + "/no_tokenizer_here";
  std::filesystem::create_directories(dir);
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(loaded.status().message(), HasSubstr(dir + "/tokenizer.model"));
}

// A tokenizer.json folder (byte-level BPE): what it cannot load is refused by name, and
// invalid UTF-8 text is refused with the offset of the bad byte. Exactness against the
// `tokenizers` package is tests/bpe_exact_test.py's job.
TEST(BpeTokenizerLoadTest, RefusesWhatItCannotLoadByName) {
  const std::string dir = ::testing::TempDir() + "/bpe_refusals";
  std::filesystem::create_directories(dir);
  const std::string minimal =
      R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},)"
      R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})";
  struct Case {
    std::string json, message;
  };
  for (const Case& c : std::vector<Case>{
           {"{not json", "not valid JSON"},
           {"{\"normalizer\": {\"type\": \"NFC\"}, " + minimal + "}", "normalizer 'NFC'"},
           {R"({"model": {"type": "WordPiece", "vocab": {}}})", "model type 'WordPiece'"},
           {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]},)"
            R"("pre_tokenizer": {"type": "ByteLevel"}})",
            "merge 0 'a b' names a token outside the vocabulary"},
           {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},)"
            R"("pre_tokenizer": {"type": "Whitespace"}})",
            "pre-tokenizer 'Whitespace'"}}) {
    std::ofstream(dir + "/tokenizer.json") << c.json;
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir);
    ASSERT_FALSE(loaded.ok()) << c.json;
    EXPECT_THAT(loaded.status().message(), HasSubstr(dir + "/tokenizer.json")) << c.json;
    EXPECT_THAT(loaded.status().message(), HasSubstr(c.message)) << c.json;
  }
  std::ofstream(dir + "/tokenizer.json") << "{" + minimal + "}";
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_STREQ((*loaded)->source(), "tokenizer.json");
  EXPECT_EQ((*loaded)->bos_id(), -1);
  EXPECT_TRUE((*loaded)->CheckText("ab ab").ok());
  EXPECT_THAT(std::string((*loaded)->CheckText("ab\xe2\x82 b").message()),
              HasSubstr("not valid UTF-8: byte 0xE2 at offset 2"));
  EXPECT_THAT((*loaded)->Encode("ab", false), ElementsAre(2));
}

TEST_F(TokenizerTest, LoadNamesTheCorruptFile) {
  const std::string dir = ::testing::TempDir() + "/corrupt_tokenizer";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokenizer.model") << "this is not a protobuf";
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr(dir + "/tokenizer.model"));
}

TEST_F(TokenizerTest, HoldsByteFallbackBytesUntilTheCharacterIsComplete) {
  IncrementalDetokenizer detokenizer(tokenizer_.get(), tokenizer_->Encode("Cost:", true));
  EXPECT_EQ(detokenizer.Add(IdOf("▁")), " ");
  EXPECT_EQ(detokenizer.Add(IdOf("<0xE2>")), "");
  EXPECT_EQ(detokenizer.Add(IdOf("<0x82>")), "");
  EXPECT_EQ(detokenizer.Add(IdOf("<0xAC>")), "€");
  EXPECT_EQ(detokenizer.Add(IdOf("5")), "5");
  // A four-byte character (🙂 = F0 9F 99 82) is held for three tokens.
  EXPECT_EQ(detokenizer.Add(IdOf("<0xF0>")), "");
  EXPECT_EQ(detokenizer.Add(IdOf("<0x9F>")), "");
  EXPECT_EQ(detokenizer.Add(IdOf("<0x99>")), "");
  EXPECT_EQ(detokenizer.Add(IdOf("<0x82>")), "🙂");
  EXPECT_EQ(detokenizer.text(), " €5🙂");
}

TEST_F(TokenizerTest, InvalidBytesAreNotHeldForever) {
  // A lone continuation byte, and a lead byte cut short by a normal piece, decode to U+FFFD
  // as SentencePiece does, instead of stalling the stream.
  IncrementalDetokenizer detokenizer(tokenizer_.get(), {1});
  EXPECT_EQ(detokenizer.Add(IdOf("<0x82>")), "\xEF\xBF\xBD");
  EXPECT_EQ(detokenizer.Add(IdOf("<0xE2>")), "");
  const std::string delta = detokenizer.Add(IdOf("▁world"));
  EXPECT_EQ(delta, "\xEF\xBF\xBD world");
  EXPECT_EQ(detokenizer.text(),
            tokenizer_->Decode({IdOf("<0x82>"), IdOf("<0xE2>"), IdOf("▁world")}));
}

TEST_F(TokenizerTest, KeepsTheLeadingSpaceAfterAPromptAndDropsItAtTheStart) {
  const int32_t world = IdOf("▁world");
  // After a non-empty prompt the first generated word keeps its space...
  EXPECT_EQ(Joined(tokenizer_->Encode("Hello", true), {world}), " world");
  // ...at the very start of the text (no prompt, or BOS only) it is the dummy prefix.
  EXPECT_EQ(Joined({}, {world, world}), "world world");
  EXPECT_EQ(Joined({1}, {world, world}), "world world");
}

TEST_F(TokenizerTest, DeltasConcatenateToTheDecodedContinuation) {
  const std::vector<int32_t> prompt = tokenizer_->Encode("The prompt says", true);
  const std::string prompt_text = tokenizer_->Decode(prompt);
  for (const std::string text :
       {"Hello world, again.", "café crème", "line one\nline two\n\n", "5 € or 7 £",
        "日本語 and 中文", "emoji 🙂🚀 end", "  spaced  out  ", "\ttab"}) {
    const std::vector<int32_t> generated = tokenizer_->Encode(text, false);
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), generated.begin(), generated.end());
    const std::string full = tokenizer_->Decode(all);
    ASSERT_EQ(full.compare(0, prompt_text.size(), prompt_text), 0);
    EXPECT_EQ(Joined(prompt, generated), full.substr(prompt_text.size())) << text;
    // Without a prompt the deltas are exactly Decode(generated).
    EXPECT_EQ(Joined({}, generated), tokenizer_->Decode(generated)) << text;
  }
}

TEST_F(TokenizerTest, EveryPieceAfterEveryPieceDecodesLikeTheWholeSequence) {
  // Pairs of arbitrary pieces (including control and byte pieces): the incremental text
  // after a prompt always equals the whole decode minus the prompt's decode, whenever the
  // sequence does not end inside a character.
  const std::vector<int32_t> prompt = tokenizer_->Encode("x", true);
  const std::string prompt_text = tokenizer_->Decode(prompt);
  for (int32_t a = 0; a < 4096; a += 37) {
    for (int32_t b = 0; b < 4096; b += 101) {
      IncrementalDetokenizer detokenizer(tokenizer_.get(), prompt);
      detokenizer.Add(a);
      detokenizer.Add(b);
      std::vector<int32_t> all = prompt;
      all.push_back(a);
      all.push_back(b);
      const std::string full = tokenizer_->Decode(all);
      const std::string expected = full.substr(prompt_text.size());
      if (detokenizer.text() != expected) {
        // Only an unfinished character may be outstanding.
        EXPECT_EQ(expected.substr(0, detokenizer.text().size()), detokenizer.text())
            << a << " " << b;
        std::string rest = expected.substr(detokenizer.text().size());
        while (rest.size() >= 3 && rest.compare(rest.size() - 3, 3, "\xEF\xBF\xBD") == 0) {
          rest.resize(rest.size() - 3);
        }
        EXPECT_EQ(rest, "") << a << " " << b;
      }
    }
  }
}

}  // namespace
}  // namespace specmoe::engine
