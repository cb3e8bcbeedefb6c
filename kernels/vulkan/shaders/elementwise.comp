// Element ops on f32, one invocation per element: OP 0 add (y = a + b), 1 bias (a += b[i % d]),
// 2 scale (a *= s), 3 softcap (a = s * tanh(a / s)), 4 SiLU GLU (y = silu(a) * b), 5 GELU GLU
// (the tanh form at f16 resolution, as the CPU reference).
#version 450
#include "common.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint OP = 0;
layout(push_constant) uniform P {
  uint64_t a, b, y;
  uint n, d;
  float s;
} p;

float gelu_tanh(float x) {
  if (x <= -10.0) return 0.0;
  if (x >= 10.0) return x;
  const float h = f16_round(x);
  return f16_round(0.5 * h * (1.0 + tanh(0.79788456080286535587989211986876 * h * (1.0 + 0.044715 * h * h))));
}

void main() {
  const uint i = group_index() * 256u + gl_LocalInvocationID.x;
  if (i >= p.n) return;
  F32s a = F32s(p.a);
  if (OP == 0u) {
    F32s(p.y).v[i] = a.v[i] + F32s(p.b).v[i];
  } else if (OP == 1u) {
    a.v[i] = a.v[i] + F32s(p.b).v[i % p.d];
  } else if (OP == 2u) {
    a.v[i] = a.v[i] * p.s;
  } else if (OP == 3u) {
    a.v[i] = p.s * tanh(a.v[i] / p.s);
  } else {
    const float g = a.v[i];
    const float act = OP == 5u ? gelu_tanh(g) : g / (1.0 + exp(-g));
    F32s(p.y).v[i] = act * F32s(p.b).v[i];
  }
}
