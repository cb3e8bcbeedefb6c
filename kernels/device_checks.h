// What the device backends (CUDA, Vulkan) check and answer alike: which ops and types they run,
// the argument checks of each op (a wrong shape is a programming error: HEARTH_CHECK), and the
// shapes those checks derive. One place, so the two backends cannot drift apart.
#pragma once

#include <cstdint>

#include "kernels/backend.h"

namespace hearth::kernels::device_checks {

// The weight types the GPU kernels decode: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
// Q3_K, Q4_K, Q5_K, Q6_K.
bool weight_type(DType t);
// The KV cache types: F32, F16, Q8_0.
bool kv_type(DType t);
// Backend::supports for a device backend.
bool supports(Op op, DType type);
// Backend::supports_kv_type with heads of at most `max_head_dim` values.
bool supports_kv(DType type, int64_t head_dim, int64_t max_head_dim);

// write / read: within the tensor's buffer, outside a step.
void check_write(const Tensor& dst, size_t bytes, size_t dst_offset, bool in_step);
void check_read(const Tensor& src, size_t bytes, bool in_step);

struct MatmulShape {
  int64_t m, k, n;
};
MatmulShape check_matmul(const Tensor& w, const Tensor& x, const Tensor& y);
// Returns the number of ids.
int64_t check_get_rows(const Tensor& table, const Tensor& ids, const Tensor& out);
// Returns the number of rows.
int64_t check_rms_norm(const Tensor& x, const Tensor& weight, const Tensor& y);

struct RopeShape {
  int64_t head_dim, n_tokens;
};
// `max_rot_pairs`: the most rotated pairs a backend's kernel holds.
RopeShape check_rope(const Tensor& x, int n_heads, const Tensor& positions, const RopeParams& p, int max_rot_pairs);
// freq_base^(-2 / n_rot), the angle step both GPU backends take from the host (one rounding).
float rope_theta_scale(const RopeParams& p);

// A KV layer's two tensors on `backend` (contents undefined; the backend clears them).
KvLayer new_kv_layer(Backend& backend, DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim);
// Returns the number of tokens.
int64_t check_kv_store(const KvLayer& cache, const Tensor& k, const Tensor& v, const Tensor& slots);
// Returns the number of tokens.
int64_t check_attention(const Backend& backend, const Tensor& q, const KvLayer& cache, const Tensor& slots,
                        const AttentionParams& p, const Tensor& out);

}  // namespace hearth::kernels::device_checks
