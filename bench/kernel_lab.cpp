// The kernel lab: each hot CPU kernel timed alone (Google Benchmark) at the shapes of real
// models, through the real code (CpuBackend and the dispatch tables, never a pasted copy).
//
//   build/bin/kernel_lab [--benchmark_filter=REGEX]
//
// Matmul/<type>/<path>/<k>x<m>/<tokens>: one weight [m, k] of random blocks times `tokens`
// activation rows, on one thread. path "packed" is the interleaved-rows kernel
// (kernels/cpu/packed.h), "rows" the native-row dot products of the same CPU level. Counters:
// weight bytes read per second (the figure to hold against memory bandwidth at one token) and
// multiply-adds per second (the one that matters for prefill and batches).
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/quants_ref.h"

namespace hearth::kernels {
namespace {

struct Shape {
  const char* model;
  int64_t k, m;
};

// Rows of `type` from random floats (through the reference quantizer, so every block is valid).
std::vector<uint8_t> random_weight(DType type, int64_t k, int64_t m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> row(static_cast<size_t>(k));
  std::vector<uint8_t> out(dtype_row_bytes(type, k) * static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r) {
    for (float& v : row) v = normal(rng);
    ref::quantize_row(type, row.data(), out.data() + static_cast<size_t>(r) * dtype_row_bytes(type, k), k);
  }
  return out;
}

void matmul(benchmark::State& state, DType type, Shape shape, bool packed) {
  const int64_t n = state.range(0);
  CpuBackend backend(1, cpu_level(), packed);
  const std::vector<uint8_t> bytes = random_weight(type, shape.k, shape.m, 7);
  const Tensor w = backend.weight(type, {shape.k, shape.m, 1, 1}, bytes.data(), nullptr);
  if (packed && w.layout == 0) {
    state.SkipWithError("no packed kernel for this type at this CPU level");
    return;
  }
  Tensor x = backend.new_tensor(DType::F32, {shape.k, n, 1, 1});
  Tensor y = backend.new_tensor(DType::F32, {shape.m, n, 1, 1});
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < x.n_elements(); ++i) static_cast<float*>(x.data)[i] = normal(rng);
  for (auto _ : state) {
    backend.matmul(w, x, y);
    benchmark::DoNotOptimize(y.data);
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_B/s"] = benchmark::Counter(iters * static_cast<double>(bytes.size()), benchmark::Counter::kIsRate);
  state.counters["MAC/s"] =
      benchmark::Counter(iters * static_cast<double>(shape.k * shape.m * n), benchmark::Counter::kIsRate);
}

const bool registered = [] {
  const Shape shapes[] = {
      {"smollm2", 576, 1536}, {"smollm2", 1536, 576}, {"smollm2", 576, 49152},
      {"llama1b", 2048, 8192}, {"llama1b", 8192, 2048}, {"llama1b", 2048, 512},
  };
  const DType types[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q8_0};
  for (DType type : types) {
    for (const Shape& s : shapes) {
      for (const bool packed : {true, false}) {
        const std::string name = std::string("Matmul/") + std::string(dtype_name(type)) + "/" + (packed ? "packed" : "rows") + "/" +
                                 s.model + "_" + std::to_string(s.k) + "x" + std::to_string(s.m);
        benchmark::RegisterBenchmark(name.c_str(), matmul, type, s, packed)
            ->Arg(1)
            ->Arg(4)
            ->Arg(8)
            ->Arg(64)
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  return true;
}();

}  // namespace
}  // namespace hearth::kernels

BENCHMARK_MAIN();
