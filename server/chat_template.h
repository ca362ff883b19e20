// server/chat_template.h — the chat templates the HTTP front renders `messages` with, built in
// by name (no Jinja engine: Debian 12 packages none): llama-2 ([INST] ... [/INST]), chatml
// (<|im_start|>role ... <|im_end|>), vicuna (v1.1's "USER: ... ASSISTANT:") and raw
// (contents joined by newlines, for base models). DetectChatTemplate picks one from a model
// folder's tokenizer_config.json by the markers its Jinja template contains. A custom
// template comes from a --chat-template-file (LoadChatTemplateFile: per-role prefix and
// suffix strings, a generation prompt, BOS and stop strings; server/README.md, Chat templates).
// Tested by tests/chat_template_test.cc and tests/http_e2e_test.py.
#ifndef SPECMOE_SERVER_CHAT_TEMPLATE_H_
#define SPECMOE_SERVER_CHAT_TEMPLATE_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace specmoe::server {

enum class ChatTemplate { kRaw, kLlama2, kChatMl, kVicuna };

// One chat message with plain-text content.
struct ChatMessage {
  std::string role;     // system | user | assistant
  std::string content;
};

// A rendered conversation: the prompt is the segments in order, each tokenized with BOS
// when `bos_each_segment` (else only the first), joined by EOS tokens (the end of an
// assistant turn, for templates that close turns with </s>). One segment: a plain text prompt.
struct RenderedChat {
  std::vector<std::string> segments;
  bool bos = true;  // BOS before the first segment
  bool bos_each_segment = false;
  std::vector<std::string> stop;  // stop strings the template adds (chatml: "<|im_end|>")
};

// "llama-2", "chatml", "vicuna", "raw" -> the template; INVALID_ARGUMENT otherwise.
absl::StatusOr<ChatTemplate> ParseChatTemplateName(const std::string& name);
const char* ChatTemplateName(ChatTemplate chat_template);

// What DetectChatTemplate found: the template, and a warning when the folder's template is
// missing or not one of the built-in ones (then kRaw).
struct DetectedChatTemplate {
  ChatTemplate chat_template = ChatTemplate::kRaw;
  std::string warning;  // empty: recognised
};
// Reads <model_dir>/tokenizer_config.json's "chat_template" (a string, or a list of
// {"name", "template"} whose "default" entry counts) and recognises ChatML by <|im_start|>,
// LLaMA-2 by [INST] and <<SYS>> or [/INST], vicuna by "USER:" and "ASSISTANT:".
DetectedChatTemplate DetectChatTemplate(const std::string& model_dir);

// Renders `messages` (roles system/user/assistant, system only first) followed by the
// assistant's turn opening. INVALID_ARGUMENT names the message and the rule.
absl::StatusOr<RenderedChat> RenderChat(ChatTemplate chat_template,
                                        const std::vector<ChatMessage>& messages);

// A --chat-template-file: a JSON object
//   {"roles": {"<role>": {"prefix": "...", "suffix": "..."}, ...},  (required, non-empty)
//    "generation_prompt": "...",  (after the messages: the assistant turn's opening; "")
//    "bos": true,                 (BOS before the rendered text; true)
//    "stop": ["...", ...]}        (stop strings added to every chat request; none)
// rendered as BOS (when bos), then prefix + content + suffix of each message's role in order,
// then generation_prompt, as one text. A message whose role the file does not define is
// refused naming it. Escapes are JSON's ("\n" is a newline). Contract: plain value type.
struct CustomChatTemplate {
  struct Role {
    std::string prefix;
    std::string suffix;
  };
  std::string path;  // the file it came from
  std::map<std::string, Role> roles;
  std::string generation_prompt;
  bool bos = true;
  std::vector<std::string> stop;
};

// Reads and checks a --chat-template-file; INVALID_ARGUMENT (NOT_FOUND when unreadable)
// names the file and what is wrong with it (invalid JSON with its position, an unknown key,
// a missing or mistyped field).
absl::StatusOr<CustomChatTemplate> LoadChatTemplateFile(const std::string& path);

// Renders `messages` with a custom template (above). INVALID_ARGUMENT names the message.
absl::StatusOr<RenderedChat> RenderChat(const CustomChatTemplate& chat_template,
                                        const std::vector<ChatMessage>& messages);

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_CHAT_TEMPLATE_H_
