// A stage: layers [first, last) of a model on one backend, with their KV cache. The first stage
// embeds tokens; the last applies the final norm and the output head. A single-process run is
// a stage over every layer; a cluster cuts the same model into several of these.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/gguf.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"
#include "kernels/backend.h"

namespace hearth::engine {

struct StageOptions {
  int32_t n_ctx = 4096;    // positions per sequence slot
  int32_t n_seq = 1;       // sequence slots in the KV cache
  DType kv_type = DType::F16;
};

struct StageInput {
  std::span<const Token> tokens;           // first stage: [n_tokens]
  std::span<const float> hidden;           // later stages: [n_tokens, n_embd]
  std::span<const kernels::KvSlot> slots;  // [n_tokens]: sequence slot and position of each token
  std::span<const int32_t> output_rows;    // last stage: the tokens whose logits are wanted
};

class Stage {
 public:
  // Loads (or maps) the weights of layers [first, last) — plus the embedding when first == 0
  // and the output head when last == n_layer — and allocates the KV cache. Throws
  // hearth::Error naming the tensor when one is missing, misshapen or of an unsupported type.
  Stage(const gguf::GgufFile& file, const ModelConfig& config, kernels::Backend& backend, int32_t first,
        int32_t last, const StageOptions& options);

  // Last stage: logits [output_rows.size(), n_vocab]; otherwise hidden states [n_tokens, n_embd].
  void forward(const StageInput& input, std::vector<float>& out);

  bool is_first() const { return first_ == 0; }
  bool is_last() const { return last_ == config_.n_layer; }
  int32_t first_layer() const { return first_; }
  int32_t last_layer() const { return last_; }
  const StageOptions& options() const { return options_; }
  const ModelConfig& config() const { return config_; }

 private:
  struct Layer {
    kernels::Tensor attn_norm, wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm, post_attn_norm;
    kernels::Tensor ffn_norm, w_gate, w_up, w_down, post_ffn_norm;
    kernels::KvLayer kv;
  };

  kernels::Tensor load(const gguf::GgufFile& file, const std::string& name, std::array<int64_t, 4> expected_ne,
                       bool required = true);
  void run_layer(Layer& layer, int32_t il, kernels::Tensor& x, const StageInput& input);

  ModelConfig config_;
  kernels::Backend& backend_;
  int32_t first_, last_;
  StageOptions options_;
  std::shared_ptr<const MappedFile> mapping_;
  kernels::Tensor token_embd_, output_norm_, output_;
  std::vector<float> rope_freqs_;
  std::vector<Layer> layers_;
};

}  // namespace hearth::engine
