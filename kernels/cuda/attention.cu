// The KV cache: stores (f32, f16 or q8_0 rows) and split-sequence attention over it.
//
// Attention is flash-decoding in three launches, for every (token, query head):
//  1. stats: the token's positions [first, pos] are split into `splits` ranges, one block each
//     (so a single decoding token still spreads over many blocks); four warps take positions in
//     turn, a warp computing q.k with its lanes over the head's dimensions, and keep a running
//     softmax (maximum and sum of exponentials), merged across the warps into one pair per split.
//  2. values: each block merges every split's pair into the token's softmax maximum and sum, then
//     recomputes its range's scores (the same arithmetic, so the same values), forms the
//     probabilities exactly as the reference does (exp(s - max) / sum, rounded to f16 for an f16
//     cache) and accumulates p * V into a partial output per split.
//  3. merge: the partial outputs are summed in split order.
// Reading K twice (1 and 2) buys probabilities that are rounded like the CPU reference's, whose
// f16 rounding of the normalized probability would otherwise differ (kernels/cpu/ops_ref.cpp).
// q is rounded to f16 for an f16 cache and quantized to q8_0 for a q8_0 cache, as the reference.
#include <algorithm>
#include <cmath>

#include "kernels/attention_splits.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace hearth::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kDimsPerLane = kAttentionMaxHeadDim / 32;

__device__ __forceinline__ uint16_t f16_of(float v) { return __half_as_ushort(__float2half_rn(v)); }

// ---- stores ------------------------------------------------------------------------------

// blockIdx.x: token, blockIdx.y: 0 for K, 1 for V.
template <DType T>
__global__ void kv_store_kernel(KvArgs cache, const float* __restrict__ k, const float* __restrict__ v,
                                const int32_t* __restrict__ slots) {
  const int64_t t = blockIdx.x;
  const float* src = (blockIdx.y == 0 ? k : v) + t * cache.kv_dim;
  const int64_t row = static_cast<int64_t>(slots[2 * t]) * cache.n_ctx + slots[2 * t + 1];
  const size_t row_bytes = dev::cache_row_bytes<T>(cache.kv_dim);
  uint8_t* dst = static_cast<uint8_t*>(blockIdx.y == 0 ? cache.k : cache.v) + static_cast<size_t>(row) * row_bytes;
  if constexpr (T == DType::F32) {
    for (int64_t i = threadIdx.x; i < cache.kv_dim; i += blockDim.x) reinterpret_cast<float*>(dst)[i] = src[i];
  } else if constexpr (T == DType::F16) {
    for (int64_t i = threadIdx.x; i < cache.kv_dim; i += blockDim.x) reinterpret_cast<uint16_t*>(dst)[i] = f16_of(src[i]);
  } else {
    // q8_0 as the reference's activation quantizer: d = amax / 127, q = x * (127 / amax) rounded
    // half to even; one warp per block of 32.
    const unsigned lane = threadIdx.x % 32;
    for (int64_t b = threadIdx.x / 32; b < cache.kv_dim / 32; b += blockDim.x / 32) {
      const float x = src[32 * b + lane];
      const float amax = dev::warp_max(fabsf(x));
      const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
      uint8_t* block = dst + 34 * b;
      block[2 + lane] = static_cast<uint8_t>(static_cast<int8_t>(rintf(x * id)));
      if (lane == 0) *reinterpret_cast<uint16_t*>(block) = f16_of(amax / 127.0f);
    }
  }
}

// ---- attention ---------------------------------------------------------------------------

struct Where {
  int64_t token;
  int head;
  int split;
  int kv_head;
  const uint8_t* k_seq;  // the token's sequence in the cache
  const uint8_t* v_seq;
  size_t row_bytes;
  int32_t lo, hi;  // this block's positions [lo, hi)
};

template <DType T>
__device__ Where where_am_i(const KvArgs& cache, const int32_t* slots, const AttentionArgs& a, int splits) {
  Where w;
  w.token = blockIdx.z;
  w.head = static_cast<int>(blockIdx.y);
  w.split = static_cast<int>(blockIdx.x);
  w.kv_head = w.head / (a.n_head / a.n_head_kv);
  const int32_t seq = slots[2 * w.token], pos = slots[2 * w.token + 1];
  const int32_t first = a.window > 0 ? max(0, pos - a.window + 1) : 0;
  const int32_t len = pos - first + 1, chunk = (len + splits - 1) / splits;
  w.lo = min(pos + 1, first + w.split * chunk);
  w.hi = min(pos + 1, w.lo + chunk);
  w.row_bytes = dev::cache_row_bytes<T>(cache.kv_dim);
  const size_t seq_at = static_cast<size_t>(seq) * static_cast<size_t>(cache.n_ctx) * w.row_bytes;
  w.k_seq = static_cast<const uint8_t*>(cache.k) + seq_at;
  w.v_seq = static_cast<const uint8_t*>(cache.v) + seq_at;
  return w;
}

