// tests/chat_template_test.cc — the built-in chat templates (server/chat_template.h): each
// renders the published format exactly (LLaMA-2-chat, ChatML, vicuna v1.1, raw), roles are
// checked, and DetectChatTemplate recognises the Jinja templates of real model folders'
// tokenizer_config.json (ChatML as SmolLM's, LLaMA-2-chat's, vicuna's) or warns and falls back.
// A --chat-template-file renders prefix + content + suffix per message and the generation
// prompt, and every malformed file is refused naming the file and the fault.
#include "server/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

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

// A --chat-template-file with `text` in the temporary folder.
std::string TemplateFile(const std::string& name, const std::string& text) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("specmoe_chat_template_file_" + name + ".json");
  std::ofstream(path) << text;
  return path.string();
}

TEST(ChatTemplateTest, CustomFileRendersPrefixContentSuffix) {
  const std::string path = TemplateFile("good", R"({
      "roles": {"system": {"prefix": "### System:\n", "suffix": "\n\n"},
                "user": {"prefix": "### User:\n", "suffix": "\n\n"},
                "assistant": {"prefix": "### Assistant:\n", "suffix": "</s>\n"}},
      "generation_prompt": "### Assistant:\n", "bos": false, "stop": ["###"]})");
  absl::StatusOr<CustomChatTemplate> custom = LoadChatTemplateFile(path);
  ASSERT_TRUE(custom.ok()) << custom.status();
  EXPECT_EQ(custom->path, path);
  absl::StatusOr<RenderedChat> r = RenderChat(*custom, kConversation);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->segments.size(), 1u);
  EXPECT_EQ(r->segments[0],
            "### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\nHello.</s>\n"
            "### User:\nWhy?\n\n### Assistant:\n");
  EXPECT_FALSE(r->bos);
  EXPECT_EQ(r->stop, std::vector<std::string>{"###"});
  // Defaults: BOS on, no generation prompt, no stops; a role without a suffix.
  custom =
      LoadChatTemplateFile(TemplateFile("minimal", R"({"roles": {"user": {"prefix": "Q: "}}})"));
  ASSERT_TRUE(custom.ok()) << custom.status();
  r = RenderChat(*custom, {{"user", "a"}, {"user", "b"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->segments[0], "Q: aQ: b");
  EXPECT_TRUE(r->bos);
  EXPECT_TRUE(r->stop.empty());
  // A role the file does not define is refused naming the message and the roles.
  r = RenderChat(*custom, {{"user", "a"}, {"assistant", "b"}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("messages[1]"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("(user)"), std::string::npos) << r.status();
}

TEST(ChatTemplateTest, BadCustomFilesNameTheFileAndTheFault) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"roles": {"user": {"prefix": "Q: "}})", "not valid JSON"},
      {R"(["roles"])", "must hold a JSON object"},
      {R"({"generation_prompt": "A: "})", "needs \"roles\""},
      {R"({"roles": {}})", "needs \"roles\""},
      {R"({"roles": {"user": "Q: "}})", "roles.user must be an object"},
      {R"({"roles": {"user": {"prefix": 1}}})", "roles.user.prefix must be a string"},
      {R"({"roles": {"user": {"prefx": "Q: "}}})", "unknown key 'roles.user.prefx'"},
      {R"({"roles": {"user": {}}, "generation": "A: "})", "unknown key 'generation'"},
      {R"({"roles": {"user": {}}, "bos": "yes"})", "bos must be true or false"},
      {R"({"roles": {"user": {}}, "stop": "###"})", "stop must be an array"},
      {R"({"roles": {"user": {}}, "stop": [""]})", "non-empty strings"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = TemplateFile("bad" + std::to_string(i), cases[i].first);
    absl::StatusOr<CustomChatTemplate> custom = LoadChatTemplateFile(path);
    ASSERT_FALSE(custom.ok()) << cases[i].first;
    EXPECT_EQ(custom.status().code(), absl::StatusCode::kInvalidArgument) << cases[i].first;
    EXPECT_NE(custom.status().message().find(path), std::string::npos) << custom.status();
    EXPECT_NE(custom.status().message().find(cases[i].second), std::string::npos)
        << custom.status();
  }
  absl::StatusOr<CustomChatTemplate> missing = LoadChatTemplateFile("/nonexistent/t.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/t.json"), std::string::npos);
}

}  // namespace
}  // namespace specmoe::server
