#include "kernels/cpu/cpu_backend.h"

#include <sys/mman.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/dot_ref.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/cpu/packed.h"
#include "kernels/cpu/quants_ref.h"

namespace hearth::kernels {

Tensor Tensor::rows(int64_t first, int64_t count) const {
  HEARTH_CHECK(layout == 0, "rows() of a weight in a backend's own layout");
  HEARTH_CHECK(first >= 0 && count >= 0 && first + count <= n_rows(), "rows [{}, +{}) of {}", first, count, n_rows());
  Tensor t = *this;
  t.ne = {ne[0], count, 1, 1};
  t.data = static_cast<uint8_t*>(data) + static_cast<size_t>(first) * row_bytes();
  return t;
}

namespace {

// Tensor::layout of weights repacked for the packed matmul (kernels/cpu/packed.h).
constexpr uint8_t kPackedLayout = 1;

float* f32(Tensor& t) {
  HEARTH_CHECK(t.type == DType::F32, "expected an f32 tensor, got {}", dtype_name(t.type));
  return static_cast<float*>(t.data);
}
const float* f32(const Tensor& t) {
  HEARTH_CHECK(t.type == DType::F32, "expected an f32 tensor, got {}", dtype_name(t.type));
  return static_cast<const float*>(t.data);
}

std::shared_ptr<void> allocate(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  HEARTH_CHECK(p != nullptr, "out of memory allocating {} bytes", bytes);
  return {p, std::free};
}

// Long-lived buffers (repacked weights, KV caches): their own mapping, 2 MiB aligned and asked
// to be backed by transparent huge pages, so a pass over a matrix walks one page-table entry
// per 2 MiB instead of one per 4 KiB. Not through malloc: the huge-page advice must not reach
// heap memory that per-step buffers reuse (each new touch would zero a whole 2 MiB page).
std::shared_ptr<void> allocate_lasting(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  if (bytes < kHuge) return allocate(bytes);
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  const size_t span = rounded + kHuge;  // room to align the start
  void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  HEARTH_CHECK(raw != MAP_FAILED, "out of memory mapping {} bytes", bytes);
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (base + kHuge - 1) / kHuge * kHuge;
  if (start > base) ::munmap(raw, start - base);
  if (base + span > start + rounded) ::munmap(reinterpret_cast<void*>(start + rounded), base + span - (start + rounded));
  void* p = reinterpret_cast<void*>(start);
  ::madvise(p, rounded, MADV_HUGEPAGE);  // advice: refused is harmless
  return {p, [rounded](void* q) { ::munmap(q, rounded); }};
}

}  // namespace

// Buffers of released tensors, kept by exact size for the next new_tensor of that size: a
// forward pass allocates the same activation shapes step after step, and large malloc blocks
// go back to the system when freed, so each step would fault in (and the kernel zero) fresh
// pages. Bounded; a tensor that outlives the backend frees its buffer directly (the pool is
// only reached through a weak pointer).
class CpuBackend::BufferPool {
 public:
  static constexpr size_t kMinBytes = size_t{64} << 10;   // smaller ones: malloc keeps them anyway
  static constexpr size_t kMaxCached = size_t{512} << 20;  // cached bytes at most

  static std::shared_ptr<void> get(const std::shared_ptr<BufferPool>& pool, size_t bytes) {
    if (bytes < kMinBytes) return allocate(bytes);
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = pool->take(rounded);
    if (p == nullptr) p = allocate_raw(rounded);
    std::weak_ptr<BufferPool> weak = pool;
    return {p, [weak, rounded](void* q) {
              if (const auto alive = weak.lock(); alive && alive->keep(q, rounded)) return;
              std::free(q);
            }};
  }

  ~BufferPool() {
    for (auto& [size, p] : free_) std::free(p);
  }

 private:
  static void* allocate_raw(size_t rounded) {
    void* p = std::aligned_alloc(64, rounded);
    HEARTH_CHECK(p != nullptr, "out of memory allocating {} bytes", rounded);
    return p;
  }
  void* take(size_t rounded) {
    std::lock_guard lock(mutex_);
    const auto it = free_.find(rounded);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= rounded;
    return p;
  }
  bool keep(void* p, size_t rounded) {
    std::lock_guard lock(mutex_);
    if (cached_ + rounded > kMaxCached) return false;
    free_.emplace(rounded, p);
    cached_ += rounded;
    return true;
  }

