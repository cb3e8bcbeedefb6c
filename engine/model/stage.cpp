#include "engine/model/stage.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "engine/model/tensor_map.h"

namespace hearth::engine {

using kernels::Tensor;

namespace {
std::string shape_text(const std::array<int64_t, 4>& ne) {
  return fmt::format("[{}, {}, {}, {}]", ne[0], ne[1], ne[2], ne[3]);
}
}  // namespace

namespace {
// The tensor `desc` describes, checked against it (present when required, shape, F32 where it
// must be, a type the backend supports); null when an optional one is absent.
const gguf::TensorInfo* checked_tensor(const gguf::GgufFile& file, const TensorDesc& desc, kernels::Backend& backend) {
  const gguf::TensorInfo* info = file.find_tensor(desc.name);
  if (info == nullptr) {
    if (desc.required) throw Error(fmt::format("{}: tensor '{}' is missing", file.path(), desc.name));
    return nullptr;
  }
  if (info->ne != desc.ne) {
    throw Error(fmt::format("{}: tensor '{}' has shape {}, expected {}", file.path(), desc.name, shape_text(info->ne),
                            shape_text(desc.ne)));
  }
  if (desc.f32 && info->type != DType::F32) {
    throw Error(fmt::format("{}: tensor '{}' must be F32, not {}", file.path(), desc.name, dtype_name(info->type)));
  }
  if (!backend.supports_weight_type(info->type)) {
    throw Error(fmt::format("{}: tensor '{}' has type {}, which the {} backend does not support yet", file.path(),
                            desc.name, dtype_name(info->type), backend.name()));
  }
  return info;
}
}  // namespace

Tensor Stage::load(const gguf::GgufFile& file, const TensorDesc& desc) {
  const gguf::TensorInfo* info = checked_tensor(file, desc, backend_);
  if (info == nullptr) return {};
  const std::span<const uint8_t> bytes = file.tensor_data(*info);
  Tensor t = backend_.weight(info->type, info->ne, bytes.data(), mapping_);
  // The backend copied (repacked) the bytes: the mapped original need not stay resident.
  if (!t.buffer->borrows_host_memory()) mapping_->release(bytes);
  return t;
}

std::pair<int64_t, int64_t> Stage::slice_range(const TensorDesc& desc) const {
  const TensorSlice& t = options_.tp_slice;
  const int64_t hd = config_.head_dim;
  if (desc.layer < 0) {
    HEARTH_CHECK(desc.global == GlobalTensor::Output || desc.global == GlobalTensor::TokenEmbd, "{}", desc.name);
    return {t.vocab_first, t.n_vocab};
  }
  switch (desc.role) {
    case LayerTensor::AttnOutput:
      if (gather_join()) return {t.embd_first, t.n_embd};
      return {t.head_first * hd, t.n_head * hd};
    case LayerTensor::Q:
    case LayerTensor::BiasQ: return {t.head_first * hd, t.n_head * hd};
    case LayerTensor::K:
    case LayerTensor::V:
    case LayerTensor::BiasK:
    case LayerTensor::BiasV: return {t.kv_first * hd, t.n_head_kv * hd};
    case LayerTensor::Down:
      if (gather_join()) return {t.embd_first, t.n_embd};
      return {t.ff_first, t.n_ff};
    case LayerTensor::Gate:
    case LayerTensor::Up: return {t.ff_first, t.n_ff};
    default: break;
  }
  HEARTH_CHECK(false, "tensor {} is not cut by tensor parallelism", desc.name);
  return {};
}

Tensor Stage::load_slice(const gguf::GgufFile& file, const TensorDesc& cut) {
  if (!tensor_parallel() || cut.slice == SliceRule::Replicated) return load(file, cut);
  TensorDesc desc = cut;
  // Joining by gathers, attn_output and ffn_down are cut by their rows (output features).
  if (gather_join() && desc.layer >= 0 && (desc.role == LayerTensor::AttnOutput || desc.role == LayerTensor::Down)) {
    desc.slice = SliceRule::Rows;
  }
  const gguf::TensorInfo* info = checked_tensor(file, desc, backend_);
  if (info == nullptr) return {};
  const auto [first, count] = slice_range(desc);
  const std::span<const uint8_t> bytes = file.tensor_data(*info);
  const DType type = info->type;
  const int64_t ne0 = info->ne[0], rows = info->ne[1];
  if (desc.slice == SliceRule::Rows && desc.n_dims == 2) {
    // Whole rows: a contiguous part of the file, used in place like a whole tensor.
    HEARTH_CHECK(first >= 0 && count > 0 && first + count <= rows, "{} rows [{}, +{})", desc.name, first, count);
    const size_t row_bytes = dtype_row_bytes(type, ne0);
    const std::span<const uint8_t> part = bytes.subspan(static_cast<size_t>(first) * row_bytes,
                                                        static_cast<size_t>(count) * row_bytes);
    Tensor t = backend_.weight(type, {ne0, count, 1, 1}, part.data(), mapping_);
    if (!t.buffer->borrows_host_memory()) mapping_->release(part);
    return t;
  }
  // A vector cut along its values (a bias) or a matrix cut by columns: every row's part of whole
  // quant blocks, copied into memory of the shard's own.
  HEARTH_CHECK(first >= 0 && count > 0 && first + count <= ne0, "{} values [{}, +{})", desc.name, first, count);
  const int64_t block = dtype_block_size(type);
  if (first % block != 0 || (count % block != 0 && first + count != ne0)) {
    throw Error(fmt::format("{}: tensor '{}' ({}) cannot be cut at values [{}, {}): not whole blocks of {}", file.path(),
                            desc.name, dtype_name(type), first, first + count, block));
  }
  const size_t row_bytes = dtype_row_bytes(type, ne0), part_offset = dtype_row_bytes(type, first),
               part_bytes = dtype_row_bytes(type, count);
  auto copy = std::make_shared<std::vector<uint8_t>>(part_bytes * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(copy->data() + static_cast<size_t>(r) * part_bytes,
                bytes.data() + static_cast<size_t>(r) * row_bytes + part_offset, part_bytes);
  }
  const std::array<int64_t, 4> ne = desc.n_dims == 1 ? std::array<int64_t, 4>{count, 1, 1, 1}
                                                     : std::array<int64_t, 4>{count, rows, 1, 1};
  Tensor t = backend_.weight(type, ne, copy->data(), copy);
  mapping_->release(bytes);
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
  n_head_ = c.n_head, n_head_kv_ = c.n_head_kv, n_ff_ = c.n_ff, n_vocab_ = c.n_vocab;
  if (tensor_parallel()) {
    const TensorSlice& t = options.tp_slice;
    // The backend's grouped-query attention maps local head j to local KV head j / (n_head /
    // n_head_kv): that must be the KV head the model gives global head head_first + j.
    const int32_t group = c.n_head / c.n_head_kv;
    bool heads_ok = t.n_head > 0 && t.head_first >= 0 && t.head_first + t.n_head <= c.n_head && t.n_head_kv > 0 &&
                    t.kv_first >= 0 && t.kv_first + t.n_head_kv <= c.n_head_kv && t.n_head % t.n_head_kv == 0;
    for (int32_t j = 0; heads_ok && j < t.n_head; ++j) {
      heads_ok = (t.head_first + j) / group == t.kv_first + j / (t.n_head / t.n_head_kv);
    }
    const bool embd_ok = !gather_join() || (t.n_embd > 0 && t.embd_first >= 0 && t.embd_first + t.n_embd <= c.n_embd);
    if (!heads_ok || !embd_ok || t.n_ff <= 0 || t.ff_first < 0 || t.ff_first + t.n_ff > c.n_ff || t.n_vocab <= 0 ||
        t.vocab_first < 0 || t.vocab_first + t.n_vocab > c.n_vocab) {
      throw Error(fmt::format("tensor-parallel slice (heads {}+{}, KV heads {}+{}, features {}+{}, vocabulary {}+{}, "
                              "embedding rows {}+{}) does not fit {} ({} heads over {} KV heads, {} features, {} "
                              "tokens, {} embedding rows)",
                              t.head_first, t.n_head, t.kv_first, t.n_head_kv, t.ff_first, t.n_ff, t.vocab_first,
                              t.n_vocab, t.embd_first, t.n_embd, file.path(), c.n_head, c.n_head_kv, c.n_ff, c.n_vocab,
                              c.n_embd));
    }
    n_head_ = t.n_head, n_head_kv_ = t.n_head_kv, n_ff_ = t.n_ff, n_vocab_ = t.n_vocab;
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
      layers_[static_cast<size_t>(desc.layer - first)][desc.role] = load_slice(file, desc);
      continue;
    }
    switch (desc.global) {
      case GlobalTensor::TokenEmbd: token_embd_ = load(file, desc); break;
      case GlobalTensor::OutputNorm: output_norm_ = load(file, desc); break;
      case GlobalTensor::Output: output_ = load_slice(file, desc); break;
      // A constant table, read by every rope of every step.
      case GlobalTensor::RopeFreqs: rope_freqs_ = load(file, desc); break;
    }
  }
  if (is_last() && c.tied_output) {
    if (tensor_parallel()) {
      // This shard's vocabulary rows of the embedding are its part of the head.
      TensorDesc head = global_tensor(c, GlobalTensor::TokenEmbd);
      head.slice = SliceRule::Rows;
      output_ = load_slice(file, head);
    } else {
      output_ = token_embd_;
    }
  }
  if (tensor_parallel()) {
    // Every shard's widths along each gathered dimension (the same collective on every shard,
    // whatever its stage holds): vocabulary rows for the logits, query values, features and
    // embedding rows for the gather join. Each must add up to the model's.
    const auto size = static_cast<size_t>(options.tp_comm->size());
    const TensorSlice& t = options.tp_slice;
    std::vector<float> mine = {static_cast<float>(n_vocab_), static_cast<float>(int64_t{t.n_head} * c.head_dim),
                               static_cast<float>(t.n_ff), static_cast<float>(t.n_embd)};
    std::vector<float> all(size * mine.size());
    const std::vector<int64_t> counts(size, static_cast<int64_t>(mine.size()));
    options.tp_comm->all_gather(mine, all, counts);
    const auto widths = [&](size_t field, int64_t want, const char* what, bool check) {
      std::vector<int64_t> w;
      int64_t total = 0;
      for (size_t r = 0; r < size; ++r) w.push_back(static_cast<int64_t>(all[r * mine.size() + field])), total += w.back();
      if (check && total != want) {
        throw Error(fmt::format("the tensor-parallel shards hold {} {} together, not the model's {}", total, what, want));
      }
      return w;
    };
    vocab_counts_ = widths(0, c.n_vocab, "vocabulary rows", is_last());
    q_widths_ = widths(1, int64_t{c.n_head} * c.head_dim, "query values", gather_join());
    ff_widths_ = widths(2, c.n_ff, "FFN features", gather_join());
    embd_widths_ = widths(3, c.n_embd, "embedding rows", gather_join());
  }
  const int64_t kv_dim = int64_t{n_head_kv_} * c.head_dim;
  for (Layer& l : layers_) l.kv = backend_.new_kv_layer(options.kv_type, options.n_seq, options.n_ctx, kv_dim);
  reserve_arena(std::max(1, options.max_batch), std::max(1, options.n_seq));
}

