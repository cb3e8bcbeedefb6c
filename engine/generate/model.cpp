#include "engine/generate/model.h"

#include <algorithm>

#include "core/error.h"

namespace hearth::engine {

Model::Model(const std::filesystem::path& path, kernels::Backend& backend, const ModelOptions& options)
    : path_(path),
      file_(gguf::GgufFile::open(path)),
      config_(ModelConfig::from_gguf(file_)),
      tokenizer_(Tokenizer::from_gguf(file_)),
      options_(options) {
  n_ctx_ = options.n_ctx > 0 ? options.n_ctx : std::min<int32_t>(4096, config_.n_ctx_train);
  if (n_ctx_ < 16) throw Error(fmt::format("context size {} is too small", n_ctx_));
  if (!options.chat_template.empty() && !chat_template_from_name(options.chat_template)) {
    throw Error(fmt::format("unknown chat template '{}' (known: chatml, llama3, llama2, mistral, zephyr, gemma, phi3, "
                            "deepseek)",
                            options.chat_template));
  }
  StageOptions stage_options;
  stage_options.n_ctx = n_ctx_;
  if (options.n_seq < 1) throw Error(fmt::format("{} parallel sequences: need at least 1", options.n_seq));
  stage_options.n_seq = options.n_seq;
  stage_options.kv_type = options.kv_type;
  stage_options.max_batch = std::max(1, options.n_batch);
  if (options.load_weights) stage_ = std::make_unique<Stage>(file_, config_, backend, 0, config_.n_layer, stage_options);
}

Stage& Model::stage() {
  HEARTH_CHECK(stage_ != nullptr, "the model was opened without its weights");
  return *stage_;
}

ChatTemplateKind Model::chat_template() const {
  if (!options_.chat_template.empty()) return *chat_template_from_name(options_.chat_template);
  if (const gguf::Value* t = file_.find("tokenizer.chat_template")) {
    const auto* text = t->get_if<std::string_view>();
    if (text != nullptr) {
      if (auto kind = detect_chat_template(*text)) return *kind;
      std::string head(text->substr(0, 60));
      for (char& c : head) {
        if (c == '\n') c = ' ';
      }
      throw Error(fmt::format("{}: the model's chat template is not one hearth recognizes (it begins '{}...'); "
                              "pass --chat-template with one of chatml, llama3, llama2, mistral, zephyr, gemma, phi3, "
                              "deepseek",
                              file_.path(), head));
    }
  }
  // No template in the file: the architecture's own convention, where it has one.
  if (config_.arch == "gemma3") return ChatTemplateKind::Gemma;
  throw Error(fmt::format("{}: the model has no chat template; pass --chat-template NAME", file_.path()));
}

std::string Model::format_chat(const std::vector<ChatMessage>& messages) const {
  const ChatTemplateKind kind = chat_template();
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  if (tokenizer_.bos() >= 0) options.bos_token = std::string(tokenizer_.token_text(tokenizer_.bos()));
  if (tokenizer_.eos() >= 0) options.eos_token = std::string(tokenizer_.token_text(tokenizer_.eos()));
  if (const gguf::Value* t = file_.find("tokenizer.chat_template"); t != nullptr && options_.chat_template.empty()) {
    if (const auto* text = t->get_if<std::string_view>()) options.default_system = chat_template_default_system(*text);
  }
  return apply_chat_template(kind, messages, options);
}

std::vector<Token> Model::tokenize_prompt(std::string_view text) const {
  bool add_special = true;
  if (tokenizer_.bos() >= 0 && text.starts_with(tokenizer_.token_text(tokenizer_.bos()))) add_special = false;
  return tokenizer_.encode(text, add_special, /*parse_special=*/true);
}

}  // namespace hearth::engine
