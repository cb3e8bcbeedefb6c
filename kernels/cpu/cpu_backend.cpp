#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/system_memory.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/dot_ref.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/cpu/ops_simd.h"
#include "kernels/cpu/packed.h"
#include "kernels/cpu/quants_ref.h"

namespace hearth::kernels {

namespace {

// Tensor::layout of weights repacked for the packed matmul (kernels/cpu/packed.h).
constexpr uint8_t kPackedLayout = 1;

constexpr std::string_view kCpuKind = "cpu";

// Host memory: an allocation of the backend's, or bytes the caller lends (a mapped file).
class CpuBuffer final : public Buffer {
 public:
  CpuBuffer(void* base, size_t size, std::shared_ptr<const void> holder, bool borrows)
      : Buffer(kCpuKind, size, borrows), base_(static_cast<uint8_t*>(base)), holder_(std::move(holder)) {}
  uint8_t* base() const { return base_; }

 private:
  uint8_t* base_;
  std::shared_ptr<const void> holder_;
};

float* f32(const Tensor& t) {
  HEARTH_CHECK(t.type == DType::F32, "expected an f32 tensor, got {}", dtype_name(t.type));
  return static_cast<float*>(CpuBackend::host(t));
}
const int32_t* i32(const Tensor& t) {
  HEARTH_CHECK(t.type == DType::I32, "expected an i32 tensor, got {}", dtype_name(t.type));
  return static_cast<const int32_t*>(CpuBackend::host(t));
}
// The slots tensor I32 [n, 2] as KvSlots.
std::span<const KvSlot> kv_slots(const Tensor& slots) {
  HEARTH_CHECK(slots.ne[0] == 2 && slots.ne[2] == 1 && slots.ne[3] == 1, "slots must be I32 [n, 2]");
  return {reinterpret_cast<const KvSlot*>(i32(slots)), static_cast<size_t>(slots.ne[1])};
}

std::shared_ptr<void> allocate(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  HEARTH_CHECK(p != nullptr, "out of memory allocating {} bytes", bytes);
  return {p, std::free};
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

void* CpuBackend::host(const Tensor& t) {
  HEARTH_CHECK(t.buffer != nullptr, "an empty tensor");
  HEARTH_CHECK(t.buffer->kind() == kCpuKind, "a {} buffer given to the CPU backend", t.buffer->kind());
  return static_cast<const CpuBuffer&>(*t.buffer).base() + t.offset;
}

DeviceInfo CpuBackend::device() const {
  DeviceInfo d;
  d.backend = "cpu";
  d.index = 0;
  d.name = cpu_model_name();
  d.memory_total = total_memory_bytes();
  d.memory_free = available_memory_bytes();
  d.properties = {{"simd", std::string(cpu_level_name(level_))},
                  {"vnni", level_ == CpuLevel::Avx512 && cpu_has_vnni() ? "yes" : "no"},
                  {"packed_matmul", pack_weights_ && packed_kernel(DType::Q4_0, level_) != nullptr ? "yes" : "no"},
                  {"threads", std::to_string(pool_.size())},
                  {"hardware_threads", std::to_string(ThreadPool::hardware_threads())}};
  return d;
}

bool CpuBackend::supports(Op op, DType type) const {
  switch (op) {
    case Op::GetRows:
      return ref::can_dequantize(type);
    case Op::Matmul:
      return ref::can_vec_dot(type) && ref::can_dequantize(type);
    case Op::KvStore:
    case Op::Attention:
      return type == DType::F16 || type == DType::F32 || type == DType::Q8_0;
    case Op::RmsNorm:
    case Op::Add:
    case Op::AddBias:
    case Op::Scale:
    case Op::Softcap:
    case Op::Rope:
    case Op::Glu:
      return type == DType::F32;
  }
  return false;
}

bool CpuBackend::supports_kv_type(DType type, int64_t head_dim) const {
  return type == DType::F16 || type == DType::F32 || (type == DType::Q8_0 && head_dim > 0 && head_dim % kQK8_0 == 0);
}

std::shared_ptr<Buffer> CpuBackend::new_buffer(size_t bytes) {
  std::shared_ptr<void> memory = BufferPool::get(buffers_, bytes);
  void* base = memory.get();
  return std::make_shared<CpuBuffer>(base, bytes, std::move(memory), false);
}

Tensor CpuBackend::weight(DType type, std::array<int64_t, 4> ne, const void* host, std::shared_ptr<const void> keep_alive) {
  Tensor t;
  t.type = type;
  t.ne = ne;
  // Matrices of a type with packed kernels at this level are repacked (rows interleaved by 16,
  // the native size but for Q4_K's +2.8%): their matmul then runs the packed kernels, at every
  // batch size.
  if (pack_weights_ && packed_kernel(type, level_) != nullptr && ne[0] % dtype_block_size(type) == 0 && ne[2] == 1 && ne[3] == 1) {
    const int64_t k = ne[0], m = ne[1];
    const size_t bytes = packed_bytes(type, k, m);
    auto memory = allocate_huge_pages(bytes);
    pool_.parallel_for(packed_groups(m), [&](int64_t g0, int64_t g1, int) { pack_groups(type, host, k, m, memory.get(), g0, g1); });
    void* base = memory.get();
    t.buffer = std::make_shared<CpuBuffer>(base, bytes, std::move(memory), false);
    t.layout = kPackedLayout;
    return t;
  }
  // Used in place: never written, weights are read-only by contract.
  t.buffer = std::make_shared<CpuBuffer>(const_cast<void*>(host), t.n_bytes(), std::move(keep_alive), true);
  return t;
}

void CpuBackend::write(const Tensor& dst, const void* host_bytes, size_t bytes, size_t dst_offset) {
  HEARTH_CHECK(dst.layout == 0 && dst_offset + bytes <= dst.n_bytes(), "write of {} bytes at {} into {}", bytes,
               dst_offset, dst.n_bytes());
  std::memcpy(static_cast<uint8_t*>(host(dst)) + dst_offset, host_bytes, bytes);
}

void CpuBackend::read(const Tensor& src, void* host_bytes, size_t bytes) {
  HEARTH_CHECK(src.layout == 0 && bytes <= src.n_bytes());
  std::memcpy(host_bytes, host(src), bytes);
}

void CpuBackend::get_rows(const Tensor& table, const Tensor& ids_tensor, const Tensor& out) {
  const int64_t d = table.ne[0];
  const int32_t* ids = i32(ids_tensor);
  const int64_t n = ids_tensor.n_elements();
  HEARTH_CHECK(out.ne[0] == d && out.n_rows() == n, "get_rows of {} ids into {} rows", n, out.n_rows());
  float* y = f32(out);
  const uint8_t* base = static_cast<const uint8_t*>(host(table));
  const size_t row_bytes = table.row_bytes();
  std::vector<uint8_t> native(table.layout == kPackedLayout ? row_bytes : 0);
  for (int64_t i = 0; i < n; ++i) {
    HEARTH_CHECK(ids[i] >= 0 && ids[i] < table.n_rows(), "row {} of {}", ids[i], table.n_rows());
    const uint8_t* row = native.data();
    if (table.layout == kPackedLayout) {
      unpack_row(table.type, base, d, ids[i], native.data());
    } else {
      row = base + static_cast<size_t>(ids[i]) * row_bytes;
    }
    ref::dequantize_row(table.type, row, y + i * d, d);
  }
}

void CpuBackend::matmul(const Tensor& w, const Tensor& x, const Tensor& y) {
  const int64_t k = w.ne[0], m = w.n_rows(), n = x.n_rows();
  HEARTH_CHECK(x.ne[0] == k && y.ne[0] == m && y.n_rows() == n, "matmul shapes w[{},{}] x[{},{}] y[{},{}]", m, k, n,
               x.ne[0], y.n_rows(), y.ne[0]);
  const float* xs = f32(x);
  float* ys = f32(y);
  const void* wdata = host(w);
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
      packed->gemm(wdata, k, m, g0, g1, xa, act_bytes, n, ys, m);
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
      m, [&](int64_t r0, int64_t r1, int) { matmul_rows(kernel, wdata, w_row_bytes, k, r0, r1, xq, xq_row_bytes, n, ys, m); },
      16);
}

void CpuBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y) {
  const int64_t d = x.ne[0];
  HEARTH_CHECK(weight.empty() || weight.ne[0] == d, "norm weight of {} for rows of {}", weight.ne[0], d);
  HEARTH_CHECK(y.ne[0] == d && y.n_rows() == x.n_rows(), "rms_norm into [{}, {}] from [{}, {}]", y.n_rows(), y.ne[0],
               x.n_rows(), d);
  const float* xs = f32(x);
  float* ys = f32(y);
  const float* ws = weight.empty() ? nullptr : f32(weight);
  const auto norm_row = ops_kernels(level_).rms_norm_row;
  pool_.parallel_for(
      x.n_rows(),
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) norm_row(xs + r * d, ws, eps, ys + r * d, d);
      },
      8);
}

