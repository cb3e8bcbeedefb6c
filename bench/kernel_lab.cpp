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
//
// DecodeLayers/<type>/<path>/<model>x<layers>: every matrix of that many layers for one token,
// read from memory as in a model. Counters: weight_B/s; read_B/s, a plain read of as many bytes
// after each pass (untimed); of_read, the passes' rate over the reads' (comparable across runs
// where weight_B/s is not: this machine's read rate swings by half within seconds).
//
// Attention/<shape>/<kv>/decode<S>x<ctx> and /prefill<P>: CpuBackend::attention for S sequences
// of one new token over `ctx` cached positions each (a continuous-batching decode step), and for
// one prompt of P tokens attending causally to itself. Quantize/<type>/<k>: one activation row
// through the level's quantizer. RmsNorm/Glu: n rows of an embedding / feed-forward width.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/memory_bandwidth.h"
#include "core/dtype.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/dot.h"
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
  if (type == DType::Q6_K) {  // no reference quantizer: random bytes, a sane f16 d
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : out) b = static_cast<uint8_t>(byte(rng));
    for (size_t b = 0; b < out.size() / sizeof(BlockQ6_K); ++b) {
      const uint16_t d = fp32_to_fp16(0.001f);
      std::memcpy(out.data() + b * sizeof(BlockQ6_K) + offsetof(BlockQ6_K, d), &d, 2);
    }
    return out;
  }
  if (type == DType::Q4_K) {  // no reference quantizer: random bytes, sane f16 d and dmin
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : out) b = static_cast<uint8_t>(byte(rng));
    for (size_t b = 0; b < out.size() / sizeof(BlockQ4_K); ++b) {
      const uint16_t d = fp32_to_fp16(0.01f), dmin = fp32_to_fp16(0.005f);
      std::memcpy(out.data() + b * sizeof(BlockQ4_K) + offsetof(BlockQ4_K, d), &d, 2);
      std::memcpy(out.data() + b * sizeof(BlockQ4_K) + offsetof(BlockQ4_K, dmin), &dmin, 2);
    }
    return out;
  }
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
  for (int64_t i = 0; i < x.n_elements(); ++i) static_cast<float*>(CpuBackend::host(x))[i] = normal(rng);
  for (auto _ : state) {
    backend.matmul(w, x, y);
    benchmark::DoNotOptimize(CpuBackend::host(y));
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_B/s"] = benchmark::Counter(iters * static_cast<double>(bytes.size()), benchmark::Counter::kIsRate);
  state.counters["MAC/s"] =
      benchmark::Counter(iters * static_cast<double>(shape.k * shape.m * n), benchmark::Counter::kIsRate);
}

void fill_normal(Tensor& t, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < t.n_elements(); ++i) static_cast<float*>(CpuBackend::host(t))[i] = normal(rng);
}

// Every matrix of a model's layers, one after the other, for one token: the matmul part of a
// decode step, with each weight read from memory (the layers together are far larger than the
// caches), as in a model and unlike one small shape timed alone.
struct LayerShape {
  const char* model;
  int64_t n_embd, q_dim, kv_dim, n_ff;
  int n_layer;
};

