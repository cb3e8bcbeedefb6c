// The CPU backend: host memory, weights used in place from the memory-mapped file (or repacked
// at load, rows interleaved by 16, where the CPU level has packed matmul kernels:
// kernels/cpu/packed.h), ops split across a thread pool by rows. Other matmuls run the best
// dot-product kernels for the CPU level (kernels/cpu/dot.h: AVX2 / AVX-512 where available,
// else the scalar references); attention, kv_store, RMSNorm and the GLU run
// kernels/cpu/ops_simd.h's kernels for the level; the rest are the scalar references for now.
#pragma once

#include <memory>

#include "core/thread_pool.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/backend.h"

namespace hearth::kernels {

class CpuBackend final : public Backend {
 public:
  // `level`: the SIMD level of the kernels, cpu_level() by default (throws hearth::Error when
  // HEARTH_CPU_LEVEL asks for a level this CPU lacks); must satisfy cpu_level_supported().
  // `pack_weights`: repack weights for the packed matmul where the level has its kernels
  // (kernels/cpu/packed.h); false keeps every weight in its native rows (tests and the kernel
  // lab compare the two paths).
  explicit CpuBackend(int n_threads);
  CpuBackend(int n_threads, CpuLevel level, bool pack_weights = true);

  std::string name() const override;
  DeviceInfo device() const override;
  bool supports(Op op, DType type) const override;
  bool supports_kv_type(DType type, int64_t head_dim) const override;  // F16, F32; Q8_0 for head_dim % 32 == 0

  std::shared_ptr<Buffer> new_buffer(size_t bytes) override;
  Tensor weight(DType type, std::array<int64_t, 4> ne, const void* host, std::shared_ptr<const void> keep_alive) override;
  void write(const Tensor& dst, const void* host, size_t bytes, size_t dst_offset = 0) override;
  void read(const Tensor& src, void* host, size_t bytes) override;

  void get_rows(const Tensor& table, const Tensor& ids, const Tensor& out) override;
  void matmul(const Tensor& w, const Tensor& x, const Tensor& y) override;
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y) override;
  void add(const Tensor& a, const Tensor& b, const Tensor& y) override;
  void add_bias(const Tensor& x, const Tensor& bias) override;
  void scale(const Tensor& x, float s) override;
  void softcap(const Tensor& x, float cap) override;
  void rope(const Tensor& x, int n_heads, const Tensor& positions, const RopeParams& params) override;
  void glu(const Tensor& gate, const Tensor& up, Activation act, const Tensor& y) override;

  KvLayer new_kv_layer(DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim) override;
  void kv_store(const KvLayer& cache, const Tensor& k, const Tensor& v, const Tensor& slots) override;
  void attention(const Tensor& q, const KvLayer& cache, const Tensor& slots, const AttentionParams& params,
                 const Tensor& out) override;

  void synchronize() override {}

  int n_threads() const { return pool_.size(); }
  CpuLevel level() const { return level_; }

  // The host address of a CPU tensor's first byte. For code inside kernels/ and for the CPU
  // kernels' own tests (packed layouts, cache bytes); never above kernels/.
  static void* host(const Tensor& t);

 private:
  class BufferPool;

  ThreadPool pool_;
  CpuLevel level_;
  bool pack_weights_;
  std::shared_ptr<BufferPool> buffers_;
};

}  // namespace hearth::kernels