void Stage::reserve_arena(int64_t tokens, int64_t outputs) {
  const ModelConfig& c = config_;
  const int64_t e = c.n_embd, q_dim = int64_t{n_head_} * c.head_dim, kv_dim = int64_t{n_head_kv_} * c.head_dim;
  const auto f32_rows = [](int64_t width, int64_t rows) { return static_cast<size_t>(width * rows) * sizeof(float); };
  kernels::Arena arena;
  Regions r{};
  r.x = arena.reserve(f32_rows(e, tokens));
  r.cur = arena.reserve(f32_rows(e, tokens));
  r.q = arena.reserve(f32_rows(q_dim, tokens));
  r.k = arena.reserve(f32_rows(kv_dim, tokens));
  r.v = arena.reserve(f32_rows(kv_dim, tokens));
  r.attn = arena.reserve(f32_rows(q_dim, tokens));
  r.gate = arena.reserve(f32_rows(n_ff_, tokens));
  r.up = arena.reserve(f32_rows(n_ff_, tokens));
  r.tokens = arena.reserve(static_cast<size_t>(tokens) * sizeof(int32_t));
  r.positions = arena.reserve(static_cast<size_t>(tokens) * sizeof(int32_t));
  r.slots = arena.reserve(static_cast<size_t>(tokens) * sizeof(kernels::KvSlot));
  r.out_rows = arena.reserve(static_cast<size_t>(outputs) * sizeof(int32_t));
  if (gather_join()) {
    r.attn_all = arena.reserve(f32_rows(int64_t{c.n_head} * c.head_dim, tokens));
    r.ff_all = arena.reserve(f32_rows(c.n_ff, tokens));
    r.part = arena.reserve(f32_rows(options_.tp_slice.n_embd, tokens));
  }
  if (is_last()) {
    r.picked = arena.reserve(f32_rows(e, outputs));
    r.logits = arena.reserve(f32_rows(n_vocab_, outputs));
  }
  arena.allocate(backend_);
  arena_ = std::move(arena);
  regions_ = r;
  arena_tokens_ = tokens;
  arena_outputs_ = outputs;
}

