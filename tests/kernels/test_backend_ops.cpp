// The op suite: every op of the Backend interface (kernels/backend.h), on every backend this
// machine has, against the scalar reference, through the interface alone. Inputs go in with
// Backend::write, outputs come back with Backend::read; nothing here touches backend memory.
//
// Backends register in backend_configs(): the CPU backend at every SIMD level of this build's
// architecture (a level the CPU lacks reports itself skipped), the AVX2 and AVX-512 levels once
// more with their weights in native rows (the packed and unpacked matmuls are different
// kernels), and every
// device that kernels::list_backends() finds for the other backends compiled in. A new backend
// gets every case below by appearing there; an op or type it lacks says so through supports()
// and the case is skipped with that reason.
//
// Sizes are odd on purpose (rows of 37 or 1027 values, 5 or 19 tokens, SIMD tails everywhere),
// and inputs and outputs are views at odd offsets inside larger buffers (rows(1, n)), so no op
// may assume an aligned start. Agreement is judged by the normalized mean squared error against
// the reference, with a bound per op: quantized matmuls quantize their activations to 8 bits,
// so their bound is the activation quantizer's noise; elementwise ops must agree to float
// rounding; cache stores of f16 / q8_0 must produce the reference bytes exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/cpu/quants_ref.h"
#include "kernels/cuda/cpu_exec/backend_on_cpu.h"
#include "kernels/registry.h"
#include "tests/support/devices.h"
#ifdef HEARTH_TEST_VULKAN
#include "kernels/vulkan/vulkan.h"
#endif

