#include "bench/memory_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>

#include "core/error.h"
#include "core/thread_pool.h"

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

}  // namespace hearth::bench