// Element e (of the layer's kv_dim) of a cache row.
template <DType T>
__device__ __forceinline__ float cache_value(const uint8_t* row, int64_t e) {
  if constexpr (T == DType::F32) return reinterpret_cast<const float*>(row)[e];
  if constexpr (T == DType::F16) return dev::f16_bits(reinterpret_cast<const uint16_t*>(row)[e]);
  const uint8_t* block = row + 34 * (e / 32);
  return dev::f16_at(block) * static_cast<float>(static_cast<int8_t>(block[2 + e % 32]));
}

// The lane's query values, as the reference feeds them to q.k.
template <DType T>
__device__ void load_query(const float* q, int head_dim, unsigned lane, float* qr) {
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int d = static_cast<int>(lane) + 32 * i;
    const float v = d < head_dim ? q[d] : 0.0f;
    if constexpr (T == DType::F16) {
      qr[i] = __half2float(__float2half_rn(v));
    } else if constexpr (T == DType::Q8_0) {
      if (32 * i >= head_dim) {
        qr[i] = 0.0f;
        continue;
      }
      const float amax = dev::warp_max(fabsf(v));
      const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
      const float d16 = __half2float(__float2half_rn(amax / 127.0f));
      qr[i] = static_cast<float>(static_cast<int>(rintf(v * id))) * d16;
    } else {
      qr[i] = v;
    }
  }
}

template <DType T>
__device__ __forceinline__ float score(const Where& w, const float* qr, int head_dim, int32_t p, unsigned lane,
                                       const AttentionArgs& a) {
  const uint8_t* row = w.k_seq + static_cast<size_t>(p) * w.row_bytes;
  const int64_t off = static_cast<int64_t>(w.kv_head) * head_dim;
  float s = 0.0f;
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int d = static_cast<int>(lane) + 32 * i;
    if (d < head_dim) s += qr[i] * cache_value<T>(row, off + d);
  }
  s = dev::warp_sum(s) * a.scale;
  if (a.softcap > 0.0f) s = a.softcap * tanhf(s / a.softcap);
  return s;
}

// (max, sum of exp(s - max)) of this block's positions -> stats[(token, head, split)].
template <DType T>
__global__ void __launch_bounds__(32 * kWarps) attention_stats(const float* __restrict__ q, KvArgs cache,
                                                               const int32_t* __restrict__ slots, AttentionArgs a,
                                                               int splits, float2* __restrict__ stats) {
  __shared__ float wm[kWarps], wl[kWarps];
  const Where w = where_am_i<T>(cache, slots, a, splits);
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float qr[kDimsPerLane];
  load_query<T>(q + (w.token * a.n_head + w.head) * a.head_dim, a.head_dim, lane, qr);
  float m = -INFINITY, l = 0.0f;
  for (int32_t p = w.lo + static_cast<int32_t>(warp); p < w.hi; p += kWarps) {
    const float s = score<T>(w, qr, a.head_dim, p, lane, a);
    const float m_new = fmaxf(m, s);
    l = l * expf(m - m_new) + expf(s - m_new);
    m = m_new;
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float mb = -INFINITY, lb = 0.0f;
    for (int i = 0; i < kWarps; ++i) mb = fmaxf(mb, wm[i]);
    if (mb != -INFINITY) {
      for (int i = 0; i < kWarps; ++i) {
        if (wm[i] != -INFINITY) lb += wl[i] * expf(wm[i] - mb);
      }
    }
    stats[(w.token * a.n_head + w.head) * splits + w.split] = make_float2(mb, lb);
  }
}

// p * V over this block's positions -> partial[(token, head, split), head_dim].
template <DType T>
__global__ void __launch_bounds__(32 * kWarps) attention_values(const float* __restrict__ q, KvArgs cache,
                                                                const int32_t* __restrict__ slots, AttentionArgs a,
                                                                int splits, const float2* __restrict__ stats,
                                                                float* __restrict__ partial) {
  __shared__ float acc_s[kWarps][kAttentionMaxHeadDim];
  const Where w = where_am_i<T>(cache, slots, a, splits);
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // The token's softmax maximum and sum, merged from every split (in split order, so every block
  // of the token computes the same two numbers).
  const float2* st = stats + (w.token * a.n_head + w.head) * splits;
  float mg = -INFINITY;
  for (int i = 0; i < splits; ++i) mg = fmaxf(mg, st[i].x);
  float sum = 0.0f;
  for (int i = 0; i < splits; ++i) {
    if (st[i].x != -INFINITY) sum += st[i].y * expf(st[i].x - mg);
  }
  const float inv = 1.0f / sum;
  float qr[kDimsPerLane];
  load_query<T>(q + (w.token * a.n_head + w.head) * a.head_dim, a.head_dim, lane, qr);
  float acc[kDimsPerLane] = {};
  const int64_t off = static_cast<int64_t>(w.kv_head) * a.head_dim;
  for (int32_t p = w.lo + static_cast<int32_t>(warp); p < w.hi; p += kWarps) {
    const float s = score<T>(w, qr, a.head_dim, p, lane, a);
    float prob = expf(s - mg) * inv;
    if constexpr (T == DType::F16) prob = __half2float(__float2half_rn(prob));
    const uint8_t* row = w.v_seq + static_cast<size_t>(p) * w.row_bytes;
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = static_cast<int>(lane) + 32 * i;
      if (d < a.head_dim) acc[i] += prob * cache_value<T>(row, off + d);
    }
  }
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int d = static_cast<int>(lane) + 32 * i;
    if (d < a.head_dim) acc_s[warp][d] = acc[i];
  }
  __syncthreads();
  float* out = partial + ((w.token * a.n_head + w.head) * splits + w.split) * a.head_dim;
  for (int d = static_cast<int>(threadIdx.x); d < a.head_dim; d += static_cast<int>(blockDim.x)) {
    float total = 0.0f;
    for (int i = 0; i < kWarps; ++i) total += acc_s[i][d];
    out[d] = total;
  }
}