  std::mutex mutex_;
  std::unordered_multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

CpuBackend::CpuBackend(int n_threads) : CpuBackend(n_threads, cpu_level()) {}

CpuBackend::CpuBackend(int n_threads, CpuLevel level, bool pack_weights)
    : pool_(n_threads), level_(level), pack_weights_(pack_weights), buffers_(std::make_shared<BufferPool>()) {
  if (!cpu_level_supported(level)) {
    throw Error(fmt::format("CPU level {} requested, this CPU lacks it (best level here: {})", cpu_level_name(level),
                            cpu_level_name(cpu_supported_level())));
  }
}

std::string CpuBackend::name() const { return "cpu"; }

bool CpuBackend::supports_weight_type(DType type) const { return ref::can_vec_dot(type) && ref::can_dequantize(type); }

Tensor CpuBackend::new_tensor(DType type, std::array<int64_t, 4> ne) {
  Tensor t;
  t.type = type;
  t.ne = ne;
  auto memory = BufferPool::get(buffers_, t.n_bytes());
  t.data = memory.get();
  t.storage = std::move(memory);
  return t;
}

Tensor CpuBackend::weight(DType type, std::array<int64_t, 4> ne, const void* host, std::shared_ptr<const void> keep_alive) {
  Tensor t;
  t.type = type;
  t.ne = ne;
  // Matrices of a type with packed kernels at this level are repacked (same size, rows
  // interleaved by 16): their matmul then runs the packed kernels, at every batch size.
  if (pack_weights_ && packed_kernel(type, level_) != nullptr && ne[0] % dtype_block_size(type) == 0 && ne[2] == 1 && ne[3] == 1) {
    const int64_t k = ne[0], m = ne[1];
    auto memory = allocate_lasting(packed_bytes(type, k, m));
    pool_.parallel_for(packed_groups(m), [&](int64_t g0, int64_t g1, int) { pack_groups(type, host, k, m, memory.get(), g0, g1); });
    t.data = memory.get();
    t.storage = std::move(memory);
    t.layout = kPackedLayout;
    return t;
  }
  t.data = const_cast<void*>(host);  // never written: weights are read-only by contract
  t.storage = std::move(keep_alive);
  return t;
}

void CpuBackend::write(Tensor& dst, const void* host, size_t bytes) {
  HEARTH_CHECK(bytes <= dst.n_bytes());
  std::memcpy(dst.data, host, bytes);
}

void CpuBackend::read(const Tensor& src, void* host, size_t bytes) {
  HEARTH_CHECK(bytes <= src.n_bytes());
  std::memcpy(host, src.data, bytes);
}

void CpuBackend::get_rows(const Tensor& table, std::span<const int32_t> ids, Tensor& out) {
  const int64_t d = table.ne[0];
  HEARTH_CHECK(out.ne[0] == d && out.n_rows() == static_cast<int64_t>(ids.size()));
  float* y = f32(out);
  const size_t row_bytes = table.row_bytes();
  std::vector<uint8_t> native(table.layout == kPackedLayout ? row_bytes : 0);
  for (size_t i = 0; i < ids.size(); ++i) {
    HEARTH_CHECK(ids[i] >= 0 && ids[i] < table.n_rows(), "row {} of {}", ids[i], table.n_rows());
    const uint8_t* row = static_cast<const uint8_t*>(table.data) + static_cast<size_t>(ids[i]) * row_bytes;
    if (table.layout == kPackedLayout) {
      unpack_row(table.type, table.data, d, ids[i], native.data());
      row = native.data();
    }
    ref::dequantize_row(table.type, row, y + static_cast<int64_t>(i) * d, d);
  }
}

void CpuBackend::matmul(const Tensor& w, const Tensor& x, Tensor& y) {
  const int64_t k = w.ne[0], m = w.n_rows(), n = x.n_rows();
  HEARTH_CHECK(x.ne[0] == k && y.ne[0] == m && y.n_rows() == n, "matmul shapes w[{},{}] x[{},{}] y[{},{}]", m, k, n,
               x.ne[0], y.n_rows(), y.ne[0]);
  const float* xs = f32(x);
  float* ys = f32(y);
  if (w.layout == kPackedLayout) {
    const PackedKernel* packed = packed_kernel(w.type, level_);
    HEARTH_CHECK(packed != nullptr, "a packed {} weight without packed kernels", dtype_name(w.type));
    const size_t act_bytes = packed_act_row_bytes(w.type, k);
    const std::shared_ptr<void> buffer = BufferPool::get(buffers_, act_bytes * static_cast<size_t>(n));
    auto* xa = static_cast<uint8_t*>(buffer.get());
    pool_.parallel_for(n, [&](int64_t t0, int64_t t1, int) {
      for (int64_t t = t0; t < t1; ++t) packed->quantize(w.type, xs + t * k, xa + static_cast<size_t>(t) * act_bytes, k);
    });
    pool_.parallel_for(packed_groups(m), [&](int64_t g0, int64_t g1, int) {
      packed->gemm(w.data, k, m, g0, g1, xa, act_bytes, n, ys, m);
    });
    return;
  }
  const DotKernel& kernel = dot_kernel(w.type, level_);
  HEARTH_CHECK(kernel.vec_dot != nullptr, "no dot product for {}", dtype_name(w.type));
  // Activations are quantized once to the format the weight type pairs with, then every
  // weight row is dotted with every activation row.
  const DType xq_type = kernel.vec_dot_type;
  const size_t xq_row_bytes = dtype_row_bytes(xq_type, k);
  const void* xq = xs;
  std::vector<uint8_t> quantized;
  if (xq_type != DType::F32) {
    quantized.resize(xq_row_bytes * static_cast<size_t>(n));
    pool_.parallel_for(n, [&](int64_t t0, int64_t t1, int) {
      for (int64_t t = t0; t < t1; ++t) {
        kernel.quantize(xs + t * k, quantized.data() + static_cast<size_t>(t) * xq_row_bytes, k);
      }
    });
    xq = quantized.data();
  }
  const size_t w_row_bytes = w.row_bytes();
  pool_.parallel_for(
      m, [&](int64_t r0, int64_t r1, int) { matmul_rows(kernel, w.data, w_row_bytes, k, r0, r1, xq, xq_row_bytes, n, ys, m); },
      16);
}

void CpuBackend::rms_norm(const Tensor& x, const Tensor* weight, float eps, Tensor& y) {
  const int64_t d = x.ne[0];
  HEARTH_CHECK(weight == nullptr || weight->ne[0] == d, "norm weight of {} for rows of {}", weight ? weight->ne[0] : 0, d);
  const float* xs = f32(x);
  float* ys = f32(y);
  const float* ws = weight != nullptr ? f32(*weight) : nullptr;
  pool_.parallel_for(
      x.n_rows(),
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) ref::rms_norm_row(xs + r * d, ws, eps, ys + r * d, d);
      },
      8);
}

