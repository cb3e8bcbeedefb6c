// A model opened for generation in one process: the GGUF file, its architecture, tokenizer and
// chat template, and one Stage over all of its layers on a backend. Sequences run through a
// Scheduler (engine/generate/scheduler.h: `generate` for one sequence), in one process as on a cluster.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/text/chat_template.h"
#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/stage.h"
#include "engine/text/tokenizer.h"
#include "kernels/backend.h"

namespace hearth::engine {

struct ModelOptions {
  int32_t n_ctx = 0;        // 0: min(4096, training context)
  int32_t n_seq = 1;        // sequence slots of the KV cache (each n_ctx positions): a scheduler's slots
  DType kv_type = DType::F16;
  int32_t n_batch = 512;    // tokens per forward pass: sizes the stage's activation arena (the scheduler's step budget)
  bool load_weights = true;  // false: tokenizer, template and config only (a cluster's coordinator)
  std::string chat_template;  // a template name overriding the file's ("chatml", "gemma", ...)
};

class Model {
 public:
  // Opens and validates everything up front; throws hearth::Error with the reason (missing file,
  // not a GGUF, unsupported architecture or tensor type, unknown tokenizer).
  Model(const std::filesystem::path& path, kernels::Backend& backend, const ModelOptions& options);

  const gguf::GgufFile& file() const { return file_; }
  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  int32_t n_ctx() const { return n_ctx_; }
  // The stage over every layer (for a Scheduler's LocalExecutor); needs load_weights.
  Stage& stage();
  const std::filesystem::path& path() const { return path_; }

  // The chat template in use: --chat-template, else recognized from the file, else chosen by
  // architecture. Throws naming the template when it cannot be determined.
  ChatTemplateKind chat_template() const;
  std::string format_chat(const std::vector<ChatMessage>& messages) const;
  // Tokens for a prompt: special tokens in the text are parsed; BOS is added as the model
  // wants unless the text already starts with it (as chat templates that write BOS do).
  std::vector<Token> tokenize_prompt(std::string_view text) const;

 private:
  std::filesystem::path path_;
  gguf::GgufFile file_;
  ModelConfig config_;
  Tokenizer tokenizer_;
  ModelOptions options_;
  int32_t n_ctx_;
  std::unique_ptr<Stage> stage_;
};

}  // namespace hearth::engine
