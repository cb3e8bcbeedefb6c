// The Backend interface: one implementation per kind of device (CPU now; CUDA and Vulkan join
// through the same seam). The engine builds a stage's forward pass from these ops and never asks
// which device it runs on. A backend plays three roles, as ggml's device / buffer / stream split:
//
//  - device: what it is and can do (`device()`: name, kind, memory, properties; `supports()`).
//  - buffers: memory it owns (`new_buffer`, `weight`); a Tensor is a typed, shaped view of one
//    buffer at a byte offset, never a raw pointer: a Vulkan buffer or a CUDA allocation has no
//    host address, and code above kernels/ never needs one.
//  - stream: writes, ops and reads are enqueued in program order on one stream per backend.
//
// Contract
//
// Threads. A backend is driven by one thread at a time (the stage that owns it); it may use
// threads of its own inside (the CPU backend's pool). Creating buffers and tensors is part of
// that single-thread rule. A Tensor value (and its buffer) may be copied and destroyed on any
// thread: buffers are reference-counted and freed when the last view goes.
//
// Asynchrony. Every op may run asynchronously: it is enqueued and returns. `write` consumes the
// host bytes before it returns (the caller may reuse them at once) but the copy into the tensor
// is ordered on the stream like an op. `read` and `synchronize` wait for everything enqueued
// before them. The CPU backend happens to finish each op before returning; nothing above
// kernels/ may rely on that.
//
// Inputs live in tensors. No op takes host memory: per-step inputs (token ids, positions, KV
// slots, output rows) are I32 tensors the caller writes once per step, and constant tables
// (rope frequency factors) are tensors written once at load. An op reads them on the device
// when it runs, so they must stay unchanged until the work that reads them is done (the next
// step's writes are ordered after it on the stream, so rewriting them each step is safe).
//
// Errors. A wrong shape or type is a programming error (HEARTH_CHECK aborts with file:line). A
// device failure (a lost GPU, a kernel fault, out of device memory during a step) is reported as
// a hearth::Error thrown by `read` or `synchronize`, naming the op where the device can tell;
// after one, the backend may refuse further work (every call then throws). Running out of
// memory at allocation throws hearth::Error from `new_buffer` / `weight` / `new_kv_layer`.
//
// Steps. A stage brackets each forward pass with `begin_step(key)` / `end_step()`. Everything
// between them is ops only (inputs are written before `begin_step`; results are read after
// `end_step`). The caller promises that two steps with the same key enqueue the same ops, in
// the same order, on the same tensors (same buffers, offsets, shapes, types) with the same
// scalar parameters; only tensor contents differ. A backend may therefore record a step once
// and replay it while the key repeats (CUDA graphs, Vulkan command buffers); the CPU backend runs
// each op as it comes. This is why a stage takes its activations from an arena sized for its
// largest batch: the addresses repeat from step to step.
//
// Tensors are contiguous, row-major views; `ne[0]` is the row (innermost) length, as in GGUF.
// Shapes in comments are written outermost first: [n_tokens, n_embd] is n_tokens rows of n_embd.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace hearth::kernels {

class Backend;

// A block of memory owned by a backend. Backends derive their own (host memory, a CUDA
// allocation, a Vulkan buffer + its memory); only the backend that made a buffer looks inside.
class Buffer {
 public:
  virtual ~Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  size_t size() const { return size_; }
  // The kind of backend that owns it ("cpu", "cuda", "vulkan"): a backend refuses others' buffers.
  std::string_view kind() const { return kind_; }
  // True when the buffer is the caller's own host memory used in place (a CPU backend's weight
  // read straight from the mapped file); false when the backend holds a copy.
  bool borrows_host_memory() const { return borrows_; }

 protected:
  Buffer(std::string_view kind, size_t size, bool borrows) : kind_(kind), size_(size), borrows_(borrows) {}

 private:
  std::string_view kind_;
  size_t size_;
  bool borrows_;
};

struct Tensor {
  DType type = DType::F32;
  std::array<int64_t, 4> ne{1, 1, 1, 1};
  std::shared_ptr<Buffer> buffer;  // null: no tensor (an absent optional weight)
  size_t offset = 0;               // bytes from the start of the buffer
  // 0: the plain rows described above. Another value is a backend's own arrangement of a
  // weight's bytes (the CPU backend's interleaved rows, kernels/cpu/packed.h), which only that
  // backend's matmul and get_rows read; rows() and n_bytes() do not apply to it.
  uint8_t layout = 0;

