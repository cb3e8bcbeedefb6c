// The CUDA backend (kernels/backend.h) over a runtime (kernels/cuda/runtime.h) and the kernels'
// launchers (kernels/cuda/ops.h). Compiled twice: for the GPU (library hearth_cuda, the CUDA
// runtime) and for the CPU execution model (library hearth_cuda_on_cpu, test infrastructure),
// each in its own inline namespace.
//
// Memory. Buffers come from a caching pool: a freed buffer's block goes back to a free list
// and a later request of about its size takes it, so steady-state serving never calls the
// allocator (there is no allocation per token: a stage's activations live in one arena). When
// the device is out of memory the pool releases what it caches and tries once more. Everything
// runs on one stream, so a block reused by a later request is only touched after the work of
// its previous owner.
//
// Steps. begin_step(key) / end_step() bracket a forward pass. The first time a key is seen the
// step runs op by op; the second time its launches are captured into a graph (a CUDA graph on
// the GPU) and the graph is launched; from then on the ops of a step with that key are not
// launched at all: each one adds its arguments (op, device addresses, shapes, scalars) to a
// fingerprint, and end_step launches the recorded graph when the fingerprint is the recording's.
// When it is not (the caller broke the step promise, or a new stage reuses keys with other
// buffers) the ops, kept until then, run one by one and the key is recorded afresh.
#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>

#include <fmt/format.h>

#include "core/error.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/runtime.h"
#include "kernels/device_checks.h"
#include "kernels/step_fingerprint.h"

