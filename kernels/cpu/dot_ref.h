// Scalar reference dot products of a quantized weight row with an activation row quantized to
// the format that pairs with it (`vec_dot_type`): Q8_0 for Q4_0 / Q5_0 / Q8_0, Q8_1 for Q4_1 /
// Q5_1 (its block sums apply the weight's minimum), Q8_K for the k-quants, F16 / BF16 / F32 for
// the plain types. Integer products are exact; this is the arithmetic llama.cpp's CPU backend
// does, so logits match it closely, and the SIMD kernels are tested against these functions.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace hearth::kernels::ref {

// The activation format that pairs with `weight` in vec_dot.
DType vec_dot_type(DType weight);
bool can_vec_dot(DType weight);

// sum_i w[i] * x[i] over n elements: `w` a row of `weight` type, `x` a row already quantized
// to vec_dot_type(weight). Aborts for a type without a dot product (check can_vec_dot).
float vec_dot(DType weight, int64_t n, const void* w, const void* x);

}  // namespace hearth::kernels::ref
