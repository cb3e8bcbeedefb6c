#include "engine/model/tensor_map.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace hearth::engine {
namespace {

constexpr std::string_view kLayerPrefix = "blk.";

std::string_view layer_suffix(LayerTensor t) {
  switch (t) {
    case LayerTensor::AttnNorm: return "attn_norm.weight";
    case LayerTensor::Q: return "attn_q.weight";
    case LayerTensor::K: return "attn_k.weight";
    case LayerTensor::V: return "attn_v.weight";
    case LayerTensor::AttnOutput: return "attn_output.weight";
    case LayerTensor::BiasQ: return "attn_q.bias";
    case LayerTensor::BiasK: return "attn_k.bias";
    case LayerTensor::BiasV: return "attn_v.bias";
    case LayerTensor::QNorm: return "attn_q_norm.weight";
    case LayerTensor::KNorm: return "attn_k_norm.weight";
    case LayerTensor::PostAttnNorm: return "post_attention_norm.weight";
    case LayerTensor::FfnNorm: return "ffn_norm.weight";
    case LayerTensor::Gate: return "ffn_gate.weight";
    case LayerTensor::Up: return "ffn_up.weight";
    case LayerTensor::Down: return "ffn_down.weight";
    case LayerTensor::PostFfnNorm: return "post_ffw_norm.weight";
  }
  HEARTH_CHECK(false, "unknown layer tensor {}", static_cast<int>(t));
  return {};
}

// A vector of n F32 values.
TensorDesc vector_desc(int64_t n, SliceRule slice = SliceRule::Replicated, int64_t unit = 1) {
  TensorDesc d;
  d.ne = {n, 1, 1, 1};
  d.n_dims = 1;
  d.f32 = true;
  d.slice = slice;
  d.slice_unit = unit;
  return d;
}

TensorDesc norm_desc(int64_t n) {
  TensorDesc d = vector_desc(n);
  d.norm = true;
  return d;
}

// A matrix of `rows` rows of `row_len` values (GGUF ne = {row_len, rows}).
TensorDesc matrix_desc(int64_t row_len, int64_t rows, SliceRule slice, int64_t unit) {
  TensorDesc d;
  d.ne = {row_len, rows, 1, 1};
  d.n_dims = 2;
  d.slice = slice;
  d.slice_unit = unit;
  return d;
}

}  // namespace

std::string layer_tensor_name(int32_t layer, LayerTensor t) {
  HEARTH_CHECK(layer >= 0, "layer {} of tensor {}", layer, layer_suffix(t));
  std::string name(kLayerPrefix);
  name += std::to_string(layer);
  name += '.';
  name += layer_suffix(t);
  return name;
}

std::string_view global_tensor_name(GlobalTensor t) {
  switch (t) {
    case GlobalTensor::TokenEmbd: return "token_embd.weight";
    case GlobalTensor::OutputNorm: return "output_norm.weight";
    case GlobalTensor::Output: return "output.weight";
    case GlobalTensor::RopeFreqs: return "rope_freqs.weight";
  }
  HEARTH_CHECK(false, "unknown global tensor {}", static_cast<int>(t));
  return {};
}

std::optional<int32_t> tensor_layer(std::string_view name) {
  if (!name.starts_with(kLayerPrefix)) return std::nullopt;
  name.remove_prefix(kLayerPrefix.size());
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == name.size()) return std::nullopt;
  if (name[0] == '0' && dot != 1) return std::nullopt;  // "blk.03.x" is not a name the map writes
  int64_t layer = 0;
  for (size_t i = 0; i < dot; ++i) {
    const char c = name[i];
    if (c < '0' || c > '9') return std::nullopt;
    layer = layer * 10 + (c - '0');
    if (layer > INT32_MAX) return std::nullopt;
  }
  return static_cast<int32_t>(layer);
}

