#include "engine/text/chat_template.h"

#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "core/error.h"

// Each family is rendered the way its reference template renders it under Hugging Face's Jinja
// settings (tests/fixtures/chat/*.json, written by scripts/reference/make_chat_fixtures.py):
//   chatml   SmolLM2-135M-Instruct, Qwen2/Qwen2.5-Instruct, OpenHermes-2.5
//   llama3   Meta-Llama-3-8B-Instruct
//   llama2   Llama-2-7b-chat-hf
//   mistral  Mistral-7B-Instruct-v0.2 (mistralai's "v1" template)
//   zephyr   TinyLlama-1.1B-Chat-v1.0 / zephyr-7b-beta
//   gemma    gemma-3-*-it
//   phi3     Phi-3.5-mini-instruct
//   deepseek deepseek-llm-7b-chat / DeepSeek-V2-Chat
// "strip" below is Python's str.strip() (what Jinja's `trim` filter and `.strip()` call).

namespace hearth::engine {
namespace {

enum class Role { System, User, Assistant };

struct Message {
  Role role;
  std::string_view role_name;
  std::string_view content;
};

constexpr std::array<std::pair<std::string_view, ChatTemplateKind>, 8> kNames = {{
    {"chatml", ChatTemplateKind::ChatML},
    {"llama3", ChatTemplateKind::Llama3},
    {"llama2", ChatTemplateKind::Llama2},
    {"mistral", ChatTemplateKind::Mistral},
    {"zephyr", ChatTemplateKind::Zephyr},
    {"gemma", ChatTemplateKind::Gemma},
    {"phi3", ChatTemplateKind::Phi3},
    {"deepseek", ChatTemplateKind::DeepSeek},
}};

// Decodes the UTF-8 sequence of `length` bytes at `text[at]`; -1 when it is not well formed.
int32_t decode_utf8(std::string_view text, size_t at, size_t length) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[at + i]); };
  const uint8_t lead = byte(0);
  uint32_t cp = 0;
  if (length == 1) return lead < 0x80 ? lead : -1;
  if (length == 2 && (lead & 0xE0) == 0xC0) cp = lead & 0x1Fu;
  else if (length == 3 && (lead & 0xF0) == 0xE0) cp = lead & 0x0Fu;
  else if (length == 4 && (lead & 0xF8) == 0xF0) cp = lead & 0x07u;
  else return -1;
  for (size_t i = 1; i < length; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (byte(i) & 0x3Fu);
  }
  return static_cast<int32_t>(cp);
}

size_t utf8_length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 0;
}

// Python's str.isspace() (the code points str.strip() removes).
bool is_python_space(int32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Python's str.strip() on UTF-8 text; bytes that are not well-formed UTF-8 are not whitespace.
std::string_view strip(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t length = utf8_length(static_cast<uint8_t>(text[begin]));
    if (length == 0 || begin + length > text.size()) break;
    if (!is_python_space(decode_utf8(text, begin, length))) break;
    begin += length;
  }
  size_t end = text.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && end - start < 4 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
    const size_t length = utf8_length(static_cast<uint8_t>(text[start]));
    if (length != end - start) break;
    if (!is_python_space(decode_utf8(text, start, length))) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

std::vector<Message> parse_messages(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                                    const ChatTemplateOptions& options) {
  if (messages.empty()) throw Error("chat template: the conversation has no messages");
  std::vector<Message> parsed;
  parsed.reserve(messages.size() + 1);
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    Role parsed_role;
    if (role == "system") {
      parsed_role = Role::System;
    } else if (role == "user") {
      parsed_role = Role::User;
    } else if (role == "assistant") {
      parsed_role = Role::Assistant;
    } else if (role == "ipython" && kind == ChatTemplateKind::Llama3) {
      parsed_role = Role::User;  // Llama 3.1's turn for tool results, written under its own header
    } else {
      throw Error(fmt::format("chat template: message {} has role '{}'; the supported roles are system, user "
                              "and assistant",
                              i, role));
    }
    parsed.push_back({parsed_role, role, messages[i].content});
  }
  if (!options.default_system.empty() && parsed.front().role != Role::System) {
    parsed.insert(parsed.begin(), Message{Role::System, "system", options.default_system});
  }
  return parsed;
}

// For the templates that take an optional first system message and then strictly alternating
// user/assistant turns starting with user (Llama 2, Mistral, Gemma): splits off the system
// message and refuses what those templates refuse. A system message later in the conversation
// is refused too: the templates either raise or silently misplace it.
struct Alternating {
  const Message* system = nullptr;
  std::span<const Message> turns;
};

Alternating split_alternating(ChatTemplateKind kind, const std::vector<Message>& messages) {
  Alternating result;
  result.turns = messages;
  if (messages.front().role == Role::System) {
    result.system = &messages.front();
    result.turns = result.turns.subspan(1);
  }
  for (size_t i = 0; i < result.turns.size(); ++i) {
    const Message& message = result.turns[i];
    const Role expected = i % 2 == 0 ? Role::User : Role::Assistant;
    if (message.role != expected) {
      throw Error(fmt::format("chat template {}: after an optional first system message, roles must alternate "
                              "user/assistant/user/…; turn {} is '{}' where '{}' was expected",
                              chat_template_name(kind), i, message.role_name,
                              expected == Role::User ? "user" : "assistant"));
    }
  }
  return result;
}

