// Row and element ops on f32 activations: RMSNorm (a block per row), residual add, bias, scale,
// softcap, the gated activations (SiLU, GELU) and RoPE. Each mirrors the scalar reference
// (kernels/cpu/ops_ref.cpp) operation for operation, so that under the CPU execution model the
// results agree to float rounding, and on a GPU to its math functions' last bits.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace hearth::kernels::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t items, int64_t per_block) { return static_cast<unsigned>((items + per_block - 1) / per_block); }

__global__ void rms_norm_kernel(const float* x, const float* __restrict__ weight, float eps,
                                float* __restrict__ y, int64_t d) {
  __shared__ float scratch[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * d;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * d;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) sum += xr[i] * xr[i];
  sum = dev::block_sum(sum, scratch);
  const float mean = sum / static_cast<float>(d);
  const float s = 1.0f / sqrtf(mean + eps);
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = xr[i] * s;  // y may alias x: each element is read before it is written, by its own thread
    yr[i] = weight != nullptr ? v * weight[i] : v;
  }
}

__global__ void add_kernel(const float* a, const float* __restrict__ b, float* y, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a[i] + b[i];
}

__global__ void add_bias_kernel(float* x, const float* __restrict__ bias, int64_t n, int64_t d) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += bias[i % d];
}

__global__ void scale_kernel(float* x, float s, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}

__global__ void softcap_kernel(float* x, float cap, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] = cap * tanhf(x[i] / cap);
}

__device__ __forceinline__ float f16_round(float v) { return __half2float(__float2half_rn(v)); }

__device__ __forceinline__ float gelu_tanh(float x) {
  // The tanh form evaluated at f16 resolution, as the reference (llama.cpp's CPU table).
  if (x <= -10.0f) return 0.0f;
  if (x >= 10.0f) return x;
  constexpr float kSqrt2OverPi = 0.79788456080286535587989211986876f;
  constexpr float kCoef = 0.044715f;
  const float h = f16_round(x);
  return f16_round(0.5f * h * (1.0f + tanhf(kSqrt2OverPi * h * (1.0f + kCoef * h * h))));
}

template <bool kGelu>
__global__ void glu_kernel(const float* gate, const float* __restrict__ up, float* y, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  const float a = kGelu ? gelu_tanh(g) : g / (1.0f + expf(-g));
  y[i] = a * up[i];
}

// One block per token: the angles of the token's position once (shared), then every head.
__global__ void rope_kernel(float* __restrict__ x, int n_heads, int64_t head_dim, const int32_t* __restrict__ positions,
                            RopeArgs args) {
  __shared__ float cos_t[512], sin_t[512];
  const int half = args.n_rot / 2;
  const float pos = static_cast<float>(positions[blockIdx.x]);
  for (int i = static_cast<int>(threadIdx.x); i < half; i += static_cast<int>(blockDim.x)) {
    // theta_i = pos * theta_scale^i by repeated multiplication, exactly the reference's sequence.
    float base = pos;
    for (int j = 0; j < i; ++j) base *= args.theta_scale;
    const float ff = args.freq_factors != nullptr ? args.freq_factors[i] : 1.0f;
    const float theta = args.freq_scale * (base / ff);
    cos_t[i] = cosf(theta);
    sin_t[i] = sinf(theta);
  }
  __syncthreads();
  float* xt = x + static_cast<int64_t>(blockIdx.x) * n_heads * head_dim;
  for (int e = static_cast<int>(threadIdx.x); e < n_heads * half; e += static_cast<int>(blockDim.x)) {
    const int h = e / half, i = e % half;
    float* v = xt + h * head_dim;
    const int a = args.neox ? i : 2 * i;
    const int b = args.neox ? i + half : 2 * i + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * cos_t[i] - x1 * sin_t[i];
    v[b] = x0 * sin_t[i] + x1 * cos_t[i];
  }
}

}  // namespace

inline namespace HEARTH_CUDA_IMPL {

void rms_norm(const float* x, const float* weight, float eps, float* y, int64_t rows, int64_t d, Stream stream) {
  HEARTH_LAUNCH(rms_norm_kernel, dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0, stream, x, weight, eps, y, d);
}

void add(const float* a, const float* b, float* y, int64_t n, Stream stream) {
  HEARTH_LAUNCH(add_kernel, dim3(blocks_for(n, kThreads)), dim3(kThreads), 0, stream, a, b, y, n);
}

void add_bias(float* x, const float* bias, int64_t rows, int64_t d, Stream stream) {
  HEARTH_LAUNCH(add_bias_kernel, dim3(blocks_for(rows * d, kThreads)), dim3(kThreads), 0, stream, x, bias, rows * d, d);
}

void scale(float* x, float s, int64_t n, Stream stream) {
  HEARTH_LAUNCH(scale_kernel, dim3(blocks_for(n, kThreads)), dim3(kThreads), 0, stream, x, s, n);
}

void softcap(float* x, float cap, int64_t n, Stream stream) {
  HEARTH_LAUNCH(softcap_kernel, dim3(blocks_for(n, kThreads)), dim3(kThreads), 0, stream, x, cap, n);
}

void glu(const float* gate, const float* up, bool gelu, float* y, int64_t n, Stream stream) {
  if (gelu) {
    constexpr auto kernel = glu_kernel<true>;
    HEARTH_LAUNCH(kernel, dim3(blocks_for(n, kThreads)), dim3(kThreads), 0, stream, gate, up, y, n);
  } else {
    constexpr auto kernel = glu_kernel<false>;
    HEARTH_LAUNCH(kernel, dim3(blocks_for(n, kThreads)), dim3(kThreads), 0, stream, gate, up, y, n);
  }
}

void rope(float* x, int64_t n_tokens, int n_heads, int64_t head_dim, const int32_t* positions, const RopeArgs& args,
          Stream stream) {
  HEARTH_LAUNCH(rope_kernel, dim3(static_cast<unsigned>(n_tokens)), dim3(128), 0, stream, x, n_heads, head_dim,
                positions, args);
}

}  // namespace HEARTH_CUDA_IMPL
}  // namespace hearth::kernels::cuda