// out[token, head, :] = sum over splits of the partial outputs. blockIdx.x: token * n_head + head.
__global__ void attention_merge(const float* __restrict__ partial, int splits, int head_dim, float* __restrict__ out) {
  const int64_t th = blockIdx.x;
  for (int d = static_cast<int>(threadIdx.x); d < head_dim; d += static_cast<int>(blockDim.x)) {
    float total = 0.0f;
    for (int i = 0; i < splits; ++i) total += partial[(th * splits + i) * head_dim + d];
    out[th * head_dim + d] = total;
  }
}

template <DType T>
void attention_typed(const float* q, const KvArgs& cache, const int32_t* slots, int64_t n, const AttentionArgs& a,
                     float* out, void* scratch, Stream stream) {
  const int splits = attention_splits(n, a.n_head, cache.n_ctx);
  auto* stats = static_cast<float2*>(scratch);
  float* partial = reinterpret_cast<float*>(stats + n * a.n_head * splits);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(a.n_head), static_cast<unsigned>(n));
  constexpr auto stats_kernel = attention_stats<T>;
  constexpr auto values_kernel = attention_values<T>;
  HEARTH_LAUNCH(stats_kernel, grid, dim3(32 * kWarps), 0, stream, q, cache, slots, a, splits, stats);
  HEARTH_LAUNCH(values_kernel, grid, dim3(32 * kWarps), 0, stream, q, cache, slots, a, splits,
                static_cast<const float2*>(stats), partial);
  HEARTH_LAUNCH(attention_merge, dim3(static_cast<unsigned>(n * a.n_head)), dim3(64), 0, stream,
                static_cast<const float*>(partial), splits, a.head_dim, out);
}

}  // namespace

inline namespace HEARTH_CUDA_IMPL {

void kv_store(const KvArgs& cache, const float* k, const float* v, const int32_t* slots, int64_t n, Stream stream) {
  const dim3 grid(static_cast<unsigned>(n), 2), block(128);
  switch (cache.type) {
    case DType::F32: {
      constexpr auto kernel = kv_store_kernel<DType::F32>;
      HEARTH_LAUNCH(kernel, grid, block, 0, stream, cache, k, v, slots);
      break;
    }
    case DType::F16: {
      constexpr auto kernel = kv_store_kernel<DType::F16>;
      HEARTH_LAUNCH(kernel, grid, block, 0, stream, cache, k, v, slots);
      break;
    }
    default: {
      constexpr auto kernel = kv_store_kernel<DType::Q8_0>;
      HEARTH_LAUNCH(kernel, grid, block, 0, stream, cache, k, v, slots);
      break;
    }
  }
}

int attention_splits(int64_t n_tokens, int n_head, int32_t n_ctx) { return attention_splits_for(n_tokens, n_head, n_ctx); }

size_t attention_scratch_bytes(int64_t n_tokens, const AttentionArgs& a, int32_t n_ctx) {
  const auto units = static_cast<size_t>(n_tokens * a.n_head * attention_splits(n_tokens, a.n_head, n_ctx));
  return units * (2 * sizeof(float) + static_cast<size_t>(a.head_dim) * sizeof(float));
}

void attention(const float* q, const KvArgs& cache, const int32_t* slots, int64_t n, const AttentionArgs& a, float* out,
               void* scratch, Stream stream) {
  switch (cache.type) {
    case DType::F32: attention_typed<DType::F32>(q, cache, slots, n, a, out, scratch, stream); break;
    case DType::F16: attention_typed<DType::F16>(q, cache, slots, n, a, out, scratch, stream); break;
    default: attention_typed<DType::Q8_0>(q, cache, slots, n, a, out, scratch, stream); break;
  }
}

}  // namespace HEARTH_CUDA_IMPL
}  // namespace hearth::kernels::cuda