void CpuBackend::add(const Tensor& a, const Tensor& b, Tensor& y) {
  HEARTH_CHECK(a.n_elements() == b.n_elements() && a.n_elements() == y.n_elements());
  const float* as = f32(a);
  const float* bs = f32(b);
  float* ys = f32(y);
  for (int64_t i = 0; i < a.n_elements(); ++i) ys[i] = as[i] + bs[i];
}

void CpuBackend::add_bias(Tensor& x, const Tensor& bias) {
  const int64_t d = x.ne[0];
  HEARTH_CHECK(bias.ne[0] == d);
  float* xs = f32(x);
  const float* bs = f32(bias);
  for (int64_t r = 0; r < x.n_rows(); ++r) {
    for (int64_t i = 0; i < d; ++i) xs[r * d + i] += bs[i];
  }
}

void CpuBackend::scale(Tensor& x, float s) {
  float* xs = f32(x);
  for (int64_t i = 0; i < x.n_elements(); ++i) xs[i] *= s;
}

void CpuBackend::softcap(Tensor& x, float cap) {
  float* xs = f32(x);
  for (int64_t i = 0; i < x.n_elements(); ++i) xs[i] = cap * std::tanh(xs[i] / cap);
}

void CpuBackend::rope(Tensor& x, int n_heads, std::span<const int32_t> positions, const RopeParams& params) {
  const int64_t n_tokens = static_cast<int64_t>(positions.size());
  const int64_t head_dim = x.n_elements() / (n_tokens * n_heads);
  HEARTH_CHECK(head_dim * n_tokens * n_heads == x.n_elements());
  float* xs = f32(x);
  pool_.parallel_for(n_tokens, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      ref::rope_token(xs + t * n_heads * head_dim, n_heads, head_dim, positions[static_cast<size_t>(t)], params);
    }
  });
}