namespace hearth::kernels {
namespace {

// Three threads on a 2-core machine: rows and jobs are split unevenly, tails land on every thread.
constexpr int kThreads = 3;

// ---- backends ----------------------------------------------------------------------------

struct BackendConfig {
  std::string name;                              // test name part
  std::function<std::unique_ptr<Backend>()> make;
  std::string unavailable;                        // non-empty: why it cannot run here
};

std::vector<BackendConfig> backend_configs() {
  std::vector<BackendConfig> out;
  for (CpuLevel level : kAllCpuLevels) {
    const std::string name = "cpu_" + std::string(cpu_level_name(level));
    const std::string why = cpu_level_supported(level) ? "" : "this CPU (or build) lacks " + std::string(cpu_level_name(level));
    out.push_back({name, [level] { return std::make_unique<CpuBackend>(kThreads, level, true); }, why});
    // Where a level has packed kernels, its native-row kernels still serve the other types and
    // weights that cannot be packed: both paths run the suite.
    if (level != CpuLevel::Scalar) {
      out.push_back({name + "_native_rows", [level] { return std::make_unique<CpuBackend>(kThreads, level, false); }, why});
    }
  }
  // The CUDA backend's kernels on the CPU execution model (test infrastructure): every kernel,
  // launcher and the backend's own code run here in CI, GPU or not.
  out.push_back({"cuda_on_cpu", [] { return make_cuda_backend_on_cpu(); }, ""});
  for (const BackendReport& report : list_backends()) {
    if (report.kind == "cpu") continue;  // above, level by level
    if (report.compiled && report.devices.empty()) {
      // Built in but no device here: one entry whose cases skip with the runtime's reason.
      out.push_back({report.kind + "_device", nullptr, report.kind + " is built in but has no device here: " + report.note});
    }
    for (const DeviceInfo& device : report.devices) {
      std::string name = device.spec();
      for (char& c : name) c = c == ':' ? '_' : c;
      const std::string spec = device.spec();
      out.push_back({name, [spec] { return make_backend(spec); },
                     test::usable(device) ? "" : spec + " lacks what its backend needs (hearth info --system says what)"});
#ifdef HEARTH_TEST_VULKAN
      // Both prefill matmuls on every Vulkan device, whichever its default is.
      if (report.kind == "vulkan") {
        const bool ok = test::usable(device);
        for (const auto prefill : {VulkanOptions::Prefill::Tiled, VulkanOptions::Prefill::Chunked}) {
          const std::string suffix = prefill == VulkanOptions::Prefill::Tiled ? "_tiled" : "_chunked";
          const int index = device.index;
          out.push_back({name + suffix,
                         [index, prefill] { return make_vulkan_backend(index, {.prefill = prefill}); },
                         ok ? "" : device.spec() + " is not usable here"});
        }
        // RoPE's angles in float, where the device has doubles (its default then takes them).
        if (test::device_property_is(device, "float64", "yes")) {
          const int index = device.index;
          out.push_back({name + "_f32rope",
                         [index] { return make_vulkan_backend(index, {.float64 = VulkanOptions::Float64::Off}); },
                         ok ? "" : device.spec() + " is not usable here"});
        }
        // Matrix-vector without the packed dot product instruction, where the device has one
        // (its default then takes the instruction).
        if (test::device_property_is(device, "integer_dot_product", "yes")) {
          const int index = device.index;
          out.push_back({name + "_nodot",
                         [index] { return make_vulkan_backend(index, {.integer_dot = VulkanOptions::IntegerDot::Off}); },
                         ok ? "" : device.spec() + " is not usable here"});
        }
      }
#endif
    }
  }
  return out;
}

// ---- helpers -----------------------------------------------------------------------------

std::vector<float> normal_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Normalized mean squared error: sum (a - b)^2 / sum b^2.
double nmse(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double err = 0.0, norm = 0.0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    const double d = double(got[i]) - double(want[i]);
    err += d * d;
    norm += double(want[i]) * double(want[i]);
  }
  if (!std::isfinite(err)) return std::numeric_limits<double>::infinity();
  return norm > 0 ? err / norm : err;
}

// An f32 tensor [rows, width] holding `values`, placed at row 1 of a larger buffer (an odd
// offset whenever width * 4 is not a multiple of 64).
Tensor put_f32(Backend& b, const std::vector<float>& values, int64_t width) {
  const int64_t rows = static_cast<int64_t>(values.size()) / width;
  Tensor whole = b.new_tensor(DType::F32, {width, rows + 2, 1, 1});
  Tensor t = whole.rows(1, rows);
  b.write(t, values.data(), values.size() * sizeof(float));
  return t;
}

// An f32 output [rows, width] at row 1 of a larger buffer, filled with NaN so that a value the
// op fails to write shows.
Tensor out_f32(Backend& b, int64_t width, int64_t rows) {
  Tensor whole = b.new_tensor(DType::F32, {width, rows + 2, 1, 1});
  const std::vector<float> nan(static_cast<size_t>(width * (rows + 2)), std::numeric_limits<float>::quiet_NaN());
  b.write(whole, nan.data(), nan.size() * sizeof(float));
  return whole.rows(1, rows);
}

std::vector<float> get_f32(Backend& b, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.n_elements()));
  b.read(t, v.data(), v.size() * sizeof(float));
  return v;
}

std::vector<uint8_t> get_bytes(Backend& b, const Tensor& t) {
  std::vector<uint8_t> v(t.n_bytes());
  b.read(t, v.data(), v.size());
  return v;
}

