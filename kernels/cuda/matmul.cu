// Matrix products and row lookups on GGUF weights: y [n, m] = x [n, k] * w [m, k]^T.
//
//  - Decode (n <= kMatvecMaxTokens): one warp per weight row, the row read once for all n tokens.
//    Quantized weights meet activations quantized to 8 bits once per op (quantize_act_q8): each
//    lane takes 8-value chunks of the row (neighbouring lanes read neighbouring bytes of the same
//    blocks, so a warp's loads are contiguous), multiplies them with __dp4a, and the warp sums
//    its lanes with shuffles. f32 / f16 / bf16 weights take f32 activations.
//  - Prefill (larger n): a 64 x 64 tile of y per block of 256 threads, k in steps of 32 through
//    shared memory: the weight tile is dequantized there once and each thread computes 4 x 4
//    outputs from it.
//  - get_rows: each thread dequantizes 8 values of a looked-up row.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace hearth::kernels::cuda {
namespace {

using dev::Chunk8;

constexpr int kWarpsPerBlock = 4;

template <DType T>
constexpr bool kQuantized = T != DType::F32 && T != DType::F16 && T != DType::BF16;

template <DType T>
__device__ __forceinline__ float plain_value(const uint8_t* row, int64_t i) {
  if constexpr (T == DType::F32) return reinterpret_cast<const float*>(row)[i];
  if constexpr (T == DType::F16) return dev::f16_bits(reinterpret_cast<const uint16_t*>(row)[i]);
  return dev::bf16_bits(reinterpret_cast<const uint16_t*>(row)[i]);
}

// x [n, k] f32 -> [n, k / 32] ActQ8. One warp per 32 values.
__global__ void quantize_act_q8(const float* __restrict__ x, ActQ8* __restrict__ out, int64_t n_blocks) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (b >= n_blocks) return;
  const unsigned lane = threadIdx.x % 32;
  const float v = x[b * 32 + lane];
  const float amax = dev::warp_max(fabsf(v));
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  out[b].qs[lane] = static_cast<int8_t>(rintf(v * id));  // half to even
  if (lane == 0) out[b].d = __half2float(__float2half_rn(amax / 127.0f));  // an f16 scale, as ggml's q8 blocks
}

template <DType T>
__global__ void matvec_q8(const uint8_t* __restrict__ w, size_t row_bytes, int64_t m, int64_t k,
                          const ActQ8* __restrict__ xq, int n, float* __restrict__ y) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= m) return;  // the whole warp
  const unsigned lane = threadIdx.x % 32;
  const uint8_t* row = w + static_cast<size_t>(r) * row_bytes;
  const int64_t n_sub = k / 32;
  float acc[kMatvecMaxTokens] = {};
  for (int64_t c = lane; c < n_sub * 4; c += 32) {
    const int64_t j = c / 4;
    const int part = static_cast<int>(c % 4);
    const Chunk8 ch = dev::decode8<T>(row, j, part);
    for (int t = 0; t < n; ++t) {
      const ActQ8& xb = xq[t * n_sub + j];
      const int* xw = reinterpret_cast<const int*>(xb.qs + 8 * part);
      const int dot = __dp4a(static_cast<int>(ch.q[1]), xw[1], __dp4a(static_cast<int>(ch.q[0]), xw[0], 0));
      const int sum = __dp4a(0x01010101, xw[1], __dp4a(0x01010101, xw[0], 0));
      acc[t] += xb.d * (ch.d * static_cast<float>(dot) + ch.m * static_cast<float>(sum));
    }
  }
  for (int t = 0; t < n; ++t) {
    const float s = dev::warp_sum(acc[t]);
    if (lane == 0) y[t * m + r] = s;
  }
}

template <DType T>
__global__ void matvec_f(const uint8_t* __restrict__ w, size_t row_bytes, int64_t m, int64_t k,
                         const float* __restrict__ x, int n, float* __restrict__ y) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= m) return;
  const unsigned lane = threadIdx.x % 32;
  const uint8_t* row = w + static_cast<size_t>(r) * row_bytes;
  float acc[kMatvecMaxTokens] = {};
  for (int64_t i = lane; i < k; i += 32) {
    const float wv = plain_value<T>(row, i);
    for (int t = 0; t < n; ++t) acc[t] += wv * x[t * k + i];
  }
  for (int t = 0; t < n; ++t) {
    const float s = dev::warp_sum(acc[t]);
    if (lane == 0) y[t * m + r] = s;
  }
}

