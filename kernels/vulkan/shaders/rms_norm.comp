// y = x / rms(x) * weight, one workgroup per row of d values (y may alias x).
#version 450
#include "common.glsl"
layout(local_size_x = 256) in;
layout(push_constant) uniform P {
  uint64_t x, weight, y;  // weight 0: none
  uint rows, d;
  float eps;
} p;
shared float red[256];

void main() {
  const uint row = group_index();
  if (row >= p.rows) return;
  const uint tid = gl_LocalInvocationID.x;
  const uint64_t base = uint64_t(row) * p.d;
  float sum = 0.0;
  for (uint i = tid; i < p.d; i += 256u) {
    const float v = ld_f32(p.x, base + i);
    sum += v * v;
  }
  red[tid] = sum;
  barrier();
  for (uint s = 128u; s > 0u; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    barrier();
  }
  const float mean = red[0] / float(p.d);
  const float scale = 1.0 / sqrt(mean + p.eps);
  for (uint i = tid; i < p.d; i += 256u) {
    const float v = ld_f32(p.x, base + i) * scale;
    st_f32(p.y, base + i, p.weight != 0ul ? v * ld_f32(p.weight, i) : v);
  }
}
