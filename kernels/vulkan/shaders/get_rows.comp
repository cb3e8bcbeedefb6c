// out [n, d] = rows ids [n] of a table, dequantized: 8 values per invocation (quantized) or 1.
// Workgroups: x over the row's chunks, y over the ids.
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint TYPE = 0;
layout(push_constant) uniform P {
  uint64_t table, ids, out_, row_bytes;
  uint d;
} p;

void main() {
  const uint t = gl_WorkGroupID.y;
  const uint c = gl_WorkGroupID.x * 64u + gl_LocalInvocationID.x;
  const uint64_t row = p.table + uint64_t(I32s(p.ids).v[t]) * p.row_bytes;
  const uint64_t base = uint64_t(t) * p.d;
  if (TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16) {
    if (c < p.d) st_f32(p.out_, base + c, plain_at(TYPE, row, c));
    return;
  }
  if (c >= p.d / 8u) return;
  int q[8];
  float d, m;
  decode8(TYPE, row, c / 4u, c % 4u, q, d, m);
  for (uint i = 0; i < 8u; ++i) st_f32(p.out_, base + 8u * c + i, dq(d, q[i], m));
}
