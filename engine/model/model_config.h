// A model's architecture as data: everything the forward pass needs to know, read from GGUF
// metadata and the tensor inventory. One forward path switches on these fields; adding an
// architecture means teaching `ModelConfig::from_gguf` its keys and quirks, nothing else.
#pragma once

#include <cstdint>
#include <string>

#include "engine/format/gguf.h"
#include "kernels/backend.h"

namespace hearth::engine {

struct ModelConfig {
  std::string arch;  // GGUF general.architecture: llama, qwen2, qwen3, gemma3
  int32_t n_vocab = 0;
  int32_t n_ctx_train = 0;
  int32_t n_embd = 0;
  int32_t n_layer = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;  // per-head size of q and k
  int32_t head_dim_v = 0;
  int32_t n_ff = 0;
  float norm_eps = 1e-5f;

  kernels::RopeMode rope_mode = kernels::RopeMode::Normal;
  int32_t n_rot = 0;
  float rope_freq_base = 10000.0f;
  float rope_freq_scale = 1.0f;      // 1 / linear scaling factor
  bool rope_freq_factors = false;    // rope_freqs.weight present (Llama 3.1 style scaling)

  // Sliding-window attention (Gemma 3): layer il uses the window when swa_pattern > 0 and
  // il % swa_pattern < swa_pattern - 1; those layers use rope_freq_base_swa.
  int32_t sliding_window = 0;
  int32_t swa_pattern = 0;
  float rope_freq_base_swa = 10000.0f;

  kernels::Activation activation = kernels::Activation::Silu;
  float embedding_scale = 1.0f;   // Gemma: sqrt(n_embd)
  float attention_scale = 0.0f;   // scale of q.k (1 / sqrt(head_dim) unless the model says)
  float attn_logit_softcap = 0.0f;
  float final_logit_softcap = 0.0f;
  bool qkv_bias = false;          // Qwen 2
  bool qk_norm = false;           // Qwen 3, Gemma 3: RMSNorm on each q / k head
  bool post_norms = false;        // Gemma 2/3: norms after attention and FFN outputs
  bool tied_output = false;       // output head shares token_embd.weight

  bool is_swa_layer(int32_t il) const { return swa_pattern > 0 && il % swa_pattern < swa_pattern - 1; }

  // Throws hearth::Error naming the architecture or the key when unsupported or inconsistent.
  static ModelConfig from_gguf(const gguf::GgufFile& file);
};

}  // namespace hearth::engine
