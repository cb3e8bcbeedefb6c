// The Vulkan backend (kernels/backend.h) on one Vulkan device.
//
// Buffers are reached by device address (VK_KHR_buffer_device_address, core in 1.2): every
// shader gets its tensors' 64-bit addresses in push constants, so there are no descriptor sets,
// pools or layouts to create, ever, and no 128 MiB storage-buffer range limit (lavapipe's).
// Pipelines are created once per (shader, specialization constant) at first use, from SPIR-V
// embedded in the binary.
//
// Command buffers. Writes, reads and ops outside a step are recorded into an open command
// buffer (uploads go through host-visible staging memory) that is submitted when the host
// needs a result (`read`, `synchronize`) or the staging memory fills. A step (begin_step /
// end_step) is recorded into a command buffer of its own, kept by its key: the second time a
// key comes, its ops are only fingerprinted (kernels/step_fingerprint.h) and the recording is
// submitted again — one vkQueueSubmit per step, holding the step's input uploads too. A step
// whose fingerprint differs from its recording runs its kept ops into a new recording.
//
// Barriers. Each command buffer starts with one full memory barrier (ordering it after earlier
// submissions); inside it a barrier is recorded only where a dispatch or copy touches memory an
// earlier one since the last barrier wrote (or writes memory one read): the byte ranges each
// records are tracked.
#include "kernels/vulkan/vulkan.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>

#include "core/error.h"
#include "kernels/attention_splits.h"
#include "kernels/device_checks.h"
#include "kernels/step_fingerprint.h"
#include "kernels/vulkan/context.h"
#include "kernels/vulkan/spirv.h"

namespace hearth::kernels {
namespace {

using vulkan::check;
using vulkan::Context;

// ---- memory ------------------------------------------------------------------------------

struct Block {
  VkBuffer buffer = VK_NULL_HANDLE;
  VkDeviceMemory memory = VK_NULL_HANDLE;
  uint64_t address = 0;    // of the block's first byte
  void* mapped = nullptr;  // host-visible blocks only: the block's first byte
  size_t size = 0;
  size_t offset = 0;       // bytes into `buffer` (a slab's range); 0 for a block of its own
  int slab = -1;           // the slab it was cut from, -1: a block of its own
};

// Device-local (or host-visible, for staging) memory. Blocks up to kSlabBytes / 4 are cut from
// 64 MiB slabs (one VkBuffer + VkDeviceMemory each, first fit, neighbours merged when given
// back), so a model's few hundred tensors cost a handful of allocations (drivers bound the count,
// 4096 on many); larger blocks get an allocation of their own, cached by size when freed and
// handed out again. Never an allocation per token.
class Pool {
 public:
  static constexpr size_t kSlabBytes = size_t{64} << 20;
  static constexpr size_t kAlign = 256;

  Pool(std::shared_ptr<Context> ctx, bool host_visible) : ctx_(std::move(ctx)), host_visible_(host_visible) {}
  ~Pool() {
    for (auto& [size, b] : free_) destroy(b);
    for (Slab& s : slabs_) destroy(s.whole);
  }

  Block take(size_t bytes) {
    const size_t aligned = (std::max<size_t>(bytes, 4) + kAlign - 1) / kAlign * kAlign;
    if (aligned <= kSlabBytes / 4) return cut(aligned);
    const size_t size = (bytes + (size_t{2} << 20) - 1) / (size_t{2} << 20) * (size_t{2} << 20);
    {
      std::lock_guard lock(mu_);
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= 2 * size) {
        Block b = it->second;
        free_.erase(it);
        return b;
      }
    }
    try {
      return create(size);
    } catch (const Error&) {
      release_cached();
      return create(size);
    }
  }

  void give_back(const Block& b) noexcept {
    std::lock_guard lock(mu_);
    if (b.slab < 0) {
      free_.emplace(b.size, b);
      return;
    }
    std::map<size_t, size_t>& f = slabs_[static_cast<size_t>(b.slab)].free;
    size_t at = b.offset, size = b.size;
    auto next = f.lower_bound(at);
    if (next != f.end() && at + size == next->first) {  // merge with the range after
      size += next->second;
      next = f.erase(next);
    }
    if (next != f.begin()) {  // and with the one before
      auto prev = std::prev(next);
      if (prev->first + prev->second == at) {
        prev->second += size;
        return;
      }
    }
    f.emplace(at, size);
  }

  // Frees what is cached: blocks of their own, and slabs with nothing cut from them.
  void release_cached() noexcept {
    std::lock_guard lock(mu_);
    for (auto& [size, b] : free_) destroy(b);
    free_.clear();
    for (Slab& s : slabs_) {
      if (s.whole.buffer != VK_NULL_HANDLE && s.free.size() == 1 && s.free.begin()->second == kSlabBytes) {
        destroy(s.whole);
        s.whole = Block{};
        s.free.clear();
      }
    }
  }

  // VkDeviceMemory allocations made so far (slabs and blocks of their own; for tests).
  uint64_t allocations() const { return allocations_; }

 private:
  struct Slab {
    Block whole;                     // VK_NULL_HANDLE buffer: released (its index is reused)
    std::map<size_t, size_t> free;  // offset -> bytes
  };

