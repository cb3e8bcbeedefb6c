// RoPE in place on x [n_tokens, n_heads, head_dim]: one workgroup per token; the angles of its
// position once into shared memory (theta_i = pos * theta_scale^i by repeated multiplication,
// as the reference), then every head's pairs (normal: (2i, 2i+1); NeoX: (i, i + n_rot / 2)).
#version 450
#include "common.glsl"
layout(local_size_x = 128) in;
layout(push_constant) uniform P {
  uint64_t x, positions, factors;  // factors 0: none
  uint n_heads, head_dim, n_rot, neox;
  float theta_scale, freq_scale;
} p;
shared float cos_t[256], sin_t[256];

void main() {
  const uint token = group_index();
  const uint half_rot = p.n_rot / 2u, tid = gl_LocalInvocationID.x;
  const float pos = float(I32s(p.positions).v[token]);
  for (uint i = tid; i < half_rot; i += 128u) {
    float base = pos;
    for (uint j = 0; j < i; ++j) base *= p.theta_scale;
    const float ff = p.factors != 0ul ? F32s(p.factors).v[i] : 1.0;
    const float theta = p.freq_scale * (base / ff);
    cos_t[i] = cos(theta);
    sin_t[i] = sin(theta);
  }
  barrier();
  const uint64_t xt = uint64_t(token) * p.n_heads * p.head_dim;
  for (uint e = tid; e < p.n_heads * half_rot; e += 128u) {
    const uint h = e / half_rot, i = e % half_rot;
    const uint64_t v = xt + h * p.head_dim;
    const uint a = p.neox != 0u ? i : 2u * i;
    const uint b = p.neox != 0u ? i + half_rot : 2u * i + 1u;
    const float x0 = ld_f32(p.x, v + a), x1 = ld_f32(p.x, v + b);
    st_f32(p.x, v + a, x0 * cos_t[i] - x1 * sin_t[i]);
    st_f32(p.x, v + b, x0 * sin_t[i] + x1 * cos_t[i]);
  }
}