void CpuBackend::add(const Tensor& a, const Tensor& b, const Tensor& y) {
  HEARTH_CHECK(a.n_elements() == b.n_elements() && a.n_elements() == y.n_elements());
  const float* as = f32(a);
  const float* bs = f32(b);
  float* ys = f32(y);
  for (int64_t i = 0; i < a.n_elements(); ++i) ys[i] = as[i] + bs[i];
}

void CpuBackend::add_bias(const Tensor& x, const Tensor& bias) {
  const int64_t d = x.ne[0];
  HEARTH_CHECK(bias.n_elements() == d, "bias of {} for rows of {}", bias.n_elements(), d);
  float* xs = f32(x);
  const float* bs = f32(bias);
  for (int64_t r = 0; r < x.n_rows(); ++r) {
    for (int64_t i = 0; i < d; ++i) xs[r * d + i] += bs[i];
  }
}

void CpuBackend::scale(const Tensor& x, float s) {
  float* xs = f32(x);
  for (int64_t i = 0; i < x.n_elements(); ++i) xs[i] *= s;
}

void CpuBackend::softcap(const Tensor& x, float cap) {
  float* xs = f32(x);
  for (int64_t i = 0; i < x.n_elements(); ++i) xs[i] = cap * std::tanh(xs[i] / cap);
}

