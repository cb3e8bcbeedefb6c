// Whole models through the GPU backends' kernels, against the CPU backend's logits: the CUDA
// backend on the CPU execution model (kernels/cuda/cpu_exec, test infrastructure; a real GPU
// with HEARTH_TEST_CUDA_DEVICE=N) and the Vulkan backend on the first usable Vulkan device
// (lavapipe in CI; skipped with the reason where there is none). Every op of a forward pass —
// embedding lookup, norms, matmuls in both paths (tiled prefill for the prompt,
// matrix-vector for decoding), RoPE, KV store, attention, GLU, softcap — runs the backend's
// kernels, and decoding runs as recorded steps.
//
// Models: the architecture fixtures of test_architectures.cpp (llama with rope factors, llama
// with linear scaling and a Q8_0 matrix, qwen2, qwen3; F32 weights) and a random gemma3 written
// here (sliding-window and global layers, per-head QK norms, post-norms, GELU, a final logit
// softcap) with Q4_0 and with Q8_0 matrices.
//
// Bounds. The backends round differently: the CPU multiplies quantized weights with 8-bit
// activations (and F16 weights with f16 ones) for prompts and decoding alike, the CUDA kernels
// only when decoding (their prefill multiplies f32 activations), the Vulkan shaders never, and
// all sum in other orders.
// Measured worst NMSE per position (printed): 2.5e-8 with F32 weights, 4e-7 with F16, 1e-4 with
// one Q8_0 matrix, 4e-4 to 6e-4 for the random gemma3 with Q4_0 / Q8_0 matrices (chaotic:
// random weights amplify every rounding through its layers). Bounds: 1e-6, 1e-5, 1e-3, 3e-3.
// A wrong kernel moves the logits by 1e-2 to 1 (see the closing note of the CUDA issue for the
// mutations tried). Decoding runs as backend steps, so after the first two steps of a shape the
// backend replays a recorded step (asserted), and the replayed logits are checked like the rest.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "engine/format/gguf.h"
#include "engine/format/gguf_writer.h"
#include "engine/model/model_config.h"
#include "engine/model/stage.h"
#include "engine/model/tensor_map.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/quants_ref.h"
#include "kernels/cuda/cpu_exec/backend_on_cpu.h"
#include "kernels/registry.h"
#ifdef HEARTH_TEST_VULKAN
#include "kernels/vulkan/vulkan.h"
#endif
#include "tests/support/devices.h"
#include "tests/support/fixtures.h"