Stage::Activations Stage::activations(int64_t n, int64_t n_out) const {
  const ModelConfig& c = config_;
  const int64_t e = c.n_embd, q_dim = int64_t{n_head_} * c.head_dim, kv_dim = int64_t{n_head_kv_} * c.head_dim;
  const Regions& r = regions_;
  Activations a;
  a.x = arena_.tensor(r.x, DType::F32, {e, n, 1, 1});
  a.cur = arena_.tensor(r.cur, DType::F32, {e, n, 1, 1});
  a.q = arena_.tensor(r.q, DType::F32, {q_dim, n, 1, 1});
  a.k = arena_.tensor(r.k, DType::F32, {kv_dim, n, 1, 1});
  a.v = arena_.tensor(r.v, DType::F32, {kv_dim, n, 1, 1});
  a.attn = arena_.tensor(r.attn, DType::F32, {q_dim, n, 1, 1});
  a.gate = arena_.tensor(r.gate, DType::F32, {n_ff_, n, 1, 1});
  a.up = arena_.tensor(r.up, DType::F32, {n_ff_, n, 1, 1});
  a.tokens = arena_.tensor(r.tokens, DType::I32, {n, 1, 1, 1});
  a.positions = arena_.tensor(r.positions, DType::I32, {n, 1, 1, 1});
  a.slots = arena_.tensor(r.slots, DType::I32, {2, n, 1, 1});
  if (gather_join()) {
    a.attn_all = arena_.tensor(r.attn_all, DType::F32, {int64_t{c.n_head} * c.head_dim, n, 1, 1});
    a.ff_all = arena_.tensor(r.ff_all, DType::F32, {c.n_ff, n, 1, 1});
    a.part = arena_.tensor(r.part, DType::F32, {options_.tp_slice.n_embd, n, 1, 1});
  }
  if (n_out > 0) {
    a.out_rows = arena_.tensor(r.out_rows, DType::I32, {n_out, 1, 1, 1});
    if (is_last()) {
      a.picked = arena_.tensor(r.picked, DType::F32, {e, n_out, 1, 1});
      a.logits = arena_.tensor(r.logits, DType::F32, {n_vocab_, n_out, 1, 1});
    }
  }
  return a;
}