  bool empty() const { return buffer == nullptr; }
  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  size_t row_bytes() const { return dtype_row_bytes(type, ne[0]); }
  size_t n_bytes() const { return row_bytes() * static_cast<size_t>(n_rows()); }
  // Rows [first, first + count) of a tensor viewed as [n_rows, ne0] (same buffer).
  Tensor rows(int64_t first, int64_t count) const;
  // The same bytes seen with another shape of as many elements (e.g. [n, heads * dim] as
  // [n * heads, dim] for per-head norms).
  Tensor reshaped(std::array<int64_t, 4> shape) const;
};

enum class RopeMode { Normal, Neox };  // rotate pairs (2i, 2i+1) or (i, i + n_rot/2)

struct RopeParams {
  RopeMode mode = RopeMode::Normal;
  int n_rot = 0;               // leading dimensions of each head that rotate
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;     // linear scaling: positions are multiplied by this
  Tensor freq_factors;         // empty, or f32 [n_rot / 2] divisors of the frequencies (Llama 3.1)
};

enum class Activation { Silu, GeluTanh };

// Where each token of a batch lives in the KV cache. The per-step slots tensor is I32
// [n_tokens, 2]: row t = (seq, pos) of token t, this struct's layout.
struct KvSlot {
  int32_t seq;  // cache row group (a sequence slot)
  int32_t pos;  // position in the sequence
};
static_assert(sizeof(KvSlot) == 2 * sizeof(int32_t));

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

// Every op of the interface, for supports() and for the op suite.
enum class Op { GetRows, Matmul, RmsNorm, Add, AddBias, Scale, Softcap, Rope, Glu, KvStore, Attention };
inline constexpr Op kAllOps[] = {Op::GetRows, Op::Matmul, Op::RmsNorm, Op::Add,     Op::AddBias,  Op::Scale,
                                 Op::Softcap, Op::Rope,   Op::Glu,     Op::KvStore, Op::Attention};
std::string_view op_name(Op op);

// One device a backend drives.
struct DeviceInfo {
  std::string backend;  // "cpu", "cuda", "vulkan"
  int index = 0;        // among that backend's devices
  std::string name;     // "AMD EPYC 9R14", "NVIDIA GeForce RTX 4090"
  uint64_t memory_total = 0;  // bytes the device can hold (host RAM for the CPU)
  uint64_t memory_free = 0;   // bytes free now
  // Kind-specific facts, in a stable order: ("simd", "avx512"), ("threads", "2"),
  // ("subgroup_size", "32"), ("compute_capability", "8.9") ...
  std::vector<std::pair<std::string, std::string>> properties;

  std::string spec() const { return backend + ":" + std::to_string(index); }  // make_backend's name for it
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu", "cuda:0", "vulkan:1": the spec make_backend() builds it from.
  virtual std::string name() const = 0;
  virtual DeviceInfo device() const = 0;
  // Whether `op` runs on tensors of `type` here: for GetRows and Matmul the type of the table /
  // weight, for KvStore and Attention the KV cache's type, F32 for the others.
  virtual bool supports(Op op, DType type) const = 0;
  // Whether new_kv_layer / kv_store / attention accept a KV cache of this type with heads of
  // head_dim values (a block-quantized cache needs heads of whole blocks).
  virtual bool supports_kv_type(DType type, int64_t head_dim) const = 0;
  bool supports_weight_type(DType type) const { return supports(Op::Matmul, type) && supports(Op::GetRows, type); }

  // --- memory ---------------------------------------------------------------------------
  // A buffer of `bytes` of device memory, contents undefined. Throws hearth::Error when the
  // device cannot hold it.
  virtual std::shared_ptr<Buffer> new_buffer(size_t bytes) = 0;
  // A new tensor in a buffer of its own, contents undefined.
  Tensor new_tensor(DType type, std::array<int64_t, 4> ne);
  // A weight from host bytes (e.g. a memory-mapped file), valid while `keep_alive` is. The CPU
  // backend uses the bytes in place (borrows_host_memory()) or repacks them for its kernels;
  // device backends copy them. After it returns, the host bytes are needed only if borrowed.
  virtual Tensor weight(DType type, std::array<int64_t, 4> ne, const void* host, std::shared_ptr<const void> keep_alive) = 0;
  // Copies `bytes` from host memory into `dst` at `dst_offset` bytes from its start (see the
  // contract: ordered on the stream, host bytes consumed before returning).
  virtual void write(const Tensor& dst, const void* host, size_t bytes, size_t dst_offset = 0) = 0;
  // Waits for the work enqueued so far, then copies the first `bytes` of `src` to host memory.
  // Throws hearth::Error when the device failed.
  virtual void read(const Tensor& src, void* host, size_t bytes) = 0;
  // new_tensor + write.
  Tensor upload(DType type, std::array<int64_t, 4> ne, const void* host);