// Weight bytes of `type` for an [m, k] matrix: the reference quantizer of random values where
// there is one, else random blocks with sane f16 scales (the K-quants).
std::vector<uint8_t> random_weight(DType type, int64_t k, int64_t m, uint32_t seed) {
  std::vector<uint8_t> out(dtype_row_bytes(type, k) * static_cast<size_t>(m));
  if (ref::can_quantize(type)) {
    const std::vector<float> values = normal_values(static_cast<size_t>(k * m), seed);
    for (int64_t r = 0; r < m; ++r) {
      ref::quantize_row(type, values.data() + r * k, out.data() + static_cast<size_t>(r) * dtype_row_bytes(type, k), k);
    }
    return out;
  }
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : out) b = static_cast<uint8_t>(byte(rng));
  const auto set_half = [&](size_t block_bytes, size_t field, float value) {
    const uint16_t h = fp32_to_fp16(value);
    for (size_t at = 0; at + block_bytes <= out.size(); at += block_bytes) std::memcpy(out.data() + at + field, &h, 2);
  };
  switch (type) {
    case DType::Q2_K:
      set_half(sizeof(BlockQ2_K), offsetof(BlockQ2_K, d), 0.02f);
      set_half(sizeof(BlockQ2_K), offsetof(BlockQ2_K, dmin), 0.01f);
      break;
    case DType::Q3_K: set_half(sizeof(BlockQ3_K), offsetof(BlockQ3_K, d), 0.01f); break;
    case DType::Q4_K:
      set_half(sizeof(BlockQ4_K), offsetof(BlockQ4_K, d), 0.01f);
      set_half(sizeof(BlockQ4_K), offsetof(BlockQ4_K, dmin), 0.005f);
      break;
    case DType::Q5_K:
      set_half(sizeof(BlockQ5_K), offsetof(BlockQ5_K, d), 0.005f);
      set_half(sizeof(BlockQ5_K), offsetof(BlockQ5_K, dmin), 0.003f);
      break;
    case DType::Q6_K: set_half(sizeof(BlockQ6_K), offsetof(BlockQ6_K, d), 0.001f); break;
    default: ADD_FAILURE() << "no way to make " << dtype_name(type) << " weights"; break;
  }
  return out;
}

std::vector<float> dequantized(DType type, const std::vector<uint8_t>& bytes, int64_t k, int64_t m) {
  std::vector<float> out(static_cast<size_t>(k * m));
  for (int64_t r = 0; r < m; ++r) {
    ref::dequantize_row(type, bytes.data() + static_cast<size_t>(r) * dtype_row_bytes(type, k), out.data() + r * k, k);
  }
  return out;
}

// A row length of whole blocks: three blocks (odd counts of 32-value blocks), or two super-blocks.
int64_t row_length(DType type) { return dtype_block_size(type) == 1 ? 37 : dtype_block_size(type) * (type >= DType::Q2_K && type <= DType::Q8_K ? 2 : 3); }

// ---- op cases ----------------------------------------------------------------------------

struct OpCase {
  std::string name;
  Op op;
  DType type;  // what supports() is asked about
  std::function<void(Backend&)> run;
};

constexpr DType kWeightTypes[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0, DType::Q4_1, DType::Q5_0,
                                  DType::Q5_1, DType::Q8_0, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K,
                                  DType::Q6_K};

void get_rows_case(Backend& b, DType type) {
  const int64_t d = row_length(type), n_rows = 37;
  const std::vector<uint8_t> bytes = random_weight(type, d, n_rows, 11);
  const Tensor table = b.weight(type, {d, n_rows, 1, 1}, bytes.data(), nullptr);
  const std::vector<int32_t> ids = {0, 36, 17, 16, 17, 3, 35, 1, 0, 20, 19, 33, 2};
  const Tensor out = out_f32(b, d, static_cast<int64_t>(ids.size()));
  b.get_rows(table, upload_i32(b, ids), out);
  const std::vector<float> all = dequantized(type, bytes, d, n_rows);
  std::vector<float> want;
  for (int32_t id : ids) want.insert(want.end(), all.begin() + id * d, all.begin() + (id + 1) * d);
  EXPECT_EQ(nmse(get_f32(b, out), want), 0.0) << "rows are dequantized exactly";
}

