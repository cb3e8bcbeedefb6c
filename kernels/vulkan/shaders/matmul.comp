// y [n, m] = x [n, k] * w [m, k]^T for prefill: a 64 x 64 tile of y per workgroup of 256
// invocations (x: weight rows, y: tokens), k in steps of 32 through shared memory, the weight
// tile dequantized there once, 4 x 4 outputs per invocation.
#version 450
#include "common.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint TYPE = 0;
layout(push_constant) uniform P {
  uint64_t w, x, y, row_bytes;
  uint m, k, n;
} p;
shared float ws[32][65];
shared float xs[32][65];

void main() {
  const uint tid = gl_LocalInvocationID.x, tx = tid % 16u, ty = tid / 16u;
  const uint row0 = gl_WorkGroupID.x * 64u, tok0 = gl_WorkGroupID.y * 64u;
  const uint lr = tid / 4u, lpart = tid % 4u;
  const bool plain = TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16;
  float acc[4][4];
  for (uint i = 0; i < 4u; ++i) for (uint j = 0; j < 4u; ++j) acc[i][j] = 0.0;
  for (uint k0 = 0; k0 < p.k; k0 += 32u) {
    const uint r = row0 + lr;
    float v[8];
    if (r < p.m) {
      const uint64_t row = p.w + uint64_t(r) * p.row_bytes;
      if (plain) {
        for (uint i = 0; i < 8u; ++i) {
          const uint kk = k0 + 8u * lpart + i;
          v[i] = kk < p.k ? plain_at(TYPE, row, kk) : 0.0;
        }
      } else {
        int q[8];
        float d, m;
        decode8(TYPE, row, k0 / 32u, lpart, q, d, m);
        for (uint i = 0; i < 8u; ++i) v[i] = dq(d, q[i], m);
      }
    } else {
      for (uint i = 0; i < 8u; ++i) v[i] = 0.0;
    }
    for (uint i = 0; i < 8u; ++i) ws[8u * lpart + i][lr] = v[i];
    const uint t = tok0 + lr;
    for (uint i = 0; i < 8u; ++i) {
      const uint kk = k0 + 8u * lpart + i;
      xs[8u * lpart + i][lr] = t < p.n && kk < p.k ? ld_f32(p.x, uint64_t(t) * p.k + kk) : 0.0;
    }
    barrier();
    for (uint kk = 0; kk < 32u; ++kk) {
      float a[4], b[4];
      for (uint i = 0; i < 4u; ++i) a[i] = ws[kk][ty + 16u * i];
      for (uint j = 0; j < 4u; ++j) b[j] = xs[kk][tx + 16u * j];
      for (uint i = 0; i < 4u; ++i) for (uint j = 0; j < 4u; ++j) acc[i][j] += a[i] * b[j];
    }
    barrier();
  }
  for (uint i = 0; i < 4u; ++i) {
    const uint r = row0 + ty + 16u * i;
    for (uint j = 0; j < 4u; ++j) {
      const uint t = tok0 + tx + 16u * j;
      if (r < p.m && t < p.n) st_f32(p.y, uint64_t(t) * p.m + r, acc[i][j]);
    }
  }
}
