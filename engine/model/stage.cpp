#include "engine/model/stage.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "engine/model/tensor_map.h"

namespace hearth::engine {

using kernels::Tensor;

namespace {
std::string shape_text(const std::array<int64_t, 4>& ne) {
  return fmt::format("[{}, {}, {}, {}]", ne[0], ne[1], ne[2], ne[3]);
}
}  // namespace

Tensor Stage::load(const gguf::GgufFile& file, const TensorDesc& desc) {
  const gguf::TensorInfo* info = file.find_tensor(desc.name);
  if (info == nullptr) {
    if (desc.required) throw Error(fmt::format("{}: tensor '{}' is missing", file.path(), desc.name));
    return {};
  }
  if (info->ne != desc.ne) {
    throw Error(fmt::format("{}: tensor '{}' has shape {}, expected {}", file.path(), desc.name, shape_text(info->ne),
                            shape_text(desc.ne)));
  }
  if (desc.f32 && info->type != DType::F32) {
    throw Error(fmt::format("{}: tensor '{}' must be F32, not {}", file.path(), desc.name, dtype_name(info->type)));
  }
  if (!backend_.supports_weight_type(info->type)) {
    throw Error(fmt::format("{}: tensor '{}' has type {}, which the {} backend does not support yet", file.path(),
                            desc.name, dtype_name(info->type), backend_.name()));
  }
  const std::span<const uint8_t> bytes = file.tensor_data(*info);
  Tensor t = backend_.weight(info->type, info->ne, bytes.data(), mapping_);
  // The backend copied (repacked) the bytes: the mapped original need not stay resident.
  if (!t.buffer->borrows_host_memory()) mapping_->release(bytes);
  return t;
}

Tensor& Stage::Layer::operator[](LayerTensor role) {
  switch (role) {
    case LayerTensor::AttnNorm: return attn_norm;
    case LayerTensor::Q: return wq;
    case LayerTensor::K: return wk;
    case LayerTensor::V: return wv;
    case LayerTensor::AttnOutput: return wo;
    case LayerTensor::BiasQ: return bq;
    case LayerTensor::BiasK: return bk;
    case LayerTensor::BiasV: return bv;
    case LayerTensor::QNorm: return q_norm;
    case LayerTensor::KNorm: return k_norm;
    case LayerTensor::PostAttnNorm: return post_attn_norm;
    case LayerTensor::FfnNorm: return ffn_norm;
    case LayerTensor::Gate: return w_gate;
    case LayerTensor::Up: return w_up;
    case LayerTensor::Down: return w_down;
    case LayerTensor::PostFfnNorm: return post_ffn_norm;
  }
  HEARTH_CHECK(false, "unknown layer tensor role");
  return attn_norm;
}

Stage::Stage(const gguf::GgufFile& file, const ModelConfig& config, kernels::Backend& backend, int32_t first,
             int32_t last, const StageOptions& options)
    : config_(config), backend_(backend), first_(first), last_(last), options_(options), mapping_(file.mapping()) {
  const ModelConfig& c = config_;
  if (first < 0 || last > c.n_layer || first >= last) {
    throw Error(fmt::format("stage layers [{}, {}) are not inside the model's {} layers", first, last, c.n_layer));
  }
  if (!backend_.supports_kv_type(options.kv_type, c.head_dim)) {
    const int64_t block = dtype_block_size(options.kv_type);
    throw Error(fmt::format("the {} backend cannot hold a {} KV cache for {}{}; use an f16 or f32 cache",
                            backend_.name(), dtype_name(options.kv_type), file.path(),
                            block > 1 && c.head_dim % block != 0
                                ? fmt::format(" (heads of {} values are not whole blocks of {})", c.head_dim, block)
                                : ""));
  }
  // Which tensors this stage holds, with their shapes, comes from the tensor map.
  layers_.resize(static_cast<size_t>(last - first));
  for (const TensorDesc& desc : stage_tensors(c, first, last)) {
    if (desc.layer >= 0) {
      layers_[static_cast<size_t>(desc.layer - first)][desc.role] = load(file, desc);
      continue;
    }
    switch (desc.global) {
      case GlobalTensor::TokenEmbd: token_embd_ = load(file, desc); break;
      case GlobalTensor::OutputNorm: output_norm_ = load(file, desc); break;
      case GlobalTensor::Output: output_ = load(file, desc); break;
      // A constant table, read by every rope of every step.
      case GlobalTensor::RopeFreqs: rope_freqs_ = load(file, desc); break;
    }
  }
  if (is_last() && c.tied_output) output_ = token_embd_;
  const int64_t kv_dim = int64_t{c.n_head_kv} * c.head_dim;
  for (Layer& l : layers_) l.kv = backend_.new_kv_layer(options.kv_type, options.n_seq, options.n_ctx, kv_dim);
  reserve_arena(std::max(1, options.max_batch), std::max(1, options.n_seq));
}

void Stage::reserve_arena(int64_t tokens, int64_t outputs) {
  const ModelConfig& c = config_;
  const int64_t e = c.n_embd, q_dim = int64_t{c.n_head} * c.head_dim, kv_dim = int64_t{c.n_head_kv} * c.head_dim;
  const auto f32_rows = [](int64_t width, int64_t rows) { return static_cast<size_t>(width * rows) * sizeof(float); };
  kernels::Arena arena;
  Regions r{};
  r.x = arena.reserve(f32_rows(e, tokens));
  r.cur = arena.reserve(f32_rows(e, tokens));
  r.q = arena.reserve(f32_rows(q_dim, tokens));
  r.k = arena.reserve(f32_rows(kv_dim, tokens));
  r.v = arena.reserve(f32_rows(kv_dim, tokens));
  r.attn = arena.reserve(f32_rows(q_dim, tokens));
  r.gate = arena.reserve(f32_rows(c.n_ff, tokens));
  r.up = arena.reserve(f32_rows(c.n_ff, tokens));
  r.tokens = arena.reserve(static_cast<size_t>(tokens) * sizeof(int32_t));
  r.positions = arena.reserve(static_cast<size_t>(tokens) * sizeof(int32_t));
  r.slots = arena.reserve(static_cast<size_t>(tokens) * sizeof(kernels::KvSlot));
  r.out_rows = arena.reserve(static_cast<size_t>(outputs) * sizeof(int32_t));
  if (is_last()) {
    r.picked = arena.reserve(f32_rows(e, outputs));
    r.logits = arena.reserve(f32_rows(c.n_vocab, outputs));
  }
  arena.allocate(backend_);
  arena_ = std::move(arena);
  regions_ = r;
  arena_tokens_ = tokens;
  arena_outputs_ = outputs;
}

Stage::Activations Stage::activations(int64_t n, int64_t n_out) const {
  const ModelConfig& c = config_;
  const int64_t e = c.n_embd, q_dim = int64_t{c.n_head} * c.head_dim, kv_dim = int64_t{c.n_head_kv} * c.head_dim;
  const Regions& r = regions_;
  Activations a;
  a.x = arena_.tensor(r.x, DType::F32, {e, n, 1, 1});
  a.cur = arena_.tensor(r.cur, DType::F32, {e, n, 1, 1});
  a.q = arena_.tensor(r.q, DType::F32, {q_dim, n, 1, 1});
  a.k = arena_.tensor(r.k, DType::F32, {kv_dim, n, 1, 1});
  a.v = arena_.tensor(r.v, DType::F32, {kv_dim, n, 1, 1});
  a.attn = arena_.tensor(r.attn, DType::F32, {q_dim, n, 1, 1});
  a.gate = arena_.tensor(r.gate, DType::F32, {c.n_ff, n, 1, 1});
  a.up = arena_.tensor(r.up, DType::F32, {c.n_ff, n, 1, 1});
  a.tokens = arena_.tensor(r.tokens, DType::I32, {n, 1, 1, 1});
  a.positions = arena_.tensor(r.positions, DType::I32, {n, 1, 1, 1});
  a.slots = arena_.tensor(r.slots, DType::I32, {2, n, 1, 1});
  if (n_out > 0) {
    a.out_rows = arena_.tensor(r.out_rows, DType::I32, {n_out, 1, 1, 1});
    if (is_last()) {
      a.picked = arena_.tensor(r.picked, DType::F32, {e, n_out, 1, 1});
      a.logits = arena_.tensor(r.logits, DType::F32, {c.n_vocab, n_out, 1, 1});
    }
  }
  return a;
}

void Stage::run_layer(Layer& l, int32_t il, const Activations& a) {
  const ModelConfig& c = config_;
  kernels::Backend& b = backend_;
  const int64_t n = a.x.n_rows();
  const Tensor &x = a.x, &cur = a.cur, &q = a.q, &k = a.k, &v = a.v;

  // Attention block.
  b.rms_norm(x, l.attn_norm, c.norm_eps, cur);
  b.matmul(l.wq, cur, q);
  b.matmul(l.wk, cur, k);
  b.matmul(l.wv, cur, v);
  if (c.qkv_bias) {
    b.add_bias(q, l.bq);
    b.add_bias(k, l.bk);
    b.add_bias(v, l.bv);
  }
  if (c.qk_norm) {  // per head: view [n * heads, head_dim]
    const Tensor qh = q.reshaped({c.head_dim, n * c.n_head, 1, 1});
    const Tensor kh = k.reshaped({c.head_dim, n * c.n_head_kv, 1, 1});
    b.rms_norm(qh, l.q_norm, c.norm_eps, qh);
    b.rms_norm(kh, l.k_norm, c.norm_eps, kh);
  }
  const bool swa = c.is_swa_layer(il);
  kernels::RopeParams rope;
  rope.mode = c.rope_mode;
  rope.n_rot = c.n_rot;
  rope.freq_base = swa ? c.rope_freq_base_swa : c.rope_freq_base;
  rope.freq_scale = swa ? 1.0f : c.rope_freq_scale;
  rope.freq_factors = rope_freqs_;
  b.rope(q, c.n_head, a.positions, rope);
  b.rope(k, c.n_head_kv, a.positions, rope);
  b.kv_store(l.kv, k, v, a.slots);
  kernels::AttentionParams ap;
  ap.n_head = c.n_head;
  ap.n_head_kv = c.n_head_kv;
  ap.head_dim = c.head_dim;
  ap.scale = c.attention_scale;
  ap.softcap = c.attn_logit_softcap;
  ap.window = swa ? c.sliding_window : 0;
  b.attention(q, l.kv, a.slots, ap, a.attn);
  b.matmul(l.wo, a.attn, cur);
  if (c.post_norms) b.rms_norm(cur, l.post_attn_norm, c.norm_eps, cur);
  b.add(x, cur, x);

  // Feed-forward block.
  b.rms_norm(x, l.ffn_norm, c.norm_eps, cur);
  b.matmul(l.w_gate, cur, a.gate);
  b.matmul(l.w_up, cur, a.up);
  b.glu(a.gate, a.up, c.activation, a.gate);
  b.matmul(l.w_down, a.gate, cur);
  if (c.post_norms) b.rms_norm(cur, l.post_ffn_norm, c.norm_eps, cur);
  b.add(x, cur, x);
}

void Stage::forward(const StageInput& input, std::vector<float>& out) {
  const ModelConfig& c = config_;
  kernels::Backend& b = backend_;
  const int64_t n = static_cast<int64_t>(input.slots.size());
  HEARTH_CHECK(n > 0, "empty batch");
  for (const kernels::KvSlot& s : input.slots) {
    if (s.seq < 0 || s.seq >= options_.n_seq || s.pos < 0 || s.pos >= options_.n_ctx) {
      throw Error(fmt::format("token slot (sequence {}, position {}) is outside the KV cache ({} sequences x {} positions)",
                              s.seq, s.pos, options_.n_seq, options_.n_ctx));
    }
  }
  const int64_t n_out = is_last() ? static_cast<int64_t>(input.output_rows.size()) : 0;
  for (const int32_t row : input.output_rows.first(static_cast<size_t>(n_out))) {
    if (row < 0 || row >= n) throw Error(fmt::format("output row {} is outside the batch of {} tokens", row, n));
  }
  if (is_first()) {
    HEARTH_CHECK(static_cast<int64_t>(input.tokens.size()) == n);
    for (Token t : input.tokens) {
      if (t < 0 || t >= c.n_vocab) throw Error(fmt::format("token id {} is outside the vocabulary of {}", t, c.n_vocab));
    }
  } else {
    HEARTH_CHECK(static_cast<int64_t>(input.hidden.size()) == n * c.n_embd);
  }
  if (n > arena_tokens_ || n_out > arena_outputs_) {
    b.synchronize();  // the old arena may still be read by enqueued work
    reserve_arena(std::max(n, arena_tokens_), std::max(n_out, arena_outputs_));
  }
  const Activations a = activations(n, n_out);

  // Per-step inputs, written once; every layer reads them from these tensors.
  positions_.resize(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) positions_[static_cast<size_t>(t)] = input.slots[static_cast<size_t>(t)].pos;
  b.write(a.positions, positions_.data(), positions_.size() * sizeof(int32_t));
  b.write(a.slots, input.slots.data(), input.slots.size() * sizeof(kernels::KvSlot));
  if (is_first()) {
    b.write(a.tokens, input.tokens.data(), input.tokens.size() * sizeof(Token));
  } else {
    b.write(a.x, input.hidden.data(), input.hidden.size() * sizeof(float));
  }
  if (n_out > 0) b.write(a.out_rows, input.output_rows.data(), static_cast<size_t>(n_out) * sizeof(int32_t));

  b.begin_step((static_cast<uint64_t>(n) << 32) | static_cast<uint64_t>(n_out));
  if (is_first()) {
    b.get_rows(token_embd_, a.tokens, a.x);
    if (c.embedding_scale != 1.0f) b.scale(a.x, c.embedding_scale);
  }
  for (int32_t il = first_; il < last_; ++il) run_layer(layers_[static_cast<size_t>(il - first_)], il, a);
  if (n_out > 0) {
    // Only the wanted rows go through the final norm and the output head.
    b.get_rows(a.x, a.out_rows, a.picked);
    b.rms_norm(a.picked, output_norm_, c.norm_eps, a.picked);
    b.matmul(output_, a.picked, a.logits);
    if (c.final_logit_softcap > 0.0f) b.softcap(a.logits, c.final_logit_softcap);
  }
  b.end_step();

  if (!is_last()) {
    out.resize(static_cast<size_t>(n * c.n_embd));
    b.read(a.x, out.data(), out.size() * sizeof(float));
    return;
  }
  out.resize(static_cast<size_t>(n_out * c.n_vocab));
  if (n_out > 0) b.read(a.logits, out.data(), out.size() * sizeof(float));
}

}  // namespace hearth::engine