void Stage::all_reduce(const Tensor& t, uint64_t key, int32_t part) {
  kernels::Backend& b = backend_;
  b.end_step();
  const auto start = std::chrono::steady_clock::now();
  reduce_buffer_.resize(static_cast<size_t>(t.n_elements()));
  b.read(t, reduce_buffer_.data(), reduce_buffer_.size() * sizeof(float));
  options_.tp_comm->all_reduce_sum(reduce_buffer_);
  b.write(t, reduce_buffer_.data(), reduce_buffer_.size() * sizeof(float));
  tp_stats_.all_reduces += 1;
  tp_stats_.bytes += reduce_buffer_.size() * sizeof(float);
  tp_stats_.all_reduce_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  next_part(key, part);
}

void Stage::next_part(uint64_t key, int32_t part) {
  // Each part of a step between two collectives is a step of its own for a recording backend.
  backend_.begin_step(key + static_cast<uint64_t>(part + 1) * 0x9E3779B97F4A7C15ull);
}

void Stage::gather_slices(const Tensor& mine, const Tensor& all, const std::vector<int64_t>& widths, uint64_t key,
                          int32_t part) {
  kernels::Backend& b = backend_;
  b.end_step();
  const auto start = std::chrono::steady_clock::now();
  const int64_t n = mine.n_rows(), width = mine.ne[0], total = all.ne[0];
  HEARTH_CHECK(all.n_rows() == n);
  local_logits_.resize(static_cast<size_t>(width * n));
  b.read(mine, local_logits_.data(), local_logits_.size() * sizeof(float));
  std::vector<int64_t> counts(widths.size());
  for (size_t r = 0; r < counts.size(); ++r) counts[r] = widths[r] * n;
  reduce_buffer_.resize(static_cast<size_t>(total * n));
  options_.tp_comm->all_gather(local_logits_, reduce_buffer_, counts);
  // Rank by rank, [n, width_r] blocks -> columns of the rows of [n, total].
  gathered_.resize(reduce_buffer_.size());
  int64_t at = 0, column = 0;
  for (const int64_t w : widths) {
    for (int64_t row = 0; row < n; ++row) {
      std::memcpy(gathered_.data() + row * total + column, reduce_buffer_.data() + at + row * w,
                  static_cast<size_t>(w) * sizeof(float));
    }
    at += w * n;
    column += w;
  }
  b.write(all, gathered_.data(), gathered_.size() * sizeof(float));
  tp_stats_.all_reduces += 1;
  tp_stats_.bytes += local_logits_.size() * sizeof(float);
  tp_stats_.all_reduce_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  next_part(key, part);
}

