// Scalar reference versions of the forward-pass ops, on plain host arrays and row ranges (so a
// caller can split rows across threads). Clear before fast: these are what the SIMD and GPU
// kernels are compared with. Numerics follow ggml's CPU reference where it matters for
// matching llama.cpp (double accumulation in RMSNorm, the iterative rope angle).
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "kernels/backend.h"

namespace hearth::kernels::ref {

// sum_i a[i] * b[i]
float dot_f32(const float* a, const float* b, int64_t n);

void rms_norm_row(const float* x, const float* weight, float eps, float* y, int64_t n);

// Rotates one token's heads in place: x [n_heads, head_dim]. `freq_factors`: null, or the
// n_rot / 2 host values of params.freq_factors (whose tensor this does not read).
void rope_token(float* x, int n_heads, int64_t head_dim, int32_t pos, const RopeParams& params,
                const float* freq_factors);

float silu(float x);
// GELU with the tanh approximation: exact, and at f16 resolution (what the forward pass uses,
// matching llama.cpp's CPU backend, which looks GELU up in a table of all f16 values).
float gelu_tanh_exact(float x);
float gelu_tanh(float x);

// One query head against `n_kv` cached positions (f16 or f32 rows of `kv_stride` elements,
// this head's values at offset `head_offset`): out[head_dim] = softmax(scale * q.k) . v.
// `scores` holds n_kv floats.
void attention_head(const float* q, const void* k_cache, const void* v_cache, DType kv_type, int64_t kv_stride,
                    int64_t head_offset, int64_t head_dim, int32_t first, int32_t last, float scale, float softcap,
                    float* scores, float* out);

}  // namespace hearth::kernels::ref
