// Host-side launchers of hearth's CUDA kernels: one function per op, on device pointers, enqueued
// on a stream. The kernel sources (*.cu beside this file, one per op family) compile twice: with
// nvcc for the GPU (library hearth_cuda) and with g++ against the CPU execution model
// (kernels/cuda/cpu_exec, test infrastructure, library hearth_cuda_on_cpu). Each build puts these
// functions in its own inline namespace (HEARTH_CUDA_IMPL: `gpu` or `on_cpu`), so one test
// binary can hold both. Shapes are checked by the caller (kernels/cuda/cuda_backend.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

#ifndef HEARTH_CUDA_IMPL
#error "HEARTH_CUDA_IMPL names the build of the CUDA kernels (gpu or on_cpu); set by kernels/cuda/CMakeLists.txt"
#endif

struct CUstream_st;  // cudaStream_t is CUstream_st*, in CUDA and in the CPU execution model

namespace hearth::kernels::cuda {
inline namespace HEARTH_CUDA_IMPL {

using Stream = CUstream_st*;

// Activations quantized to 8 bits for the quantized matrix-vector kernel: one scale and 32
// signed bytes per 32 values: q = x * 127 / amax rounded half to even, scale amax / 127 rounded
// to f16 — the values of ggml's (and the CPU backend's) q8_0 activation blocks, kept with an f32
// scale so the kernel need not convert it.
struct ActQ8 {
  float d;
  int8_t qs[32];
};
static_assert(sizeof(ActQ8) == 36);

// Tokens up to which matmul takes the matrix-vector path (per-row warps, weights read once for
// every token); above it, the tiled matrix-matrix kernel.
inline constexpr int64_t kMatvecMaxTokens = 8;

// Scratch bytes matmul needs for n tokens of k values (the quantized activations).
size_t matmul_scratch_bytes(DType type, int64_t n, int64_t k);
// y [n, m] = x [n, k] * w [m, k]^T.
void matmul(DType type, const void* w, int64_t m, int64_t k, const float* x, int64_t n, float* y, void* scratch,
            Stream stream);
// out [n, d] = rows ids [n] of table [*, d], dequantized.
void get_rows(DType type, const void* table, int64_t d, const int32_t* ids, int64_t n, float* out, Stream stream);

// y = x / rms(x) * weight (weight: null for none), per row of d values.
void rms_norm(const float* x, const float* weight, float eps, float* y, int64_t rows, int64_t d, Stream stream);
void add(const float* a, const float* b, float* y, int64_t n, Stream stream);
void add_bias(float* x, const float* bias, int64_t rows, int64_t d, Stream stream);
void scale(float* x, float s, int64_t n, Stream stream);
void softcap(float* x, float cap, int64_t n, Stream stream);
// y = act(gate) * up; act: SiLU, or GELU (tanh form at f16 resolution, as the CPU reference).
void glu(const float* gate, const float* up, bool gelu, float* y, int64_t n, Stream stream);

struct RopeArgs {
  bool neox = false;
  int n_rot = 0;
  float theta_scale = 1.0f;  // freq_base^(-2 / n_rot), computed on the host (one rounding, as the reference)
  float freq_scale = 1.0f;
  const float* freq_factors = nullptr;  // device [n_rot / 2], or null
};
// In place on x [n_tokens, n_heads, head_dim]; positions [n_tokens].
void rope(float* x, int64_t n_tokens, int n_heads, int64_t head_dim, const int32_t* positions, const RopeArgs& args,
          Stream stream);

// The KV cache of one layer, [n_seq, n_ctx, kv_dim] of `type` (F32, F16 or Q8_0) for K and V.
struct KvArgs {
  DType type = DType::F16;
  void* k = nullptr;
  void* v = nullptr;
  int64_t kv_dim = 0;
  int32_t n_ctx = 0;
};
// Stores k, v [n, kv_dim] at slots [n] of (seq, pos) pairs.
void kv_store(const KvArgs& cache, const float* k, const float* v, const int32_t* slots, int64_t n, Stream stream);

struct AttentionArgs {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  float scale = 1.0f;
  float softcap = 0.0f;
  int32_t window = 0;
};
inline constexpr int kAttentionMaxHeadDim = 256;
// Sequence splits attention uses for n tokens over a cache of n_ctx positions, and the scratch
// bytes they need (per-split softmax statistics and partial outputs).
int attention_splits(int64_t n_tokens, int n_head, int32_t n_ctx);
size_t attention_scratch_bytes(int64_t n_tokens, const AttentionArgs& args, int32_t n_ctx);
// out [n, n_head, head_dim] = softmax(q . K) V over each token's positions (see Backend::attention).
void attention(const float* q, const KvArgs& cache, const int32_t* slots, int64_t n, const AttentionArgs& args,
               float* out, void* scratch, Stream stream);

}  // namespace HEARTH_CUDA_IMPL
}  // namespace hearth::kernels::cuda