void Stage::run_layer(Layer& l, int32_t il, const Activations& a, uint64_t key) {
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
    const Tensor qh = q.reshaped({c.head_dim, n * n_head_, 1, 1});
    const Tensor kh = k.reshaped({c.head_dim, n * n_head_kv_, 1, 1});
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
  b.rope(q, n_head_, a.positions, rope);
  b.rope(k, n_head_kv_, a.positions, rope);
  b.kv_store(l.kv, k, v, a.slots);
  kernels::AttentionParams ap;
  ap.n_head = n_head_;
  ap.n_head_kv = n_head_kv_;
  ap.head_dim = c.head_dim;
  ap.scale = c.attention_scale;
  ap.softcap = c.attn_logit_softcap;
  ap.window = swa ? c.sliding_window : 0;
  b.attention(q, l.kv, a.slots, ap, a.attn);
  if (gather_join()) {
    gather_slices(a.attn, a.attn_all, q_widths_, key, 4 * (il - first_));
    b.matmul(l.wo, a.attn_all, a.part);
    gather_slices(a.part, cur, embd_widths_, key, 4 * (il - first_) + 1);
  } else {
    b.matmul(l.wo, a.attn, cur);
    if (tensor_parallel()) all_reduce(cur, key, 2 * (il - first_));
  }
  if (c.post_norms) b.rms_norm(cur, l.post_attn_norm, c.norm_eps, cur);
  b.add(x, cur, x);

  // Feed-forward block.
  b.rms_norm(x, l.ffn_norm, c.norm_eps, cur);
  b.matmul(l.w_gate, cur, a.gate);
  b.matmul(l.w_up, cur, a.up);
  b.glu(a.gate, a.up, c.activation, a.gate);
  if (gather_join()) {
    gather_slices(a.gate, a.ff_all, ff_widths_, key, 4 * (il - first_) + 2);
    b.matmul(l.w_down, a.ff_all, a.part);
    gather_slices(a.part, cur, embd_widths_, key, 4 * (il - first_) + 3);
  } else {
    b.matmul(l.w_down, a.gate, cur);
    if (tensor_parallel()) all_reduce(cur, key, 2 * (il - first_) + 1);
  }
  if (c.post_norms) b.rms_norm(cur, l.post_ffn_norm, c.norm_eps, cur);
  b.add(x, cur, x);
}

