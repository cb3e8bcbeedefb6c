// Shared by the attention shaders (flash-decoding over the KV cache; see kernels/cuda/attention.cu
// for the scheme: per-split softmax statistics, then p * V per split with the token's merged
// maximum and sum, then the partial outputs summed in split order). Workgroups: x split, y head,
// z token; 64 invocations, one position each at a time.
// Specialization: the cache type (F32, F16, Q8_0) and, above it, the model's head dimension,
// so the per-dimension loops have known bounds.
layout(constant_id = 0) const uint SPEC = 0;
const uint TYPE = SPEC & 255u;
const uint HEAD_DIM = SPEC >> 8;
layout(push_constant) uniform P {
  uint64_t q, k_cache, v_cache, slots, stats, partial;
  uint n_head, n_head_kv, head_dim_unused, kv_dim, n_ctx, splits, window;  // head_dim: HEAD_DIM
  float scale, softcap;
} p;

shared float qs[256];

uint64_t cache_row_bytes() { return TYPE == T_F32 ? 4ul * p.kv_dim : TYPE == T_F16 ? 2ul * p.kv_dim : 34ul * (p.kv_dim / 32u); }

float cache_value(uint64_t row, uint e) {
  if (TYPE == T_F32) return ld_f32(row, e);
  if (TYPE == T_F16) return f16_at(row, 2ul * e);
  const uint64_t block = row + 34ul * (e / 32u);
  return f16_at(block, 0) * float(sext8(byte_at(block, 2u + e % 32u)));
}

struct Where {
  uint token, head, split, kv_head;
  uint64_t k_seq, v_seq, row_bytes;
  int lo, hi;
};

Where where_am_i() {
  Where w;
  w.split = gl_WorkGroupID.x;
  w.head = gl_WorkGroupID.y;
  w.token = gl_WorkGroupID.z;
  w.kv_head = w.head / (p.n_head / p.n_head_kv);
  const int seq = ld_i32(p.slots, 2u * w.token), pos = ld_i32(p.slots, 2u * w.token + 1u);
  const int first = p.window > 0u ? max(0, pos - int(p.window) + 1) : 0;
  const int len = pos - first + 1, chunk = (len + int(p.splits) - 1) / int(p.splits);
  w.lo = min(pos + 1, first + int(w.split) * chunk);
  w.hi = min(pos + 1, w.lo + chunk);
  w.row_bytes = cache_row_bytes();
  const uint64_t seq_at = uint64_t(seq) * uint64_t(p.n_ctx) * w.row_bytes;
  w.k_seq = p.k_cache + seq_at;
  w.v_seq = p.v_cache + seq_at;
  return w;
}

// The token's query for this head into qs, as the reference feeds it to q.k: rounded to f16 for
// an f16 cache, quantized to q8_0 (and back) for a q8_0 cache. Ends with a barrier.
void load_query(Where w) {
  const uint tid = gl_LocalInvocationID.x;
  const uint64_t base = (uint64_t(w.token) * p.n_head + w.head) * HEAD_DIM;
  if (TYPE == T_Q8_0) {
    if (tid < HEAD_DIM / 32u) {
      float amax = 0.0;
      for (uint i = 0; i < 32u; ++i) amax = max(amax, abs(ld_f32(p.q, base + 32u * tid + i)));
      const float id = amax != 0.0 ? 127.0 / amax : 0.0;
      const float d = f16_round(amax / 127.0);
      for (uint i = 0; i < 32u; ++i) qs[32u * tid + i] = float(int(roundEven(ld_f32(p.q, base + 32u * tid + i) * id))) * d;
    }
  } else {
    for (uint d = tid; d < HEAD_DIM; d += 64u) {
      const float v = ld_f32(p.q, base + d);
      qs[d] = TYPE == T_F16 ? f16_round(v) : v;
    }
  }
  barrier();
}

float score(Where w, int pos) {
  const uint64_t row = w.k_seq + uint64_t(pos) * w.row_bytes;
  const uint off = w.kv_head * HEAD_DIM;
  float s = 0.0;
  for (uint d = 0; d < HEAD_DIM; ++d) s += qs[d] * cache_value(row, off + d);
  s *= p.scale;
  if (p.softcap > 0.0) s = p.softcap * tanh(s / p.softcap);
  return s;
}