  Block cut(size_t size) {
    std::lock_guard lock(mu_);
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t i = 0; i < slabs_.size(); ++i) {
        Slab& s = slabs_[i];
        for (auto it = s.free.begin(); it != s.free.end(); ++it) {
          if (it->second < size) continue;
          const size_t at = it->first, left = it->second - size;
          s.free.erase(it);
          if (left > 0) s.free.emplace(at + size, left);
          Block b = s.whole;
          b.address += at;
          if (b.mapped != nullptr) b.mapped = static_cast<uint8_t*>(b.mapped) + at;
          b.size = size;
          b.offset = at;
          b.slab = static_cast<int>(i);
          return b;
        }
      }
      if (pass == 1) break;
      // No room: a new slab (in a released one's place when there is one).
      Block whole;
      try {
        whole = create(kSlabBytes);
      } catch (const Error&) {
        for (auto& [bytes, b] : free_) destroy(b);
        free_.clear();
        whole = create(kSlabBytes);
      }
      auto released = std::find_if(slabs_.begin(), slabs_.end(), [](const Slab& s) { return s.whole.buffer == VK_NULL_HANDLE; });
      if (released == slabs_.end()) released = slabs_.insert(slabs_.end(), Slab{});
      released->whole = whole;
      released->free = {{0, kSlabBytes}};
    }
    HEARTH_CHECK(false, "a new {}-byte slab has no room for {} bytes", kSlabBytes, size);
    return {};
  }

  Block create(size_t size) {
    Block b;
    b.size = size;
    ++allocations_;
    VkBufferCreateInfo bi{};
    bi.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO;
    bi.size = size;
    bi.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT |
               VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT;
    bi.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
    check(vkCreateBuffer(ctx_->device, &bi, nullptr, &b.buffer), "vkCreateBuffer");
    VkMemoryRequirements req{};
    vkGetBufferMemoryRequirements(ctx_->device, b.buffer, &req);
    VkMemoryAllocateFlagsInfo flags{};
    flags.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO;
    flags.flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT;
    VkMemoryAllocateInfo ai{};
    ai.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO;
    ai.pNext = &flags;
    ai.allocationSize = req.size;
    try {
      ai.memoryTypeIndex =
          host_visible_
              ? ctx_->memory_type(req.memoryTypeBits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                                  VK_MEMORY_PROPERTY_HOST_CACHED_BIT)
              : ctx_->memory_type(req.memoryTypeBits, 0, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
      const VkResult r = vkAllocateMemory(ctx_->device, &ai, nullptr, &b.memory);
      if (r != VK_SUCCESS) {
        throw Error(fmt::format("vulkan:{}: cannot allocate {} MiB of {} memory: {}", ctx_->info.index, size >> 20,
                                host_visible_ ? "host-visible" : "device", vulkan::result_name(r)));
      }
      check(vkBindBufferMemory(ctx_->device, b.buffer, b.memory, 0), "vkBindBufferMemory");
      if (host_visible_) check(vkMapMemory(ctx_->device, b.memory, 0, VK_WHOLE_SIZE, 0, &b.mapped), "vkMapMemory");
    } catch (...) {
      destroy(b);
      throw;
    }
    VkBufferDeviceAddressInfo addr{};
    addr.sType = VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO;
    addr.buffer = b.buffer;
    b.address = vkGetBufferDeviceAddress(ctx_->device, &addr);
    return b;
  }

  void destroy(const Block& b) noexcept {
    if (b.buffer != VK_NULL_HANDLE) vkDestroyBuffer(ctx_->device, b.buffer, nullptr);
    if (b.memory != VK_NULL_HANDLE) vkFreeMemory(ctx_->device, b.memory, nullptr);
  }

  std::shared_ptr<Context> ctx_;
  bool host_visible_;
  std::mutex mu_;
  std::multimap<size_t, Block> free_;
  std::vector<Slab> slabs_;
  uint64_t allocations_ = 0;
};

class VkBufferObj final : public Buffer {
 public:
  VkBufferObj(std::shared_ptr<Pool> pool, size_t bytes) : Buffer("vulkan", bytes, false), pool_(std::move(pool)) {
    block_ = pool_->take(bytes);
  }
  ~VkBufferObj() override { pool_->give_back(block_); }
  const Block& block() const { return block_; }

 private:
  std::shared_ptr<Pool> pool_;
  Block block_;
};

const Block& block_of(const Tensor& t) {
  HEARTH_CHECK(!t.empty(), "an empty tensor where the op needs one");
  HEARTH_CHECK(t.buffer->kind() == "vulkan", "a {} buffer given to the Vulkan backend", t.buffer->kind());
  return static_cast<const VkBufferObj&>(*t.buffer).block();
}
uint64_t addr(const Tensor& t) { return t.empty() ? 0 : block_of(t).address + t.offset; }
uint64_t f32_addr(const Tensor& t) {
  HEARTH_CHECK(t.type == DType::F32, "f32 tensor expected, got {}", dtype_name(t.type));
  HEARTH_CHECK(t.offset % 4 == 0, "f32 tensor at a byte offset {} that is not a multiple of 4", t.offset);
  return addr(t);
}
uint64_t i32_addr(const Tensor& t) {
  HEARTH_CHECK(t.type == DType::I32, "i32 tensor expected, got {}", dtype_name(t.type));
  return addr(t);
}

struct Range {
  uint64_t lo, hi;
  bool overlaps(const Range& o) const { return lo < o.hi && o.lo < hi; }
};
Range range_of(const Tensor& t) {
  const uint64_t a = addr(t);
  return {a, a + static_cast<uint64_t>(t.buffer->size() - t.offset)};
}

// How matmul rounds activations for a weight type, as the CPU backend's dot products take them
// (quantize_x.comp's MODE): q8_0 / q8_1 blocks, q8_K blocks, f16, bf16; -1: f32 as they are.
int activation_mode(DType w) {
  switch (w) {
    case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::Q8_0: return 0;
    case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: return 1;
    case DType::F16: return 2;
    case DType::BF16: return 3;
    default: return -1;
  }
}

// ---- push constants (the layouts of the shaders' `P` blocks) -------------------------------