void matmul_case(Backend& b, DType type) {
  const int64_t k = row_length(type), m = 37;  // m: not a multiple of any row group (16)
  const std::vector<uint8_t> bytes = random_weight(type, k, m, 12);
  const Tensor w = b.weight(type, {k, m, 1, 1}, bytes.data(), nullptr);
  const std::vector<float> wf = dequantized(type, bytes, k, m);
  // F32 weights keep f32 activations; others pair with 8-bit (or 16-bit) activations.
  const double bound = type == DType::F32 ? 1e-10 : (type == DType::F16 || type == DType::BF16) ? 1e-5 : 5e-4;
  for (int64_t n : {1, 5, 19}) {
    const std::vector<float> x = normal_values(static_cast<size_t>(n * k), 13 + static_cast<uint32_t>(n));
    const Tensor xt = put_f32(b, x, k);
    const Tensor y = out_f32(b, m, n);
    b.matmul(w, xt, y);
    std::vector<float> want(static_cast<size_t>(n * m));
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t r = 0; r < m; ++r) {
        double s = 0.0;
        for (int64_t i = 0; i < k; ++i) s += double(wf[static_cast<size_t>(r * k + i)]) * double(x[static_cast<size_t>(t * k + i)]);
        want[static_cast<size_t>(t * m + r)] = static_cast<float>(s);
      }
    }
    const std::vector<float> got = get_f32(b, y);
    EXPECT_LE(nmse(got, want), bound) << n << " tokens";
    // Batch invariance: a token's outputs are the same bits whichever batch it came in (a
    // sequence decodes the same tokens beside others or alone).
    if (n == 5) {
      for (int64_t t = 0; t < n; ++t) {
        const Tensor xt1 = put_f32(b, std::vector<float>(x.begin() + t * k, x.begin() + (t + 1) * k), k);
        const Tensor y1 = out_f32(b, m, 1);
        b.matmul(w, xt1, y1);
        const std::vector<float> alone = get_f32(b, y1);
        EXPECT_TRUE(std::equal(alone.begin(), alone.end(), got.begin() + t * m)) << "token " << t << " of 5 differs from alone";
      }
    }
  }
}

void rms_norm_case(Backend& b) {
  for (const int64_t d : {37, 576, 1027}) {
    const int64_t n = 5;
    const std::vector<float> x = normal_values(static_cast<size_t>(n * d), 21, 3.0f);
    const std::vector<float> w = normal_values(static_cast<size_t>(d), 22);
    std::vector<float> want(x.size()), want_plain(x.size());
    for (int64_t r = 0; r < n; ++r) {
      ref::rms_norm_row(x.data() + r * d, w.data(), 1e-6f, want.data() + r * d, d);
      ref::rms_norm_row(x.data() + r * d, nullptr, 1e-6f, want_plain.data() + r * d, d);
    }
    const Tensor xt = put_f32(b, x, d);
    const Tensor wt = put_f32(b, w, d);
    const Tensor y = out_f32(b, d, n);
    b.rms_norm(xt, wt, 1e-6f, y);
    EXPECT_LE(nmse(get_f32(b, y), want), 1e-11) << "d " << d;
    b.rms_norm(xt, Tensor{}, 1e-6f, xt);  // in place, no weight
    EXPECT_LE(nmse(get_f32(b, xt), want_plain), 1e-11) << "d " << d << " in place";
    // Per-head norms: the same bytes seen as [n * heads, head_dim].
    if (d == 576) {
      const int64_t head_dim = 64;
      const std::vector<float> hw = normal_values(static_cast<size_t>(head_dim), 23);
      std::vector<float> want_heads(x.size());
      for (int64_t r = 0; r < n * d / head_dim; ++r) {
        ref::rms_norm_row(x.data() + r * head_dim, hw.data(), 1e-6f, want_heads.data() + r * head_dim, head_dim);
      }
      const Tensor heads = put_f32(b, x, d).reshaped({head_dim, n * d / head_dim, 1, 1});
      b.rms_norm(heads, put_f32(b, hw, head_dim), 1e-6f, heads);
      EXPECT_LE(nmse(get_f32(b, heads), want_heads), 1e-11) << "per head";
    }
  }
}