  // --- steps ------------------------------------------------------------------------------
  // Brackets one forward pass (see "Steps" above). `key` names the step's shape (the stage
  // derives it from the batch's size and output rows); equal keys promise equal op sequences.
  virtual void begin_step(uint64_t key) { (void)key; }
  virtual void end_step() {}
  // Steps that ran as a replay of a recorded step so far (0 for a backend that never records).
  virtual uint64_t step_replays() const { return 0; }

  // --- ops (enqueued; see the contract) -------------------------------------------------
  // out[i, :] = dequantized table[ids[i], :]   table [n_rows, d], ids I32 [n] -> out f32 [n, d]
  virtual void get_rows(const Tensor& table, const Tensor& ids, const Tensor& out) = 0;
  // y = x * w^T                   w [m, k] (any supported type), x f32 [n, k] -> y f32 [n, m]
  virtual void matmul(const Tensor& w, const Tensor& x, const Tensor& y) = 0;
  // y[i, :] = x[i, :] / rms(x[i, :]) * weight   (weight f32 [d], or empty)   x, y f32 [n, d]
  // Rows are x.ne[0] long: per-head norms pass x reshaped to [n_tokens * n_head, head_dim].
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y) = 0;
  // y = a + b, same shape (y may alias a)
  virtual void add(const Tensor& a, const Tensor& b, const Tensor& y) = 0;
  // x[i, :] += bias   bias f32 [d]
  virtual void add_bias(const Tensor& x, const Tensor& bias) = 0;
  // x *= s
  virtual void scale(const Tensor& x, float s) = 0;
  // x = cap * tanh(x / cap)
  virtual void softcap(const Tensor& x, float cap) = 0;
  // In place on x f32 [n_tokens, n_heads, head_dim]; positions I32 [n_tokens].
  virtual void rope(const Tensor& x, int n_heads, const Tensor& positions, const RopeParams& params) = 0;
  // y = act(gate) * up   all f32 [n, d]
  virtual void glu(const Tensor& gate, const Tensor& up, Activation act, const Tensor& y) = 0;

  // --- attention over the KV cache --------------------------------------------------------
  virtual KvLayer new_kv_layer(DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim) = 0;
  // Stores k, v f32 [n_tokens, kv_dim] at the tokens' slots (I32 [n_tokens, 2], see KvSlot).
  virtual void kv_store(const KvLayer& cache, const Tensor& k, const Tensor& v, const Tensor& slots) = 0;
  // For each token t (query q f32 [n_tokens, n_head, head_dim]): attends causally over its
  // sequence's cached positions <= slots[t].pos (within the window) -> out f32 [n_tokens,
  // n_head, head_dim]. Grouped-query: head h reads kv head h / (n_head / n_head_kv).
  virtual void attention(const Tensor& q, const KvLayer& cache, const Tensor& slots, const AttentionParams& params,
                         const Tensor& out) = 0;

  // Waits for everything enqueued; throws hearth::Error when the device failed.
  virtual void synchronize() = 0;
};

// Convenience for tests, tools and loaders: new tensors holding these host values (I32 [n] and
// I32 [n, 2]), written on `backend`'s stream.
Tensor upload_i32(Backend& backend, std::span<const int32_t> values);
Tensor upload_slots(Backend& backend, std::span<const KvSlot> slots);

// Activation memory of a stage: regions reserved once (sized for the largest batch), then one
// buffer, so every step's tensors sit at the same addresses (what a recorded step needs).
class Arena {
 public:
  static constexpr size_t kAlignment = 256;  // bytes; enough for any device's vector loads
  // Reserves `bytes` and returns the region's offset. Only before allocate().
  size_t reserve(size_t bytes);
  void allocate(Backend& backend);
  // A tensor at `offset` (from reserve); its bytes must fit the region reserved there.
  Tensor tensor(size_t offset, DType type, std::array<int64_t, 4> ne) const;

 private:
  std::vector<std::pair<size_t, size_t>> regions_;  // (offset, bytes)
  size_t size_ = 0;
  std::shared_ptr<Buffer> buffer_;
};

}  // namespace hearth::kernels