void Stage::forward(const StageInput& input, std::vector<float>& out) {
  const ModelConfig& c = config_;
  kernels::Backend& b = backend_;
  if (options_.tp_before_forward) options_.tp_before_forward(input);
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

  const uint64_t key = (static_cast<uint64_t>(n) << 32) | static_cast<uint64_t>(n_out);
  b.begin_step(key);
  if (is_first()) {
    b.get_rows(token_embd_, a.tokens, a.x);
    if (c.embedding_scale != 1.0f) b.scale(a.x, c.embedding_scale);
  }
  for (int32_t il = first_; il < last_; ++il) run_layer(layers_[static_cast<size_t>(il - first_)], il, a, key);
  if (n_out > 0) {
    // Only the wanted rows go through the final norm and the output head.
    b.get_rows(a.x, a.out_rows, a.picked);
    b.rms_norm(a.picked, output_norm_, c.norm_eps, a.picked);
    b.matmul(output_, a.picked, a.logits);
    if (c.final_logit_softcap > 0.0f) b.softcap(a.logits, c.final_logit_softcap);
  }
  b.end_step();

  if (!is_last()) {
    std::vector<float>& hidden = options_.rest_of_pipeline ? hidden_out_ : out;
    hidden.resize(static_cast<size_t>(n * c.n_embd));
    b.read(a.x, hidden.data(), hidden.size() * sizeof(float));
    if (options_.rest_of_pipeline) {
      StageInput next = input;
      next.tokens = {};
      next.hidden = hidden;
      options_.rest_of_pipeline(next, out);
    }
    return;
  }
  if (input.top_k > 0) {
    if (n_out == 0) {
      out.clear();
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    local_logits_.resize(static_cast<size_t>(n_out * n_vocab_));
    b.read(a.logits, local_logits_.data(), local_logits_.size() * sizeof(float));
    top_candidates(input.top_k, n_out, out);
    tp_stats_.gather_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return;
  }
  out.resize(static_cast<size_t>(n_out * c.n_vocab));
  if (n_out == 0) return;
  if (!tensor_parallel()) {
    b.read(a.logits, out.data(), out.size() * sizeof(float));
    return;
  }
  // Every shard's logits of its vocabulary rows, gathered rank by rank, then laid out as rows of
  // the whole vocabulary.
  const auto start = std::chrono::steady_clock::now();
  local_logits_.resize(static_cast<size_t>(n_out * n_vocab_));
  b.read(a.logits, local_logits_.data(), local_logits_.size() * sizeof(float));
  std::vector<int64_t> counts(vocab_counts_.size());
  for (size_t r = 0; r < counts.size(); ++r) counts[r] = vocab_counts_[r] * n_out;
  reduce_buffer_.resize(out.size());
  options_.tp_comm->all_gather(local_logits_, reduce_buffer_, counts);
  int64_t at = 0, column = 0;
  for (const int64_t v : vocab_counts_) {
    for (int64_t row = 0; row < n_out; ++row) {
      std::memcpy(out.data() + row * c.n_vocab + column, reduce_buffer_.data() + at + row * v,
                  static_cast<size_t>(v) * sizeof(float));
    }
    at += v * n_out;
    column += v;
  }
  tp_stats_.gathers += 1;
  tp_stats_.bytes += local_logits_.size() * sizeof(float);
  tp_stats_.gather_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

namespace {
using Candidate = std::pair<float, int32_t>;  // (logit, token)
// The sampler's order: higher logit first, then the lower token.
bool better_candidate(const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}
// log(sum(exp(l))) of `n` logits: the largest plus the log of the sum of exp(l - largest), in
// double; the largest itself when it is not finite (all -inf, or +inf), as the sampler does.
float log_sum_exp_of(const float* l, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = l[i] > m ? l[i] : m;
  if (!std::isfinite(m)) return m;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(l[i]) - m);
  return static_cast<float>(m + std::log(sum));
}
}  // namespace

void Stage::top_candidates(int32_t k, int64_t n_out, std::vector<float>& out) {
  if (config_.n_vocab > (int64_t{1} << 24)) {
    throw Error(fmt::format("top-{} candidates: token ids of a vocabulary of {} do not fit a float exactly", k,
                            config_.n_vocab));
  }
  k = std::min(k, config_.n_vocab);
  const int64_t width = candidate_row_width(k);
  const int32_t id0 = tensor_parallel() ? options_.tp_slice.vocab_first : 0;
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  // This shard's part: per row, its log-sum-exp and its k best (a heap of the k best so far).
  candidates_.assign(static_cast<size_t>(n_out * width), 0.0f);
  std::vector<Candidate> heap;
  for (int64_t row = 0; row < n_out; ++row) {
    const float* l = local_logits_.data() + row * n_vocab_;
    float* dst = candidates_.data() + row * width;
    dst[0] = log_sum_exp_of(l, n_vocab_);
    heap.clear();
    for (int64_t i = 0; i < n_vocab_; ++i) {
      if (std::isnan(l[i])) continue;
      const Candidate c{l[i], id0 + static_cast<int32_t>(i)};
      if (static_cast<int32_t>(heap.size()) < k) {
        heap.push_back(c);
        std::push_heap(heap.begin(), heap.end(), better_candidate);  // front: the worst kept
      } else if (better_candidate(c, heap.front())) {
        std::pop_heap(heap.begin(), heap.end(), better_candidate);
        heap.back() = c;
        std::push_heap(heap.begin(), heap.end(), better_candidate);
      }
    }
    std::sort_heap(heap.begin(), heap.end(), better_candidate);  // best first
    for (int32_t j = 0; j < k; ++j) {
      const bool have = j < static_cast<int32_t>(heap.size());
      dst[kCandidateHeader + 2 * j] = have ? heap[static_cast<size_t>(j)].first : kNone;
      dst[kCandidateHeader + 2 * j + 1] = have ? static_cast<float>(heap[static_cast<size_t>(j)].second) : -1.0f;
    }
  }
  out.resize(candidates_.size());
  if (!tensor_parallel()) {
    std::copy(candidates_.begin(), candidates_.end(), out.begin());
    return;
  }
  // Every shard's rows, rank by rank; the union holds the k best of the whole vocabulary.
  const auto size = static_cast<size_t>(options_.tp_comm->size());
  reduce_buffer_.resize(candidates_.size() * size);
  const std::vector<int64_t> counts(size, static_cast<int64_t>(candidates_.size()));
  options_.tp_comm->all_gather(candidates_, reduce_buffer_, counts);
  tp_stats_.gathers += 1;
  tp_stats_.bytes += candidates_.size() * sizeof(float);
  std::vector<Candidate> all;
  for (int64_t row = 0; row < n_out; ++row) {
    all.clear();
    float m = kNone;
    for (size_t r = 0; r < size; ++r) m = std::max(m, reduce_buffer_[r * candidates_.size() + static_cast<size_t>(row * width)]);
    double sum = 0.0;
    for (size_t r = 0; r < size; ++r) {
      const float* src = reduce_buffer_.data() + r * candidates_.size() + row * width;
      if (std::isfinite(m)) sum += std::exp(static_cast<double>(src[0]) - m);
      for (int32_t j = 0; j < k; ++j) {
        const float id = src[kCandidateHeader + 2 * j + 1];
        if (id >= 0.0f) all.push_back({src[kCandidateHeader + 2 * j], static_cast<int32_t>(id)});
      }
    }
    const size_t keep = std::min(all.size(), static_cast<size_t>(k));
    std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(keep), all.end(), better_candidate);
    float* dst = out.data() + row * width;
    dst[0] = std::isfinite(m) ? static_cast<float>(m + std::log(sum)) : m;
    for (int32_t j = 0; j < k; ++j) {
      const bool have = j < static_cast<int32_t>(keep);
      dst[kCandidateHeader + 2 * j] = have ? all[static_cast<size_t>(j)].first : kNone;
      dst[kCandidateHeader + 2 * j + 1] = have ? static_cast<float>(all[static_cast<size_t>(j)].second) : -1.0f;
    }
  }
}

}  // namespace hearth::engine