constexpr int kTile = 64, kTileK = 32, kTileThreads = 256;

// y [n, m] = x [n, k] * w [m, k]^T, tile (blockIdx.x: 64 rows of w, blockIdx.y: 64 tokens).
template <DType T>
__global__ void __launch_bounds__(kTileThreads) matmul_tiled(const uint8_t* __restrict__ w, size_t row_bytes,
                                                             int64_t m, int64_t k, const float* __restrict__ x,
                                                             int64_t n, float* __restrict__ y) {
  __shared__ float ws[kTileK][kTile + 1];
  __shared__ float xs[kTileK][kTile + 1];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile, tok0 = static_cast<int64_t>(blockIdx.y) * kTile;
  // Loading: thread tid fills 8 values (part tid % 4 of the k step) of tile row tid / 4.
  const int lr = tid / 4, lpart = tid % 4;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
    {
      const int64_t r = row0 + lr;
      float v[8];
      if (r < m) {
        const uint8_t* row = w + static_cast<size_t>(r) * row_bytes;
        if constexpr (kQuantized<T>) {
          const Chunk8 ch = dev::decode8<T>(row, k0 / 32, lpart);
          for (int i = 0; i < 8; ++i) v[i] = dev::dq(ch.d, dev::chunk_q(ch, i), ch.m);
        } else {
          for (int i = 0; i < 8; ++i) {
            const int64_t kk = k0 + 8 * lpart + i;
            v[i] = kk < k ? plain_value<T>(row, kk) : 0.0f;
          }
        }
      } else {
        for (float& e : v) e = 0.0f;
      }
      for (int i = 0; i < 8; ++i) ws[8 * lpart + i][lr] = v[i];
      const int64_t t = tok0 + lr;
      for (int i = 0; i < 8; ++i) {
        const int64_t kk = k0 + 8 * lpart + i;
        xs[8 * lpart + i][lr] = t < n && kk < k ? x[t * k + kk] : 0.0f;
      }
    }
    __syncthreads();
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[4], b[4];
      for (int i = 0; i < 4; ++i) a[i] = ws[kk][ty + 16 * i];
      for (int j = 0; j < 4; ++j) b[j] = xs[kk][tx + 16 * j];
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + ty + 16 * i;
    for (int j = 0; j < 4; ++j) {
      const int64_t t = tok0 + tx + 16 * j;
      if (r < m && t < n) y[t * m + r] = acc[i][j];
    }
  }
}

// out [n, d]: 8 values per thread (quantized) or 1 (plain), grid (chunks, n).
template <DType T>
__global__ void get_rows_kernel(const uint8_t* __restrict__ table, size_t row_bytes, int64_t d,
                                const int32_t* __restrict__ ids, float* __restrict__ out) {
  const int64_t t = blockIdx.y;
  const uint8_t* row = table + static_cast<size_t>(ids[t]) * row_bytes;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  float* o = out + t * d;
  if constexpr (kQuantized<T>) {
    if (c >= d / 8) return;
    const Chunk8 ch = dev::decode8<T>(row, c / 4, static_cast<int>(c % 4));
    for (int i = 0; i < 8; ++i) o[8 * c + i] = dev::dq(ch.d, dev::chunk_q(ch, i), ch.m);
  } else {
    if (c >= d) return;
    o[c] = plain_value<T>(row, c);
  }
}

unsigned blocks_for(int64_t items, int64_t per_block) { return static_cast<unsigned>((items + per_block - 1) / per_block); }

