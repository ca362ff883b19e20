// server/chat_template.cc — see chat_template.h. The formats follow the models' published
// templates: LLaMA-2-chat's "[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST]" with </s><s>
// between exchanges, ChatML's "<|im_start|>role\n...<|im_end|>\n", vicuna v1.1's
// "SYSTEM USER: ... ASSISTANT: ...</s>".
#include "server/chat_template.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace specmoe::server {
namespace {

constexpr char kVicunaSystem[] =
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions.";

absl::Status Invalid(size_t index, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("messages[", index, "]: ", why));
}

// Checks roles: system only first, then user/assistant in any order, the last not assistant
// for templates that need to open the assistant turn after a user turn.
absl::Status CheckRoles(const std::vector<ChatMessage>& messages) {
  if (messages.empty()) return absl::InvalidArgumentError("messages is empty");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role == "system") {
      if (i != 0) return Invalid(i, "a system message may only come first");
    } else if (role != "user" && role != "assistant") {
      return Invalid(i, absl::StrCat("role '", role,
                                     "' is not supported (system, user or assistant)"));
    }
  }
  return absl::OkStatus();
}

RenderedChat RenderLlama2(const std::vector<ChatMessage>& messages) {
  RenderedChat out;
  out.bos_each_segment = true;
  size_t i = 0;
  std::string system;
  if (messages[0].role == "system") {
    system = messages[0].content;
    i = 1;
  }
  std::string segment;
  bool first_user = true;
  for (; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      std::string content = m.content;
      if (first_user && !system.empty()) {
        content = absl::StrCat("<<SYS>>\n", system, "\n<</SYS>>\n\n", content);
      }
      first_user = false;
      absl::StrAppend(&segment, "[INST] ", content, " [/INST]");
    } else {  // assistant: closes the exchange with </s>
      absl::StrAppend(&segment, " ", m.content, " ");
      out.segments.push_back(segment);
      segment.clear();
    }
  }
  if (first_user && !system.empty()) {
    absl::StrAppend(&segment, "[INST] <<SYS>>\n", system, "\n<</SYS>>\n\n [/INST]");
  }
  out.segments.push_back(segment);
  return out;
}

RenderedChat RenderChatMl(const std::vector<ChatMessage>& messages) {
  RenderedChat out;
  std::string text;
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&text, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
  }
  absl::StrAppend(&text, "<|im_start|>assistant\n");
  out.segments.push_back(text);
  out.stop.push_back("<|im_end|>");
  return out;
}

RenderedChat RenderVicuna(const std::vector<ChatMessage>& messages) {
  RenderedChat out;
  size_t i = 0;
  std::string segment = kVicunaSystem;
  if (messages[0].role == "system") {
    segment = messages[0].content;
    i = 1;
  }
  for (; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      absl::StrAppend(&segment, " USER: ", m.content);
    } else {  // an assistant turn ends with </s>
      absl::StrAppend(&segment, " ASSISTANT: ", m.content);
      out.segments.push_back(segment);
      segment.clear();
    }
  }
  absl::StrAppend(&segment, " ASSISTANT:");
  out.segments.push_back(segment);
  return out;
}

RenderedChat RenderRaw(const std::vector<ChatMessage>& messages) {
  RenderedChat out;
  std::string text;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i > 0) text += "\n";
    text += messages[i].content;
  }
  out.segments.push_back(text);
  return out;
}

absl::Status BadFile(const std::string& path, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--chat-template-file ", path, ": ", why));
}

// `object`[key] as a string into *out when present (absent: *out unchanged).
absl::Status ReadString(const std::string& path, const nlohmann::json& object,
                        const std::string& key, const std::string& where, std::string* out) {
  const auto it = object.find(key);
  if (it == object.end()) return absl::OkStatus();
  if (!it->is_string()) {
    return BadFile(path, absl::StrCat(where, key, " must be a string (got ", it->type_name(), ")"));
  }
  *out = it->get<std::string>();
  return absl::OkStatus();
}