struct MatmulPc { uint64_t w, x, y, row_bytes; uint32_t m, k, n; };
struct GetRowsPc { uint64_t table, ids, out, row_bytes; uint32_t d; };
struct NormPc { uint64_t x, weight, y; uint32_t rows, d; float eps; };
struct EltPc { uint64_t a, b, y; uint32_t n, d; float s; };
struct RopePc { uint64_t x, positions, factors; uint32_t n_heads, head_dim, n_rot, neox; float theta_scale, freq_scale; };
struct KvPc { uint64_t k_cache, v_cache, k, v, slots; uint32_t kv_dim, n_ctx; };
struct AttnPc {
  uint64_t q, k_cache, v_cache, slots, stats, partial;
  uint32_t n_head, n_head_kv, head_dim, kv_dim, n_ctx, splits, window;
  float scale, softcap;
};
struct MergePc { uint64_t partial, out; uint32_t pairs, splits, head_dim; };

enum EltOp : uint32_t { kAdd = 0, kBias = 1, kScale = 2, kSoftcap = 3, kSilu = 4, kGelu = 5 };

constexpr uint32_t kMaxGroups = 65535;

// Weight rows per workgroup of matvec1 (one token) and matvec8 (up to 8): matvec.glsl's ROWS.
int64_t matvec_rows(int64_t n) { return n == 1 ? 8 : 4; }

class VulkanBackend final : public Backend {
 public:
  VulkanBackend(int index, const VulkanOptions& options)
      : ctx_(Context::shared(index)),
        pool_(std::make_shared<Pool>(ctx_, false)),
        staging_pool_(std::make_shared<Pool>(ctx_, true)) {
    software_ = ctx_->properties.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
    if (software_) split_target_ = 8;
    integer_dot_ = ctx_->integer_dot && options.integer_dot == VulkanOptions::IntegerDot::Auto;
    rope_f64_ = ctx_->float64 && options.float64 == VulkanOptions::Float64::Auto;
    chunked_prefill_ = options.prefill == VulkanOptions::Prefill::Auto ? software_
                                                                       : options.prefill == VulkanOptions::Prefill::Chunked;
    VkPushConstantRange pc{VK_SHADER_STAGE_COMPUTE_BIT, 0, 128};
    VkPipelineLayoutCreateInfo li{};
    li.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO;
    li.pushConstantRangeCount = 1;
    li.pPushConstantRanges = &pc;
    check(vkCreatePipelineLayout(ctx_->device, &li, nullptr, &layout_), "vkCreatePipelineLayout");
    for (const vulkan::SpirvModule& m : vulkan::spirv_modules()) {
      if (m.name == "rope_f64" && !rope_f64_) continue;  // needs shaderFloat64
      VkShaderModuleCreateInfo si{};
      si.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO;
      si.codeSize = m.words.size() * 4;
      si.pCode = m.words.data();
      VkShaderModule sm = VK_NULL_HANDLE;
      check(vkCreateShaderModule(ctx_->device, &si, nullptr, &sm), "vkCreateShaderModule");
      modules_.emplace(std::string(m.name), sm);
    }
    VkCommandPoolCreateInfo ci{};
    ci.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO;
    ci.queueFamilyIndex = ctx_->queue_family;
    check(vkCreateCommandPool(ctx_->device, &ci, nullptr, &transient_pool_), "vkCreateCommandPool");
    ci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    check(vkCreateCommandPool(ctx_->device, &ci, nullptr, &step_pool_), "vkCreateCommandPool");
    VkFenceCreateInfo fi{};
    fi.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO;
    check(vkCreateFence(ctx_->device, &fi, nullptr, &fence_), "vkCreateFence");
  }

  ~VulkanBackend() override {
    try {
      synchronize();
    } catch (const Error&) {
    }
    scratch_.reset();
    steps_.clear();
    for (Block& b : staging_) staging_pool_->give_back(b);
    staging_.clear();
    vkDestroyFence(ctx_->device, fence_, nullptr);
    vkDestroyCommandPool(ctx_->device, transient_pool_, nullptr);
    vkDestroyCommandPool(ctx_->device, step_pool_, nullptr);
    for (auto& [key, p] : pipelines_) vkDestroyPipeline(ctx_->device, p, nullptr);
    for (auto& [name, m] : modules_) vkDestroyShaderModule(ctx_->device, m, nullptr);
    vkDestroyPipelineLayout(ctx_->device, layout_, nullptr);
  }

  std::string name() const override { return fmt::format("vulkan:{}", ctx_->info.index); }
  DeviceInfo device() const override { return ctx_->info; }

  bool supports(Op op, DType type) const override { return device_checks::supports(op, type); }
  bool supports_kv_type(DType type, int64_t head_dim) const override {
    return device_checks::supports_kv(type, head_dim, 256);  // the shaders' query buffer (attention.glsl)
  }

  std::shared_ptr<Buffer> new_buffer(size_t bytes) override { return std::make_shared<VkBufferObj>(pool_, bytes); }

  Tensor weight(DType type, std::array<int64_t, 4> ne, const void* host, std::shared_ptr<const void>) override {
    Tensor t = new_tensor(type, ne);
    write(t, host, t.n_bytes());
    return t;
  }

  void write(const Tensor& dst, const void* host, size_t bytes, size_t dst_offset = 0) override {
    device_checks::check_write(dst, bytes, dst_offset, in_step_);
    const Block& b = block_of(dst);
    const auto* src = static_cast<const uint8_t*>(host);
    size_t done = 0;
    while (done < bytes) {
      const size_t n = std::min(bytes - done, kStagingChunk);
      auto [sb, at] = stage(n);
      std::memcpy(static_cast<uint8_t*>(sb.mapped) + at, src + done, n);
      const VkDeviceSize to = dst.offset + dst_offset + done;
      const Range r{b.address + to, b.address + to + n};
      VkCommandBuffer cb = open();
      hazard(cb, {}, {r});
      VkBufferCopy copy{sb.offset + at, b.offset + to, n};
      vkCmdCopyBuffer(cb, sb.buffer, b.buffer, 1, &copy);
      done += n;
    }
  }