void add_case(Backend& b) {
  const int64_t d = 1027, n = 3;
  const std::vector<float> a = normal_values(static_cast<size_t>(n * d), 31), c = normal_values(static_cast<size_t>(n * d), 32);
  std::vector<float> want(a.size());
  for (size_t i = 0; i < a.size(); ++i) want[i] = a[i] + c[i];
  const Tensor at = put_f32(b, a, d), ct = put_f32(b, c, d);
  const Tensor y = out_f32(b, d, n);
  b.add(at, ct, y);
  EXPECT_EQ(nmse(get_f32(b, y), want), 0.0);
  b.add(at, ct, at);  // y aliasing a, as the residual stream does
  EXPECT_EQ(nmse(get_f32(b, at), want), 0.0);
}

void add_bias_case(Backend& b) {
  const int64_t d = 37, n = 19;
  const std::vector<float> x = normal_values(static_cast<size_t>(n * d), 41), bias = normal_values(static_cast<size_t>(d), 42);
  std::vector<float> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = x[i] + bias[i % static_cast<size_t>(d)];
  const Tensor xt = put_f32(b, x, d);
  b.add_bias(xt, put_f32(b, bias, d));
  EXPECT_EQ(nmse(get_f32(b, xt), want), 0.0);
}

void scale_case(Backend& b) {
  const std::vector<float> x = normal_values(1027 * 2, 51);
  std::vector<float> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = x[i] * 0.37f;
  const Tensor xt = put_f32(b, x, 1027);
  b.scale(xt, 0.37f);
  EXPECT_EQ(nmse(get_f32(b, xt), want), 0.0);
}

void softcap_case(Backend& b) {
  const std::vector<float> x = normal_values(1027 * 2, 61, 40.0f);
  std::vector<float> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = 30.0f * std::tanh(x[i] / 30.0f);
  const Tensor xt = put_f32(b, x, 1027);
  b.softcap(xt, 30.0f);
  EXPECT_LE(nmse(get_f32(b, xt), want), 1e-12);
}

void rope_case(Backend& b, RopeMode mode, bool factors, int n_rot, float freq_scale) {
  const int n_heads = 3, head_dim = 40;
  const std::vector<int32_t> positions = {0, 1, 7, 4095, 2, 131071, 33};
  const auto n_tokens = static_cast<int64_t>(positions.size());
  const std::vector<float> x = normal_values(static_cast<size_t>(n_tokens * n_heads * head_dim), 71);
  std::vector<float> ff(static_cast<size_t>(n_rot / 2));
  for (size_t i = 0; i < ff.size(); ++i) ff[i] = 1.0f + 0.37f * static_cast<float>(i);
  RopeParams p;
  p.mode = mode;
  p.n_rot = n_rot;
  p.freq_base = 500000.0f;
  p.freq_scale = freq_scale;
  std::vector<float> want = x;
  for (int64_t t = 0; t < n_tokens; ++t) {
    ref::rope_token(want.data() + t * n_heads * head_dim, n_heads, head_dim, positions[static_cast<size_t>(t)], p,
                    factors ? ff.data() : nullptr);
  }
  if (factors) p.freq_factors = put_f32(b, ff, n_rot / 2);
  const Tensor xt = put_f32(b, x, int64_t{n_heads} * head_dim);
  b.rope(xt, n_heads, upload_i32(b, positions), p);
  EXPECT_LE(nmse(get_f32(b, xt), want), 1e-10);
}

void glu_case(Backend& b, Activation act) {
  const int64_t d = 1027, n = 3;
  const std::vector<float> g = normal_values(static_cast<size_t>(n * d), 81, 3.0f), u = normal_values(static_cast<size_t>(n * d), 82);
  std::vector<float> want(g.size());
  for (size_t i = 0; i < g.size(); ++i) want[i] = (act == Activation::Silu ? ref::silu(g[i]) : ref::gelu_tanh(g[i])) * u[i];
  const Tensor gt = put_f32(b, g, d), ut = put_f32(b, u, d);
  const Tensor y = out_f32(b, d, n);
  b.glu(gt, ut, act, y);
  EXPECT_LE(nmse(get_f32(b, y), want), 1e-11);
  b.glu(gt, ut, act, gt);  // in place over the gate, as the stage does
  EXPECT_LE(nmse(get_f32(b, gt), want), 1e-11);
}

