#include "engine/stage.h"

#include <cstring>

#include "core/error.h"

namespace hearth::engine {

using kernels::Tensor;

namespace {
std::string shape_text(const std::array<int64_t, 4>& ne) {
  return fmt::format("[{}, {}, {}, {}]", ne[0], ne[1], ne[2], ne[3]);
}
}  // namespace

Tensor Stage::load(const gguf::GgufFile& file, const std::string& name, std::array<int64_t, 4> expected_ne,
                   bool required) {
  const gguf::TensorInfo* info = file.find_tensor(name);
  if (info == nullptr) {
    if (required) throw Error(fmt::format("{}: tensor '{}' is missing", file.path(), name));
    return {};
  }
  if (info->ne != expected_ne) {
    throw Error(fmt::format("{}: tensor '{}' has shape {}, expected {}", file.path(), name, shape_text(info->ne),
                            shape_text(expected_ne)));
  }
  if (!backend_.supports_weight_type(info->type)) {
    throw Error(fmt::format("{}: tensor '{}' has type {}, which the {} backend does not support yet", file.path(), name,
                            dtype_name(info->type), backend_.name()));
  }
  const std::span<const uint8_t> bytes = file.tensor_data(*info);
  Tensor t = backend_.weight(info->type, info->ne, bytes.data(), mapping_);
  // The backend copied (repacked) the bytes: the mapped original need not stay resident.
  if (t.data != bytes.data()) mapping_->release(bytes);
  return t;
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
  const int64_t e = c.n_embd, q_dim = int64_t{c.n_head} * c.head_dim, kv_dim = int64_t{c.n_head_kv} * c.head_dim;
  if (is_first() || (is_last() && c.tied_output)) token_embd_ = load(file, "token_embd.weight", {e, c.n_vocab, 1, 1});
  if (is_last()) {
    output_norm_ = load(file, "output_norm.weight", {e, 1, 1, 1});
    output_ = c.tied_output ? token_embd_ : load(file, "output.weight", {e, c.n_vocab, 1, 1});
  }
  if (c.rope_freq_factors) {
    const gguf::TensorInfo* info = file.find_tensor("rope_freqs.weight");
    if (info->type != DType::F32 || info->n_elements != c.n_rot / 2) {
      throw Error(fmt::format("{}: rope_freqs.weight must be F32 [{}]", file.path(), c.n_rot / 2));
    }
    rope_freqs_.resize(static_cast<size_t>(c.n_rot / 2));
    std::memcpy(rope_freqs_.data(), file.tensor_data(*info).data(), rope_freqs_.size() * sizeof(float));
  }
  for (int32_t il = first; il < last; ++il) {
    const std::string p = fmt::format("blk.{}.", il);
    Layer l;
    l.attn_norm = load(file, p + "attn_norm.weight", {e, 1, 1, 1});
    l.wq = load(file, p + "attn_q.weight", {e, q_dim, 1, 1});
    l.wk = load(file, p + "attn_k.weight", {e, kv_dim, 1, 1});
    l.wv = load(file, p + "attn_v.weight", {e, kv_dim, 1, 1});
    l.wo = load(file, p + "attn_output.weight", {q_dim, e, 1, 1});
    if (c.qkv_bias) {
      l.bq = load(file, p + "attn_q.bias", {q_dim, 1, 1, 1});
      l.bk = load(file, p + "attn_k.bias", {kv_dim, 1, 1, 1});
      l.bv = load(file, p + "attn_v.bias", {kv_dim, 1, 1, 1});
    }
    if (c.qk_norm) {
      l.q_norm = load(file, p + "attn_q_norm.weight", {c.head_dim, 1, 1, 1});
      l.k_norm = load(file, p + "attn_k_norm.weight", {c.head_dim, 1, 1, 1});
    }
    l.ffn_norm = load(file, p + "ffn_norm.weight", {e, 1, 1, 1});
    l.w_gate = load(file, p + "ffn_gate.weight", {e, c.n_ff, 1, 1});
    l.w_up = load(file, p + "ffn_up.weight", {e, c.n_ff, 1, 1});
    l.w_down = load(file, p + "ffn_down.weight", {c.n_ff, e, 1, 1});
    if (c.post_norms) {
      l.post_attn_norm = load(file, p + "post_attention_norm.weight", {e, 1, 1, 1});
      l.post_ffn_norm = load(file, p + "post_ffw_norm.weight", {e, 1, 1, 1});
    }
    for (const Tensor* norm : {&l.attn_norm, &l.ffn_norm, &l.q_norm, &l.k_norm, &l.post_attn_norm, &l.post_ffn_norm}) {
      if (norm->data != nullptr && norm->type != DType::F32) {
        throw Error(fmt::format("{}: norm weights of layer {} must be F32, not {}", file.path(), il, dtype_name(norm->type)));
      }
    }
    l.kv = backend_.new_kv_layer(options.kv_type, options.n_seq, options.n_ctx, kv_dim);
    layers_.push_back(std::move(l));
  }
}

void Stage::run_layer(Layer& l, int32_t il, Tensor& x, const StageInput& input) {
  const ModelConfig& c = config_;
  kernels::Backend& b = backend_;
  const int64_t n = x.n_rows(), e = c.n_embd;
  const int64_t q_dim = int64_t{c.n_head} * c.head_dim, kv_dim = int64_t{c.n_head_kv} * c.head_dim;
  std::vector<int32_t> positions(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) positions[static_cast<size_t>(t)] = input.slots[static_cast<size_t>(t)].pos;

  // Attention block.
  Tensor cur = b.new_tensor(DType::F32, {e, n, 1, 1});
  b.rms_norm(x, &l.attn_norm, c.norm_eps, cur);
  Tensor q = b.new_tensor(DType::F32, {q_dim, n, 1, 1});
  Tensor k = b.new_tensor(DType::F32, {kv_dim, n, 1, 1});
  Tensor v = b.new_tensor(DType::F32, {kv_dim, n, 1, 1});
  b.matmul(l.wq, cur, q);
  b.matmul(l.wk, cur, k);
  b.matmul(l.wv, cur, v);
  if (c.qkv_bias) {
    b.add_bias(q, l.bq);
    b.add_bias(k, l.bk);
    b.add_bias(v, l.bv);
  }
  if (c.qk_norm) {  // per head: view [n * heads, head_dim]
    Tensor qh = q, kh = k;
    qh.ne = {c.head_dim, n * c.n_head, 1, 1};
    kh.ne = {c.head_dim, n * c.n_head_kv, 1, 1};
    b.rms_norm(qh, &l.q_norm, c.norm_eps, qh);
    b.rms_norm(kh, &l.k_norm, c.norm_eps, kh);
  }
  const bool swa = c.is_swa_layer(il);
  kernels::RopeParams rope;
  rope.mode = c.rope_mode;
  rope.n_rot = c.n_rot;
  rope.freq_base = swa ? c.rope_freq_base_swa : c.rope_freq_base;
  rope.freq_scale = swa ? 1.0f : c.rope_freq_scale;
  rope.freq_factors = rope_freqs_.empty() ? nullptr : rope_freqs_.data();
  b.rope(q, c.n_head, positions, rope);
  b.rope(k, c.n_head_kv, positions, rope);
  b.kv_store(l.kv, k, v, input.slots);
  kernels::AttentionParams ap;
  ap.n_head = c.n_head;
  ap.n_head_kv = c.n_head_kv;
  ap.head_dim = c.head_dim;
  ap.scale = c.attention_scale;
  ap.softcap = c.attn_logit_softcap;
  ap.window = swa ? c.sliding_window : 0;
  Tensor attn = b.new_tensor(DType::F32, {q_dim, n, 1, 1});
  b.attention(q, l.kv, input.slots, ap, attn);
  b.matmul(l.wo, attn, cur);
  if (c.post_norms) b.rms_norm(cur, &l.post_attn_norm, c.norm_eps, cur);
  b.add(x, cur, x);

  // Feed-forward block.
  b.rms_norm(x, &l.ffn_norm, c.norm_eps, cur);
  Tensor gate = b.new_tensor(DType::F32, {c.n_ff, n, 1, 1});
  Tensor up = b.new_tensor(DType::F32, {c.n_ff, n, 1, 1});
  b.matmul(l.w_gate, cur, gate);
  b.matmul(l.w_up, cur, up);
  b.glu(gate, up, c.activation, gate);
  b.matmul(l.w_down, gate, cur);
  if (c.post_norms) b.rms_norm(cur, &l.post_ffn_norm, c.norm_eps, cur);
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
  Tensor x = b.new_tensor(DType::F32, {c.n_embd, n, 1, 1});
  if (is_first()) {
    HEARTH_CHECK(static_cast<int64_t>(input.tokens.size()) == n);
    for (Token t : input.tokens) {
      if (t < 0 || t >= c.n_vocab) throw Error(fmt::format("token id {} is outside the vocabulary of {}", t, c.n_vocab));
    }
    b.get_rows(token_embd_, input.tokens, x);
    if (c.embedding_scale != 1.0f) b.scale(x, c.embedding_scale);
  } else {
    HEARTH_CHECK(static_cast<int64_t>(input.hidden.size()) == n * c.n_embd);
    b.write(x, input.hidden.data(), input.hidden.size() * sizeof(float));
  }
  for (int32_t il = first_; il < last_; ++il) run_layer(layers_[static_cast<size_t>(il - first_)], il, x, input);

  if (!is_last()) {
    out.resize(static_cast<size_t>(n * c.n_embd));
    b.synchronize();
    b.read(x, out.data(), out.size() * sizeof(float));
    return;
  }
  const int64_t n_out = static_cast<int64_t>(input.output_rows.size());
  out.resize(static_cast<size_t>(n_out * c.n_vocab));
  if (n_out == 0) return;
  // Gather the wanted rows, then norm and project only those.
  std::vector<float> host(static_cast<size_t>(n * c.n_embd));
  b.synchronize();
  b.read(x, host.data(), host.size() * sizeof(float));
  std::vector<float> picked(static_cast<size_t>(n_out * c.n_embd));
  for (int64_t i = 0; i < n_out; ++i) {
    const int32_t row = input.output_rows[static_cast<size_t>(i)];
    HEARTH_CHECK(row >= 0 && row < n, "output row {} of {}", row, n);
    std::memcpy(picked.data() + i * c.n_embd, host.data() + int64_t{row} * c.n_embd, sizeof(float) * static_cast<size_t>(c.n_embd));
  }
  Tensor h = b.new_tensor(DType::F32, {c.n_embd, n_out, 1, 1});
  b.write(h, picked.data(), picked.size() * sizeof(float));
  b.rms_norm(h, &output_norm_, c.norm_eps, h);
  Tensor logits = b.new_tensor(DType::F32, {c.n_vocab, n_out, 1, 1});
  b.matmul(output_, h, logits);
  if (c.final_logit_softcap > 0.0f) b.softcap(logits, c.final_logit_softcap);
  b.synchronize();
  b.read(logits, out.data(), out.size() * sizeof(float));
}

}  // namespace hearth::engine