  void read(const Tensor& src, void* host, size_t bytes) override {
    device_checks::check_read(src, bytes, in_step_);
    const Block& b = block_of(src);
    auto* out = static_cast<uint8_t*>(host);
    size_t done = 0;
    while (done < bytes) {
      const size_t n = std::min(bytes - done, kStagingChunk);
      auto [sb, at] = stage(n);
      VkCommandBuffer cb = open();
      const Range r{b.address + src.offset + done, b.address + src.offset + done + n};
      hazard(cb, {r}, {});
      VkBufferCopy copy{b.offset + src.offset + done, sb.offset + at, n};
      vkCmdCopyBuffer(cb, b.buffer, sb.buffer, 1, &copy);
      synchronize();
      std::memcpy(out + done, static_cast<const uint8_t*>(sb.mapped) + at, n);
      done += n;
    }
  }

  // Submits everything queued (inputs' uploads, recorded steps, read-backs: one vkQueueSubmit)
  // and waits for it.
  void synchronize() override {
    close_open();
    if (!queued_.empty()) submit();
    wait();
  }

  // ---- steps ----

  void begin_step(uint64_t key) override {
    HEARTH_CHECK(!in_step_, "begin_step inside a step");
    in_step_ = true;
    key_ = key;
    print_ = StepFingerprint{};
    pending_.clear();
    const auto it = steps_.find(key);
    if (it != steps_.end()) {
      mode_ = Mode::Replay;
    } else {
      start_recording();
    }
  }

  void end_step() override {
    HEARTH_CHECK(in_step_, "end_step without begin_step");
    if (mode_ == Mode::Replay) {
      const auto it = steps_.find(key_);
      if (it != steps_.end() && it->second.print == print_.h) {
        in_step_ = false;
        ++replays_;
        enqueue_step(it->second.cb);
        pending_.clear();
        return;
      }
      if (it != steps_.end()) {
        flush_step(it->second.cb);  // its command buffer may be queued or in flight
        steps_.erase(it);
      }
      start_recording();
      for (auto& op : pending_) op();
    }
    in_step_ = false;
    check(vkEndCommandBuffer(step_cb_), "vkEndCommandBuffer");
    if (steps_.size() >= kMaxSteps) {
      synchronize();
      steps_.clear();
    }
    Recorded& r = steps_[key_];
    r.cb = step_cb_;
    r.print = print_.h;
    r.pool = step_pool_;
    r.device = ctx_->device;
    step_cb_ = VK_NULL_HANDLE;
    pending_.clear();
    enqueue_step(r.cb);
  }

  uint64_t step_replays() const override { return replays_; }
  VulkanCounters counters() const {
    VulkanCounters c = counters_;
    c.memory_allocations = pool_->allocations() + staging_pool_->allocations();
    return c;
  }

  // ---- ops ----

  void get_rows(const Tensor& table, const Tensor& ids, const Tensor& out) override {
    const int64_t d = table.ne[0], n = device_checks::check_get_rows(table, ids, out);
    const bool plain = dtype_block_size(table.type) == 1;
    const GetRowsPc pc{addr(table), i32_addr(ids), f32_addr(out), table.row_bytes(), u32(d)};
    const uint32_t chunks = u32(plain ? d : d / 8);
    op("get_rows", {&table, &ids, &out}, [=, this](VkCommandBuffer cb) {
      dispatch(cb, "get_rows", static_cast<uint32_t>(table.type), &pc, sizeof(pc), {(chunks + 63) / 64, u32(n), 1},
               {range_of(table), range_of(ids)}, {range_of(out)});
    });
  }

