// Chat templates: the `tokenizer.chat_template` of a GGUF applied to a list of messages, for
// the template families in common use. A template is recognized by its content (or named
// with --chat-template); the output is exactly what the model's own Jinja template renders.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hearth::engine {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (and "ipython" for Llama 3 tool results)
  std::string content;
};

enum class ChatTemplateKind {
  ChatML,    // <|im_start|>role\n…<|im_end|>\n (SmolLM2, Qwen 2/2.5/3 without tools)
  Llama3,    // <|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>
  Llama2,    // [INST] <<SYS>>…<</SYS>> … [/INST] (Llama 2 chat)
  Mistral,   // [INST] … [/INST] (Mistral / Mixtral v1 style, TinyLlama-chat uses Zephyr)
  Zephyr,    // <|system|>\n…</s>\n<|user|>\n…</s>\n<|assistant|>\n (TinyLlama chat)
  Gemma,     // <start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n (Gemma 1/2/3)
  Phi3,      // <|user|>\n…<|end|>\n<|assistant|>\n
  DeepSeek,  // DeepSeek LLM / Coder: "User: …\n\nAssistant:"
};

// "chatml", "llama3", "llama2", "mistral", "zephyr", "gemma", "phi3", "deepseek".
std::string_view chat_template_name(ChatTemplateKind kind);
std::optional<ChatTemplateKind> chat_template_from_name(std::string_view name);
// Recognizes a Jinja template by distinctive content; nullopt when unknown.
std::optional<ChatTemplateKind> detect_chat_template(std::string_view jinja_template);
// The system message a template inserts when the conversation does not start with one (SmolLM2's
// and Qwen 2/2.5's ChatML templates do: a literal '<|im_start|>system\n…<|im_end|>'); empty
// when it inserts none. Goes into ChatTemplateOptions::default_system.
std::string chat_template_default_system(std::string_view jinja_template);

struct ChatTemplateOptions {
  bool add_generation_prompt = true;  // end with the assistant's header
  std::string bos_token;              // text of BOS, for templates that start with it
  std::string eos_token;              // text of EOS, for templates that close turns with it
  // When non-empty and the first message is not a system message, the conversation is rendered
  // as if it started with a system message of this content (see chat_template_default_system).
  std::string default_system;
};

// Throws hearth::Error for a role the template cannot express (e.g. "tool"), an empty
// conversation, and where the model's template refuses the conversation (Llama 2, Mistral and
// Gemma: roles must alternate user/assistant after an optional first system message).
std::string apply_chat_template(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                                const ChatTemplateOptions& options);

}  // namespace hearth::engine
