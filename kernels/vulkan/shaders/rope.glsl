// The body of rope.comp (the angles' sin / cos in float) and rope_f64.comp (in double, where
// the device has shaderFloat64); HEARTH_ROPE_F64 picks which.
// RoPE in place on x [n_tokens, n_heads, head_dim]: one workgroup per token; the angles of its
// position once into shared memory (theta_i = pos * theta_scale^i by repeated multiplication,
// as the reference), then every head's pairs (normal: (2i, 2i+1); NeoX: (i, i + n_rot / 2)).
layout(local_size_x = 128) in;
layout(push_constant) uniform P {
  uint64_t x, positions, factors;  // factors 0: none
  uint n_heads, head_dim, n_rot, neox;
  float theta_scale, freq_scale;
} p;
shared float cos_t[256], sin_t[256];

#ifdef HEARTH_ROPE_F64
// sin and cos of t, correctly rounded to float in all but the rarest cases, as the CPU's sinf /
// cosf give them: t - j * pi/2 in double (pi/2 in two parts, fdlibm's: j * the first exact for
// j < 2^20), then fdlibm's double polynomials on [-pi/4, pi/4], rounded once to float. On
// devices with shaderFloat64 (the backend picks this variant there): RoPE then matches the CPU
// backend to the last bit nearly everywhere, which free-running greedy text needs (the float
// variant below, within 1.4e-7, changed SmolLM2's text against the CPU's on lavapipe).
void sin_cos(float t, out float s, out float c) {
  const double td = double(t);
  const double j = roundEven(td * 0.63661977236758134308LF);
  precise double r = td - j * 1.57079632673412561417e+00LF;
  r = r - j * 6.07710050650619224932e-11LF;
  const double z = r * r;
  const double sr = r + r * z * (-1.66666666666666324348e-01LF + z * (8.33333333332248946124e-03LF +
                    z * (-1.98412698298579493134e-04LF + z * (2.75573137070700676789e-06LF +
                    z * (-2.50507602534068634195e-08LF + z * 1.58969099521155010221e-10LF)))));
  const double cr = 1.0LF - 0.5LF * z + z * z * (4.16666666666666019037e-02LF + z * (-1.38888888888741095749e-03LF +
                    z * (2.48015872894767294178e-05LF + z * (-2.75573143513906633035e-07LF +
                    z * (2.08757232129817482790e-09LF + z * -1.13596475577881948265e-11LF)))));
  const int q = int(j) & 3;
  s = float(q == 0 ? sr : q == 1 ? cr : q == 2 ? -sr : -cr);
  c = float(q == 0 ? cr : q == 1 ? -sr : q == 2 ? -cr : sr);
}
#else
// sin and cos of t to float accuracy at every angle a position reaches. GLSL's sin / cos carry
// no accuracy requirement, and NVIDIA's (the hardware approximation) drift from the reference
// as the angle grows: RoPE's output was off by an NMSE of 1e-6 on an H200. So: r = t - j * pi/2
// with pi/2 in parts of 4 significant bits (every product j * part exact for j < 2^20, i.e.
// t < 1.6e6; each difference exact or nearly so; no fma needed, which lavapipe does not fuse),
// then the minimax polynomials of sinf / cosf on [-pi/4, pi/4] and the quadrant j mod 4.
// Measured against sinf / cosf in float emulation: within 1.4e-7 for t up to 1.6e6.
const float kHalfPiParts[10] = float[](1.5, 0.0703125, 0.000457763671875, 2.47955322265625e-05,
                                       1.1920928955078125e-06, 7.450580596923828e-08, 9.313225746154785e-10,
                                       5.820766091346741e-11, 2.5011104298755527e-12, 6.223371969669989e-14);
void sin_cos(float t, out float s, out float c) {
  const float j = roundEven(t * 0.636619772367581343);  // 2 / pi
  precise float r = t;
  for (int k = 0; k < 10; ++k) r = r - j * kHalfPiParts[k];
  const float z = r * r;
  const float sr = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
  const float cr = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
  const int q = int(j) & 3;
  s = q == 0 ? sr : q == 1 ? cr : q == 2 ? -sr : -cr;
  c = q == 0 ? cr : q == 1 ? -sr : q == 2 ? -cr : sr;
}
#endif

void main() {
  const uint token = group_index();
  const uint half_rot = p.n_rot / 2u, tid = gl_LocalInvocationID.x;
  const float pos = float(I32s(p.positions).v[token]);
  for (uint i = tid; i < half_rot; i += 128u) {
    float base = pos;
    for (uint j = 0; j < i; ++j) base *= p.theta_scale;
    const float ff = p.factors != 0ul ? F32s(p.factors).v[i] : 1.0;
    const float theta = p.freq_scale * (base / ff);
    sin_cos(theta, sin_t[i], cos_t[i]);
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