  void matmul(const Tensor& w, const Tensor& x, const Tensor& y) override {
    const auto [m, k, n] = device_checks::check_matmul(w, x, y);
    // The activations are first rounded as the CPU backend rounds them for this weight type
    // (quantize_x.comp), into scratch; f32 weights take them as they are. The matrix-vector
    // kernels take quantized ones as 8-bit records (MODE 4 / 5: 40 bytes per 32 values) for
    // their integer dot products, the tiled kernel as floats.
    const bool tiled = n > 8 && !chunked_prefill_;
    int mode = activation_mode(w.type);
    if (!tiled && (mode == 0 || mode == 1)) mode += 4;
    const size_t xq_bytes = mode < 0 ? 0
                            : mode >= 4 ? static_cast<size_t>(n * k / 32) * 40
                                        : static_cast<size_t>(n * k) * sizeof(float);
    const size_t token_bytes = xq_bytes / static_cast<size_t>(n);
    ensure_scratch(xq_bytes);
    const uint64_t xq = mode < 0 ? f32_addr(x) : scratch_->block().address;
    const MatmulPc pc{addr(w), xq, f32_addr(y), w.row_bytes(), u32(m), u32(k), u32(n)};
    op("matmul", {&w, &x, &y}, [=, this](VkCommandBuffer cb) {
      const Range rx = mode < 0 ? range_of(x) : Range{xq, xq + xq_bytes};
      if (mode >= 0) {
        const uint32_t block = mode == 0 || mode == 4 ? 32 : mode == 1 || mode == 5 ? 256 : 1;
        const uint32_t count = u32(n * k / block);
        const struct { uint64_t x, out; uint32_t count; } qpc{f32_addr(x), xq, count};
        dispatch(cb, "quantize_x", static_cast<uint32_t>(mode), &qpc, sizeof(qpc), groups_1d((count + 63) / 64),
                 {range_of(x)}, {rx});
      }
      if (n <= 8) {
        dispatch(cb, matvec_shader(n), static_cast<uint32_t>(w.type), &pc, sizeof(pc),
                 groups_1d(u32((m + matvec_rows(n) - 1) / matvec_rows(n))), {range_of(w), rx}, {range_of(y)});
      } else if (chunked_prefill_) {
        // On a software device the tiled kernel's barriers cost more than reading the weights
        // once per 8 tokens: matrix-vector over chunks of 8 tokens (each token's sums are the
        // same as alone).
        for (int64_t t0 = 0; t0 < n; t0 += 8) {
          MatmulPc c = pc;
          c.x = xq + static_cast<uint64_t>(t0) * (mode < 0 ? static_cast<uint64_t>(k) * sizeof(float) : token_bytes);
          c.y = pc.y + static_cast<uint64_t>(t0 * m) * sizeof(float);
          c.n = u32(std::min<int64_t>(8, n - t0));
          dispatch(cb, matvec_shader(c.n), static_cast<uint32_t>(w.type), &c, sizeof(c),
                   groups_1d(u32((m + matvec_rows(c.n) - 1) / matvec_rows(c.n))), {range_of(w), rx}, {range_of(y)});
        }
      } else {
        dispatch(cb, "matmul", static_cast<uint32_t>(w.type), &pc, sizeof(pc), {u32((m + 63) / 64), u32((n + 63) / 64), 1},
                 {range_of(w), rx}, {range_of(y)});
      }
    });
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y) override {
    const int64_t d = x.ne[0], rows = device_checks::check_rms_norm(x, weight, y);
    const NormPc pc{f32_addr(x), weight.empty() ? 0 : f32_addr(weight), f32_addr(y), u32(rows), u32(d), eps};
    op("rms_norm", {&x, &weight, &y}, [=, this](VkCommandBuffer cb) {
      std::vector<Range> reads = {range_of(x)};
      if (!weight.empty()) reads.push_back(range_of(weight));
      dispatch(cb, "rms_norm", 0, &pc, sizeof(pc), groups_1d(u32(rows)), reads, {range_of(y)});
    }, {bits(eps)});
  }

  void add(const Tensor& a, const Tensor& b, const Tensor& y) override {
    const int64_t n = a.n_elements();
    HEARTH_CHECK(b.n_elements() == n && y.n_elements() == n, "add shapes");
    elementwise(kAdd, a, b, y, n, 1, 0.0f);
  }
  void add_bias(const Tensor& x, const Tensor& bias) override {
    HEARTH_CHECK(bias.n_elements() == x.ne[0], "add_bias shapes");
    elementwise(kBias, x, bias, x, x.n_elements(), x.ne[0], 0.0f);
  }
  void scale(const Tensor& x, float s) override { elementwise(kScale, x, Tensor{}, x, x.n_elements(), 1, s); }
  void softcap(const Tensor& x, float cap) override {
    HEARTH_CHECK(cap > 0.0f, "softcap {}", cap);
    elementwise(kSoftcap, x, Tensor{}, x, x.n_elements(), 1, cap);
  }
  void glu(const Tensor& gate, const Tensor& up, Activation act, const Tensor& y) override {
    const int64_t n = gate.n_elements();
    HEARTH_CHECK(up.n_elements() == n && y.n_elements() == n, "glu shapes");
    elementwise(act == Activation::GeluTanh ? kGelu : kSilu, gate, up, y, n, 1, 0.0f);
  }

  void rope(const Tensor& x, int n_heads, const Tensor& positions, const RopeParams& p) override {
    const auto [head_dim, n_tokens] = device_checks::check_rope(x, n_heads, positions, p, 256);
    const RopePc pc{f32_addr(x), i32_addr(positions), p.freq_factors.empty() ? 0 : f32_addr(p.freq_factors),
                    u32(n_heads), u32(head_dim), u32(p.n_rot), p.mode == RopeMode::Neox ? 1u : 0u,
                    device_checks::rope_theta_scale(p), p.freq_scale};
    const Tensor factors = p.freq_factors;
    op("rope", {&x, &positions, &factors}, [=, this](VkCommandBuffer cb) {
      std::vector<Range> reads = {range_of(x), range_of(positions)};
      if (!factors.empty()) reads.push_back(range_of(factors));
      // The angles in double where the device has it: the CPU's sinf / cosf to the bit
      // (kernels/vulkan/shaders/rope.glsl).
      dispatch(cb, rope_f64_ ? "rope_f64" : "rope", 0, &pc, sizeof(pc), groups_1d(u32(n_tokens)), reads,
               {range_of(x)});
    }, {bits(pc.theta_scale), bits(pc.freq_scale), pc.neox, pc.n_rot, pc.n_heads});
  }

  KvLayer new_kv_layer(DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim) override {
    KvLayer layer = device_checks::new_kv_layer(*this, type, n_seq, n_ctx, kv_dim);
    for (const Tensor* t : {&layer.k, &layer.v}) {
      VkCommandBuffer cb = open();
      hazard(cb, {}, {range_of(*t)});
      vkCmdFillBuffer(cb, block_of(*t).buffer, block_of(*t).offset + t->offset, (t->n_bytes() + 3) / 4 * 4, 0);
    }
    return layer;
  }