void CpuBackend::glu(const Tensor& gate, const Tensor& up, Activation act, Tensor& y) {
  HEARTH_CHECK(gate.n_elements() == up.n_elements() && gate.n_elements() == y.n_elements());
  const float* g = f32(gate);
  const float* u = f32(up);
  float* ys = f32(y);
  pool_.parallel_for(
      gate.n_elements(),
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
          ys[i] = (act == Activation::Silu ? ref::silu(g[i]) : ref::gelu_tanh(g[i])) * u[i];
        }
      },
      4096);
}

KvLayer CpuBackend::new_kv_layer(DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim) {
  HEARTH_CHECK(type == DType::F16 || type == DType::F32, "KV cache type {} not supported", dtype_name(type));
  KvLayer layer;
  layer.n_seq = n_seq;
  layer.n_ctx = n_ctx;
  layer.k = new_tensor(type, {kv_dim, n_ctx, n_seq, 1});
  layer.v = new_tensor(type, {kv_dim, n_ctx, n_seq, 1});
  return layer;
}

void CpuBackend::kv_store(KvLayer& cache, const Tensor& k, const Tensor& v, std::span<const KvSlot> slots) {
  const int64_t kv_dim = cache.k.ne[0];
  HEARTH_CHECK(k.ne[0] == kv_dim && v.ne[0] == kv_dim && k.n_rows() == static_cast<int64_t>(slots.size()));
  const float* ks = f32(k);
  const float* vs = f32(v);
  for (size_t t = 0; t < slots.size(); ++t) {
    const KvSlot s = slots[t];
    HEARTH_CHECK(s.seq >= 0 && s.seq < cache.n_seq && s.pos >= 0 && s.pos < cache.n_ctx, "slot ({}, {})", s.seq, s.pos);
    const int64_t row = static_cast<int64_t>(s.seq) * cache.n_ctx + s.pos;
    const float* kt = ks + static_cast<int64_t>(t) * kv_dim;
    const float* vt = vs + static_cast<int64_t>(t) * kv_dim;
    if (cache.k.type == DType::F16) {
      auto* kd = static_cast<uint16_t*>(cache.k.data) + row * kv_dim;
      auto* vd = static_cast<uint16_t*>(cache.v.data) + row * kv_dim;
      for (int64_t i = 0; i < kv_dim; ++i) {
        kd[i] = fp32_to_fp16(kt[i]);
        vd[i] = fp32_to_fp16(vt[i]);
      }
    } else {
      std::memcpy(static_cast<float*>(cache.k.data) + row * kv_dim, kt, static_cast<size_t>(kv_dim) * sizeof(float));
      std::memcpy(static_cast<float*>(cache.v.data) + row * kv_dim, vt, static_cast<size_t>(kv_dim) * sizeof(float));
    }
  }
}

