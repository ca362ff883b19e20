// tests/chat_template_test.cc — the built-in chat templates (server/chat_template.h): each
// renders the published format exactly (LLaMA-2-chat, ChatML, vicuna v1.1, raw), roles are
// checked, and DetectChatTemplate recognises the Jinja templates of real model folders'
// tokenizer_config.json (ChatML as SmolLM's, LLaMA-2-chat's, vicuna's) or warns and falls back.
#include "server/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace specmoe::server {
namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Why?"}};

TEST(ChatTemplateTest, Llama2ClosesEachExchangeWithEos) {
  absl::StatusOr<RenderedChat> r = RenderChat(ChatTemplate::kLlama2, kConversation);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->segments.size(), 2u);
  EXPECT_TRUE(r->bos_each_segment);
  EXPECT_EQ(r->segments[0], "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. ");
  EXPECT_EQ(r->segments[1], "[INST] Why? [/INST]");
}

TEST(ChatTemplateTest, ChatMlOpensTheAssistantTurn) {
  absl::StatusOr<RenderedChat> r = RenderChat(ChatTemplate::kChatMl, kConversation);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->segments.size(), 1u);
  EXPECT_EQ(r->segments[0],
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(r->stop, std::vector<std::string>{"<|im_end|>"});
}

TEST(ChatTemplateTest, VicunaAndRaw) {
  absl::StatusOr<RenderedChat> v = RenderChat(ChatTemplate::kVicuna, kConversation);
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->segments.size(), 2u);
  EXPECT_FALSE(v->bos_each_segment);
  EXPECT_EQ(v->segments[0], "Be brief. USER: Hi ASSISTANT: Hello.");
  EXPECT_EQ(v->segments[1], " USER: Why? ASSISTANT:");
  absl::StatusOr<RenderedChat> plain =
      RenderChat(ChatTemplate::kVicuna, {{"user", "Hi"}});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->segments[0].rfind("A chat between a curious user", 0), 0u);
  absl::StatusOr<RenderedChat> raw = RenderChat(ChatTemplate::kRaw, kConversation);
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->segments, std::vector<std::string>{"Be brief.\nHi\nHello.\nWhy?"});
}

TEST(ChatTemplateTest, RolesAreChecked) {
  EXPECT_EQ(RenderChat(ChatTemplate::kChatMl, {}).status().message(), "messages is empty");
  absl::Status late = RenderChat(ChatTemplate::kRaw, {{"user", "a"}, {"system", "b"}}).status();
  EXPECT_EQ(late.message(), "messages[1]: a system message may only come first");
  absl::Status tool = RenderChat(ChatTemplate::kRaw, {{"tool", "a"}}).status();
  EXPECT_NE(tool.message().find("role 'tool' is not supported"), std::string::npos);
}

TEST(ChatTemplateTest, NamesRoundTrip) {
  for (const char* name : {"llama-2", "chatml", "vicuna", "raw"}) {
    absl::StatusOr<ChatTemplate> parsed = ParseChatTemplateName(name);
    ASSERT_TRUE(parsed.ok());
    EXPECT_STREQ(ChatTemplateName(*parsed), name);
  }
  EXPECT_FALSE(ParseChatTemplateName("jinja").ok());
}

// Writes a tokenizer_config.json with `config` into a fresh folder.
std::string ModelDir(const std::string& name, const std::string& config) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("specmoe_chat_template_" + name);
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer_config.json") << config;
  return dir.string();
}

TEST(ChatTemplateTest, DetectsKnownTemplatesAndWarnsOtherwise) {
  // Abbreviated from the published tokenizer_config.json files.
  const DetectedChatTemplate chatml = DetectChatTemplate(ModelDir(
      "chatml", R"({"chat_template": "{% for message in messages %}{{'<|im_start|>' + )"
                R"(message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"})"));
  EXPECT_EQ(chatml.chat_template, ChatTemplate::kChatMl);
  EXPECT_EQ(chatml.warning, "");
  const DetectedChatTemplate llama = DetectChatTemplate(ModelDir(
      "llama2", R"({"chat_template": "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"})"));
  EXPECT_EQ(llama.chat_template, ChatTemplate::kLlama2);
  const DetectedChatTemplate vicuna = DetectChatTemplate(ModelDir(
      "vicuna", R"({"chat_template": [{"name": "default", "template": "{{ 'USER: ' + m }} ASSISTANT:"}]})"));
  EXPECT_EQ(vicuna.chat_template, ChatTemplate::kVicuna);
  const DetectedChatTemplate other = DetectChatTemplate(ModelDir(
      "other", R"({"chat_template": "{{ '<start_of_turn>' + message['content'] }}"})"));
  EXPECT_EQ(other.chat_template, ChatTemplate::kRaw);
  EXPECT_NE(other.warning.find("none of the built-in ones"), std::string::npos);
  const DetectedChatTemplate none = DetectChatTemplate(ModelDir("none", R"({"bos_token": "<s>"})"));
  EXPECT_EQ(none.chat_template, ChatTemplate::kRaw);
  EXPECT_NE(none.warning.find("names no chat template"), std::string::npos);
  const DetectedChatTemplate broken = DetectChatTemplate(ModelDir("broken", "{not json"));
  EXPECT_EQ(broken.chat_template, ChatTemplate::kRaw);
  EXPECT_FALSE(broken.warning.empty());
  EXPECT_NE(DetectChatTemplate("/nonexistent/model").warning.find("not found"),
            std::string::npos);
}

}  // namespace
}  // namespace specmoe::server