  void kv_store(const KvLayer& cache, const Tensor& k, const Tensor& v, const Tensor& slots) override {
    const int64_t n = device_checks::check_kv_store(cache, k, v, slots);
    const KvPc pc{addr(cache.k), addr(cache.v), f32_addr(k), f32_addr(v), i32_addr(slots), u32(cache.k.ne[0]), u32(cache.n_ctx)};
    const KvLayer c = cache;
    op("kv_store", {&cache.k, &cache.v, &k, &v, &slots}, [=, this](VkCommandBuffer cb) {
      dispatch(cb, "kv_store", static_cast<uint32_t>(c.k.type), &pc, sizeof(pc), {u32(n), 2, 1},
               {range_of(k), range_of(v), range_of(slots)}, {range_of(c.k), range_of(c.v)});
    });
  }

  void attention(const Tensor& q, const KvLayer& cache, const Tensor& slots, const AttentionParams& p,
                 const Tensor& out) override {
    const int64_t n = device_checks::check_attention(*this, q, cache, slots, p, out);
    const int splits = attention_splits_for(n, p.n_head, cache.n_ctx, split_target_);
    const size_t stats_bytes = static_cast<size_t>(n * p.n_head * splits) * 2 * sizeof(float);
    const size_t partial_bytes = static_cast<size_t>(n * p.n_head * splits * p.head_dim) * sizeof(float);
    ensure_scratch(stats_bytes + partial_bytes);
    const KvLayer c = cache;
    const uint64_t stats = scratch_->block().address, partial = stats + stats_bytes;
    op("attention", {&q, &cache.k, &cache.v, &slots, &out}, [=, this](VkCommandBuffer cb) {
      const AttnPc pc{f32_addr(q), addr(c.k), addr(c.v), i32_addr(slots), stats, partial,
                      u32(p.n_head), u32(p.n_head_kv), u32(p.head_dim), u32(c.k.ne[0]), u32(c.n_ctx), u32(splits),
                      u32(std::max(0, p.window)), p.scale, p.softcap};
      // attention.glsl's SPEC: the cache type, the head dimension above it.
      const uint32_t type = static_cast<uint32_t>(c.k.type) | u32(p.head_dim) << 8;
      const std::array<uint32_t, 3> grid = {u32(splits), u32(p.n_head), u32(n)};
      const Range rs{stats, stats + stats_bytes}, rp{partial, partial + partial_bytes};
      const std::vector<Range> cache_reads = {range_of(q), range_of(c.k), range_of(c.v), range_of(slots)};
      dispatch(cb, "attn_stats", type, &pc, sizeof(pc), grid, cache_reads, {rs});
      std::vector<Range> reads = cache_reads;
      reads.push_back(rs);
      dispatch(cb, "attn_values", type, &pc, sizeof(pc), grid, reads, {rp});
      const MergePc mpc{partial, f32_addr(out), u32(n * p.n_head), u32(splits), u32(p.head_dim)};
      dispatch(cb, "attn_merge", 0, &mpc, sizeof(mpc), groups_1d(u32(n * p.n_head)), {rp}, {range_of(out)});
    }, {bits(p.scale), bits(p.softcap), static_cast<uint64_t>(p.window), u32(p.n_head), u32(p.n_head_kv), u32(p.head_dim)});
  }

 private:
  enum class Mode { Outside, Record, Replay };
  struct Recorded {
    VkCommandBuffer cb = VK_NULL_HANDLE;
    uint64_t print = 0;
    VkCommandPool pool = VK_NULL_HANDLE;
    VkDevice device = VK_NULL_HANDLE;
    Recorded() = default;
    Recorded(const Recorded&) = delete;
    Recorded& operator=(const Recorded&) = delete;
    ~Recorded() {
      if (cb != VK_NULL_HANDLE) vkFreeCommandBuffers(device, pool, 1, &cb);
    }
  };
  static constexpr size_t kMaxSteps = 64;
  static constexpr size_t kStagingChunk = size_t{64} << 20;

  static uint32_t u32(int64_t v) {
    HEARTH_CHECK(v >= 0 && v <= int64_t{UINT32_MAX}, "size {} does not fit the shaders' 32-bit counts", v);
    return static_cast<uint32_t>(v);
  }
  static uint64_t bits(float f) { return std::bit_cast<uint32_t>(f); }
  static std::array<uint32_t, 3> groups_1d(uint32_t count) {
    return {std::min(count, kMaxGroups), (count + kMaxGroups - 1) / kMaxGroups, 1};
  }

  void elementwise(EltOp o, const Tensor& a, const Tensor& b, const Tensor& y, int64_t n, int64_t d, float s) {
    const EltPc pc{f32_addr(a), b.empty() ? 0 : f32_addr(b), f32_addr(y), u32(n), u32(d), s};
    op("elementwise", {&a, &b, &y}, [=, this](VkCommandBuffer cb) {
      std::vector<Range> reads = {range_of(a)};
      if (!b.empty()) reads.push_back(range_of(b));
      dispatch(cb, "elementwise", o, &pc, sizeof(pc), groups_1d((u32(n) + 255) / 256), reads, {range_of(y)});
    }, {o, bits(s), u32(d)});
  }

  // Records an op now (outside a step, or into a step's recording), or keeps it while a
  // recorded step may be replayed. `scalars` join the fingerprint.
  void op(const char* name, std::initializer_list<const Tensor*> tensors, std::function<void(VkCommandBuffer)> record,
          std::initializer_list<uint64_t> scalars = {}) {
    if (in_step_) {
      StepFingerprint f;
      f.mix(std::hash<std::string_view>{}(name));
      for (const Tensor* t : tensors) f.mix(addr(*t), *t);
      for (uint64_t v : scalars) f.mix(v);
      print_.mix(f.h);
      if (mode_ == Mode::Replay) {
        pending_.push_back([this, record = std::move(record)] { record(step_cb_); });
        return;
      }
      record(step_cb_);
      return;
    }
    record(open());
  }

  void start_recording() {
    mode_ = Mode::Record;
    step_cb_ = begin_new(step_pool_);
  }