namespace hearth::engine {
namespace {

using json = nlohmann::json;

double nmse(std::span<const float> got, std::span<const float> want) {
  double err = 0.0, norm = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = double(got[i]) - double(want[i]);
    err += d * d;
    norm += double(want[i]) * double(want[i]);
  }
  return std::isfinite(err) ? err / std::max(norm, 1e-30) : INFINITY;
}

// Logits at every position of the prompt (one batch), then of `steps` tokens decoded one at a
// time (the tokens given), on `backend`: one vector per position.
std::vector<std::vector<float>> run(const gguf::GgufFile& file, const ModelConfig& config, kernels::Backend& backend,
                                    DType kv_type, const std::vector<Token>& prompt, const std::vector<Token>& decode) {
  StageOptions options;
  options.n_ctx = 64;
  options.kv_type = kv_type;
  Stage stage(file, config, backend, 0, config.n_layer, options);
  const auto vocab = static_cast<size_t>(config.n_vocab);
  std::vector<kernels::KvSlot> slots;
  std::vector<int32_t> rows;
  for (int32_t i = 0; i < static_cast<int32_t>(prompt.size()); ++i) {
    slots.push_back({0, i});
    rows.push_back(i);
  }
  std::vector<float> logits;
  stage.forward({.tokens = prompt, .hidden = {}, .slots = slots, .output_rows = rows}, logits);
  std::vector<std::vector<float>> out;
  for (size_t i = 0; i < prompt.size(); ++i) {
    out.emplace_back(logits.begin() + static_cast<std::ptrdiff_t>(i * vocab),
                     logits.begin() + static_cast<std::ptrdiff_t>((i + 1) * vocab));
  }
  for (size_t s = 0; s < decode.size(); ++s) {
    const kernels::KvSlot slot{0, static_cast<int32_t>(prompt.size() + s)};
    const int32_t row0 = 0;
    stage.forward({.tokens = std::span<const Token>(&decode[s], 1), .hidden = {}, .slots = std::span(&slot, 1),
                   .output_rows = std::span(&row0, 1)},
                  logits);
    out.push_back(logits);
  }
  return out;
}

// The GPU backends under test.
enum class Gpu { Cuda, Vulkan };
std::string gpu_name(Gpu g) { return g == Gpu::Cuda ? "cuda" : "vulkan"; }

// The backend for `gpu`, or null with the reason it is not here. CUDA: the CPU execution model,
// or with HEARTH_TEST_CUDA_DEVICE=N a real GPU (bench/gpu-check.sh sets it where a machine has
// one). Vulkan: the first usable Vulkan device.
std::unique_ptr<kernels::Backend> gpu_backend(Gpu gpu, std::string& why) {
  if (gpu == Gpu::Cuda) {
    if (const char* device = std::getenv("HEARTH_TEST_CUDA_DEVICE"); device != nullptr && *device != '\0') {
      return kernels::make_backend(std::string("cuda:") + device);
    }
    return kernels::make_cuda_backend_on_cpu();
  }
  const std::string spec = test::first_usable_device("vulkan", why);
  return spec.empty() ? nullptr : kernels::make_backend(spec);
}

// Runs the model on the CPU backend and on the CUDA backend (a new one, or `reuse`) and compares
// every position. Returns the worst NMSE.
double compare(Gpu gpu, const gguf::GgufFile& file, const ModelConfig& config, DType kv_type,
               const std::vector<Token>& prompt, const std::vector<Token>& decode, double bound,
               kernels::Backend* reuse = nullptr) {
  kernels::CpuBackend cpu(1);
  const auto want = run(file, config, cpu, kv_type, prompt, decode);
  std::string why;
  std::unique_ptr<kernels::Backend> own = reuse == nullptr ? gpu_backend(gpu, why) : nullptr;
  if (reuse == nullptr && own == nullptr) {
    ADD_FAILURE() << "no " << gpu_name(gpu) << " backend: " << why;
    return INFINITY;
  }
  kernels::Backend* cuda = reuse != nullptr ? reuse : own.get();
  const uint64_t replays_before = cuda->step_replays();
  const auto got = run(file, config, *cuda, kv_type, prompt, decode);
  EXPECT_EQ(got.size(), want.size());
  double worst = 0.0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    const double e = nmse(got[i], want[i]);
    worst = std::max(worst, e);
    EXPECT_LE(e, bound) << "position " << i;
    // Where the CPU's top token leads clearly, the CUDA kernels pick it too.
    std::vector<float> sorted = want[i];
    std::sort(sorted.rbegin(), sorted.rend());
    const auto top = [](const std::vector<float>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
    if (sorted[0] - sorted[1] > 1e-3f * std::max(1.0f, std::fabs(sorted[0]))) {
      EXPECT_EQ(top(got[i]), top(want[i])) << "position " << i;
    }
  }
  // Decoding repeats one step shape: from the third step on it is a replay of a recorded step.
  EXPECT_GE(cuda->step_replays() - replays_before, decode.size() - 2);
  return worst;
}

// Skips the test when `gpu` has no backend here.
#define SKIP_WITHOUT(gpu)                                                              \
  do {                                                                                 \
    std::string why_;                                                                  \
    if (gpu_backend(gpu, why_) == nullptr) GTEST_SKIP() << gpu_name(gpu) << ": " << why_; \
  } while (0)

class GpuArch : public testing::TestWithParam<std::tuple<Gpu, std::string>> {};

TEST_P(GpuArch, LogitsMatchTheCpuBackend) {
  const auto [gpu, name] = GetParam();
  SKIP_WITHOUT(gpu);
  const std::filesystem::path dir = test::fixtures_dir() / "arch";
  const json ref = json::parse(test::read_file_text(dir / (name + ".json")));
  const gguf::GgufFile file = gguf::GgufFile::open(dir / (name + ".gguf"));
  const ModelConfig config = ModelConfig::from_gguf(file);
  const auto ids = ref["ids"].get<std::vector<Token>>();
  const auto greedy = ref["greedy"].get<std::vector<Token>>();
  // F32 weights, save llama-linear-tiny's Q8_0 ffn_down: the CPU quantizes its activations for
  // the prompt too, the CUDA prefill does not (9.4e-5); the Vulkan shaders round them as the CPU
  // does (2.4e-12; with the scale left unrounded, 6.4e-6).
  const double bound = name == "llama-linear-tiny" && gpu == Gpu::Cuda ? 1e-3 : 1e-6;
  const double worst = compare(gpu, file, config, DType::F16, ids, greedy, bound);
  std::printf("[ %-8s ] %s: worst NMSE against the CPU backend %.3g\n", gpu_name(gpu).c_str(), name.c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(TinyModels, GpuArch,
                         testing::Combine(testing::Values(Gpu::Cuda, Gpu::Vulkan),
                                          testing::Values("qwen2-tiny", "qwen3-tiny", "llama-ropefreqs-tiny",
                                                          "llama-linear-tiny")),
                         [](const auto& param_info) {
                           std::string name = gpu_name(std::get<0>(param_info.param)) + "_" + std::get<1>(param_info.param);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// A random gemma3 of 6 layers (five sliding-window layers, then a global one) with `type`
// matrices, written to `path`.
ModelConfig write_gemma3(const std::filesystem::path& path, DType type) {
  ModelConfig c;
  c.arch = "gemma3";
  c.n_vocab = 160;
  c.n_embd = 64;
  c.n_layer = 6;
  c.n_head = 2;
  c.n_head_kv = 1;
  c.head_dim = c.head_dim_v = c.n_rot = 32;
  c.n_ff = 96;
  c.qk_norm = true;
  c.post_norms = true;
  c.tied_output = true;
  gguf::GgufWriter w;
  w.set_string("general.architecture", "gemma3");
  w.set_u32("gemma3.context_length", 256);
  w.set_u32("gemma3.embedding_length", static_cast<uint32_t>(c.n_embd));
  w.set_u32("gemma3.block_count", static_cast<uint32_t>(c.n_layer));
  w.set_u32("gemma3.feed_forward_length", static_cast<uint32_t>(c.n_ff));
  w.set_u32("gemma3.attention.head_count", static_cast<uint32_t>(c.n_head));
  w.set_u32("gemma3.attention.head_count_kv", static_cast<uint32_t>(c.n_head_kv));
  w.set_u32("gemma3.attention.key_length", static_cast<uint32_t>(c.head_dim));
  w.set_u32("gemma3.attention.value_length", static_cast<uint32_t>(c.head_dim));
  w.set_f32("gemma3.attention.layer_norm_rms_epsilon", 1e-6f);
  w.set_f32("gemma3.rope.freq_base", 1e6f);
  w.set_u32("gemma3.attention.sliding_window", 5);
  w.set_f32("gemma3.final_logit_softcapping", 30.0f);
  uint32_t seed = 1;
  for (const TensorDesc& d : stage_tensors(c, 0, c.n_layer)) {
    const DType t = d.f32 || d.norm ? DType::F32 : type;
    const int64_t n = d.ne[0] * d.ne[1] * d.ne[2] * d.ne[3];
    std::mt19937 rng(seed++);
    std::normal_distribution<float> normal(0.0f, d.norm ? 0.1f : 0.3f);
    std::vector<float> values(static_cast<size_t>(n));
    for (float& v : values) v = (d.norm ? 1.0f : 0.0f) + normal(rng);
    std::vector<uint8_t> bytes(dtype_row_bytes(t, d.ne[0]) * static_cast<size_t>(n / d.ne[0]));
    for (int64_t r = 0; r < n / d.ne[0]; ++r) {
      kernels::ref::quantize_row(t, values.data() + r * d.ne[0], bytes.data() + static_cast<size_t>(r) * dtype_row_bytes(t, d.ne[0]),
                                 d.ne[0]);
    }
    w.add_tensor(d.name, t, std::span<const int64_t>(d.ne.data(), static_cast<size_t>(d.n_dims)),
                 [bytes = std::move(bytes)](gguf::TensorSink& sink) { sink.write(bytes.data(), bytes.size()); });
  }
  w.write(path);
  return c;
}

class GpuGemma3 : public testing::TestWithParam<std::tuple<Gpu, std::tuple<DType, DType>>> {};

TEST_P(GpuGemma3, LogitsMatchTheCpuBackend) {
  const Gpu gpu = std::get<0>(GetParam());
  const auto [type, kv_type] = std::get<1>(GetParam());
  SKIP_WITHOUT(gpu);
  const std::filesystem::path path =
      testing::TempDir() + "gemma3-random-" + gpu_name(gpu) + "-" + std::string(dtype_name(type)) + ".gguf";
  write_gemma3(path, type);
  const gguf::GgufFile file = gguf::GgufFile::open(path);
  const ModelConfig config = ModelConfig::from_gguf(file);
  ASSERT_TRUE(config.is_swa_layer(0) && !config.is_swa_layer(5) && config.final_logit_softcap == 30.0f);
  // 12 prompt tokens (the tiled matmul), then 6 decoded ones (matrix-vector, recorded steps).
  const std::vector<Token> prompt = {2, 17, 159, 40, 41, 3, 99, 100, 7, 58, 120, 1};
  const std::vector<Token> decode = {5, 6, 150, 77, 23, 9};
  const double worst = compare(gpu, file, config, kv_type, prompt, decode, type == DType::F16 ? 1e-5 : 3e-3);
  std::printf("[ %-8s ] gemma3 %s weights, %s cache: worst NMSE against the CPU backend %.3g\n", gpu_name(gpu).c_str(),
              std::string(dtype_name(type)).c_str(), std::string(dtype_name(kv_type)).c_str(), worst);
  std::filesystem::remove(path);
}

std::string gemma3_case_name(const testing::TestParamInfo<GpuGemma3::ParamType>& param_info) {
  const std::tuple<DType, DType> types = std::get<1>(param_info.param);
  return gpu_name(std::get<0>(param_info.param)) + "_" + std::string(dtype_name(std::get<0>(types))) + "_kv_" +
         std::string(dtype_name(std::get<1>(types)));
}
INSTANTIATE_TEST_SUITE_P(Random, GpuGemma3,
                         testing::Combine(testing::Values(Gpu::Cuda, Gpu::Vulkan),
                                          testing::Values(std::make_tuple(DType::Q4_0, DType::F16),
                                                          std::make_tuple(DType::Q8_0, DType::Q8_0),
                                                          std::make_tuple(DType::F16, DType::F32))),
                         gemma3_case_name);

// One backend serving one model's stage, then another's: the second stage's steps have the keys
// the first one's had (the same batch shapes) but other buffers, so the recordings of the first
// must not be replayed for it (the backend compares each step's ops with its recording).
class GpuSteps : public testing::TestWithParam<Gpu> {};

TEST_P(GpuSteps, AReusedBackendNeverReplaysAnotherStagesSteps) {
  std::string why;
  const std::unique_ptr<kernels::Backend> backend = gpu_backend(GetParam(), why);
  if (!backend) GTEST_SKIP() << why;
  const std::filesystem::path dir = test::fixtures_dir() / "arch";
  const std::vector<Token> decode = {5, 6, 15, 7, 23, 9};
  for (const std::string name : {"qwen3-tiny", "qwen2-tiny", "qwen3-tiny"}) {
    const gguf::GgufFile file = gguf::GgufFile::open(dir / (name + ".gguf"));
    const ModelConfig config = ModelConfig::from_gguf(file);
    const std::vector<Token> prompt = {1, 2, 3};
    compare(GetParam(), file, config, DType::F16, prompt, decode, 1e-6, backend.get());
  }
}

// Backends come and go in one process (a worker reloads its stage after a new plan; the op
// suite makes one per case), and each leaves nothing behind: after 48 backends, each created,
// used for a matrix product and destroyed in turn, the process holds no more open files than
// after the first (a driver's device handles, where a backend leaked its instance or device),
// and no more threads (lavapipe's rasterizer threads, where a device was never destroyed), and
// a new backend still computes. On an H200 through NVIDIA's Vulkan driver, instance creation
// failed with VK_ERROR_INCOMPATIBLE_DRIVER after 36 such backends.
size_t entries(const char* dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

TEST_P(GpuSteps, BackendsComeAndGoWithoutLeaking) {
  constexpr int64_t k = 64, m = 8;
  std::vector<float> w(k * m), x(k);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(static_cast<int>(i % 7) - 3);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 3);
  std::vector<float> want(m, 0.0f);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t i = 0; i < k; ++i) want[static_cast<size_t>(r)] += w[static_cast<size_t>(r * k + i)] * x[static_cast<size_t>(i)];
  }
  std::string why;
  const auto round = [&]() {
    std::unique_ptr<kernels::Backend> b = gpu_backend(GetParam(), why);
    if (!b) return false;
    const kernels::Tensor wt = b->weight(DType::F32, {k, m, 1, 1}, w.data(), nullptr);
    const kernels::Tensor xt{DType::F32, {k, 1, 1, 1}, b->new_buffer(k * sizeof(float)), 0};
    const kernels::Tensor yt{DType::F32, {m, 1, 1, 1}, b->new_buffer(m * sizeof(float)), 0};
    b->write(xt, x.data(), x.size() * sizeof(float));
    b->matmul(wt, xt, yt);
    std::vector<float> y(m);
    b->read(yt, y.data(), y.size() * sizeof(float));
    EXPECT_EQ(y, want);
    return true;
  };
  if (!round()) GTEST_SKIP() << why;
  const size_t files = entries("/proc/self/fd"), threads = entries("/proc/self/task");
  for (int i = 0; i < 46; ++i) {
    ASSERT_TRUE(round()) << "backend " << i + 2 << ": open files " << entries("/proc/self/fd") << ", threads "
                         << entries("/proc/self/task");
  }
  std::printf("[ %-8s ] after 1 backend: %zu open files, %zu threads; after 47: %zu, %zu\n", gpu_name(GetParam()).c_str(),
              files, threads, entries("/proc/self/fd"), entries("/proc/self/task"));
  EXPECT_LE(entries("/proc/self/fd"), files + 2) << "open files after the first backend: " << files;
  EXPECT_LE(entries("/proc/self/task"), threads + 2) << "threads after the first backend: " << threads;
  EXPECT_TRUE(round());
}

INSTANTIATE_TEST_SUITE_P(Backends, GpuSteps, testing::Values(Gpu::Cuda, Gpu::Vulkan),
                         [](const auto& param_info) { return gpu_name(param_info.param); });

#ifdef HEARTH_TEST_VULKAN
// `--backend vulkan:NAME` picks the device whose name contains NAME (any case), as a home box
// with an integrated and a discrete GPU needs; a name matching no device is refused, naming them.
TEST(VulkanDevices, ADeviceIsChosenByPartOfItsName) {
  std::string why;
  const std::unique_ptr<kernels::Backend> vk = gpu_backend(Gpu::Vulkan, why);
  if (!vk) GTEST_SKIP() << why;
  const kernels::DeviceInfo first = vk->device();
  std::string part = first.name.substr(0, std::min<size_t>(first.name.size(), 6));
  for (char& c : part) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::unique_ptr<kernels::Backend> by_name = kernels::make_backend("vulkan:" + part);
  EXPECT_EQ(by_name->device().index, first.index);
  EXPECT_EQ(by_name->device().name, first.name);
  try {
    kernels::make_backend("vulkan:no-such-gpu-anywhere");
    ADD_FAILURE() << "a name matching no device was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no device's name contains 'no-such-gpu-anywhere'; devices: " + first.spec()),
              std::string::npos)
        << e.what();
  }
}

// A recorded step costs one queue submission and creates nothing: after the first decode steps
// (recorded, pipelines created), every further token submits exactly once (its inputs' uploads
// ride in the same submission) and creates no pipeline (and no descriptor set: the backend has
// none).
TEST(VulkanRecording, OneSubmissionAndNoCreationsPerDecodeToken) {
  std::string why;
  const std::unique_ptr<kernels::Backend> vk = gpu_backend(Gpu::Vulkan, why);
  if (!vk) GTEST_SKIP() << why;
  const std::filesystem::path dir = test::fixtures_dir() / "arch";
  const gguf::GgufFile file = gguf::GgufFile::open(dir / "qwen3-tiny.gguf");
  const ModelConfig config = ModelConfig::from_gguf(file);
  StageOptions options;
  options.n_ctx = 64;
  Stage stage(file, config, *vk, 0, config.n_layer, options);
  // Weights, cache and activations come from a few slabs, not an allocation per tensor.
  const uint64_t tensors = file.tensors().size();
  const uint64_t loaded_allocations = kernels::vulkan_counters(*vk).memory_allocations;
  EXPECT_LE(loaded_allocations * 4, tensors) << loaded_allocations << " memory allocations for " << tensors << " tensors";
  std::vector<float> logits;
  const auto step = [&](Token token, int32_t pos) {
    const kernels::KvSlot slot{0, pos};
    const int32_t row0 = 0;
    stage.forward({.tokens = std::span<const Token>(&token, 1), .hidden = {}, .slots = std::span(&slot, 1),
                   .output_rows = std::span(&row0, 1)},
                  logits);
  };
  for (int32_t pos = 0; pos < 3; ++pos) step(1 + pos, pos);  // warm-up: record, create
  const kernels::VulkanCounters before = kernels::vulkan_counters(*vk);
  const uint64_t replays_before = vk->step_replays();
  constexpr int kTokens = 10;
  for (int32_t pos = 3; pos < 3 + kTokens; ++pos) step(1 + pos, pos);
  const kernels::VulkanCounters after = kernels::vulkan_counters(*vk);
  EXPECT_EQ(after.submissions - before.submissions, uint64_t{kTokens});
  EXPECT_EQ(after.pipelines_created, before.pipelines_created);
  EXPECT_EQ(after.dispatches, before.dispatches) << "replayed steps record nothing";
  EXPECT_EQ(after.memory_allocations, before.memory_allocations) << "no memory allocated per token";
  EXPECT_EQ(vk->step_replays() - replays_before, uint64_t{kTokens});
  std::printf("[ vulkan   ] %llu memory allocations for %llu tensors; decode: %llu submissions for %d tokens, %llu pipelines "
              "created after warm-up (%llu in all), %llu dispatches and %llu barriers recorded during the warm-up\n",
              static_cast<unsigned long long>(loaded_allocations), static_cast<unsigned long long>(tensors),
              static_cast<unsigned long long>(after.submissions - before.submissions), kTokens,
              static_cast<unsigned long long>(after.pipelines_created - before.pipelines_created),
              static_cast<unsigned long long>(after.pipelines_created), static_cast<unsigned long long>(before.dispatches),
              static_cast<unsigned long long>(before.barriers));
}
#endif

}  // namespace
}  // namespace hearth::engine
