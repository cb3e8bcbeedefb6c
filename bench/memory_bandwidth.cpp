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
#include "core/system_memory.h"
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

namespace {

// Sums bytes [begin, end) of `p` (64-byte aligned, a multiple of 256 bytes long) in vectors of
// V (16 bytes: SSE2 / NEON; 32 and 64 in the AVX2 / AVX-512 copies below), 256 bytes per step,
// prefetching kAhead bytes ahead into L2 (0: none).
template <class V, size_t kAhead>
__attribute__((always_inline)) inline uint64_t read_sum(const uint8_t* p, size_t begin, size_t end) {
  constexpr int kPerStep = 256 / sizeof(V);
  V acc[kPerStep] = {};
  for (size_t i = begin; i < end; i += 256) {
    if constexpr (kAhead > 0) {
      for (size_t line = 0; line < 256; line += 64) __builtin_prefetch(p + i + kAhead + line, 0, 1);  // prefetcht2
    }
    const auto* v = reinterpret_cast<const V*>(p + i);
    for (int k = 0; k < kPerStep; ++k) acc[k] += v[k];
  }
  V total = {};
  for (const V& a : acc) total += a;
  uint64_t out = 0;
  for (size_t k = 0; k < sizeof(V) / 8; ++k) out += total[k];
  return out;
}

typedef uint64_t V16 __attribute__((vector_size(16)));
uint64_t read_plain(const uint8_t* p, size_t b, size_t e) { return read_sum<V16, 0>(p, b, e); }
uint64_t read_plain_l2(const uint8_t* p, size_t b, size_t e) { return read_sum<V16, 4096>(p, b, e); }
#if defined(__x86_64__)
typedef uint64_t V32 __attribute__((vector_size(32)));
typedef uint64_t V64 __attribute__((vector_size(64)));
__attribute__((target("avx2"))) uint64_t read_avx2(const uint8_t* p, size_t b, size_t e) { return read_sum<V32, 0>(p, b, e); }
__attribute__((target("avx512f"))) uint64_t read_avx512(const uint8_t* p, size_t b, size_t e) {
  return read_sum<V64, 0>(p, b, e);
}
__attribute__((target("avx512f"))) uint64_t read_avx512_l2(const uint8_t* p, size_t b, size_t e) {
  return read_sum<V64, 2048>(p, b, e);
}
#endif

using ReadFn = uint64_t (*)(const uint8_t*, size_t, size_t);

// The ways of reading this CPU has (see ReadBandwidthProbe).
std::vector<ReadFn> read_ways() {
  std::vector<ReadFn> ways = {read_plain, read_plain_l2};
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) ways.push_back(read_avx2);
  if (__builtin_cpu_supports("avx512f")) {
    ways.push_back(read_avx512);
    ways.push_back(read_avx512_l2);
  }
#endif
  return ways;
}

}  // namespace

struct ReadBandwidthProbe::State {
  State(int threads, size_t array_bytes)
      : bytes(std::max<size_t>(array_bytes / 4096 * 4096, 4096)),
        memory(allocate_huge_pages(bytes)),
        data(static_cast<uint8_t*>(memory.get())),
        pool(threads),
        ways(read_ways()),
        sums(static_cast<size_t>(pool.size()), 0) {
    // First touch from the threads that will read the pages.
    pool.parallel_for(chunks(), [&](int64_t c0, int64_t c1, int) {
      std::memset(data + c0 * 4096, static_cast<int>(c0 & 0x7f), static_cast<size_t>(c1 - c0) * 4096);
    });
  }
  int64_t chunks() const { return static_cast<int64_t>(bytes / 4096); }
  // One read of the array with `read` on every thread; its seconds.
  double read_seconds(ReadFn read);

  size_t bytes;
  // The kind of memory the weights live in (kernels/cpu: repacked copies on 2 MiB pages): on
  // 4 KiB pages the probe read 26-27 GB/s on one Zen 4 core, less than a Q8_0 decode read from
  // its weights (28); on 2 MiB pages it reads 34-36.
  std::shared_ptr<void> memory;
  uint8_t* data;
  ThreadPool pool;
  std::vector<ReadFn> ways;
  std::vector<uint64_t> sums;  // kept, so that the reads are not optimised away
  ReadFn fastest = nullptr;    // the way measure() found fastest
};

ReadBandwidthProbe::ReadBandwidthProbe(int threads, size_t array_bytes)
    : state_(std::make_unique<State>(threads, array_bytes)) {}
ReadBandwidthProbe::~ReadBandwidthProbe() = default;

double ReadBandwidthProbe::State::read_seconds(ReadFn read) {
  const auto start = std::chrono::steady_clock::now();
  pool.parallel_for(chunks(), [&](int64_t c0, int64_t c1, int t) {
    sums[static_cast<size_t>(t)] += read(data, static_cast<size_t>(c0) * 4096, static_cast<size_t>(c1) * 4096);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile uint64_t sink = 0;
  for (uint64_t v : sums) sink = sink + v;  // keep the reads
  return seconds;
}

BandwidthResult ReadBandwidthProbe::measure(int repetitions) {
  State& st = *state_;
  double best = 0.0;
  for (int r = 0; r < std::max(1, repetitions); ++r) {
    for (const ReadFn read : st.ways) {
      const double rate = static_cast<double>(st.bytes) / st.read_seconds(read);
      if (rate > best) {
        best = rate;
        st.fastest = read;
      }
    }
  }
  return {best, st.bytes, st.pool.size()};
}

ReadSample ReadBandwidthProbe::read_once() {
  State& st = *state_;
  if (st.fastest == nullptr) measure(3);
  return {st.bytes, st.read_seconds(st.fastest)};
}

BandwidthResult measure_device_add_bandwidth(kernels::Backend& backend, size_t array_bytes, int repetitions) {
  const int64_t n = static_cast<int64_t>(array_bytes / sizeof(float));
  auto array = [&](float value) {
    kernels::Tensor t{DType::F32, {n, 1, 1, 1}, backend.new_buffer(static_cast<size_t>(n) * sizeof(float)), 0};
    const std::vector<float> v(static_cast<size_t>(n), value);
    backend.write(t, v.data(), v.size() * sizeof(float));
    return t;
  };
  const kernels::Tensor a = array(1.0f), b = array(2.0f), y = array(0.0f);
  backend.add(a, b, y);  // warm-up
  backend.synchronize();
  double best = 0.0;
  for (int r = 0; r < std::max(1, repetitions); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    backend.add(a, b, y);
    backend.synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 3.0 * static_cast<double>(n) * sizeof(float) / s);
  }
  float check = 0.0f;
  backend.read(y.rows(0, 1), &check, sizeof(float));
  HEARTH_CHECK(check == 3.0f, "the device bandwidth test computed {} for 1 + 2", check);
  return {best, static_cast<size_t>(n) * sizeof(float), 0};
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
