#include "engine/model.h"

#include <chrono>

#include "core/error.h"

namespace hearth::engine {

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

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

GenerationResult Model::generate(const std::vector<Token>& prompt, const GenerationOptions& options,
                                 const std::function<bool(std::string_view)>& on_text) {
  GenerationResult result;
  result.prompt_tokens = static_cast<int32_t>(prompt.size());
  if (prompt.empty()) throw Error("the prompt is empty (no tokens)");
  if (result.prompt_tokens >= n_ctx_) {
    throw Error(fmt::format("the prompt has {} tokens but the context holds {}; use a shorter prompt or a larger "
                            "--ctx-size (the model was trained with {})",
                            result.prompt_tokens, n_ctx_, config_.n_ctx_train));
  }
  Stage& stage = this->stage();
  Sampler sampler(options.sampling);
  std::vector<Token> history(prompt);
  std::vector<float> logits;

  // Prefill in chunks of n_batch; logits only for the last prompt token.
  const auto prefill_start = std::chrono::steady_clock::now();
  const int32_t n_batch = std::max(1, options_.n_batch);
  for (int32_t begin = 0; begin < result.prompt_tokens; begin += n_batch) {
    const int32_t count = std::min(n_batch, result.prompt_tokens - begin);
    std::vector<kernels::KvSlot> slots;
    for (int32_t i = 0; i < count; ++i) slots.push_back({0, begin + i});
    const bool last_chunk = begin + count == result.prompt_tokens;
    const int32_t last_row = count - 1;
    stage.forward({.tokens = std::span<const Token>(prompt.data() + begin, static_cast<size_t>(count)),
                     .hidden = {},
                     .slots = slots,
                     .output_rows = last_chunk ? std::span<const int32_t>(&last_row, 1) : std::span<const int32_t>()},
                    logits);
  }
  result.prompt_seconds = seconds_since(prefill_start);

  const auto gen_start = std::chrono::steady_clock::now();
  IncrementalDecoder decoder(tokenizer_);
  StopStringMatcher stops(options.stop);
  const int32_t room = n_ctx_ - result.prompt_tokens;
  const int32_t limit = options.max_tokens < 0 ? room : std::min(options.max_tokens, room);
  result.finish_reason = "length";
  bool stopped = false;
  auto emit = [&](const std::string& text) {
    if (text.empty()) return true;
    result.text += text;
    return on_text ? on_text(text) : true;
  };
  for (int32_t step = 0; step < limit; ++step) {
    const SampledToken sampled = sampler.sample(logits, history);
    const Token token = sampled.token;
    if (!options.ignore_eos && tokenizer_.is_end_of_generation(token)) {
      result.finish_reason = "stop";
      break;
    }
    result.tokens.push_back(token);
    history.push_back(token);
    const std::string visible = stops.push(decoder.push(token), stopped);
    if (!emit(visible) || stopped) {
      result.finish_reason = "stop";
      break;
    }
    if (step + 1 == limit) break;
    const kernels::KvSlot slot{0, static_cast<int32_t>(history.size()) - 1};
    const int32_t row0 = 0;
    stage.forward({.tokens = std::span<const Token>(&token, 1), .hidden = {}, .slots = std::span(&slot, 1),
                     .output_rows = std::span(&row0, 1)},
                    logits);
  }
  if (!stopped) {
    std::string tail = stops.push(decoder.flush(), stopped);
    if (!stopped) tail += stops.flush();
    emit(tail);
  }
  result.generation_seconds = seconds_since(gen_start);
  return result;
}

}  // namespace hearth::engine
