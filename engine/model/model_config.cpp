#include "engine/model/model_config.h"

#include <cmath>

#include "core/error.h"
#include "engine/model/tensor_map.h"

namespace hearth::engine {
namespace {

int32_t get_i32(const gguf::GgufFile& f, const std::string& key) {
  const uint64_t v = f.get_uint(key);
  if (v > static_cast<uint64_t>(INT32_MAX)) throw Error(fmt::format("{}: {} = {} is too large", f.path(), key, v));
  return static_cast<int32_t>(v);
}

int32_t get_i32_or(const gguf::GgufFile& f, const std::string& key, int32_t fallback) {
  return f.contains(key) ? get_i32(f, key) : fallback;
}

float get_f32_or(const gguf::GgufFile& f, const std::string& key, float fallback) {
  return f.contains(key) ? static_cast<float>(f.get_number(key)) : fallback;
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const gguf::GgufFile& f) {
  ModelConfig c;
  c.arch = f.get<std::string>("general.architecture");
  const std::string& a = c.arch;
  if (a != "llama" && a != "qwen2" && a != "qwen3" && a != "gemma3") {
    throw Error(fmt::format("{}: architecture '{}' is not supported (supported: llama, qwen2, qwen3, gemma3)", f.path(), a));
  }
  c.n_embd = get_i32(f, a + ".embedding_length");
  c.n_layer = get_i32(f, a + ".block_count");
  c.n_head = get_i32(f, a + ".attention.head_count");
  c.n_head_kv = get_i32_or(f, a + ".attention.head_count_kv", c.n_head);
  c.n_ff = get_i32(f, a + ".feed_forward_length");
  c.n_ctx_train = get_i32_or(f, a + ".context_length", 2048);
  c.norm_eps = get_f32_or(f, a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  if (c.n_head <= 0 || c.n_head_kv <= 0 || c.n_head % c.n_head_kv != 0) {
    throw Error(fmt::format("{}: {} heads cannot be grouped over {} KV heads", f.path(), c.n_head, c.n_head_kv));
  }
  c.head_dim = get_i32_or(f, a + ".attention.key_length", c.n_embd / c.n_head);
  c.head_dim_v = get_i32_or(f, a + ".attention.value_length", c.head_dim);
  if (c.head_dim != c.head_dim_v) {
    throw Error(fmt::format("{}: key length {} != value length {} is not supported", f.path(), c.head_dim, c.head_dim_v));
  }
  c.n_rot = get_i32_or(f, a + ".rope.dimension_count", c.head_dim);
  c.rope_freq_base = get_f32_or(f, a + ".rope.freq_base", 10000.0f);
  const std::string scaling = f.get_or<std::string>(a + ".rope.scaling.type", "none");
  const float factor = get_f32_or(f, a + ".rope.scaling.factor", 0.0f);
  if (scaling == "linear" && factor > 0.0f) {
    c.rope_freq_scale = 1.0f / factor;
  } else if (scaling != "none" && scaling != "linear") {
    throw Error(fmt::format("{}: rope scaling '{}' is not supported yet (supported: none, linear, Llama 3.1 rope_freqs)",
                            f.path(), scaling));
  }
  const auto has_global = [&](GlobalTensor t) { return f.find_tensor(global_tensor_name(t)) != nullptr; };
  c.rope_freq_factors = has_global(GlobalTensor::RopeFreqs);

  const std::string_view embd_name = global_tensor_name(GlobalTensor::TokenEmbd);
  const gguf::TensorInfo* embd = f.find_tensor(embd_name);
  if (embd == nullptr) throw Error(fmt::format("{}: tensor '{}' is missing", f.path(), embd_name));
  c.n_vocab = static_cast<int32_t>(embd->ne[1]);
  c.tied_output = !has_global(GlobalTensor::Output);
  // The optional parts of a layer, detected on the first layer.
  const auto has_layer0 = [&](LayerTensor t) { return f.find_tensor(layer_tensor_name(0, t)) != nullptr; };
  c.qkv_bias = has_layer0(LayerTensor::BiasQ);
  c.qk_norm = has_layer0(LayerTensor::QNorm);
  c.post_norms = has_layer0(LayerTensor::PostAttnNorm);

  if (a == "llama") {
    c.rope_mode = kernels::RopeMode::Normal;
  } else {
    c.rope_mode = kernels::RopeMode::Neox;  // qwen2, qwen3, gemma3
  }
  if (a == "gemma3") {
    c.activation = kernels::Activation::GeluTanh;
    c.embedding_scale = std::sqrt(static_cast<float>(c.n_embd));
    c.sliding_window = get_i32_or(f, a + ".attention.sliding_window", 0);
    c.swa_pattern = c.sliding_window > 0 ? 6 : 0;  // five local layers, then one global
    c.rope_freq_base_swa = 10000.0f;
    c.final_logit_softcap = get_f32_or(f, a + ".final_logit_softcapping", 0.0f);
    c.attn_logit_softcap = get_f32_or(f, a + ".attn_logit_softcapping", 0.0f);
  }
  c.attention_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  if (a == "gemma3" && c.n_layer == 62) {
    // Gemma 3 27B scales queries by the hidden size per head, not by the head dimension.
    c.attention_scale = 1.0f / std::sqrt(static_cast<float>(c.n_embd / c.n_head));
  }
  return c;
}

}  // namespace hearth::engine
