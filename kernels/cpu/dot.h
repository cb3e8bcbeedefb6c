// Dispatch of the CPU dot products and activation quantizers: per CPU level, the best kernel
// for each weight type (SIMD where one exists for that level, else the scalar reference from
// dot_ref.h / quants_ref.h). CpuBackend::matmul goes through here; tests pick levels directly.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "kernels/cpu/cpu_features.h"

namespace hearth::kernels {

// sum_i w[i] * x[i]: `w` one row of the weight type, `x` one row of its vec_dot_type.
using VecDotFn = float (*)(int64_t n, const void* w, const void* x);
// out[r] = vec_dot(n, w, x + r * x_stride) for r in [0, kDotRows), bit-identical to calling
// the matching VecDotFn per row, but each weight block is decoded once for all rows.
inline constexpr int kDotRows = 4;
using VecDotRowsFn = void (*)(int64_t n, const void* w, const void* x, size_t x_stride, float* out);
// One activation row of n floats -> dtype_row_bytes(vec_dot_type, n) bytes.
using QuantizeFn = void (*)(const float* x, void* y, int64_t n);

// vec_dot_rows for weight types of 32-element blocks against Q8_0 / Q8_1 activations, with
// the activations' f16 block scales given already widened to float, block major: xd[4 b + r]
// is d of block b of row r, and for Q8_1 xs[4 b + r] its s (xs unused for Q8_0). Results are
// bit-identical to vec_dot per row; it saves converting the same scales for every weight row.
using VecDotRowsScaledFn = void (*)(int64_t n, const void* w, const void* x, size_t x_stride, const float* xd,
                                    const float* xs, float* out);

struct DotKernel {
  DType vec_dot_type = DType::F32;
  VecDotFn vec_dot = nullptr;        // null when the weight type has no dot product
  VecDotRowsFn vec_dot_rows = nullptr;  // null: call vec_dot per row
  VecDotRowsScaledFn vec_dot_rows_scaled = nullptr;  // null: use vec_dot_rows
  QuantizeFn quantize = nullptr;
  bool simd_dot = false;       // vec_dot is a SIMD kernel
  bool simd_quantize = false;  // quantize is a SIMD kernel
};

// The kernels for weights of `weight` type at `level` (which the caller has checked the CPU
// supports: cpu_level_supported(level)). Never fails; vec_dot is null for types without a
// dot product (see ref::can_vec_dot).
const DotKernel& dot_kernel(DType weight, CpuLevel level);

// y[t * y_stride + r] = dot(w row r, xq row t) for weight rows [r0, r1) and tokens [0, n), `xq`
// holding n activation rows already quantized to the kernel's activation type, xq_row_bytes
// apart: tokens go kDotRows at a time through vec_dot_rows, over tiles of weight rows small
// enough to stay in L1 meanwhile.
void matmul_rows(const DotKernel& kernel, const void* w, size_t w_row_bytes, int64_t k, int64_t r0, int64_t r1,
                 const void* xq, size_t xq_row_bytes, int64_t n, float* y, int64_t y_stride);

}  // namespace hearth::kernels