  // A new primary command buffer from `pool`, begun (with its opening barrier).
  VkCommandBuffer begin_new(VkCommandPool pool) {
    VkCommandBufferAllocateInfo ai{};
    ai.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO;
    ai.commandPool = pool;
    ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ai.commandBufferCount = 1;
    VkCommandBuffer cb = VK_NULL_HANDLE;
    check(vkAllocateCommandBuffers(ctx_->device, &ai, &cb), "vkAllocateCommandBuffers");
    VkCommandBufferBeginInfo bi{};
    bi.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
    check(vkBeginCommandBuffer(cb, &bi), "vkBeginCommandBuffer");
    full_barrier(cb);
    return cb;
  }

  // A step's command buffer joins the queue after the work recorded before it; it is submitted
  // with whatever follows (typically the read-back of its output) at the next synchronize.
  void enqueue_step(VkCommandBuffer cb) {
    flush_step(cb);  // the same recording queued twice would be submitted while pending
    close_open();
    queued_.push_back(cb);
  }
  void flush_step(VkCommandBuffer cb) {
    if (std::find(queued_.begin(), queued_.end(), cb) != queued_.end()) synchronize();
    wait();
  }

  void close_open() {
    if (open_ == VK_NULL_HANDLE) return;
    check(vkEndCommandBuffer(open_), "vkEndCommandBuffer");
    track_.erase(open_);
    queued_.push_back(open_);
    open_ = VK_NULL_HANDLE;
  }

  // The command buffer for work outside steps, begun on first use after a submission.
  VkCommandBuffer open() {
    if (open_ == VK_NULL_HANDLE) {
      wait();  // a finished batch's transient buffers and staging are reused from here on
      open_ = begin_new(transient_pool_);
    }
    return open_;
  }

