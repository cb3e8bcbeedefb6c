// out[token, head, :] = the partial outputs of its splits, summed in split order. One workgroup
// per (token, head) pair (2-D dispatch index).
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform P {
  uint64_t partial, out_;
  uint pairs, splits, head_dim;
} p;

void main() {
  const uint th = group_index();
  if (th >= p.pairs) return;
  for (uint d = gl_LocalInvocationID.x; d < p.head_dim; d += 64u) {
    float total = 0.0;
    for (uint i = 0; i < p.splits; ++i) total += ld_f32(p.partial, (uint64_t(th) * p.splits + i) * p.head_dim + d);
    st_f32(p.out_, uint64_t(th) * p.head_dim + d, total);
  }
}
