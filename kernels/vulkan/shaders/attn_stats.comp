// Per split: the running softmax maximum and sum of exponentials of its positions' scores.
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
#include "attention.glsl"
shared float m_s[64], l_s[64];

void main() {
  const Where w = where_am_i();
  load_query(w);
  const uint tid = gl_LocalInvocationID.x;
  float m = -1.0 / 0.0, l = 0.0;
  for (int pos = w.lo + int(tid); pos < w.hi; pos += 64) {
    const float s = score(w, pos);
    const float m_new = max(m, s);
    l = l * exp(m - m_new) + exp(s - m_new);
    m = m_new;
  }
  m_s[tid] = m;
  l_s[tid] = l;
  barrier();
  if (tid == 0u) {
    float mb = -1.0 / 0.0, lb = 0.0;
    for (uint i = 0; i < 64u; ++i) mb = max(mb, m_s[i]);
    if (!isinf(mb)) {
      for (uint i = 0; i < 64u; ++i) {
        if (!isinf(m_s[i])) lb += l_s[i] * exp(m_s[i] - mb);
      }
    }
    const uint64_t at = 2ul * ((uint64_t(w.token) * p.n_head + w.head) * p.splits + w.split);
    st_f32(p.stats, at, mb);
    st_f32(p.stats, at + 1u, lb);
  }
}