  void full_barrier(VkCommandBuffer cb) {
    VkMemoryBarrier mb{};
    mb.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
    mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_HOST_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                       VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_HOST_READ_BIT;
    vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, 0, 1, &mb, 0, nullptr,
                         0, nullptr);
    ++counters_.barriers;
    Track& t = track_[cb];
    t.written.clear();
    t.read.clear();
  }

  // A barrier before a command that reads what an earlier one since the last barrier wrote, or
  // writes what one read or wrote.
  void hazard(VkCommandBuffer cb, const std::vector<Range>& reads, const std::vector<Range>& writes) {
    Track& t = track_[cb];
    bool need = false;
    for (const Range& r : reads) {
      for (const Range& w : t.written) need = need || r.overlaps(w);
    }
    for (const Range& w : writes) {
      for (const Range& o : t.written) need = need || w.overlaps(o);
      for (const Range& o : t.read) need = need || w.overlaps(o);
    }
    if (need) full_barrier(cb);
    Track& u = track_[cb];
    u.read.insert(u.read.end(), reads.begin(), reads.end());
    u.written.insert(u.written.end(), writes.begin(), writes.end());
  }

  // The matrix-vector shader for n <= 8 tokens.
  std::string matvec_shader(int64_t n) const {
    return std::string(n == 1 ? "matvec1" : "matvec8") + (integer_dot_ ? "_dot" : "");
  }

  VkPipeline pipeline(const std::string& shader, uint32_t spec) {
    const auto key = std::make_pair(shader, spec);
    if (auto it = pipelines_.find(key); it != pipelines_.end()) return it->second;
    const auto m = modules_.find(shader);
    HEARTH_CHECK(m != modules_.end(), "no shader {}", shader);
    // Constant 0: the shader's own (a type, a mode); constant 1: the subgroup size, which the
    // matrix-vector shaders take as their workgroup width (others have no constant 1).
    const uint32_t values[2] = {spec, ctx_->subgroup_size};
    const VkSpecializationMapEntry entries[2] = {{0, 0, sizeof(uint32_t)}, {1, sizeof(uint32_t), sizeof(uint32_t)}};
    VkSpecializationInfo si{2, entries, sizeof(values), values};
    VkComputePipelineCreateInfo ci{};
    ci.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO;
    ci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
    ci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    ci.stage.module = m->second;
    ci.stage.pName = "main";
    ci.stage.pSpecializationInfo = &si;
    ci.layout = layout_;
    VkPipeline p = VK_NULL_HANDLE;
    check(vkCreateComputePipelines(ctx_->device, VK_NULL_HANDLE, 1, &ci, nullptr, &p), "vkCreateComputePipelines");
    ++counters_.pipelines_created;
    pipelines_.emplace(key, p);
    return p;
  }

  void dispatch(VkCommandBuffer cb, const std::string& shader, uint32_t spec, const void* pc, size_t pc_bytes,
                std::array<uint32_t, 3> groups, const std::vector<Range>& reads, const std::vector<Range>& writes) {
    HEARTH_CHECK(pc_bytes <= 128, "push constants of {} bytes", pc_bytes);
    if (groups[0] == 0 || groups[1] == 0 || groups[2] == 0) return;
    hazard(cb, reads, writes);
    vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline(shader, spec));
    vkCmdPushConstants(cb, layout_, VK_SHADER_STAGE_COMPUTE_BIT, 0, static_cast<uint32_t>(pc_bytes), pc);
    vkCmdDispatch(cb, groups[0], groups[1], groups[2]);
    ++counters_.dispatches;
  }

  // Staging space for `bytes` in this batch (freed when the batch completes); submits the batch
  // first when the staging memory in use would pass its bound.
  std::pair<Block, size_t> stage(size_t bytes) {
    if (staging_used_ + bytes > kStagingChunk * 2 && (open_ != VK_NULL_HANDLE || !queued_.empty())) synchronize();
    open();
    if (staging_.empty() || staging_at_ + bytes > staging_.back().size) {
      staging_.push_back(staging_pool_->take(std::max(bytes, size_t{4} << 20)));
      staging_at_ = 0;
    }
    const size_t at = staging_at_;
    staging_at_ += (bytes + 255) / 256 * 256;
    staging_used_ += bytes;
    return {staging_.back(), at};
  }

  void submit() {
    wait();
    std::vector<VkCommandBuffer> cbs = std::move(queued_);
    queued_.clear();
    if (cbs.empty()) return;
    VkSubmitInfo si{};
    si.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO;
    si.commandBufferCount = static_cast<uint32_t>(cbs.size());
    si.pCommandBuffers = cbs.data();
    VkResult r;
    {
      std::lock_guard lock(ctx_->queue_mutex);
      r = vkQueueSubmit(ctx_->queue, 1, &si, fence_);
    }
    if (r == VK_ERROR_DEVICE_LOST) ctx_->lost = true;
    if (r != VK_SUCCESS) {
      failed_ = fmt::format("vkQueueSubmit: {}", vulkan::result_name(r));
      throw Error(fmt::format("vulkan:{}: {}", ctx_->info.index, failed_));
    }
    ++counters_.submissions;
    in_flight_ = true;
  }

  // Waits for the batch in flight, then frees its transient command buffers and staging space.
  void wait() {
    if (!failed_.empty()) throw Error(fmt::format("vulkan:{}: the device failed earlier: {}", ctx_->info.index, failed_));
    if (in_flight_) {
      const VkResult r = vkWaitForFences(ctx_->device, 1, &fence_, VK_TRUE, UINT64_MAX);
      in_flight_ = false;
      if (r == VK_ERROR_DEVICE_LOST) ctx_->lost = true;
      if (r != VK_SUCCESS) {
        failed_ = fmt::format("waiting for the GPU: {}", vulkan::result_name(r));
        throw Error(fmt::format("vulkan:{}: {}", ctx_->info.index, failed_));
      }
      check(vkResetFences(ctx_->device, 1, &fence_), "vkResetFences");
    }
    if (open_ == VK_NULL_HANDLE && queued_.empty()) {
      check(vkResetCommandPool(ctx_->device, transient_pool_, 0), "vkResetCommandPool");
      for (size_t i = 0; i + 1 < staging_.size(); ++i) staging_pool_->give_back(staging_[i]);
      if (staging_.size() > 1) staging_.erase(staging_.begin(), staging_.end() - 1);
      staging_at_ = 0;
      staging_used_ = 0;
    }
  }

  // Scratch memory for attention (split statistics and partial outputs), sized when an op is
  // enqueued. A smaller one it replaces stays alive with the backend, so recordings that point
  // at it stay valid (scratch grows by doubling: little is kept).
  void ensure_scratch(size_t bytes) {
    if (scratch_ && scratch_->size() >= bytes) return;
    if (scratch_) retired_scratch_.push_back(scratch_);
    scratch_ = std::make_shared<VkBufferObj>(pool_, std::max(bytes, scratch_ ? 2 * scratch_->size() : bytes));
  }

  struct Track {
    std::vector<Range> written, read;
  };

  std::shared_ptr<Context> ctx_;
  // Attention splits aim at this many workgroups in all: a GPU's worth, or a few per thread on a
  // CPU device (lavapipe), where each extra workgroup only adds overhead.
  int split_target_ = 256;
  bool software_ = false;  // a CPU implementation (lavapipe): prefers few barriers to tiles
  bool chunked_prefill_ = false;
  bool integer_dot_ = false;  // matvec*_dot: the device's packed 8-bit dot product instruction
  bool rope_f64_ = false;     // rope_f64: RoPE's angles in double
  std::shared_ptr<Pool> pool_, staging_pool_;
  VkPipelineLayout layout_ = VK_NULL_HANDLE;
  std::unordered_map<std::string, VkShaderModule> modules_;
  std::map<std::pair<std::string, uint32_t>, VkPipeline> pipelines_;
  VkCommandPool transient_pool_ = VK_NULL_HANDLE, step_pool_ = VK_NULL_HANDLE;
  VkFence fence_ = VK_NULL_HANDLE;
  VkCommandBuffer open_ = VK_NULL_HANDLE, step_cb_ = VK_NULL_HANDLE;
  std::vector<VkCommandBuffer> queued_;  // recorded, in order, not yet submitted
  std::unordered_map<VkCommandBuffer, Track> track_;
  std::vector<Block> staging_;
  size_t staging_at_ = 0, staging_used_ = 0;
  std::shared_ptr<VkBufferObj> scratch_;
  std::vector<std::shared_ptr<VkBufferObj>> retired_scratch_;
  std::unordered_map<uint64_t, Recorded> steps_;
  bool in_step_ = false, in_flight_ = false;
  Mode mode_ = Mode::Outside;
  uint64_t key_ = 0, replays_ = 0;
  StepFingerprint print_;
  std::vector<std::function<void()>> pending_;
  std::string failed_;
  VulkanCounters counters_;
};

}  // namespace

VulkanDevices vulkan_devices() {
  vulkan::DeviceList list = vulkan::list_devices();
  VulkanDevices out;
  out.note = std::move(list.note);
  for (DeviceInfo& d : list.devices) out.devices.push_back(std::move(d));
  return out;
}

std::unique_ptr<Backend> make_vulkan_backend(int index, const VulkanOptions& options) {
  return std::make_unique<VulkanBackend>(index, options);
}

VulkanCounters vulkan_counters(const Backend& backend) {
  const auto* b = dynamic_cast<const VulkanBackend*>(&backend);
  return b != nullptr ? b->counters() : VulkanCounters{};
}

}  // namespace hearth::kernels