void decode_layers(benchmark::State& state, DType type, LayerShape shape, bool packed) {
  CpuBackend backend(1, cpu_level(), packed);
  const std::pair<int64_t, int64_t> mats[] = {{shape.n_embd, shape.q_dim}, {shape.n_embd, shape.kv_dim},
                                              {shape.n_embd, shape.kv_dim}, {shape.q_dim, shape.n_embd},
                                              {shape.n_embd, shape.n_ff},   {shape.n_embd, shape.n_ff},
                                              {shape.n_ff, shape.n_embd}};
  std::vector<Tensor> weights;
  size_t bytes = 0;
  for (int l = 0; l < shape.n_layer; ++l) {
    for (const auto& [k, m] : mats) {
      const std::vector<uint8_t> host = random_weight(type, k, m, static_cast<uint32_t>(weights.size()));
      weights.push_back(backend.weight(type, {k, m, 1, 1}, host.data(), nullptr));
      bytes += host.size();
      if (packed && weights.back().layout == 0) {
        state.SkipWithError("no packed kernel for this type at this CPU level");
        return;
      }
    }
  }
  const int64_t widest = std::max({shape.n_embd, shape.q_dim, shape.n_ff});
  Tensor x = backend.new_tensor(DType::F32, {widest, 1, 1, 1});
  Tensor y = backend.new_tensor(DType::F32, {widest, 1, 1, 1});
  fill_normal(x, 5);
  // After each pass, untimed, one plain read of as many bytes (the probe `hearth bench` takes its
  // limit from, in its fastest way): this machine's read rate swings by half within seconds, so
  // the pass's rate is only comparable to a read taken beside it.
  bench::ReadBandwidthProbe probe(1, bytes);
  double pass_seconds = 0.0, read_seconds = 0.0;
  size_t read_bytes = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    for (const Tensor& w : weights) {
      Tensor xv = x, yv = y;
      xv.ne[0] = w.ne[0], yv.ne[0] = w.ne[1];
      backend.matmul(w, xv, yv);
    }
    benchmark::DoNotOptimize(CpuBackend::host(y));
    pass_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.PauseTiming();
    const bench::ReadSample read = probe.read_once();
    read_bytes += read.bytes;
    read_seconds += read.seconds;
    state.ResumeTiming();
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_B/s"] = benchmark::Counter(iters * static_cast<double>(bytes), benchmark::Counter::kIsRate);
  const double read_rate = static_cast<double>(read_bytes) / read_seconds;
  state.counters["read_B/s"] = read_rate;
  state.counters["of_read"] = iters * static_cast<double>(bytes) / pass_seconds / read_rate;
}


struct AttnShape {
  const char* model;
  int n_head, n_head_kv, head_dim;
};