TensorDesc layer_tensor(const ModelConfig& c, int32_t il, LayerTensor t) {
  const int64_t e = c.n_embd, ff = c.n_ff, hd = c.head_dim;
  const int64_t q_dim = int64_t{c.n_head} * hd, kv_dim = int64_t{c.n_head_kv} * hd;
  TensorDesc d;
  switch (t) {
    // Norms act on whole rows of the hidden state (or on one head, for q/k norms): every shard
    // holds them whole.
    case LayerTensor::AttnNorm:
    case LayerTensor::FfnNorm:
    case LayerTensor::PostAttnNorm:
    case LayerTensor::PostFfnNorm: d = norm_desc(e); break;
    case LayerTensor::QNorm:
    case LayerTensor::KNorm: d = norm_desc(hd); break;
    // Q, K and V are cut by whole heads (a shard's query heads keep their KV heads), their biases
    // with them; the attention output is cut along its input, the same heads.
    case LayerTensor::Q: d = matrix_desc(e, q_dim, SliceRule::Rows, hd); break;
    case LayerTensor::K:
    case LayerTensor::V: d = matrix_desc(e, kv_dim, SliceRule::Rows, hd); break;
    case LayerTensor::BiasQ: d = vector_desc(q_dim, SliceRule::Rows, hd); break;
    case LayerTensor::BiasK:
    case LayerTensor::BiasV: d = vector_desc(kv_dim, SliceRule::Rows, hd); break;
    case LayerTensor::AttnOutput: d = matrix_desc(q_dim, e, SliceRule::Columns, hd); break;
    // Gate and up are cut by FFN features, down along the same features (its input).
    case LayerTensor::Gate:
    case LayerTensor::Up: d = matrix_desc(e, ff, SliceRule::Rows, 1); break;
    case LayerTensor::Down: d = matrix_desc(ff, e, SliceRule::Columns, 1); break;
  }
  d.name = layer_tensor_name(il, t);
  d.layer = il;
  d.role = t;
  return d;
}

TensorDesc global_tensor(const ModelConfig& c, GlobalTensor t) {
  const int64_t e = c.n_embd;
  TensorDesc d;
  switch (t) {
    // Replicated: a lookup reads whole rows for whichever tokens a shard sees, and a vocabulary
    // cut would need an all-reduce after every lookup for little gain (one row per token is
    // read). When tied, a shard computes its vocabulary rows of the logits from its whole copy.
    case GlobalTensor::TokenEmbd: d = matrix_desc(e, c.n_vocab, SliceRule::Replicated, 1); break;
    case GlobalTensor::OutputNorm: d = norm_desc(e); break;
    // The head is cut by vocabulary rows: each shard computes logits for its part of the vocabulary.
    case GlobalTensor::Output: d = matrix_desc(e, c.n_vocab, SliceRule::Rows, 1); break;
    // One factor per rotated pair, shared by every head: held whole.
    case GlobalTensor::RopeFreqs: d = vector_desc(c.n_rot / 2); break;
  }
  d.name = std::string(global_tensor_name(t));
  d.layer = -1;
  d.global = t;
  return d;
}

std::vector<TensorDesc> layer_tensors(const ModelConfig& c, int32_t il) {
  using enum LayerTensor;
  std::vector<LayerTensor> roles = {AttnNorm, Q, K, V};
  if (c.qkv_bias) roles.insert(roles.end(), {BiasQ, BiasK, BiasV});
  if (c.qk_norm) roles.insert(roles.end(), {QNorm, KNorm});
  roles.push_back(AttnOutput);
  if (c.post_norms) roles.push_back(PostAttnNorm);
  roles.insert(roles.end(), {FfnNorm, Gate, Up, Down});
  if (c.post_norms) roles.push_back(PostFfnNorm);
  std::vector<TensorDesc> out;
  out.reserve(roles.size());
  for (LayerTensor t : roles) out.push_back(layer_tensor(c, il, t));
  return out;
}

std::vector<TensorDesc> stage_tensors(const ModelConfig& c, int32_t first, int32_t last) {
  if (first < 0 || last > c.n_layer || first >= last) {
    throw Error(fmt::format("stage layers [{}, {}) are not inside the model's {} layers", first, last, c.n_layer));
  }
  const bool is_first = first == 0, is_last = last == c.n_layer;
  std::vector<TensorDesc> out;
  if (is_first || (is_last && c.tied_output)) out.push_back(global_tensor(c, GlobalTensor::TokenEmbd));
  if (is_last) {
    out.push_back(global_tensor(c, GlobalTensor::OutputNorm));
    if (!c.tied_output) out.push_back(global_tensor(c, GlobalTensor::Output));
  }
  if (c.rope_freq_factors) out.push_back(global_tensor(c, GlobalTensor::RopeFreqs));
  for (int32_t il = first; il < last; ++il) {
    std::vector<TensorDesc> layer = layer_tensors(c, il);
    out.insert(out.end(), std::make_move_iterator(layer.begin()), std::make_move_iterator(layer.end()));
  }
  return out;
}

int64_t slice_granularity(const TensorDesc& desc, DType type) {
  const int64_t unit = std::max<int64_t>(1, desc.slice_unit);
  if (desc.slice != SliceRule::Columns) return unit;
  return std::lcm(unit, std::max<int64_t>(1, dtype_block_size(type)));
}

}  // namespace hearth::engine