namespace {

// One query head over `n_rows` f32 K/V rows (`stride` floats apart, this head's slice at the
// start of each row; row 0 is the window's first position): the arithmetic of
// ref::attention_head (q and the probabilities rounded to f16 when the cache is f16) in float
// with independent partial sums, and p.V accumulated row by row, so the compiler vectorizes
// both loops. Agrees with the reference to float rounding (tests/kernels).
void attention_head_fast(const AttentionKernels& kernels, const float* q, const float* k, const float* v,
                         int64_t stride, int64_t head_dim, int64_t n_rows, float scale, float softcap, bool half_inputs,
                         float* qr, float* scores, float* out) {
  for (int64_t d = 0; d < head_dim; ++d) qr[d] = half_inputs ? fp16_to_fp32(fp32_to_fp16(q[d])) : q[d];
  float max_score = -INFINITY;
  for (int64_t j = 0; j < n_rows; ++j) {
    float s = kernels.dot(qr, k + j * stride, head_dim) * scale;
    if (softcap > 0.0f) s = softcap * std::tanh(s / softcap);
    scores[j] = s;
    max_score = std::max(max_score, s);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < n_rows; ++j) {
    const float e = std::exp(scores[j] - max_score);
    scores[j] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
  for (int64_t j = 0; j < n_rows; ++j) {
    float pj = scores[j] * inv;
    if (half_inputs) pj = fp16_to_fp32(fp32_to_fp16(pj));
    kernels.axpy(pj, v + j * stride, out, head_dim);
  }
}

}  // namespace

void CpuBackend::attention(const Tensor& q, const KvLayer& cache, std::span<const KvSlot> slots,
                           const AttentionParams& p, Tensor& out) {
  const int64_t n_tokens = static_cast<int64_t>(slots.size());
  const int64_t kv_dim = cache.k.ne[0];
  HEARTH_CHECK(kv_dim == static_cast<int64_t>(p.n_head_kv) * p.head_dim && p.n_head % p.n_head_kv == 0);
  HEARTH_CHECK(q.n_elements() == n_tokens * p.n_head * p.head_dim && out.n_elements() == q.n_elements());
  if (n_tokens == 0) return;
  const float* qs = f32(q);
  float* os = f32(out);
  const int group = p.n_head / p.n_head_kv;
  const bool half = cache.k.type == DType::F16;
  const ConvertF16Fn to_f32 = convert_f16_to_f32_kernel(level_);
  const AttentionKernels attn = attention_kernels(level_);

  int32_t max_rows = 0;
  for (const KvSlot& s : slots) {
    HEARTH_CHECK(s.seq >= 0 && s.seq < cache.n_seq && s.pos >= 0 && s.pos < cache.n_ctx, "slot ({}, {})", s.seq, s.pos);
    max_rows = std::max(max_rows, s.pos + 1);
  }

  // One job per (token, kv head, part of its query-head group). With an f16 cache the job
  // converts the rows of its kv head's slice that its token reads to f32 once, in its own
  // scratch, for all its query heads (no pass over whole caches, no extra parallel_for per
  // sequence). When there are too few (token, kv head) pairs to keep the threads busy (decode
  // of one sequence), each query head is its own job and converts the slice itself: the
  // conversion is cheap next to the two products over the same rows.
  const int parts = n_tokens * p.n_head_kv >= 4 * static_cast<int64_t>(pool_.size()) ? 1 : group;
  const int heads_per_part = group / parts;
  const size_t slice = static_cast<size_t>(max_rows) * static_cast<size_t>(p.head_dim);
  const size_t per_thread = static_cast<size_t>(p.head_dim) + static_cast<size_t>(max_rows) + (half ? 2 * slice : 0);
  // Not zeroed: every element a job reads it has written first.
  const auto scratch = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(pool_.size()) * per_thread);
  pool_.parallel_for(n_tokens * p.n_head_kv * parts, [&](int64_t i0, int64_t i1, int thread) {
    float* qr = scratch.get() + static_cast<size_t>(thread) * per_thread;
    float* scores = qr + p.head_dim;
    float* k_conv = scores + max_rows;
    float* v_conv = k_conv + slice;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / (int64_t{p.n_head_kv} * parts);
      const int kv_head = static_cast<int>(i / parts % p.n_head_kv);
      const int part = static_cast<int>(i % parts);
      const KvSlot s = slots[static_cast<size_t>(t)];
      const int32_t first = p.window > 0 ? std::max(0, s.pos - p.window + 1) : 0;
      const int64_t n_rows = s.pos - first + 1;
      // Element offset of row `first` of this sequence, at this kv head's slice.
      const size_t at = (static_cast<size_t>(s.seq) * static_cast<size_t>(cache.n_ctx) + static_cast<size_t>(first)) *
                            static_cast<size_t>(kv_dim) +
                        static_cast<size_t>(kv_head) * static_cast<size_t>(p.head_dim);
      const float* k;
      const float* v;
      int64_t stride;
      if (half) {
        const uint16_t* kh = static_cast<const uint16_t*>(cache.k.data) + at;
        const uint16_t* vh = static_cast<const uint16_t*>(cache.v.data) + at;
        for (int64_t j = 0; j < n_rows; ++j) {
          to_f32(kh + j * kv_dim, k_conv + j * p.head_dim, p.head_dim);
          to_f32(vh + j * kv_dim, v_conv + j * p.head_dim, p.head_dim);
        }
        k = k_conv;
        v = v_conv;
        stride = p.head_dim;
      } else {
        k = static_cast<const float*>(cache.k.data) + at;
        v = static_cast<const float*>(cache.v.data) + at;
        stride = kv_dim;
      }
      for (int g = part * heads_per_part; g < (part + 1) * heads_per_part; ++g) {
        const int64_t h = int64_t{kv_head} * group + g;
        attention_head_fast(attn, qs + (t * p.n_head + h) * p.head_dim, k, v, stride, p.head_dim, n_rows, p.scale,
                            p.softcap, half, qr, scores, os + (t * p.n_head + h) * p.head_dim);
      }
    }
  });
}

}  // namespace hearth::kernels