// The reference bytes of one f32 row stored in a cache of `type`.
std::vector<uint8_t> cache_row_bytes(DType type, const float* row, int64_t kv_dim) {
  std::vector<uint8_t> out(dtype_row_bytes(type, kv_dim));
  if (type == DType::F16) {
    for (int64_t i = 0; i < kv_dim; ++i) {
      const uint16_t h = fp32_to_fp16(row[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  } else if (type == DType::Q8_0) {
    ref::quantize_activations_q8_0(row, reinterpret_cast<BlockQ8_0*>(out.data()), kv_dim);
  } else {
    std::memcpy(out.data(), row, out.size());
  }
  return out;
}

void kv_store_case(Backend& b, DType type) {
  const int64_t kv_dim = 96;  // three q8_0 blocks
  const int32_t n_seq = 3, n_ctx = 11;
  const KvLayer cache = b.new_kv_layer(type, n_seq, n_ctx, kv_dim);
  const std::vector<KvSlot> slots = {{2, 10}, {0, 0}, {1, 5}, {2, 0}, {0, 7}};
  const auto n = static_cast<int64_t>(slots.size());
  const std::vector<float> k = normal_values(static_cast<size_t>(n * kv_dim), 91), v = normal_values(static_cast<size_t>(n * kv_dim), 92, 50.0f);
  b.kv_store(cache, put_f32(b, k, kv_dim), put_f32(b, v, kv_dim), upload_slots(b, slots));
  const std::vector<uint8_t> kc = get_bytes(b, cache.k), vc = get_bytes(b, cache.v);
  const size_t row_bytes = dtype_row_bytes(type, kv_dim);
  for (size_t t = 0; t < slots.size(); ++t) {
    const size_t at = (static_cast<size_t>(slots[t].seq) * n_ctx + static_cast<size_t>(slots[t].pos)) * row_bytes;
    EXPECT_EQ(std::memcmp(kc.data() + at, cache_row_bytes(type, k.data() + t * kv_dim, kv_dim).data(), row_bytes), 0) << "K of token " << t;
    EXPECT_EQ(std::memcmp(vc.data() + at, cache_row_bytes(type, v.data() + t * kv_dim, kv_dim).data(), row_bytes), 0) << "V of token " << t;
  }
}

void attention_case(Backend& b, DType type, int head_dim, int32_t window, float softcap) {
  if (!b.supports_kv_type(type, head_dim)) GTEST_SKIP() << b.name() << " cannot hold a " << dtype_name(type) << " cache with heads of " << head_dim;
  AttentionParams p;
  p.n_head = 6;
  p.n_head_kv = 2;  // grouped-query: three query heads per kv head
  p.head_dim = head_dim;
  p.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  p.softcap = softcap;
  p.window = window;
  const int64_t kv_dim = int64_t{p.n_head_kv} * head_dim, q_dim = int64_t{p.n_head} * head_dim;
  const int32_t n_seq = 3, n_ctx = 77;
  const std::vector<int32_t> lengths = {77, 40, 9};
  const KvLayer cache = b.new_kv_layer(type, n_seq, n_ctx, kv_dim);
  std::vector<KvSlot> fill;
  for (int32_t s = 0; s < n_seq; ++s) {
    for (int32_t pos = 0; pos < lengths[static_cast<size_t>(s)]; ++pos) fill.push_back({s, pos});
  }
  const auto n_fill = static_cast<int64_t>(fill.size());
  b.kv_store(cache, put_f32(b, normal_values(static_cast<size_t>(n_fill * kv_dim), 101), kv_dim),
             put_f32(b, normal_values(static_cast<size_t>(n_fill * kv_dim), 102), kv_dim), upload_slots(b, fill));
  // A prompt chunk of sequence 0 beside decoding tokens of the others, in a mixed order.
  const std::vector<KvSlot> slots = {{1, 39}, {0, 60}, {0, 61}, {0, 62}, {0, 63}, {0, 64}, {0, 65}, {0, 66},
                                     {0, 67}, {0, 68}, {0, 69}, {0, 70}, {0, 71}, {0, 72}, {0, 73}, {0, 74},
                                     {0, 75}, {0, 76}, {2, 8},  {1, 0},  {2, 3}};
  const auto n = static_cast<int64_t>(slots.size());
  const std::vector<float> q = normal_values(static_cast<size_t>(n * q_dim), 103);
  const Tensor out = out_f32(b, q_dim, n);
  b.attention(put_f32(b, q, q_dim), cache, upload_slots(b, slots), p, out);
  const std::vector<float> got = get_f32(b, out);

  const std::vector<uint8_t> kc = get_bytes(b, cache.k), vc = get_bytes(b, cache.v);
  const size_t row_bytes = dtype_row_bytes(type, kv_dim);
  std::vector<float> want(static_cast<size_t>(n * q_dim)), scores(static_cast<size_t>(n_ctx));
  for (int64_t t = 0; t < n; ++t) {
    const KvSlot s = slots[static_cast<size_t>(t)];
    const size_t seq_at = static_cast<size_t>(s.seq) * static_cast<size_t>(n_ctx) * row_bytes;
    const int32_t first = window > 0 ? std::max(0, s.pos - window + 1) : 0;
    for (int h = 0; h < p.n_head; ++h) {
      ref::attention_head(q.data() + t * q_dim + h * head_dim, kc.data() + seq_at, vc.data() + seq_at, type, kv_dim,
                          static_cast<int64_t>(h / (p.n_head / p.n_head_kv)) * head_dim, head_dim, first, s.pos, p.scale,
                          p.softcap, scores.data(), want.data() + t * q_dim + h * head_dim);
    }
  }
  // An f16 cache rounds q and the probabilities to f16 (as ggml does); a kernel that sums in
  // another order can land a probability on the other side of an f16 rounding step (NEON's
  // is 2.5e-9 here). An f32 cache has no such steps.
  EXPECT_LE(nmse(got, want), type == DType::F32 ? 1e-9 : 1e-7);
}

std::vector<OpCase> op_cases() {
  std::vector<OpCase> out;
  for (DType t : kWeightTypes) {
    const std::string tn(dtype_name(t));
    out.push_back({"get_rows_" + tn, Op::GetRows, t, [t](Backend& b) { get_rows_case(b, t); }});
    out.push_back({"matmul_" + tn, Op::Matmul, t, [t](Backend& b) { matmul_case(b, t); }});
  }
  out.push_back({"rms_norm", Op::RmsNorm, DType::F32, rms_norm_case});
  out.push_back({"add", Op::Add, DType::F32, add_case});
  out.push_back({"add_bias", Op::AddBias, DType::F32, add_bias_case});
  out.push_back({"scale", Op::Scale, DType::F32, scale_case});
  out.push_back({"softcap", Op::Softcap, DType::F32, softcap_case});
  out.push_back({"rope_normal", Op::Rope, DType::F32, [](Backend& b) { rope_case(b, RopeMode::Normal, false, 40, 1.0f); }});
  out.push_back({"rope_neox", Op::Rope, DType::F32, [](Backend& b) { rope_case(b, RopeMode::Neox, false, 40, 1.0f); }});
  out.push_back({"rope_partial_scaled", Op::Rope, DType::F32, [](Backend& b) { rope_case(b, RopeMode::Neox, false, 24, 0.25f); }});
  out.push_back({"rope_freq_factors", Op::Rope, DType::F32, [](Backend& b) { rope_case(b, RopeMode::Normal, true, 40, 1.0f); }});
  out.push_back({"glu_silu", Op::Glu, DType::F32, [](Backend& b) { glu_case(b, Activation::Silu); }});
  out.push_back({"glu_gelu", Op::Glu, DType::F32, [](Backend& b) { glu_case(b, Activation::GeluTanh); }});
  for (DType t : {DType::F32, DType::F16, DType::Q8_0}) {
    const std::string tn(dtype_name(t));
    out.push_back({"kv_store_" + tn, Op::KvStore, t, [t](Backend& b) { kv_store_case(b, t); }});
    out.push_back({"attention_" + tn + "_d64", Op::Attention, t, [t](Backend& b) { attention_case(b, t, 64, 0, 0.0f); }});
    out.push_back({"attention_" + tn + "_d96_window", Op::Attention, t, [t](Backend& b) { attention_case(b, t, 96, 13, 0.0f); }});
    out.push_back({"attention_" + tn + "_d64_softcap", Op::Attention, t, [t](Backend& b) { attention_case(b, t, 64, 0, 30.0f); }});
  }
  out.push_back({"attention_F16_d40", Op::Attention, DType::F16, [](Backend& b) { attention_case(b, DType::F16, 40, 0, 0.0f); }});
  return out;
}

const std::vector<BackendConfig>& configs() {
  static const std::vector<BackendConfig> c = backend_configs();
  return c;
}
const std::vector<OpCase>& cases() {
  static const std::vector<OpCase> c = op_cases();
  return c;
}

class BackendOps : public testing::TestWithParam<std::tuple<size_t, size_t>> {};

TEST_P(BackendOps, MatchesReference) {
  const BackendConfig& config = configs()[std::get<0>(GetParam())];
  const OpCase& c = cases()[std::get<1>(GetParam())];
  if (!config.unavailable.empty()) GTEST_SKIP() << config.unavailable;
  const std::unique_ptr<Backend> backend = config.make();
  if (!backend->supports(c.op, c.type)) {
    GTEST_SKIP() << backend->name() << " does not support " << op_name(c.op) << " on " << dtype_name(c.type);
  }
  c.run(*backend);
  backend->synchronize();
}

std::vector<std::tuple<size_t, size_t>> all_params() {
  std::vector<std::tuple<size_t, size_t>> out;
  for (size_t b = 0; b < configs().size(); ++b) {
    for (size_t c = 0; c < cases().size(); ++c) out.emplace_back(b, c);
  }
  return out;
}

std::string param_name(const testing::TestParamInfo<std::tuple<size_t, size_t>>& param) {
  return configs()[std::get<0>(param.param)].name + "_" + cases()[std::get<1>(param.param)].name;
}

INSTANTIATE_TEST_SUITE_P(Suite, BackendOps, testing::ValuesIn(all_params()), param_name);

// Every op of the interface has cases (a new op without any fails here).
TEST(BackendOpsCoverage, EveryOpHasCases) {
  for (Op op : kAllOps) {
    bool found = false;
    for (const OpCase& c : cases()) found = found || c.op == op;
    EXPECT_TRUE(found) << op_name(op);
  }
}

// The CPU backend's supports() agrees with what it runs: every weight type in the suite is
// supported at every level, and a type without kernels is refused.
TEST(BackendOpsCoverage, CpuSupportsWhatItRuns) {
  CpuBackend b(1);
  for (DType t : kWeightTypes) {
    EXPECT_TRUE(b.supports(Op::Matmul, t)) << dtype_name(t);
    EXPECT_TRUE(b.supports(Op::GetRows, t)) << dtype_name(t);
  }
  EXPECT_FALSE(b.supports(Op::Matmul, DType::IQ2_XXS));
  EXPECT_FALSE(b.supports(Op::Attention, DType::Q4_0));
  EXPECT_FALSE(b.supports(Op::Rope, DType::F16));
}

}  // namespace
}  // namespace hearth::kernels
