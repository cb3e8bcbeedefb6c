// Stores k or v [n, kv_dim] f32 rows at their slots' cache rows: f32 copied, f16 rounded to
// nearest even, q8_0 as the reference's activation quantizer (d = amax / 127, q = x * 127 /
// amax rounded half to even) — the same bytes as the CPU backend. Workgroups: x token, y 0 (K)
// or 1 (V); four blocks of 32 values at a time for q8_0.
#version 450
#include "common.glsl"
layout(local_size_x = 128) in;
layout(constant_id = 0) const uint TYPE = 0;
layout(push_constant) uniform P {
  uint64_t k_cache, v_cache, k, v, slots;
  uint kv_dim, n_ctx;
} p;
shared float amax_s[128];

void main() {
  const uint t = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
  const bool is_v = gl_WorkGroupID.y == 1u;
  const uint64_t src = is_v ? p.v : p.k;
  const uint64_t src0 = uint64_t(t) * p.kv_dim;
  I32s slots = I32s(p.slots);
  const uint64_t row = uint64_t(slots.v[2u * t]) * p.n_ctx + uint64_t(slots.v[2u * t + 1u]);
  const uint64_t cache = is_v ? p.v_cache : p.k_cache;
  if (TYPE == T_F32) {
    for (uint i = tid; i < p.kv_dim; i += 128u) st_f32(cache, row * p.kv_dim + i, ld_f32(src, src0 + i));
  } else if (TYPE == T_F16) {
    for (uint i = tid; i < p.kv_dim; i += 128u) {
      const uint h = f32_to_f16(ld_f32(src, src0 + i));
      U16s(cache + 2ul * (row * p.kv_dim + i)).v[0] = uint16_t(h);
    }
  } else {
    const uint n_blocks = p.kv_dim / 32u, lane = tid % 32u;
    const uint64_t dst = cache + row * (uint64_t(n_blocks) * 34u);
    for (uint b0 = 0; b0 < n_blocks; b0 += 4u) {
      const uint b = b0 + tid / 32u;
      const float x = b < n_blocks ? ld_f32(src, src0 + 32u * b + lane) : 0.0;
      amax_s[tid] = abs(x);
      barrier();
      for (uint s = 16u; s > 0u; s >>= 1) {
        if (lane < s) amax_s[tid] = max(amax_s[tid], amax_s[tid + s]);
        barrier();
      }
      const float amax = amax_s[tid - lane];
      barrier();
      if (b < n_blocks) {
        const float id = amax != 0.0 ? 127.0 / amax : 0.0;
        const uint64_t block = dst + 34u * b;
        st_u8(block, 2u + lane, uint(int(roundEven(x * id))));
        if (lane == 0u) {
          const uint h = f32_to_f16(amax / 127.0);
          st_u8(block, 0, h);
          st_u8(block, 1, h >> 8);
        }
      }
    }
  }
}