namespace hearth::kernels::cuda {
inline namespace HEARTH_CUDA_IMPL {

namespace {

// ---- memory ------------------------------------------------------------------------------

class Pool {
 public:
  explicit Pool(std::shared_ptr<Runtime> rt) : rt_(std::move(rt)) {}
  ~Pool() {
    for (auto& [size, p] : free_) rt_->free(p);
  }

  // Requests round up to 256 bytes, and to 2 MiB from 1 MiB on, so that blocks are reusable.
  static size_t rounded(size_t bytes) {
    constexpr size_t kSmall = 256, kLarge = size_t{2} << 20;
    return bytes < (size_t{1} << 20) ? (std::max<size_t>(bytes, 1) + kSmall - 1) / kSmall * kSmall
                                     : (bytes + kLarge - 1) / kLarge * kLarge;
  }

  std::pair<void*, size_t> take(size_t bytes) {
    const size_t size = rounded(bytes);
    {
      std::lock_guard lock(mu_);
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= 2 * size) {
        const auto block = *it;
        free_.erase(it);
        cached_ -= block.first;
        return {block.second, block.first};
      }
    }
    try {
      return {rt_->alloc(size), size};
    } catch (const Error&) {
      release_cached();
      return {rt_->alloc(size), size};
    }
  }

  void give_back(void* p, size_t size) noexcept {
    std::lock_guard lock(mu_);
    free_.emplace(size, p);
    cached_ += size;
  }

  void release_cached() {
    std::lock_guard lock(mu_);
    for (auto& [size, p] : free_) rt_->free(p);
    free_.clear();
    cached_ = 0;
  }

  size_t cached_bytes() const {
    std::lock_guard lock(mu_);
    return cached_;
  }

 private:
  std::shared_ptr<Runtime> rt_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

class DeviceBuffer final : public Buffer {
 public:
  DeviceBuffer(std::shared_ptr<Pool> pool, size_t bytes)
      : Buffer("cuda", bytes, false), pool_(std::move(pool)) {
    std::tie(ptr_, block_) = pool_->take(bytes);
  }
  ~DeviceBuffer() override { pool_->give_back(ptr_, block_); }
  void* ptr() const { return ptr_; }

 private:
  std::shared_ptr<Pool> pool_;
  void* ptr_ = nullptr;
  size_t block_ = 0;
};

void* dev_ptr(const Tensor& t) {
  HEARTH_CHECK(!t.empty(), "an empty tensor where the op needs one");
  HEARTH_CHECK(t.buffer->kind() == "cuda", "a {} buffer given to the CUDA backend", t.buffer->kind());
  return static_cast<uint8_t*>(static_cast<const DeviceBuffer&>(*t.buffer).ptr()) + t.offset;
}
float* f32(const Tensor& t) {
  HEARTH_CHECK(t.type == DType::F32, "f32 tensor expected, got {}", dtype_name(t.type));
  return static_cast<float*>(dev_ptr(t));
}
const int32_t* i32(const Tensor& t) {
  HEARTH_CHECK(t.type == DType::I32, "i32 tensor expected, got {}", dtype_name(t.type));
  return static_cast<const int32_t*>(dev_ptr(t));
}

// A step's ops as a hash (kernels/step_fingerprint.h) over device addresses.
struct Fingerprint : StepFingerprint {
  using StepFingerprint::mix;
  void mix(const Tensor& t) { mix(t.empty() ? 0 : reinterpret_cast<uintptr_t>(dev_ptr(t)), t); }
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int index)
      : index_(index), rt_(std::make_shared<Runtime>(index)), pool_(std::make_shared<Pool>(rt_)) {}

  ~CudaBackend() override {
    try {
      rt_->synchronize();
    } catch (const Error&) {  // a failed device: nothing left to wait for
    }
  }

  std::string name() const override { return fmt::format("cuda:{}", index_); }

  DeviceInfo device() const override {
    DeviceInfo d = rt_->info();
    d.properties.emplace_back("graphs", "yes");
    return d;
  }

  bool supports(Op op, DType type) const override { return device_checks::supports(op, type); }
  bool supports_kv_type(DType type, int64_t head_dim) const override {
    return device_checks::supports_kv(type, head_dim, kAttentionMaxHeadDim);
  }

  std::shared_ptr<Buffer> new_buffer(size_t bytes) override { return std::make_shared<DeviceBuffer>(pool_, bytes); }

  Tensor weight(DType type, std::array<int64_t, 4> ne, const void* host, std::shared_ptr<const void>) override {
    Tensor t = new_tensor(type, ne);
    write(t, host, t.n_bytes());
    return t;
  }

  void write(const Tensor& dst, const void* host, size_t bytes, size_t dst_offset = 0) override {
    device_checks::check_write(dst, bytes, dst_offset, in_step_);
    rt_->upload(static_cast<uint8_t*>(dev_ptr(dst)) + dst_offset, host, bytes);
  }

  void read(const Tensor& src, void* host, size_t bytes) override {
    device_checks::check_read(src, bytes, in_step_);
    rt_->download(host, dev_ptr(src), bytes);
  }

  void synchronize() override { rt_->synchronize(); }

  // ---- steps ----

  void begin_step(uint64_t key) override {
    HEARTH_CHECK(!in_step_, "begin_step inside a step");
    in_step_ = true;
    key_ = key;
    print_ = Fingerprint{};
    pending_.clear();
    if (steps_.size() >= kMaxSteps) steps_.clear();
    const auto it = steps_.find(key);
    if (it != steps_.end() && it->second.graph) {
      mode_ = Mode::Replay;
    } else if (it != steps_.end()) {
      mode_ = Mode::Capture;
      rt_->begin_capture();
    } else {
      mode_ = Mode::Eager;
    }
  }

  void end_step() override {
    HEARTH_CHECK(in_step_, "end_step without begin_step");
    in_step_ = false;
    const auto it = steps_.find(key_);
    switch (mode_) {
      case Mode::Eager:
        steps_[key_] = Recorded{nullptr, print_.h};
        break;
      case Mode::Capture: {
        std::unique_ptr<Graph> graph = rt_->end_capture();
        rt_->replay(*graph);
        rt_->check_launch("step graph");
        Recorded& r = steps_[key_];
        if (r.print == print_.h) {
          r.graph = std::move(graph);
        } else {
          r.print = print_.h;  // the step changed since its first run: capture the next one
        }
        break;
      }
      case Mode::Replay:
        if (it != steps_.end() && it->second.graph && it->second.print == print_.h) {
          rt_->replay(*it->second.graph);
          rt_->check_launch("step graph");
          ++replays_;
        } else {
          for (auto& op : pending_) op();
          steps_[key_] = Recorded{nullptr, print_.h};
        }
        break;
    }
    mode_ = Mode::Eager;
    pending_.clear();
  }

  uint64_t step_replays() const override { return replays_; }

  // ---- ops ----

  void get_rows(const Tensor& table, const Tensor& ids, const Tensor& out) override {
    const int64_t d = table.ne[0], n = device_checks::check_get_rows(table, ids, out);
    Fingerprint f = op_print(1, {&table, &ids, &out});
    enqueue("get_rows", f, [=, this] {
      cuda::get_rows(table.type, dev_ptr(table), d, i32(ids), n, f32(out), rt_->stream());
    });
  }

  void matmul(const Tensor& w, const Tensor& x, const Tensor& y) override {
    const auto [m, k, n] = device_checks::check_matmul(w, x, y);
    Fingerprint f = op_print(2, {&w, &x, &y});
    ensure_scratch(matmul_scratch_bytes(w.type, n, k));
    enqueue("matmul", f, [=, this] {
      cuda::matmul(w.type, dev_ptr(w), m, k, f32(x), n, f32(y), scratch(), rt_->stream());
    });
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y) override {
    const int64_t d = x.ne[0], rows = device_checks::check_rms_norm(x, weight, y);
    Fingerprint f = op_print(3, {&x, &weight, &y});
    f.mix(eps);
    enqueue("rms_norm", f, [=, this] {
      cuda::rms_norm(f32(x), weight.empty() ? nullptr : f32(weight), eps, f32(y), rows, d, rt_->stream());
    });
  }

  void add(const Tensor& a, const Tensor& b, const Tensor& y) override {
    const int64_t n = a.n_elements();
    HEARTH_CHECK(b.n_elements() == n && y.n_elements() == n, "add shapes");
    Fingerprint f = op_print(4, {&a, &b, &y});
    enqueue("add", f, [=, this] { cuda::add(f32(a), f32(b), f32(y), n, rt_->stream()); });
  }

  void add_bias(const Tensor& x, const Tensor& bias) override {
    const int64_t d = x.ne[0];
    HEARTH_CHECK(bias.n_elements() == d, "add_bias shapes");
    Fingerprint f = op_print(5, {&x, &bias});
    enqueue("add_bias", f, [=, this] { cuda::add_bias(f32(x), f32(bias), x.n_rows(), d, rt_->stream()); });
  }

  void scale(const Tensor& x, float s) override {
    Fingerprint f = op_print(6, {&x});
    f.mix(s);
    enqueue("scale", f, [=, this] { cuda::scale(f32(x), s, x.n_elements(), rt_->stream()); });
  }

  void softcap(const Tensor& x, float cap) override {
    HEARTH_CHECK(cap > 0.0f, "softcap {}", cap);
    Fingerprint f = op_print(7, {&x});
    f.mix(cap);
    enqueue("softcap", f, [=, this] { cuda::softcap(f32(x), cap, x.n_elements(), rt_->stream()); });
  }

  void rope(const Tensor& x, int n_heads, const Tensor& positions, const RopeParams& p) override {
    const auto [head_dim, n_tokens] = device_checks::check_rope(x, n_heads, positions, p, 512);
    RopeArgs args;
    args.neox = p.mode == RopeMode::Neox;
    args.n_rot = p.n_rot;
    args.theta_scale = device_checks::rope_theta_scale(p);
    args.freq_scale = p.freq_scale;
    const Tensor factors = p.freq_factors;
    Fingerprint f = op_print(8, {&x, &positions, &factors});
    f.mix(static_cast<uint64_t>(n_heads) << 32 | static_cast<uint64_t>(p.n_rot) << 1 | (args.neox ? 1 : 0));
    f.mix(args.theta_scale);
    f.mix(args.freq_scale);
    enqueue("rope", f, [=, this] {
      RopeArgs a = args;
      a.freq_factors = factors.empty() ? nullptr : f32(factors);
      cuda::rope(f32(x), n_tokens, n_heads, head_dim, i32(positions), a, rt_->stream());
    });
  }

  void glu(const Tensor& gate, const Tensor& up, Activation act, const Tensor& y) override {
    const int64_t n = gate.n_elements();
    HEARTH_CHECK(up.n_elements() == n && y.n_elements() == n, "glu shapes");
    Fingerprint f = op_print(9, {&gate, &up, &y});
    f.mix(static_cast<uint64_t>(act));
    enqueue("glu", f, [=, this] {
      cuda::glu(f32(gate), f32(up), act == Activation::GeluTanh, f32(y), n, rt_->stream());
    });
  }

  KvLayer new_kv_layer(DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim) override {
    KvLayer layer = device_checks::new_kv_layer(*this, type, n_seq, n_ctx, kv_dim);
    rt_->fill(dev_ptr(layer.k), 0, layer.k.n_bytes());
    rt_->fill(dev_ptr(layer.v), 0, layer.v.n_bytes());
    return layer;
  }

  void kv_store(const KvLayer& cache, const Tensor& k, const Tensor& v, const Tensor& slots) override {
    const int64_t n = device_checks::check_kv_store(cache, k, v, slots);
    Fingerprint f = op_print(10, {&cache.k, &cache.v, &k, &v, &slots});
    const KvArgs args = kv_args(cache);
    enqueue("kv_store", f, [=, this] { cuda::kv_store(args, f32(k), f32(v), i32(slots), n, rt_->stream()); });
  }

  void attention(const Tensor& q, const KvLayer& cache, const Tensor& slots, const AttentionParams& p,
                 const Tensor& out) override {
    const int64_t n = device_checks::check_attention(*this, q, cache, slots, p, out);
    AttentionArgs a;
    a.n_head = p.n_head;
    a.n_head_kv = p.n_head_kv;
    a.head_dim = p.head_dim;
    a.scale = p.scale;
    a.softcap = p.softcap;
    a.window = p.window;
    Fingerprint f = op_print(11, {&q, &cache.k, &cache.v, &slots, &out});
    f.mix(static_cast<uint64_t>(p.n_head) << 40 | static_cast<uint64_t>(p.n_head_kv) << 20 |
          static_cast<uint64_t>(p.head_dim));
    f.mix(p.scale);
    f.mix(p.softcap);
    f.mix(static_cast<uint64_t>(p.window));
    const KvArgs args = kv_args(cache);
    ensure_scratch(attention_scratch_bytes(n, a, args.n_ctx));
    enqueue("attention", f, [=, this] {
      cuda::attention(f32(q), args, i32(slots), n, a, f32(out), scratch(), rt_->stream());
    });
  }

 private:
  enum class Mode { Eager, Capture, Replay };
  struct Recorded {
    std::unique_ptr<Graph> graph;  // null: seen once (or changed), captured the next time
    uint64_t print = 0;
  };
  static constexpr size_t kMaxSteps = 64;

  static KvArgs kv_args(const KvLayer& cache) {
    KvArgs a;
    a.type = cache.k.type;
    a.k = dev_ptr(cache.k);
    a.v = dev_ptr(cache.v);
    a.kv_dim = cache.k.ne[0];
    a.n_ctx = cache.n_ctx;
    return a;
  }

  Fingerprint op_print(uint64_t op, std::initializer_list<const Tensor*> tensors) {
    Fingerprint f;
    f.mix(op);
    for (const Tensor* t : tensors) f.mix(*t);
    return f;
  }

  // Runs an op's launches now (or into the capture), or keeps them while a recorded step is
  // replayed (they run only if the step turns out not to match its recording).
  void enqueue(std::string_view op, const Fingerprint& f, std::function<void()> launch) {
    auto run = [this, op, launch = std::move(launch)] {
      launch();
      rt_->check_launch(op);
    };
    if (in_step_) print_.mix(f.h);
    if (!in_step_ || mode_ == Mode::Eager) {
      run();
      return;
    }
    if (mode_ == Mode::Capture) run();
    pending_.push_back(std::move(run));
  }

  // Scratch memory for one op's launches (ops run in stream order, so they share it), sized when
  // the op is enqueued. Growing it moves it, which invalidates recorded steps; growing during a
  // capture (a key whose shapes changed since its first run) abandons the capture and runs the
  // step's ops so far one by one.
  void ensure_scratch(size_t bytes) {
    if (bytes == 0 || (scratch_ && scratch_->size() >= bytes)) return;
    if (in_step_ && mode_ == Mode::Capture) {
      (void)rt_->end_capture();
      mode_ = Mode::Eager;
      for (auto& op : pending_) op();
      pending_.clear();
    }
    scratch_ = std::make_shared<DeviceBuffer>(pool_, std::max(bytes, scratch_ ? 2 * scratch_->size() : bytes));
    steps_.clear();
  }
  void* scratch() const { return scratch_ ? scratch_->ptr() : nullptr; }

  int index_;
  std::shared_ptr<Runtime> rt_;
  std::shared_ptr<Pool> pool_;
  std::shared_ptr<DeviceBuffer> scratch_;
  std::unordered_map<uint64_t, Recorded> steps_;
  bool in_step_ = false;
  Mode mode_ = Mode::Eager;
  uint64_t key_ = 0;
  Fingerprint print_;
  std::vector<std::function<void()>> pending_;
  uint64_t replays_ = 0;
};

}  // namespace

std::unique_ptr<Backend> create_backend(int index) { return std::make_unique<CudaBackend>(index); }

}  // namespace HEARTH_CUDA_IMPL
}  // namespace hearth::kernels::cuda
