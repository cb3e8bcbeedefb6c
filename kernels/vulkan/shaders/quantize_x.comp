// Activations rounded the way the CPU backend (and llama.cpp) feeds them to each weight type's
// dot product, written back as floats for matvec / matmul: MODE 0, q8_0 / q8_1 blocks of 32
// (q = x * 127 / amax rounded half to even, d = amax / 127 rounded to f16); MODE 1, q8_K blocks
// of 256 (iscale = -127 / (the value of largest magnitude), q = min(127, round-half-even(iscale *
// x)), d = 1 / iscale); MODE 2, f16; MODE 3, bf16 (both round to nearest even). Then the tiled
// matmul's products differ from the CPU's integer dot products by float rounding.
// MODE 4 and 5 round the same as 0 and 1 but keep the integers, for matvec's integer dot
// products: per 32 values one record of 10 words, the 32 int8 q packed four to a word, then d
// (f32) and s (MODE 4: d * sum(q) rounded to f16 as the CPU's q8_1 blocks carry it, with d
// before its own f16 rounding; MODE 5: 0). A q8_K block of 256 is 8 records with its d.
// One invocation per block (MODE 0, 1, 4, 5) or per element (2, 3).
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint MODE = 0;
layout(push_constant) uniform P {
  uint64_t x, out_;
  uint count;  // blocks (MODE 0, 1) or elements (2, 3)
} p;

void main() {
  const uint i = group_index() * 64u + gl_LocalInvocationID.x;
  if (i >= p.count) return;
  if (MODE == 2u || MODE == 3u) {
    const float v = ld_f32(p.x, i);
    float r;
    if (MODE == 2u) {
      r = f16_round(v);
    } else {
      const uint b = floatBitsToUint(v);
      r = (b & 0x7fffffffu) > 0x7f800000u ? uintBitsToFloat((b | 0x00400000u) & 0xffff0000u)
                                          : uintBitsToFloat(((b + 0x7fffu + ((b >> 16) & 1u)) >> 16) << 16);
    }
    st_f32(p.out_, i, r);
    return;
  }
  const uint size = MODE == 0u || MODE == 4u ? 32u : 256u;
  const uint64_t base = uint64_t(i) * size;
  if (MODE == 4u || MODE == 5u) {
    float amax = 0.0, mx = 0.0;
    for (uint j = 0; j < size; ++j) {
      const float v = ld_f32(p.x, base + j);
      if (abs(v) > amax) {
        amax = abs(v);
        mx = v;
      }
    }
    // MODE 4: q = x * 127 / amax (half to even), d = amax / 127; MODE 5: see MODE 1.
    const float scale = MODE == 4u ? (amax != 0.0 ? 127.0 / amax : 0.0) : (amax != 0.0 ? -127.0 / mx : 0.0);
    const float d = MODE == 4u ? amax / 127.0 : (amax != 0.0 ? 1.0 / scale : 0.0);
    for (uint r = 0; r < size / 32u; ++r) {
      const uint64_t rec = p.out_ + 40ul * (uint64_t(i) * (size / 32u) + r);
      int sum = 0;
      for (uint w = 0; w < 8u; ++w) {
        uint word = 0u;
        for (uint b = 0; b < 4u; ++b) {
          int q = int(roundEven(ld_f32(p.x, base + 32u * r + 4u * w + b) * scale));
          if (MODE == 5u) q = min(127, q);
          sum += q;
          word |= uint(q & 255) << (8u * b);
        }
        U32s(rec + 4ul * w).v[0] = word;
      }
      F32s(rec + 32ul).v[0] = MODE == 4u ? f16_round(d) : d;
      F32s(rec + 36ul).v[0] = MODE == 4u ? f16_round(float(sum) * d) : 0.0;
    }
    return;
  }
  if (MODE == 0u) {
    float amax = 0.0;
    for (uint j = 0; j < size; ++j) amax = max(amax, abs(ld_f32(p.x, base + j)));
    const float id = amax != 0.0 ? 127.0 / amax : 0.0;
    const float d = f16_round(amax / 127.0);
    for (uint j = 0; j < size; ++j) st_f32(p.out_, base + j, float(int(roundEven(ld_f32(p.x, base + j) * id))) * d);
  } else {
    float amax = 0.0, mx = 0.0;
    for (uint j = 0; j < size; ++j) {
      const float v = ld_f32(p.x, base + j);
      if (abs(v) > amax) {
        amax = abs(v);
        mx = v;
      }
    }
    if (amax == 0.0) {
      for (uint j = 0; j < size; ++j) st_f32(p.out_, base + j, 0.0);
      return;
    }
    const float iscale = -127.0 / mx;
    const float d = 1.0 / iscale;
    for (uint j = 0; j < size; ++j) {
      const int q = min(127, int(roundEven(iscale * ld_f32(p.x, base + j))));
      st_f32(p.out_, base + j, d * float(q));
    }
  }
}