void CpuBackend::rope(const Tensor& x, int n_heads, const Tensor& positions_tensor, const RopeParams& params) {
  const int64_t n_tokens = positions_tensor.n_elements();
  const int32_t* positions = i32(positions_tensor);
  HEARTH_CHECK(n_tokens > 0 && n_heads > 0 && x.n_elements() % (n_tokens * n_heads) == 0, "rope of {} values over {} tokens x {} heads",
               x.n_elements(), n_tokens, n_heads);
  const int64_t head_dim = x.n_elements() / (n_tokens * n_heads);
  HEARTH_CHECK(params.n_rot > 0 && params.n_rot <= head_dim && params.n_rot % 2 == 0, "rope of {} dims in heads of {}",
               params.n_rot, head_dim);
  const float* factors = nullptr;
  if (!params.freq_factors.empty()) {
    HEARTH_CHECK(params.freq_factors.n_elements() == params.n_rot / 2, "{} rope frequency factors for {} rotated dims",
                 params.freq_factors.n_elements(), params.n_rot);
    factors = f32(params.freq_factors);
  }
  float* xs = f32(x);
  pool_.parallel_for(n_tokens, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      ref::rope_token(xs + t * n_heads * head_dim, n_heads, head_dim, positions[t], params, factors);
    }
  });
}

void CpuBackend::glu(const Tensor& gate, const Tensor& up, Activation act, const Tensor& y) {
  HEARTH_CHECK(gate.n_elements() == up.n_elements() && gate.n_elements() == y.n_elements());
  const float* g = f32(gate);
  const float* u = f32(up);
  float* ys = f32(y);
  // Element-wise, so how the elements are split across threads changes no bit.
  const OpsKernels& ops = ops_kernels(level_);
  const auto glu_kernel = act == Activation::Silu ? ops.silu_mul : ops.gelu_mul;
  pool_.parallel_for(
      gate.n_elements(), [&](int64_t i0, int64_t i1, int) { glu_kernel(g + i0, u + i0, ys + i0, i1 - i0); }, 4096);
}

KvLayer CpuBackend::new_kv_layer(DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim) {
  HEARTH_CHECK(type == DType::F16 || type == DType::F32 || type == DType::Q8_0, "KV cache type {} not supported",
               dtype_name(type));
  HEARTH_CHECK(type != DType::Q8_0 || kv_dim % kQK8_0 == 0, "a q8_0 KV cache needs rows of whole blocks of {}, not {}",
               kQK8_0, kv_dim);
  KvLayer layer;
  layer.n_seq = n_seq;
  layer.n_ctx = n_ctx;
  layer.k = new_tensor(type, {kv_dim, n_ctx, n_seq, 1});
  layer.v = new_tensor(type, {kv_dim, n_ctx, n_seq, 1});
  return layer;
}