template <DType T>
void matmul_typed(const void* w, int64_t m, int64_t k, const float* x, int64_t n, float* y, void* scratch,
                  Stream stream) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const size_t row_bytes = dtype_row_bytes(T, k);
  if (n > kMatvecMaxTokens) {
    constexpr auto kernel = matmul_tiled<T>;
    HEARTH_LAUNCH(kernel, dim3(blocks_for(m, kTile), blocks_for(n, kTile)), dim3(kTileThreads), 0, stream, wb,
                  row_bytes, m, k, x, n, y);
    return;
  }
  const dim3 grid(blocks_for(m, kWarpsPerBlock)), block(32 * kWarpsPerBlock);
  if constexpr (kQuantized<T>) {
    auto* xq = static_cast<ActQ8*>(scratch);
    const int64_t n_blocks = n * k / 32;
    HEARTH_LAUNCH(quantize_act_q8, dim3(blocks_for(n_blocks, kWarpsPerBlock)), block, 0, stream, x, xq, n_blocks);
    constexpr auto kernel = matvec_q8<T>;
    HEARTH_LAUNCH(kernel, grid, block, 0, stream, wb, row_bytes, m, k, static_cast<const ActQ8*>(xq),
                  static_cast<int>(n), y);
  } else {
    constexpr auto kernel = matvec_f<T>;
    HEARTH_LAUNCH(kernel, grid, block, 0, stream, wb, row_bytes, m, k, x, static_cast<int>(n), y);
  }
}

template <DType T>
void get_rows_typed(const void* table, int64_t d, const int32_t* ids, int64_t n, float* out, Stream stream) {
  const int64_t per_thread = kQuantized<T> ? 8 : 1;
  constexpr auto kernel = get_rows_kernel<T>;
  HEARTH_LAUNCH(kernel, dim3(blocks_for(d / per_thread, 128), static_cast<unsigned>(n)), dim3(128), 0, stream,
                static_cast<const uint8_t*>(table), dtype_row_bytes(T, d), d, ids, out);
}

// Calls f.template operator()<T>() for the weight type `type` (every type of
// device_checks::weight_type); false for another.
template <class F>
bool dispatch_weight_type(DType type, F&& f) {
  switch (type) {
    case DType::F32: f.template operator()<DType::F32>(); return true;
    case DType::F16: f.template operator()<DType::F16>(); return true;
    case DType::BF16: f.template operator()<DType::BF16>(); return true;
    case DType::Q4_0: f.template operator()<DType::Q4_0>(); return true;
    case DType::Q4_1: f.template operator()<DType::Q4_1>(); return true;
    case DType::Q5_0: f.template operator()<DType::Q5_0>(); return true;
    case DType::Q5_1: f.template operator()<DType::Q5_1>(); return true;
    case DType::Q8_0: f.template operator()<DType::Q8_0>(); return true;
    case DType::Q2_K: f.template operator()<DType::Q2_K>(); return true;
    case DType::Q3_K: f.template operator()<DType::Q3_K>(); return true;
    case DType::Q4_K: f.template operator()<DType::Q4_K>(); return true;
    case DType::Q5_K: f.template operator()<DType::Q5_K>(); return true;
    case DType::Q6_K: f.template operator()<DType::Q6_K>(); return true;
    default: return false;
  }
}

}  // namespace

inline namespace HEARTH_CUDA_IMPL {

size_t matmul_scratch_bytes(DType type, int64_t n, int64_t k) {
  const bool quantized = type != DType::F32 && type != DType::F16 && type != DType::BF16;
  return quantized && n <= kMatvecMaxTokens ? static_cast<size_t>(n * (k / 32)) * sizeof(ActQ8) : 0;
}

void matmul(DType type, const void* w, int64_t m, int64_t k, const float* x, int64_t n, float* y, void* scratch,
            Stream stream) {
  dispatch_weight_type(type, [&]<DType T>() { matmul_typed<T>(w, m, k, x, n, y, scratch, stream); });
}

void get_rows(DType type, const void* table, int64_t d, const int32_t* ids, int64_t n, float* out, Stream stream) {
  dispatch_weight_type(type, [&]<DType T>() { get_rows_typed<T>(table, d, ids, n, out, stream); });
}

}  // namespace HEARTH_CUDA_IMPL
}  // namespace hearth::kernels::cuda
