// The tensor map: the one description of which tensors a model holds — their GGUF names, the
// shapes a ModelConfig implies, which are F32 norms, and how a tensor-parallel slice would cut
// each. Stage loading, synthetic models, feature detection, weight streaming and the planner all
// read names and shapes from here; no other file spells a per-layer tensor name.
//
// The architectures hearth runs (llama, qwen2, qwen3, gemma3) share one layer layout whose
// optional parts are switched by the config: q/k/v biases (qkv_bias), per-head q/k norms
// (qk_norm), norms after the attention and FFN outputs (post_norms), a tied output head
// (tied_output) and rope frequency factors (rope_freq_factors).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "engine/model/model_config.h"

namespace hearth::engine {

// What a tensor-parallel slice of a tensor would cut: nothing (every shard holds it whole),
// its rows (output features; column-parallel, e.g. Q/K/V, FFN gate/up, the output head by vocabulary rows),
// or its columns (input features; row-parallel, e.g. attention output, FFN down). `unit` is the
// granularity a cut must respect (head_dim values for heads, 1 otherwise; a quant block for columns).
enum class SliceRule { Replicated, Rows, Columns };

enum class LayerTensor { AttnNorm, Q, K, V, AttnOutput, BiasQ, BiasK, BiasV, QNorm, KNorm, PostAttnNorm,
                         FfnNorm, Gate, Up, Down, PostFfnNorm };
enum class GlobalTensor { TokenEmbd, OutputNorm, Output, RopeFreqs };

struct TensorDesc {
  std::string name;                 // GGUF name, e.g. "blk.3.attn_q.weight"
  int32_t layer = -1;               // -1 for global tensors
  LayerTensor role{};               // meaningful when layer >= 0
  GlobalTensor global{};            // meaningful when layer < 0
  std::array<int64_t, 4> ne{1,1,1,1};  // expected shape, GGUF order (ne[0] innermost)
  int32_t n_dims = 1;               // dimensions the file declares (1: vectors, 2: matrices)
  bool required = true;
  bool norm = false;                // a norm weight (must be F32)
  bool f32 = false;                 // must be stored as F32: norms, biases, rope frequency factors
  SliceRule slice = SliceRule::Replicated;
  int64_t slice_unit = 1;
};

std::string layer_tensor_name(int32_t layer, LayerTensor t);
std::string_view global_tensor_name(GlobalTensor t);
// Layer of a per-layer tensor name ("blk.12.ffn_up.weight" -> 12); nullopt for any other name (global, malformed).
// A layer number is canonical decimal (no sign, no leading zero, fits int32) followed by a '.' and
// a non-empty rest, so tensor_layer(layer_tensor_name(il, t)) == il and nothing else matches.
std::optional<int32_t> tensor_layer(std::string_view name);

// One tensor of layer `il` / one global tensor, described under `config`, whether or not the
// config's switches say the model holds it.
TensorDesc layer_tensor(const ModelConfig& config, int32_t il, LayerTensor t);
TensorDesc global_tensor(const ModelConfig& config, GlobalTensor t);

// The tensors layer `il` holds under `config`'s switches (qkv bias, qk norm, post norms...), in
// the order of the forward pass: attn_norm, q, k, v, [q/k/v bias], [q/k norm], attn_output,
// [post attention norm], ffn_norm, gate, up, down, [post FFN norm].
std::vector<TensorDesc> layer_tensors(const ModelConfig& config, int32_t il);
// What a stage over layers [first, last) holds: the embedding when first == 0 (and when it is the last
// stage with a tied output), output norm + output head on the last stage (the head is the embedding
// when tied), rope frequency factors when the config has them, then every layer's tensors.
// Throws hearth::Error when [first, last) is not a non-empty range inside the model's layers.
std::vector<TensorDesc> stage_tensors(const ModelConfig& config, int32_t first, int32_t last);

// The granularity a slice of `desc` stored as `type` must respect: its slice_unit, and for a cut
// through columns also whole quant blocks of `type` (their least common multiple).
int64_t slice_granularity(const TensorDesc& desc, DType type);

}  // namespace hearth::engine