std::string render_chatml(const std::vector<Message>& messages, const ChatTemplateOptions& options) {
  std::string out;
  for (const Message& m : messages) fmt::format_to(std::back_inserter(out), "<|im_start|>{}\n{}<|im_end|>\n", m.role_name, m.content);
  if (options.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_llama3(const std::vector<Message>& messages, const ChatTemplateOptions& options) {
  std::string out = options.bos_token;
  for (const Message& m : messages) {
    fmt::format_to(std::back_inserter(out), "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>", m.role_name,
                   strip(m.content));
  }
  if (options.add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// Llama 2 chat: the system message goes inside the first [INST] in <<SYS>>, the whole first user
// content (with it) is stripped; every user turn opens with BOS; no generation prompt (the
// template always ends after [/INST] or after an answer's EOS).
std::string render_llama2(const std::vector<Message>& messages, const ChatTemplateOptions& options) {
  const Alternating conversation = split_alternating(ChatTemplateKind::Llama2, messages);
  std::string out;
  for (size_t i = 0; i < conversation.turns.size(); ++i) {
    const Message& m = conversation.turns[i];
    std::string content;
    if (i == 0 && conversation.system != nullptr) {
      content = fmt::format("<<SYS>>\n{}\n<</SYS>>\n\n{}", conversation.system->content, m.content);
    } else {
      content = m.content;
    }
    if (m.role == Role::User) {
      fmt::format_to(std::back_inserter(out), "{}[INST] {} [/INST]", options.bos_token, strip(content));
    } else {
      fmt::format_to(std::back_inserter(out), " {} {}", strip(content), options.eos_token);
    }
  }
  return out;
}

// Mistral "v1": BOS once, " [INST] … [/INST]" per user turn (the system message prefixed to the
// first one), " answer</s>" per assistant turn; contents verbatim; no generation prompt.
std::string render_mistral(const std::vector<Message>& messages, const ChatTemplateOptions& options) {
  const Alternating conversation = split_alternating(ChatTemplateKind::Mistral, messages);
  std::string out = options.bos_token;
  for (size_t i = 0; i < conversation.turns.size(); ++i) {
    const Message& m = conversation.turns[i];
    if (m.role == Role::User) {
      if (i == 0 && conversation.system != nullptr) {
        fmt::format_to(std::back_inserter(out), " [INST] {}\n\n{} [/INST]", conversation.system->content, m.content);
      } else {
        fmt::format_to(std::back_inserter(out), " [INST] {} [/INST]", m.content);
      }
    } else {
      fmt::format_to(std::back_inserter(out), " {}{}", m.content, options.eos_token);
    }
  }
  return out;
}

// Gemma 3: no system role; the system text plus a blank line opens the first turn (unstripped),
// turn contents are stripped, the assistant is "model".
std::string render_gemma(const std::vector<Message>& messages, const ChatTemplateOptions& options) {
  const Alternating conversation = split_alternating(ChatTemplateKind::Gemma, messages);
  std::string out = options.bos_token;
  for (size_t i = 0; i < conversation.turns.size(); ++i) {
    const Message& m = conversation.turns[i];
    out += "<start_of_turn>";
    out += m.role == Role::User ? "user\n" : "model\n";
    if (i == 0 && conversation.system != nullptr) {
      out += conversation.system->content;
      out += "\n\n";
    }
    out += strip(m.content);
    out += "<end_of_turn>\n";
  }
  if (options.add_generation_prompt) out += "<start_of_turn>model\n";
  return out;
}

std::string render_zephyr(const std::vector<Message>& messages, const ChatTemplateOptions& options) {
  std::string out;
  for (const Message& m : messages) fmt::format_to(std::back_inserter(out), "<|{}|>\n{}{}\n", m.role_name, m.content, options.eos_token);
  if (options.add_generation_prompt) out += "<|assistant|>\n";
  return out;
}

// Phi-3.5: an empty system message is left out; without a generation prompt the text ends in EOS.
std::string render_phi3(const std::vector<Message>& messages, const ChatTemplateOptions& options) {
  std::string out;
  for (const Message& m : messages) {
    if (m.role == Role::System && m.content.empty()) continue;
    fmt::format_to(std::back_inserter(out), "<|{}|>\n{}<|end|>\n", m.role_name, m.content);
  }
  out += options.add_generation_prompt ? std::string_view("<|assistant|>\n") : std::string_view(options.eos_token);
  return out;
}

std::string render_deepseek(const std::vector<Message>& messages, const ChatTemplateOptions& options) {
  std::string out = options.bos_token;
  for (const Message& m : messages) {
    switch (m.role) {
      case Role::User: fmt::format_to(std::back_inserter(out), "User: {}\n\n", m.content); break;
      case Role::Assistant: fmt::format_to(std::back_inserter(out), "Assistant: {}{}", m.content, options.eos_token); break;
      case Role::System: fmt::format_to(std::back_inserter(out), "{}\n\n", m.content); break;
    }
  }
  if (options.add_generation_prompt) out += "Assistant:";
  return out;
}

// Undoes the escapes of a Jinja (Python-style) string literal that matter in a system prompt;
// nullopt when `body` is not the inside of one literal (an unescaped quote or a Jinja delimiter
// means the text is built from expressions, not written out).
std::optional<std::string> unescape_literal(std::string_view body) {
  if (body.find("{{") != std::string_view::npos || body.find("{%") != std::string_view::npos) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c == '\'' || c == '"') return std::nullopt;
    if (c != '\\' || i + 1 == body.size()) {
      out += c;
      continue;
    }
    const char next = body[++i];
    switch (next) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': case '\'': case '"': out += next; break;
      default: out += '\\'; out += next; break;
    }
  }
  return out;
}

}  // namespace