void CpuBackend::kv_store(const KvLayer& cache, const Tensor& k, const Tensor& v, const Tensor& slots_tensor) {
  const std::span<const KvSlot> slots = kv_slots(slots_tensor);
  const int64_t kv_dim = cache.k.ne[0];
  HEARTH_CHECK(k.ne[0] == kv_dim && v.ne[0] == kv_dim && k.n_rows() == static_cast<int64_t>(slots.size()));
  const float* ks = f32(k);
  const float* vs = f32(v);
  uint8_t* const kc = static_cast<uint8_t*>(host(cache.k));
  uint8_t* const vc = static_cast<uint8_t*>(host(cache.v));
  const auto to_f16 = ops_kernels(level_).f32_to_f16;  // bytes of core/fp16.h's fp32_to_fp16
  const auto to_q8_0 = dot_kernel(DType::Q8_0, level_).quantize;  // bytes of ref::quantize_activations_q8_0
  const size_t row_bytes = dtype_row_bytes(cache.k.type, kv_dim);
  for (size_t t = 0; t < slots.size(); ++t) {
    const KvSlot s = slots[t];
    HEARTH_CHECK(s.seq >= 0 && s.seq < cache.n_seq && s.pos >= 0 && s.pos < cache.n_ctx, "slot ({}, {})", s.seq, s.pos);
    const size_t at = static_cast<size_t>(int64_t{s.seq} * cache.n_ctx + s.pos) * row_bytes;
    const float* kt = ks + static_cast<int64_t>(t) * kv_dim;
    const float* vt = vs + static_cast<int64_t>(t) * kv_dim;
    if (cache.k.type == DType::F16) {
      to_f16(kt, reinterpret_cast<uint16_t*>(kc + at), kv_dim);
      to_f16(vt, reinterpret_cast<uint16_t*>(vc + at), kv_dim);
    } else if (cache.k.type == DType::Q8_0) {
      to_q8_0(kt, kc + at, kv_dim);
      to_q8_0(vt, vc + at, kv_dim);
    } else {
      std::memcpy(kc + at, kt, static_cast<size_t>(kv_dim) * sizeof(float));
      std::memcpy(vc + at, vt, static_cast<size_t>(kv_dim) * sizeof(float));
    }
  }
}

namespace {

// Attention works on tiles: up to kAttentionTileTokens consecutive slots of one sequence (a
// prompt chunk becomes several tiles; a decoding sequence is a tile of one token). A job is a
// tile, a kv head and the query heads of its group (or one of them, when there are too few jobs
// to keep the threads busy). Its queries pass over the K rows, then the V rows, block by block,
// so a block is read from memory once and then from cache by every query of the job.
constexpr int64_t kAttentionTileTokens = 16;
// Rows per block: about 32 KiB of one kv head's K (or V) values, a multiple of 8 rows.
int64_t attention_block_rows(int64_t head_dim, size_t elem) {
  return std::max<int64_t>(8, static_cast<int64_t>(32768 / (elem * static_cast<size_t>(head_dim))) / 8 * 8);
}

// Per-thread scratch of attention, kept by the calling thread between calls (a decode step
// calls attention once per layer; no allocation per call once it has grown).
float* attention_scratch(size_t floats) {
  thread_local std::unique_ptr<float[]> buffer;
  thread_local size_t capacity = 0;
  if (floats > capacity) {
    buffer = std::make_unique_for_overwrite<float[]>(floats);
    capacity = floats;
  }
  return buffer.get();
}

}  // namespace