// Refuses keys of `object` outside `known` (a misspelt key would otherwise be ignored).
absl::Status OnlyKnownKeys(const std::string& path, const nlohmann::json& object,
                           const std::vector<std::string>& known, const std::string& where) {
  for (const auto& [key, value] : object.items()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      return BadFile(path, absl::StrCat("unknown key '", where, key, "' (expected ",
                                        absl::StrJoin(known, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ChatTemplate> ParseChatTemplateName(const std::string& name) {
  if (name == "raw") return ChatTemplate::kRaw;
  if (name == "llama-2") return ChatTemplate::kLlama2;
  if (name == "chatml") return ChatTemplate::kChatMl;
  if (name == "vicuna") return ChatTemplate::kVicuna;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template '", name, "' (llama-2, chatml, vicuna or raw)"));
}

const char* ChatTemplateName(ChatTemplate chat_template) {
  switch (chat_template) {
    case ChatTemplate::kLlama2: return "llama-2";
    case ChatTemplate::kChatMl: return "chatml";
    case ChatTemplate::kVicuna: return "vicuna";
    case ChatTemplate::kRaw: break;
  }
  return "raw";
}

DetectedChatTemplate DetectChatTemplate(const std::string& model_dir) {
  DetectedChatTemplate out;
  const std::string path = model_dir + "/tokenizer_config.json";
  std::ifstream in(path);
  if (!in) {
    out.warning = absl::StrCat(path, " not found: chat requests use the raw template "
                                     "(contents joined by newlines; see --chat-template)");
    return out;
  }
  const nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  std::string jinja;
  if (config.is_object() && config.contains("chat_template")) {
    const nlohmann::json& entry = config["chat_template"];
    if (entry.is_string()) {
      jinja = entry.get<std::string>();
    } else if (entry.is_array()) {
      for (const nlohmann::json& named : entry) {
        if (named.is_object() && named.value("name", "") == "default" &&
            named.contains("template") && named["template"].is_string()) {
          jinja = named["template"].get<std::string>();
        }
      }
    }
  }
  if (jinja.empty()) {
    out.warning = absl::StrCat(path, " names no chat template: chat requests use the raw "
                                     "template (see --chat-template)");
    return out;
  }
  if (absl::StrContains(jinja, "<|im_start|>")) {
    out.chat_template = ChatTemplate::kChatMl;
  } else if (absl::StrContains(jinja, "[INST]") &&
             (absl::StrContains(jinja, "<<SYS>>") || absl::StrContains(jinja, "[/INST]"))) {
    out.chat_template = ChatTemplate::kLlama2;
  } else if (absl::StrContains(jinja, "USER:") && absl::StrContains(jinja, "ASSISTANT:")) {
    out.chat_template = ChatTemplate::kVicuna;
  } else {
    out.warning = absl::StrCat("the chat template in ", path,
                               " is none of the built-in ones (llama-2, chatml, vicuna): chat "
                               "requests use the raw template (see --chat-template)");
  }
  return out;
}

absl::StatusOr<RenderedChat> RenderChat(ChatTemplate chat_template,
                                        const std::vector<ChatMessage>& messages) {
  if (absl::Status roles = CheckRoles(messages); !roles.ok()) return roles;
  switch (chat_template) {
    case ChatTemplate::kLlama2: return RenderLlama2(messages);
    case ChatTemplate::kChatMl: return RenderChatMl(messages);
    case ChatTemplate::kVicuna: return RenderVicuna(messages);
    case ChatTemplate::kRaw: break;
  }
  return RenderRaw(messages);
}

absl::StatusOr<CustomChatTemplate> LoadChatTemplateFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("--chat-template-file ", path, ": cannot open (", std::strerror(errno), ")"));
  }
  nlohmann::json file;
  try {
    file = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& error) {
    return BadFile(path, absl::StrCat("not valid JSON (", error.what(), ")"));
  }
  if (!file.is_object()) {
    return BadFile(path, absl::StrCat("must hold a JSON object (got ", file.type_name(), ")"));
  }
  if (absl::Status s = OnlyKnownKeys(path, file, {"roles", "generation_prompt", "bos", "stop"}, "");
      !s.ok()) {
    return s;
  }
  CustomChatTemplate out;
  out.path = path;
  const auto roles = file.find("roles");
  if (roles == file.end() || !roles->is_object() || roles->empty()) {
    return BadFile(path,
                   "needs \"roles\": an object of {\"prefix\", \"suffix\"} per role, "
                   "e.g. {\"user\": {\"prefix\": \"User: \", \"suffix\": \"\\n\"}}");
  }
  for (const auto& [role, format] : roles->items()) {
    const std::string where = absl::StrCat("roles.", role, ".");
    if (!format.is_object()) {
      return BadFile(path, absl::StrCat("roles.", role,
                                        " must be an object with \"prefix\" "
                                        "and \"suffix\" (got ",
                                        format.type_name(), ")"));
    }
    if (absl::Status s = OnlyKnownKeys(path, format, {"prefix", "suffix"}, where); !s.ok()) {
      return s;
    }
    CustomChatTemplate::Role& r = out.roles[role];
    if (absl::Status s = ReadString(path, format, "prefix", where, &r.prefix); !s.ok()) return s;
    if (absl::Status s = ReadString(path, format, "suffix", where, &r.suffix); !s.ok()) return s;
  }
  if (absl::Status s = ReadString(path, file, "generation_prompt", "", &out.generation_prompt);
      !s.ok()) {
    return s;
  }
  if (const auto bos = file.find("bos"); bos != file.end()) {
    if (!bos->is_boolean()) {
      return BadFile(path, absl::StrCat("bos must be true or false (got ", bos->type_name(), ")"));
    }
    out.bos = bos->get<bool>();
  }
  if (const auto stop = file.find("stop"); stop != file.end()) {
    if (!stop->is_array()) {
      return BadFile(
          path, absl::StrCat("stop must be an array of strings (got ", stop->type_name(), ")"));
    }
    for (const nlohmann::json& s : *stop) {
      if (!s.is_string() || s.get<std::string>().empty()) {
        return BadFile(path, "stop must be an array of non-empty strings");
      }
      out.stop.push_back(s.get<std::string>());
    }
  }
  return out;
}

absl::StatusOr<RenderedChat> RenderChat(const CustomChatTemplate& chat_template,
                                        const std::vector<ChatMessage>& messages) {
  if (messages.empty()) return absl::InvalidArgumentError("messages is empty");
  std::string text;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto role = chat_template.roles.find(messages[i].role);
    if (role == chat_template.roles.end()) {
      std::vector<std::string> known;
      for (const auto& [name, format] : chat_template.roles) known.push_back(name);
      return Invalid(i, absl::StrCat("role '", messages[i].role,
                                     "' is not in the chat template file's roles (",
                                     absl::StrJoin(known, ", "), ")"));
    }
    absl::StrAppend(&text, role->second.prefix, messages[i].content, role->second.suffix);
  }
  absl::StrAppend(&text, chat_template.generation_prompt);
  RenderedChat out;
  out.segments.push_back(std::move(text));
  out.bos = chat_template.bos;
  out.stop = chat_template.stop;
  return out;
}

}  // namespace specmoe::server