// n_seq sequences with `ctx` cached positions each; one query token per sequence at position
// ctx - 1 (decode), or, with prefill > 0, one sequence's `prefill` tokens at positions 0..P-1.
void attention(benchmark::State& state, AttnShape shape, DType kv_type, bool prefill) {
  const int threads = static_cast<int>(state.range(2));
  CpuBackend backend(threads);
  const int32_t n_seq = prefill ? 1 : static_cast<int32_t>(state.range(0));
  const int32_t ctx = static_cast<int32_t>(state.range(1));
  const int64_t kv_dim = int64_t{shape.n_head_kv} * shape.head_dim;
  KvLayer cache = backend.new_kv_layer(kv_type, n_seq, ctx, kv_dim);
  std::vector<KvSlot> fill;
  for (int32_t s = 0; s < n_seq; ++s) {
    for (int32_t p = 0; p < ctx; ++p) fill.push_back({s, p});
  }
  Tensor k = backend.new_tensor(DType::F32, {kv_dim, static_cast<int64_t>(fill.size()), 1, 1});
  Tensor v = backend.new_tensor(DType::F32, k.ne);
  fill_normal(k, 1);
  fill_normal(v, 2);
  backend.kv_store(cache, k, v, upload_slots(backend, fill));
  std::vector<KvSlot> slots;
  if (prefill) {
    for (int32_t p = 0; p < ctx; ++p) slots.push_back({0, p});
  } else {
    for (int32_t s = 0; s < n_seq; ++s) slots.push_back({s, ctx - 1});
  }
  AttentionParams params;
  params.n_head = shape.n_head;
  params.n_head_kv = shape.n_head_kv;
  params.head_dim = shape.head_dim;
  params.scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  Tensor q = backend.new_tensor(DType::F32, {int64_t{shape.n_head} * shape.head_dim, static_cast<int64_t>(slots.size()), 1, 1});
  Tensor out = backend.new_tensor(DType::F32, q.ne);
  fill_normal(q, 3);
  const Tensor slots_t = upload_slots(backend, slots);
  for (auto _ : state) {
    backend.attention(q, cache, slots_t, params, out);
    benchmark::DoNotOptimize(CpuBackend::host(out));
  }
  double pairs = 0.0;  // (query, key) pairs per call
  for (const KvSlot& s : slots) pairs += s.pos + 1;
  state.counters["qk_pairs/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * pairs * shape.n_head, benchmark::Counter::kIsRate);
}

void quantize(benchmark::State& state, DType weight) {
  const int64_t k = state.range(0);
  const DotKernel& kernel = dot_kernel(weight, cpu_level());
  std::vector<float> x(static_cast<size_t>(k));
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  std::vector<uint8_t> out(dtype_row_bytes(kernel.vec_dot_type, k));
  for (auto _ : state) {
    kernel.quantize(x.data(), out.data(), k);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["floats/s"] = benchmark::Counter(static_cast<double>(state.iterations() * k), benchmark::Counter::kIsRate);
}

void rms_norm(benchmark::State& state) {
  CpuBackend backend(1);
  Tensor x = backend.new_tensor(DType::F32, {state.range(0), state.range(1), 1, 1});
  Tensor w = backend.new_tensor(DType::F32, {state.range(0), 1, 1, 1});
  fill_normal(x, 6);
  fill_normal(w, 7);
  for (auto _ : state) {
    backend.rms_norm(x, w, 1e-5f, x);
    benchmark::DoNotOptimize(CpuBackend::host(x));
  }
  state.counters["floats/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * x.n_elements()), benchmark::Counter::kIsRate);
}

void glu(benchmark::State& state, Activation act) {
  CpuBackend backend(1);
  Tensor g = backend.new_tensor(DType::F32, {state.range(0), state.range(1), 1, 1});
  Tensor u = backend.new_tensor(DType::F32, g.ne);
  Tensor y = backend.new_tensor(DType::F32, g.ne);
  fill_normal(g, 8);
  fill_normal(u, 9);
  for (auto _ : state) {
    backend.glu(g, u, act, y);
    benchmark::DoNotOptimize(CpuBackend::host(y));
  }
  state.counters["floats/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * g.n_elements()), benchmark::Counter::kIsRate);
}

const bool registered = [] {
  const AttnShape attn_shapes[] = {{"smollm2", 9, 3, 64}, {"gemma3_270m", 4, 1, 256}, {"llama1b", 32, 8, 64}};
  for (const AttnShape& a : attn_shapes) {
    for (const DType kv : {DType::F16, DType::F32, DType::Q8_0}) {
      const std::string base = std::string("Attention/") + a.model + "/" + std::string(dtype_name(kv));
      benchmark::RegisterBenchmark((base + "/decode").c_str(), attention, a, kv, false)
          ->Args({8, 160, 1})
          ->Args({8, 1024, 1})
          ->ArgNames({"seqs", "ctx", "threads"})
          ->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark((base + "/prefill").c_str(), attention, a, kv, true)
          ->Args({1, 512, 1})
          ->ArgNames({"seqs", "tokens", "threads"})
          ->Unit(benchmark::kMillisecond);
    }
  }
  for (const DType w : {DType::Q4_0, DType::Q4_1, DType::Q4_K}) {
    benchmark::RegisterBenchmark((std::string("Quantize/for_") + std::string(dtype_name(w))).c_str(), quantize, w)
        ->Arg(2048)
        ->Arg(8192);
  }
  benchmark::RegisterBenchmark("RmsNorm", rms_norm)->Args({576, 8})->Args({2048, 512})->ArgNames({"d", "rows"});
  benchmark::RegisterBenchmark("Glu/silu", glu, Activation::Silu)->Args({1536, 8})->Args({8192, 64})->ArgNames({"d", "rows"});
  benchmark::RegisterBenchmark("Glu/gelu", glu, Activation::GeluTanh)->Args({2048, 8})->ArgNames({"d", "rows"});

  const Shape shapes[] = {
      {"smollm2", 576, 1536}, {"smollm2", 1536, 576}, {"smollm2", 576, 49152},
      {"llama1b", 2048, 8192}, {"llama1b", 8192, 2048}, {"llama1b", 2048, 512},
      // Llama 3.2 1B's tied head: 75-215 MB, far past the caches, so decode (1 token) here reads
      // from memory as in a model, where the shapes above fit in L3 and read from it.
      {"llama1b_head", 2048, 128256},
  };
  const DType types[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q8_0, DType::Q4_K, DType::Q6_K};
  const LayerShape layer_shapes[] = {{"smollm2", 576, 576, 192, 1536, 30}, {"llama1b", 2048, 2048, 512, 8192, 4}};
  for (DType type : types) {
    for (const LayerShape& s : layer_shapes) {
      if (s.n_embd % dtype_block_size(type) != 0 || s.n_ff % dtype_block_size(type) != 0) continue;
      for (const bool packed : {true, false}) {
        const std::string name = std::string("DecodeLayers/") + std::string(dtype_name(type)) + "/" +
                                 (packed ? "packed" : "rows") + "/" + s.model + "x" + std::to_string(s.n_layer);
        benchmark::RegisterBenchmark(name.c_str(), decode_layers, type, s, packed)->Unit(benchmark::kMicrosecond);
      }
    }
  }
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