std::string_view chat_template_name(ChatTemplateKind kind) {
  for (const auto& [name, k] : kNames) {
    if (k == kind) return name;
  }
  HEARTH_CHECK(false, "unknown ChatTemplateKind {}", static_cast<int>(kind));
  return {};
}

std::optional<ChatTemplateKind> chat_template_from_name(std::string_view name) {
  for (const auto& [n, kind] : kNames) {
    if (n == name) return kind;
  }
  return std::nullopt;
}

// Markers checked in an order where a more specific family wins: e.g. Phi-4 uses <|im_start|>
// with <|im_sep|> (not ChatML), Mistral v3/v7 use [INST] with other spacing and system placement.
std::optional<ChatTemplateKind> detect_chat_template(std::string_view t) {
  const auto has = [t](std::string_view s) { return t.find(s) != std::string_view::npos; };
  if (has("<|im_start|>")) {
    if (has("<|im_sep|>") || has("<end_of_utterance>")) return std::nullopt;  // Phi-4, SmolVLM
    return ChatTemplateKind::ChatML;
  }
  if (has("<|start_header_id|>") && has("<|end_header_id|>")) return ChatTemplateKind::Llama3;
  if (has("<start_of_turn>")) return ChatTemplateKind::Gemma;
  if (has("[INST]")) {
    if (has("[SYSTEM_PROMPT]") || has("[AVAILABLE_TOOLS]")) return std::nullopt;  // Mistral v3 / v7
    return has("<<SYS>>") ? ChatTemplateKind::Llama2 : ChatTemplateKind::Mistral;
  }
  if (has("<|user|>") && has("<|assistant|>")) {
    if (has("<|end|>")) return ChatTemplateKind::Phi3;
    if (has("eos_token")) return ChatTemplateKind::Zephyr;  // turns closed by EOS
    return std::nullopt;                                    // GLM-Edge, Falcon 3, …
  }
  if (has("'Assistant: ' + message['content'] + eos_token") || (has("'User: '") && has("'Assistant:'"))) {
    return ChatTemplateKind::DeepSeek;
  }
  return std::nullopt;
}

std::string chat_template_default_system(std::string_view t) {
  constexpr std::string_view kOpen = "<|im_start|>system";
  constexpr std::string_view kClose = "<|im_end|>";
  for (size_t at = t.find(kOpen); at != std::string_view::npos; at = t.find(kOpen, at + 1)) {
    size_t body = at + kOpen.size();
    if (t.substr(body, 1) == "\n") {
      body += 1;
    } else if (t.substr(body, 2) == "\\n") {
      body += 2;
    } else {
      continue;
    }
    const size_t close = t.find(kClose, body);
    if (close == std::string_view::npos) break;
    std::optional<std::string> text = unescape_literal(t.substr(body, close - body));
    if (text && !text->empty()) return *std::move(text);
  }
  return {};
}

std::string apply_chat_template(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                                const ChatTemplateOptions& options) {
  const std::vector<Message> parsed = parse_messages(kind, messages, options);
  switch (kind) {
    case ChatTemplateKind::ChatML: return render_chatml(parsed, options);
    case ChatTemplateKind::Llama3: return render_llama3(parsed, options);
    case ChatTemplateKind::Llama2: return render_llama2(parsed, options);
    case ChatTemplateKind::Mistral: return render_mistral(parsed, options);
    case ChatTemplateKind::Zephyr: return render_zephyr(parsed, options);
    case ChatTemplateKind::Gemma: return render_gemma(parsed, options);
    case ChatTemplateKind::Phi3: return render_phi3(parsed, options);
    case ChatTemplateKind::DeepSeek: return render_deepseek(parsed, options);
  }
  HEARTH_CHECK(false, "unknown ChatTemplateKind {}", static_cast<int>(kind));
  return {};
}

}  // namespace hearth::engine
