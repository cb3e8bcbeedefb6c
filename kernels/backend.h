// The Backend interface: one implementation per kind of device (CPU now; CUDA and Vulkan
// later). The engine builds a stage's forward pass from these ops and never asks which device
// it runs on. Tensors are contiguous, row-major views of backend memory; `ne[0]` is the row
// (innermost) length, as in GGUF. Shapes in comments are written outermost first:
// [n_tokens, n_embd] is n_tokens rows of n_embd values.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/dtype.h"

namespace hearth::kernels {

struct Tensor {
  DType type = DType::F32;
  std::array<int64_t, 4> ne{1, 1, 1, 1};
  void* data = nullptr;                 // backend address (a host pointer on the CPU backend)
  std::shared_ptr<const void> storage;  // keeps the memory (or the file mapping) alive
  // 0: the plain rows described above. Another value is a backend's own arrangement of a
  // weight's bytes (the CPU backend's interleaved rows, kernels/cpu/packed.h), which only that
  // backend's matmul and get_rows read; rows() and n_bytes() do not apply to it.
  uint8_t layout = 0;

  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  size_t row_bytes() const { return dtype_row_bytes(type, ne[0]); }
  size_t n_bytes() const { return row_bytes() * static_cast<size_t>(n_rows()); }
  // Rows [first, first + count) of a tensor viewed as [n_rows, ne0] (shares the storage).
  Tensor rows(int64_t first, int64_t count) const;
};

enum class RopeMode { Normal, Neox };  // rotate pairs (2i, 2i+1) or (i, i + n_rot/2)

struct RopeParams {
  RopeMode mode = RopeMode::Normal;
  int n_rot = 0;               // leading dimensions of each head that rotate
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;     // linear scaling: positions are multiplied by this
  const float* freq_factors = nullptr;  // n_rot / 2 divisors of the frequencies (Llama 3.1), host memory
};

enum class Activation { Silu, GeluTanh };

// Where each token of a batch lives in the KV cache.
struct KvSlot {
  int32_t seq;  // cache row group (a sequence slot)
  int32_t pos;  // position in the sequence
};

struct AttentionParams {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  float scale = 1.0f;         // applied to q.k
  float softcap = 0.0f;       // > 0: scores = softcap * tanh(scores / softcap)
  int32_t window = 0;         // > 0: attend only to positions p with pos - p < window
};

// The KV cache of one layer: K and V for `n_seq` sequences of up to `n_ctx` positions,
// [n_seq, n_ctx, n_head_kv * head_dim] each, in `type` (F16 by default).
struct KvLayer {
  Tensor k;
  Tensor v;
  int32_t n_seq = 0;
  int32_t n_ctx = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;
  // Whether matmul / get_rows accept weights of this type.
  virtual bool supports_weight_type(DType type) const = 0;
  // Whether new_kv_layer / kv_store / attention accept a KV cache of this type with heads of
  // head_dim values (a block-quantized cache needs heads of whole blocks).
  virtual bool supports_kv_type(DType type, int64_t head_dim) const = 0;

  // --- memory ---------------------------------------------------------------------------
  // A new tensor in backend memory, contents undefined.
  virtual Tensor new_tensor(DType type, std::array<int64_t, 4> ne) = 0;
  // A weight from host bytes (e.g. a memory-mapped file). The CPU backend uses the bytes in
  // place, keeping `keep_alive`, or repacks them for its kernels; device backends copy them.
  // The result's data points elsewhere than `host` exactly when the bytes were copied.
  virtual Tensor weight(DType type, std::array<int64_t, 4> ne, const void* host, std::shared_ptr<const void> keep_alive) = 0;
  virtual void write(Tensor& dst, const void* host, size_t bytes) = 0;
  virtual void read(const Tensor& src, void* host, size_t bytes) = 0;

  // --- ops (may run asynchronously until synchronize()) ----------------------------------
  // out[i, :] = dequantized table[ids[i], :]             table [n_rows, d] -> out f32 [n, d]
  virtual void get_rows(const Tensor& table, std::span<const int32_t> ids, Tensor& out) = 0;
  // y = x * w^T                   w [m, k] (any supported type), x f32 [n, k] -> y f32 [n, m]
  virtual void matmul(const Tensor& w, const Tensor& x, Tensor& y) = 0;
  // y[i, :] = x[i, :] / rms(x[i, :]) * weight   (weight f32 [d], or none)   x, y f32 [n, d]
  // Rows are x.ne[0] long: per-head norms pass x reshaped to [n_tokens * n_head, head_dim].
  virtual void rms_norm(const Tensor& x, const Tensor* weight, float eps, Tensor& y) = 0;
  // y = a + b, same shape (y may alias a)
  virtual void add(const Tensor& a, const Tensor& b, Tensor& y) = 0;
  // x[i, :] += bias   bias f32 [d]
  virtual void add_bias(Tensor& x, const Tensor& bias) = 0;
  // x *= s
  virtual void scale(Tensor& x, float s) = 0;
  // x = cap * tanh(x / cap)
  virtual void softcap(Tensor& x, float cap) = 0;
  // In place on x f32 [n_tokens, n_heads, head_dim]; positions has n_tokens entries.
  virtual void rope(Tensor& x, int n_heads, std::span<const int32_t> positions, const RopeParams& params) = 0;
  // y = act(gate) * up   all f32 [n, d]
  virtual void glu(const Tensor& gate, const Tensor& up, Activation act, Tensor& y) = 0;

  // --- attention over the KV cache --------------------------------------------------------
  virtual KvLayer new_kv_layer(DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim) = 0;
  // Stores k, v f32 [n_tokens, kv_dim] at the tokens' slots.
  virtual void kv_store(KvLayer& cache, const Tensor& k, const Tensor& v, std::span<const KvSlot> slots) = 0;
  // For each token t (query q f32 [n_tokens, n_head, head_dim]): attends causally over its
  // sequence's cached positions <= slots[t].pos (within the window) -> out f32 [n_tokens,
  // n_head, head_dim]. Grouped-query: head h reads kv head h / (n_head / n_head_kv).
  virtual void attention(const Tensor& q, const KvLayer& cache, std::span<const KvSlot> slots,
                         const AttentionParams& params, Tensor& out) = 0;

  virtual void synchronize() = 0;
};

}  // namespace hearth::kernels
