#include "bench/memory_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>

#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "kernels/backend.h"

namespace hearth::bench {

BandwidthResult measure_triad_bandwidth(int threads, size_t array_bytes, int repetitions) {
  const size_t n = array_bytes / sizeof(float);
  auto alloc = [&] {
    void* p = std::aligned_alloc(64, n * sizeof(float));
    HEARTH_CHECK(p != nullptr, "cannot allocate {} bytes for the bandwidth test", array_bytes);
    return std::unique_ptr<float[], decltype(&std::free)>(static_cast<float*>(p), std::free);
  };
  auto a = alloc(), b = alloc(), c = alloc();
  ThreadPool pool(threads);
  // First touch from the threads that will use the pages.
  pool.parallel_for(static_cast<int64_t>(n), [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) {
      a[i] = 0.0f;
      b[i] = 1.0f;
      c[i] = 2.0f;
    }
  });
  double best = 0.0;
  for (int r = 0; r < repetitions; ++r) {
    const auto start = std::chrono::steady_clock::now();
    pool.parallel_for(static_cast<int64_t>(n), [&](int64_t i0, int64_t i1, int) {
      float* __restrict pa = a.get();
      const float* __restrict pb = b.get();
      const float* __restrict pc = c.get();
      for (int64_t i = i0; i < i1; ++i) pa[i] = pb[i] + 3.0f * pc[i];
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, 3.0 * static_cast<double>(n * sizeof(float)) / seconds);
  }
  volatile float sink = a[n / 2];  // keep the stores
  (void)sink;
  return {best, array_bytes, pool.size()};
}

BandwidthResult measure_matvec_bandwidth(kernels::Backend& backend, size_t weight_bytes, int repetitions,
                                         double max_seconds) {
  constexpr int64_t k = 4096;
  const size_t row_bytes = dtype_row_bytes(DType::Q8_0, k);
  const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(weight_bytes / row_bytes));
  // Blocks of scale 1/64 and quants cycling through -64..63: finite sums, nothing to skip.
  auto bytes = std::make_shared<std::vector<uint8_t>>(row_bytes * static_cast<size_t>(m));
  const uint16_t scale = fp32_to_fp16(1.0f / 64.0f);
  for (size_t b = 0; b < bytes->size(); b += 34) {
    std::memcpy(bytes->data() + b, &scale, 2);
    for (size_t i = 0; i < 32; ++i) (*bytes)[b + 2 + i] = static_cast<uint8_t>(static_cast<int8_t>((b / 34 + i) % 128 - 64));
  }
  const kernels::Tensor w = backend.weight(DType::Q8_0, {k, m, 1, 1}, bytes->data(), bytes);
  kernels::Tensor x{DType::F32, {k, 1, 1, 1}, backend.new_buffer(k * sizeof(float)), 0};
  kernels::Tensor y{DType::F32, {m, 1, 1, 1}, backend.new_buffer(static_cast<size_t>(m) * sizeof(float)), 0};
  const std::vector<float> ones(k, 1.0f);
  backend.write(x, ones.data(), ones.size() * sizeof(float));
  backend.matmul(w, x, y);  // warm-up: pipelines, caches
  backend.synchronize();
  double best = 0.0;
  const auto begin = std::chrono::steady_clock::now();
  for (int r = 0; r < std::max(1, repetitions); ++r) {
    if (max_seconds > 0 && r >= 3 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count() > max_seconds) {
      break;
    }
    const auto t0 = std::chrono::steady_clock::now();
    backend.matmul(w, x, y);
    backend.synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(bytes->size()) / s);
  }
  return {best, bytes->size(), 0};
}

}  // namespace hearth::bench