// The arithmetic for one (token, query head) is fixed by its own position range and the level:
// raw scores q.k per row (OpsKernels::qk: per row, whatever rows share the call), softmax over
// exactly its rows, then out = sum_j p_j v_j as one multiply-add chain per element over its rows
// in ascending order, however the rows are cut into blocks. Tiles, jobs, blocks and threads
// decide only which work shares a pass over K / V, so a token gets the same bits alone, in any
// batch, at any thread count and with any prefill chunking (tests/kernels/test_attention.cpp).
// The f16 cache is read as it is: the kernels widen K / V in registers (F16C, fcvtl). With a
// q8_0 cache q is quantized to q8_0 and each score is an integer q8_0 x q8_0 dot product (as
// ggml computes it: OpsKernels::qk_q8_0); V blocks are widened to exact floats in a per-thread
// buffer, once per pass of a job, for the f32 p.V kernels.
void CpuBackend::attention(const Tensor& q, const KvLayer& cache, const Tensor& slots_tensor, const AttentionParams& p,
                           const Tensor& out) {
  const std::span<const KvSlot> slots = kv_slots(slots_tensor);
  const int64_t n_tokens = static_cast<int64_t>(slots.size());
  const int64_t kv_dim = cache.k.ne[0];
  HEARTH_CHECK(kv_dim == static_cast<int64_t>(p.n_head_kv) * p.head_dim && p.n_head % p.n_head_kv == 0);
  HEARTH_CHECK(q.n_elements() == n_tokens * p.n_head * p.head_dim && out.n_elements() == q.n_elements());
  if (n_tokens == 0) return;
  const float* qs = f32(q);
  float* os = f32(out);
  const int64_t head_dim = p.head_dim;
  const int group = p.n_head / p.n_head_kv;
  const DType kv_type = cache.k.type;
  const bool half = kv_type == DType::F16;
  const bool q8 = kv_type == DType::Q8_0;
  HEARTH_CHECK(!q8 || head_dim % kQK8_0 == 0, "a q8_0 KV cache needs a head dim that is a multiple of {}, not {}",
               kQK8_0, head_dim);
  const OpsKernels& ops = ops_kernels(level_);
  const QuantizeFn quantize_q8_0 = dot_kernel(DType::Q8_0, level_).quantize;  // bytes of ref::quantize_activations_q8_0
  const auto first_row = [&](const KvSlot& s) { return p.window > 0 ? std::max(0, s.pos - p.window + 1) : 0; };

  int64_t max_rows = 0;
  for (const KvSlot& s : slots) {
    HEARTH_CHECK(s.seq >= 0 && s.seq < cache.n_seq && s.pos >= 0 && s.pos < cache.n_ctx, "slot ({}, {})", s.seq, s.pos);
    max_rows = std::max<int64_t>(max_rows, s.pos - first_row(s) + 1);
  }

  // Tiles: runs of consecutive slots of one sequence, [begin, end) of slots.
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t t = 0; t < n_tokens;) {
    int64_t end = t + 1;
    while (end < n_tokens && end - t < kAttentionTileTokens &&
           slots[static_cast<size_t>(end)].seq == slots[static_cast<size_t>(t)].seq) {
      ++end;
    }
    tiles.emplace_back(t, end);
    t = end;
  }
  const int n_threads = pool_.size();
  const int parts =
      static_cast<int64_t>(tiles.size()) * p.n_head_kv >= 4 * static_cast<int64_t>(n_threads) ? 1 : group;
  const int heads_per_part = group / parts;

  struct Job {
    int64_t tile;
    int kv_head;
    int part;
    int64_t cost;  // rows read by its queries
  };
  std::vector<Job> jobs;
  jobs.reserve(tiles.size() * static_cast<size_t>(p.n_head_kv * parts));
  for (size_t i = 0; i < tiles.size(); ++i) {
    int64_t rows = 0;
    for (int64_t t = tiles[i].first; t < tiles[i].second; ++t) {
      const KvSlot s = slots[static_cast<size_t>(t)];
      rows += s.pos - first_row(s) + 1;
    }
    for (int kv = 0; kv < p.n_head_kv; ++kv) {
      for (int part = 0; part < parts; ++part) {
        jobs.push_back({static_cast<int64_t>(i), kv, part, rows * heads_per_part});
      }
    }
  }
  // Jobs to threads, longest first, each to the least loaded thread: a prompt's later tiles read
  // more rows, and parallel_for's equal chunks of jobs would give them all to the last thread.
  const int n_bins = static_cast<int>(std::min<size_t>(static_cast<size_t>(n_threads), jobs.size()));
  std::vector<std::vector<const Job*>> bins(static_cast<size_t>(n_bins));
  {
    std::vector<const Job*> by_cost;
    by_cost.reserve(jobs.size());
    for (const Job& job : jobs) by_cost.push_back(&job);
    std::stable_sort(by_cost.begin(), by_cost.end(), [](const Job* a, const Job* b) { return a->cost > b->cost; });
    std::vector<int64_t> load(static_cast<size_t>(n_bins), 0);
    for (const Job* job : by_cost) {
      const size_t b = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
      bins[b].push_back(job);
      load[b] += job->cost;
    }
  }

  const int64_t block_rows = attention_block_rows(head_dim, half ? 2 : 4);  // q8_0: as f32 once widened
  const int64_t max_queries = kAttentionTileTokens * heads_per_part;
  // Strides of the queries' copies and of their scores: whole cache lines plus one, so that the
  // same offset of many queries does not fall into one L1 set (power-of-two strides thrash it).
  const int64_t q_stride = (head_dim + 15) / 16 * 16 + 16;
  const int64_t score_stride = (max_rows + 15) / 16 * 16 + 16;
  const size_t v_floats = q8 ? static_cast<size_t>(block_rows * head_dim) : 0;  // widened V rows
  const size_t per_thread = static_cast<size_t>(max_queries * (q_stride + score_stride)) + v_floats;
  float* const scratch = attention_scratch(per_thread * static_cast<size_t>(n_threads));

  const auto run_job = [&](const Job& job, float* mem) {
    const auto [t0, t1] = tiles[static_cast<size_t>(job.tile)];
    const int h0 = job.kv_head * group + job.part * heads_per_part;
    const int64_t n_queries = (t1 - t0) * heads_per_part;
    float* const qbuf = mem;
    float* const scores = qbuf + n_queries * q_stride;
    float* const vbuf = scores + n_queries * score_stride;  // q8_0: a block of V rows as floats
    // Query i: token t0 + i / heads_per_part, head h0 + i % heads_per_part.
    const auto token = [&](int64_t i) { return slots[static_cast<size_t>(t0 + i / heads_per_part)]; };
    const auto out_of = [&](int64_t i) {
      return os + ((t0 + i / heads_per_part) * p.n_head + h0 + i % heads_per_part) * head_dim;
    };
    int32_t lo = std::numeric_limits<int32_t>::max(), hi = 0;
    for (int64_t i = 0; i < n_queries; ++i) {
      float* qi = qbuf + i * q_stride;
      if (q8) {
        quantize_q8_0(qs + (out_of(i) - os), qi, head_dim);  // q enters q.k as q8_0 blocks
      } else {
        std::memcpy(qi, qs + (out_of(i) - os), static_cast<size_t>(head_dim) * sizeof(float));
        if (half) ops.round_f16(qi, head_dim);  // q enters q.k as f16, as in ggml
      }
      lo = std::min(lo, first_row(token(i)));
      hi = std::max(hi, token(i).pos);
    }
    // Element offset of row r of the tile's sequence, at this kv head's slice.
    const size_t seq_at = static_cast<size_t>(token(0).seq) * static_cast<size_t>(cache.n_ctx);
    const auto row_at = [&](int32_t r) {
      return (seq_at + static_cast<size_t>(r)) * static_cast<size_t>(kv_dim) +
             static_cast<size_t>(job.kv_head) * static_cast<size_t>(head_dim);
    };
    const auto stride = static_cast<size_t>(kv_dim);  // elements between rows
    // For each block of rows in [lo, hi], each token's rows in it: each(i, offset of the first of
    // them in the token's own range, their address in `part` (K or V), how many, the stride
    // between rows) for the token's queries i .. i + heads_per_part - 1, which read the same
    // rows. A q8_0 V block is first widened into vbuf (rows head_dim apart).
    const auto over_blocks = [&](const Tensor& part, const auto& each) {
      const bool widen = q8 && &part == &cache.v;
      const void* const part_data = host(part);
      for (int64_t b = lo; b <= hi; b += block_rows) {
        const auto b0 = static_cast<int32_t>(b);
        const auto b1 = static_cast<int32_t>(std::min<int64_t>(hi, b + block_rows - 1));
        if (widen) {
          for (int32_t r = b0; r <= b1; ++r) {
            ops.dequantize_q8_0(static_cast<const BlockQ8_0*>(part_data) + row_at(r) / kQK8_0,
                                vbuf + static_cast<size_t>(r - b0) * static_cast<size_t>(head_dim), head_dim);
          }
        }
        for (int64_t i = 0; i < n_queries; i += heads_per_part) {
          const int32_t first = first_row(token(i));
          const int32_t r0 = std::max(b0, first), r1 = std::min(b1, token(i).pos);
          if (r0 <= r1) {
            const int64_t n = int64_t{r1} - r0 + 1;
            if (half) {
              each(i, r0 - first, static_cast<const uint16_t*>(part_data) + row_at(r0), n, stride);
            } else if (widen) {
              each(i, r0 - first, static_cast<const float*>(vbuf) + static_cast<size_t>(r0 - b0) * head_dim, n,
                   static_cast<size_t>(head_dim));
            } else if (q8) {
              each(i, r0 - first, static_cast<const BlockQ8_0*>(part_data) + row_at(r0) / kQK8_0, n, stride / kQK8_0);
            } else {
              each(i, r0 - first, static_cast<const float*>(part_data) + row_at(r0), n, stride);
            }
          }
        }
      }
    };
    const auto q_of = [&](int64_t i) { return qbuf + i * q_stride; };
    const auto scores_of = [&](int64_t i) { return scores + i * score_stride; };
    // The token's queries two at a time through the two-query kernels (one row load for both).
    const auto in_pairs = [&](int64_t i, const auto& two, const auto& one) {
      int64_t a = i;
      for (; a + 1 < i + heads_per_part; a += 2) two(a, a + 1);
      if (a < i + heads_per_part) one(a);
    };
    over_blocks(cache.k, [&](int64_t i, int64_t at, const auto* rows, int64_t n, size_t step) {
      using Row = std::remove_cv_t<std::remove_pointer_t<decltype(rows)>>;
      if constexpr (std::is_same_v<Row, BlockQ8_0>) {
        for (int64_t a = i; a < i + heads_per_part; ++a) ops.qk_q8_0(q_of(a), rows, step, n, head_dim, scores_of(a) + at);
      } else if constexpr (std::is_same_v<Row, uint16_t>) {
        in_pairs(
            i,
            [&](int64_t a, int64_t b) {
              ops.qk2_f16(q_of(a), q_of(b), rows, step, n, head_dim, scores_of(a) + at, scores_of(b) + at);
            },
            [&](int64_t a) { ops.qk_f16(q_of(a), rows, step, n, head_dim, scores_of(a) + at); });
      } else {
        in_pairs(
            i,
            [&](int64_t a, int64_t b) {
              ops.qk2_f32(q_of(a), q_of(b), rows, step, n, head_dim, scores_of(a) + at, scores_of(b) + at);
            },
            [&](int64_t a) { ops.qk_f32(q_of(a), rows, step, n, head_dim, scores_of(a) + at); });
      }
    });
    for (int64_t i = 0; i < n_queries; ++i) {
      const KvSlot s = token(i);
      ops.softmax(scores_of(i), s.pos - first_row(s) + 1, p.scale, p.softcap, half);
      std::fill_n(out_of(i), head_dim, 0.0f);
    }
    over_blocks(cache.v, [&](int64_t i, int64_t at, const auto* rows, int64_t n, size_t step) {
      using Row = std::remove_cv_t<std::remove_pointer_t<decltype(rows)>>;
      if constexpr (std::is_same_v<Row, uint16_t>) {
        in_pairs(
            i,
            [&](int64_t a, int64_t b) {
              ops.pv2_f16(scores_of(a) + at, scores_of(b) + at, rows, step, n, head_dim, out_of(a), out_of(b));
            },
            [&](int64_t a) { ops.pv_f16(scores_of(a) + at, rows, step, n, head_dim, out_of(a)); });
      } else if constexpr (std::is_same_v<Row, float>) {
        in_pairs(
            i,
            [&](int64_t a, int64_t b) {
              ops.pv2_f32(scores_of(a) + at, scores_of(b) + at, rows, step, n, head_dim, out_of(a), out_of(b));
            },
            [&](int64_t a) { ops.pv_f32(scores_of(a) + at, rows, step, n, head_dim, out_of(a)); });
      }  // (V is never passed as q8_0 blocks: over_blocks widens them)
    });
  };

  pool_.parallel_for(n_bins, [&](int64_t b0, int64_t b1, int thread) {
    float* mem = scratch + static_cast<size_t>(thread) * per_thread;
    for (int64_t b = b0; b < b1; ++b) {
      for (const Job* job : bins[static_cast<size_t>(b)]) run_job(*job, mem);
    }
  });
}

}  // namespace hearth::kernels
