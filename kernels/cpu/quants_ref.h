// Scalar reference quantization and dequantization: the ground truth every fast kernel
// (AVX2, AVX-512, NEON, CUDA, Vulkan) is compared with. Written to be read, not to be fast.
// Arithmetic order matches ggml's reference code and gguf-py's dequantizers, so results are
// bit-identical to them (built with -ffp-contract=off so no FMA changes the rounding).
//
// Row contract: `n` is the number of elements and must be a multiple of the type's block
// size; `x` points to n / block_size blocks, `y` to n floats.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/quant_blocks.h"

namespace hearth::kernels::ref {

void dequantize_row_f32(const float* x, float* y, int64_t n);
void dequantize_row_f16(const uint16_t* x, float* y, int64_t n);
void dequantize_row_bf16(const uint16_t* x, float* y, int64_t n);
void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n);
void dequantize_row_q4_1(const BlockQ4_1* x, float* y, int64_t n);
void dequantize_row_q5_0(const BlockQ5_0* x, float* y, int64_t n);
void dequantize_row_q5_1(const BlockQ5_1* x, float* y, int64_t n);
void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n);
void dequantize_row_q8_1(const BlockQ8_1* x, float* y, int64_t n);
void dequantize_row_q2_K(const BlockQ2_K* x, float* y, int64_t n);
void dequantize_row_q3_K(const BlockQ3_K* x, float* y, int64_t n);
void dequantize_row_q4_K(const BlockQ4_K* x, float* y, int64_t n);
void dequantize_row_q5_K(const BlockQ5_K* x, float* y, int64_t n);
void dequantize_row_q6_K(const BlockQ6_K* x, float* y, int64_t n);
void dequantize_row_q8_K(const BlockQ8_K* x, float* y, int64_t n);

void quantize_row_f16(const float* x, uint16_t* y, int64_t n);
void quantize_row_bf16(const float* x, uint16_t* y, int64_t n);
void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n);
void quantize_row_q4_1(const float* x, BlockQ4_1* y, int64_t n);
void quantize_row_q5_0(const float* x, BlockQ5_0* y, int64_t n);
void quantize_row_q5_1(const float* x, BlockQ5_1* y, int64_t n);
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void quantize_row_q8_1(const float* x, BlockQ8_1* y, int64_t n);
void quantize_row_q8_K(const float* x, BlockQ8_K* y, int64_t n);
// K-quants of weights (hearth's own scale search, not ggml's): per sub-block a scale (and
// minimum) of least squared error from a few starting points, then the sub-block scales
// quantized against the f16 super-block scale(s), then every element's level chosen with the
// scales the dequantizer will compute. The bytes follow the GGUF formats exactly, so every
// reader (ggml, gguf-py, hearth's kernels) decodes them; the values are close to, not equal to,
// what llama-quantize writes. All zeros give exact zeros.
void quantize_row_q2_K(const float* x, BlockQ2_K* y, int64_t n);
void quantize_row_q3_K(const float* x, BlockQ3_K* y, int64_t n);
void quantize_row_q4_K(const float* x, BlockQ4_K* y, int64_t n);
void quantize_row_q5_K(const float* x, BlockQ5_K* y, int64_t n);
void quantize_row_q6_K(const float* x, BlockQ6_K* y, int64_t n);

// Activation quantizers of the dot products (the vec_dot_type rows of kernels/cpu/dot_ref.h).
// They differ from quantize_row_q8_0 / _q8_1 (the file-format references, which round half
// away from zero with 1/d) in two last-bit ways that ggml's SIMD CPU paths (x86 and ARM) share:
// the inverse scale is 127 / amax and rounding is half to even. Q8_K rounds half to even too.
void quantize_activations_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void quantize_activations_q8_1(const float* x, BlockQ8_1* y, int64_t n);
// Dispatch for activation rows: Q8_0, Q8_1, Q8_K, F16, BF16 (F32 is a copy).
void quantize_activations(DType type, const float* src, void* dst, int64_t n);

// Type-erased entry points, for code that holds a DType (model loading, tests, synth).
bool can_dequantize(DType type);
bool can_quantize(DType type);
// `src` holds dtype_row_bytes(type, n) bytes. Aborts if !can_dequantize(type).
void dequantize_row(DType type, const void* src, float* dst, int64_t n);
// `dst` receives dtype_row_bytes(type, n) bytes. Aborts if !can_quantize(type).
void quantize_row(DType type, const float* src, void* dst, int64_t n);

}  // namespace hearth::kernels::ref
