// Per split: p * V over its positions, with the token's softmax maximum and sum merged from every
// split's statistics (in split order) and the probabilities formed as the reference forms them
// (exp(s - max) / sum, rounded to f16 for an f16 cache). Positions go 64 at a time: each
// invocation scores one into shared memory, then each accumulates its dimensions over the 64.
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
#include "attention.glsl"
shared float probs[64];

void main() {
  const Where w = where_am_i();
  load_query(w);
  const uint tid = gl_LocalInvocationID.x;
  const uint64_t st = 2ul * (uint64_t(w.token) * p.n_head + w.head) * p.splits;
  float mg = -1.0 / 0.0;
  for (uint i = 0; i < p.splits; ++i) mg = max(mg, ld_f32(p.stats, st + 2u * i));
  float sum = 0.0;
  for (uint i = 0; i < p.splits; ++i) {
    const float mi = ld_f32(p.stats, st + 2u * i);
    if (!isinf(mi)) sum += ld_f32(p.stats, st + 2u * i + 1u) * exp(mi - mg);
  }
  const float inv = 1.0 / sum;
  float acc[4] = float[4](0, 0, 0, 0);
  const uint off = w.kv_head * HEAD_DIM;
  for (int c0 = w.lo; c0 < w.hi; c0 += 64) {
    const int pos = c0 + int(tid);
    if (pos < w.hi) {
      float prob = exp(score(w, pos) - mg) * inv;
      probs[tid] = TYPE == T_F16 ? f16_round(prob) : prob;
    }
    barrier();
    const int count = min(64, w.hi - c0);
    for (uint i = 0; i < 4u; ++i) {
      const uint d = tid + 64u * i;
      if (d >= HEAD_DIM) break;
      float a = acc[i];
      for (int j = 0; j < count; ++j) a += probs[j] * cache_value(w.v_seq + uint64_t(c0 + j) * w.row_bytes, off + d);
      acc[i] = a;
    }
    barrier();
  }
  const uint64_t at = ((uint64_t(w.token) * p.n_head + w.head) * p.splits + w.split) * HEAD_DIM;
  for (uint i = 0; i < 4u; ++i) {
    const uint d = tid + 64u * i;
    if (d < HEAD_DIM) st_f32(p.partial, at + d, acc[i]);
  }
}
