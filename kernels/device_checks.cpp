#include "kernels/device_checks.h"

#include <cmath>

#include "core/error.h"

namespace hearth::kernels::device_checks {

bool weight_type(DType t) {
  switch (t) {
    case DType::F32: case DType::F16: case DType::BF16: case DType::Q4_0: case DType::Q4_1: case DType::Q5_0:
    case DType::Q5_1: case DType::Q8_0: case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K:
    case DType::Q6_K:
      return true;
    default:
      return false;
  }
}

bool kv_type(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::Q8_0; }

bool supports(Op op, DType type) {
  switch (op) {
    case Op::GetRows:
    case Op::Matmul: return weight_type(type);
    case Op::KvStore:
    case Op::Attention: return kv_type(type);
    default: return type == DType::F32;
  }
}

bool supports_kv(DType type, int64_t head_dim, int64_t max_head_dim) {
  return kv_type(type) && head_dim > 0 && head_dim <= max_head_dim && (type != DType::Q8_0 || head_dim % 32 == 0);
}

void check_write(const Tensor& dst, size_t bytes, size_t dst_offset, bool in_step) {
  HEARTH_CHECK(!in_step, "write inside a step (inputs are written before begin_step)");
  HEARTH_CHECK(!dst.empty() && dst_offset + bytes <= dst.buffer->size() - dst.offset,
               "write of {} bytes at {} past the tensor's buffer", bytes, dst_offset);
}

void check_read(const Tensor& src, size_t bytes, bool in_step) {
  HEARTH_CHECK(!in_step, "read inside a step");
  HEARTH_CHECK(!src.empty() && bytes <= src.buffer->size() - src.offset, "read of {} bytes past the tensor's buffer", bytes);
}

MatmulShape check_matmul(const Tensor& w, const Tensor& x, const Tensor& y) {
  const MatmulShape s{w.n_rows(), w.ne[0], x.n_rows()};
  HEARTH_CHECK(w.layout == 0 && x.ne[0] == s.k && y.ne[0] == s.m && y.n_rows() == s.n,
               "matmul shapes: w [{}, {}], x [{}, {}], y [{}, {}]", s.m, s.k, s.n, x.ne[0], y.n_rows(), y.ne[0]);
  HEARTH_CHECK(weight_type(w.type), "matmul on {} weights", dtype_name(w.type));
  return s;
}

int64_t check_get_rows(const Tensor& table, const Tensor& ids, const Tensor& out) {
  const int64_t n = ids.n_elements();
  HEARTH_CHECK(table.layout == 0 && out.ne[0] == table.ne[0] && out.n_rows() == n, "get_rows shapes");
  HEARTH_CHECK(weight_type(table.type), "get_rows on {}", dtype_name(table.type));
  return n;
}

int64_t check_rms_norm(const Tensor& x, const Tensor& weight, const Tensor& y) {
  const int64_t d = x.ne[0], rows = x.n_rows();
  HEARTH_CHECK(y.ne[0] == d && y.n_rows() == rows && (weight.empty() || weight.n_elements() == d), "rms_norm shapes");
  return rows;
}

RopeShape check_rope(const Tensor& x, int n_heads, const Tensor& positions, const RopeParams& p, int max_rot_pairs) {
  const int64_t row = x.ne[0];
  HEARTH_CHECK(n_heads > 0 && row % n_heads == 0, "rope: rows of {} are not {} heads", row, n_heads);
  const RopeShape s{row / n_heads, x.n_rows()};
  HEARTH_CHECK(p.n_rot > 0 && p.n_rot <= s.head_dim && p.n_rot % 2 == 0 && p.n_rot / 2 <= max_rot_pairs, "rope dims {}",
               p.n_rot);
  HEARTH_CHECK(positions.n_elements() == s.n_tokens, "rope: {} positions for {} tokens", positions.n_elements(), s.n_tokens);
  HEARTH_CHECK(p.freq_factors.empty() || p.freq_factors.n_elements() == p.n_rot / 2, "rope factors");
  return s;
}

float rope_theta_scale(const RopeParams& p) { return std::pow(p.freq_base, -2.0f / static_cast<float>(p.n_rot)); }

KvLayer new_kv_layer(Backend& backend, DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim) {
  HEARTH_CHECK(kv_type(type), "KV cache type {} not supported", dtype_name(type));
  HEARTH_CHECK(type != DType::Q8_0 || kv_dim % 32 == 0, "a q8_0 KV cache needs rows of whole blocks of 32, not {}", kv_dim);
  KvLayer layer;
  layer.n_seq = n_seq;
  layer.n_ctx = n_ctx;
  layer.k = backend.new_tensor(type, {kv_dim, n_ctx, n_seq, 1});
  layer.v = backend.new_tensor(type, {kv_dim, n_ctx, n_seq, 1});
  return layer;
}

int64_t check_kv_store(const KvLayer& cache, const Tensor& k, const Tensor& v, const Tensor& slots) {
  const int64_t kv_dim = cache.k.ne[0], n = k.n_rows();
  HEARTH_CHECK(k.ne[0] == kv_dim && v.ne[0] == kv_dim && v.n_rows() == n && slots.n_elements() == 2 * n, "kv_store shapes");
  return n;
}

int64_t check_attention(const Backend& backend, const Tensor& q, const KvLayer& cache, const Tensor& slots,
                        const AttentionParams& p, const Tensor& out) {
  const int64_t n = slots.n_elements() / 2;
  HEARTH_CHECK(backend.supports_kv_type(cache.k.type, p.head_dim), "attention over a {} cache with heads of {}",
               dtype_name(cache.k.type), p.head_dim);
  HEARTH_CHECK(p.n_head > 0 && p.n_head_kv > 0 && p.n_head % p.n_head_kv == 0 &&
                   cache.k.ne[0] == int64_t{p.n_head_kv} * p.head_dim,
               "attention heads");
  HEARTH_CHECK(q.n_elements() == n * p.n_head * p.head_dim && out.n_elements() == q.n_elements(), "attention shapes");
  return n;
}

}  // namespace hearth::kernels::device_checks
