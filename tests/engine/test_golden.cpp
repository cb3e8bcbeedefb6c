// Whole-model output against llama.cpp on the same GGUF files (fixtures by
// scripts/reference/make_golden_fixtures.py), for every prompt of both default models: the
// logits at every prompt position, and 48 greedy steps with llama.cpp's tokens fed back (so one
// step's disagreement does not hide the rest).
//
// Why the bounds are statistical. llama.cpp is not bit-reproducible against *itself*: evaluated
// token by token instead of in one batch, or with an f32 instead of an f16 KV cache, its logits
// move by an NMSE of up to 3.5e-3 (SmolLM2) and 0.2 (Gemma 3) at some positions, its top-1
// changes at 4-5 positions and its greedy continuations change for 4 of 9 (SmolLM2) and 8 of 9
// (Gemma 3) prompts. The fixture records that self-deviation per position (`self_nmse`). Any
// implementation that is not a bit-for-bit clone of llama.cpp's SIMD kernels lands in the same
// noise, so "top-1 identical at every position" cannot be the assertion. What is asserted:
//  - the median NMSE over llama.cpp's top-K logits is <= 1e-3;
//  - at >= 95% of positions the NMSE is <= 1e-3, or within an order of magnitude of
//    llama.cpp's own deviation at that position;
//  - the top-1 token agrees at >= 95% of positions and the greedy token at >= 95% of steps
//    (with a q8_0 KV cache: >= 93%, see GoldenQ8KvVsLlamaCpp), and at >= 95% of the steps that
//    are not near-ties (llama.cpp's two best logits closer than kTieMargin).
// A plausible bug is far outside this: with Gemma 3's local-layer rope base wrong (1e6 instead
// of 1e4) the median NMSE is 4.9e-3 and top-1 / greedy agreement fall to 88% / 87%. The exact
// counts (positions above 1e-3, disagreements, near-ties) are printed on every run. The factor
// 10 and the 95% were chosen after those counts had been measured (an order of magnitude and a
// round share); the strict per-position criterion is what the printed counts report against.
// Needs the default models (scripts/get-model.sh); skipped without them.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "engine/format/gguf.h"
#include "engine/generate/model.h"
#include "engine/model/model_config.h"
#include "engine/model/stage.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/registry.h"
#include "tests/support/devices.h"
#include "tests/support/fixtures.h"

namespace hearth::engine {
namespace {

using json = nlohmann::json;

constexpr double kMaxNmse = 1e-3;
constexpr double kSelfNoiseFactor = 10.0;
constexpr double kMinAgreement = 0.95;
constexpr double kTieMargin = 0.25;  // logits: closer than this, llama.cpp's choice is a near-tie

int32_t argmax(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

class GoldenVsLlamaCpp : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    fixture_ = json::parse(test::read_file_text(test::fixtures_dir() / "golden" / (GetParam() + ".json")));
    path_ = test::models_dir() / fixture_["file"].get<std::string>();
    if (!std::filesystem::exists(path_)) GTEST_SKIP() << path_ << " not present: run scripts/get-model.sh " << GetParam();
  }
  json fixture_;
  std::filesystem::path path_;
};

// The whole-model check of a fixture: its KV cache type (f16 unless it says) on hearth's side too.
// `greedy_chunk` > 1 feeds llama.cpp's greedy tokens that many at a time (logits at each of them:
// what step-by-step decoding computes, in fewer passes; for slow software devices).
void check_logits_and_greedy_tokens(const json& fixture, const std::filesystem::path& path, const std::string& name,
                                    double min_greedy_agreement = kMinAgreement, kernels::Backend* on = nullptr,
                                    size_t greedy_chunk = 1) {
  const gguf::GgufFile file = gguf::GgufFile::open(path);
  const ModelConfig config = ModelConfig::from_gguf(file);
  kernels::CpuBackend cpu(ThreadPool::hardware_threads());
  kernels::Backend& backend = on != nullptr ? *on : cpu;
  StageOptions options;
  options.n_ctx = 256;
  options.kv_type = dtype_from_name(fixture.value("kv_type", "f16")).value();
  Stage stage(file, config, backend, 0, config.n_layer, options);
  const auto vocab = static_cast<size_t>(config.n_vocab);
  const bool verbose = std::getenv("HEARTH_GOLDEN_VERBOSE") != nullptr;

  int positions = 0, over_bound = 0, within_self_noise = 0, top1_strict_miss = 0, top1_ties = 0;
  int steps = 0, greedy_strict_miss = 0, greedy_ties = 0, prompts_identical = 0, greedy_identical = 0;
  std::vector<double> all_nmse;
  for (const json& prompt : fixture["prompts"]) {
    SCOPED_TRACE(prompt["text"].get<std::string>());
    const auto tokens = prompt["tokens"].get<std::vector<Token>>();
    const auto self_nmse = prompt["self_nmse"].get<std::vector<double>>();
    const int32_t n = static_cast<int32_t>(tokens.size());
    std::vector<kernels::KvSlot> slots;
    std::vector<int32_t> rows;
    for (int32_t i = 0; i < n; ++i) {
      slots.push_back({0, i});
      rows.push_back(i);
    }
    std::vector<float> logits;
    stage.forward({.tokens = tokens, .hidden = {}, .slots = slots, .output_rows = rows}, logits);
    ASSERT_EQ(logits.size(), static_cast<size_t>(n) * vocab);

    bool identical = true;
    for (int32_t i = 0; i < n; ++i) {
      const std::span<const float> row(logits.data() + static_cast<size_t>(i) * vocab, vocab);
      const auto ids = prompt["top_ids"][static_cast<size_t>(i)].get<std::vector<int32_t>>();
      const auto ref = prompt["top_logits"][static_cast<size_t>(i)].get<std::vector<double>>();
      double err = 0.0, norm = 0.0;
      for (size_t j = 0; j < ids.size(); ++j) {
        const double d = double(row[static_cast<size_t>(ids[j])]) - ref[j];
        err += d * d;
        norm += ref[j] * ref[j];
      }
      const double nmse = err / std::max(norm, 1e-30);
      all_nmse.push_back(nmse);
      ++positions;
      if (nmse > kMaxNmse) {
        ++over_bound;
        if (nmse <= kSelfNoiseFactor * self_nmse[static_cast<size_t>(i)]) ++within_self_noise;
      }

      const int32_t ours = argmax(row);
      if (ours != ids[0]) {
        ++top1_strict_miss;
        identical = false;
        top1_ties += ref[0] - ref[1] < kTieMargin && ours == ids[1];
      }
      if (verbose) std::printf("pos %d nmse %.3g (self %.3g) top %d/%d\n", i, nmse, self_nmse[static_cast<size_t>(i)], ours, ids[0]);
    }

    // Greedy generation with llama.cpp's tokens fed back.
    const auto want = prompt["greedy"].get<std::vector<Token>>();
    const auto margin = prompt["greedy_margin"].get<std::vector<double>>();
    std::vector<float> last(logits.end() - static_cast<std::ptrdiff_t>(vocab), logits.end());
    std::vector<float> step_logits;
    const int misses_before = greedy_strict_miss;
    const auto judge = [&](size_t s, std::span<const float> row) {
      ++steps;
      const Token ours = argmax(row);
      if (ours != want[s]) {
        ++greedy_strict_miss;
        identical = false;
        greedy_ties += margin[s] < kTieMargin;
      }
    };
    for (size_t s = 0; s < want.size(); s += greedy_chunk) {
      const size_t c = std::min(greedy_chunk, want.size() - s);
      judge(s, last);
      std::vector<kernels::KvSlot> step_slots;
      std::vector<int32_t> step_rows;
      for (size_t j = 0; j < c; ++j) {
        step_slots.push_back({0, n + static_cast<int32_t>(s + j)});
        step_rows.push_back(static_cast<int32_t>(j));
      }
      stage.forward({.tokens = std::span<const Token>(&want[s], c), .hidden = {}, .slots = step_slots,
                     .output_rows = step_rows},
                    step_logits);
      for (size_t j = 0; j + 1 < c; ++j) judge(s + j + 1, std::span<const float>(step_logits.data() + j * vocab, vocab));
      last.assign(step_logits.end() - static_cast<std::ptrdiff_t>(vocab), step_logits.end());
    }
    prompts_identical += identical;
    greedy_identical += greedy_strict_miss == misses_before;  // free-running greedy would match all 48
  }
  std::sort(all_nmse.begin(), all_nmse.end());
  const double median = all_nmse[all_nmse.size() / 2];
  EXPECT_LE(median, kMaxNmse);
  EXPECT_GE(positions - (over_bound - within_self_noise), kMinAgreement * positions)
      << "positions whose NMSE exceeds both 1e-3 and 10x llama.cpp's own deviation";
  EXPECT_GE(positions - top1_strict_miss, kMinAgreement * positions) << "top-1 agreement";
  EXPECT_GE(steps - greedy_strict_miss, min_greedy_agreement * steps) << "greedy agreement";
  EXPECT_GE(steps - (greedy_strict_miss - greedy_ties), kMinAgreement * steps) << "greedy agreement but for near-ties";
  std::printf(
      "[ golden   ] %s: %d positions: median NMSE %.2g, max %.2g; %d above 1e-3 (%d of them within 10x llama.cpp's own "
      "deviation there); top-1 differs at %d (%d near-ties). %d greedy steps: %d differ (%d near-ties). "
      "%d of %zu prompts generate all %zu greedy tokens identically; %d also agree in every prompt top-1.\n",
      (name + (on != nullptr ? " on " + backend.name() : "")).c_str(), positions, median, all_nmse.back(), over_bound, within_self_noise,
      top1_strict_miss, top1_ties, steps, greedy_strict_miss, greedy_ties, greedy_identical, fixture["prompts"].size(),
      fixture["prompts"][0]["greedy"].size(), prompts_identical);
}

TEST_P(GoldenVsLlamaCpp, LogitsAtEveryPositionAndGreedyTokens) { check_logits_and_greedy_tokens(fixture_, path_, GetParam()); }

// The same with a q8_0 KV cache against llama.cpp with q8_0 K and V caches (fixtures
// <model>-kv-q8_0.json; their noise floor: llama.cpp token by token, or with an f16 cache).
// q8_0 rounds K and V to 1/127 of each block's largest value, so the last-bit differences of
// hearth's K and V against llama.cpp's flip some roundings, each 256 times an f16 flip, and
// near-ties go the other way more often. llama.cpp itself, from f16 to q8_0, changes 20
// (SmolLM2) and 15 (Gemma 3) of the 432 greedy steps; hearth against llama.cpp, both q8_0:
// 18 and 22, all but 2 and 3 of them near-ties. So the overall greedy bound is 93% here, and
// the 95% applies to the steps that are not near-ties, as it does for f16.
class GoldenQ8KvVsLlamaCpp : public GoldenVsLlamaCpp {};
TEST_P(GoldenQ8KvVsLlamaCpp, LogitsAtEveryPositionAndGreedyTokens) {
  ASSERT_EQ(fixture_["kv_type"], "q8_0");
  check_logits_and_greedy_tokens(fixture_, path_, GetParam(), 0.93);
}

// The text side of the same prompts: hearth's chat template renders llama.cpp's exact prompt
// text, and hearth's tokenizer gives exactly the token ids llama.cpp fed the model.
TEST_P(GoldenVsLlamaCpp, PromptTextAndTokensMatch) {
  kernels::CpuBackend backend(1);
  ModelOptions options;
  options.n_ctx = 64;
  const Model model(path_, backend, options);
  for (const json& prompt : fixture_["prompts"]) {
    const std::string text = prompt["text"].get<std::string>();
    SCOPED_TRACE(text);
    if (prompt["kind"] == "chat") {
      std::vector<ChatMessage> messages;
      for (const json& m : prompt["messages"]) messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      EXPECT_EQ(model.format_chat(messages), text);
    }
    EXPECT_EQ(model.tokenize_prompt(text), prompt["tokens"].get<std::vector<Token>>());
  }
}

// The first usable Vulkan device (lavapipe in CI), or null with the reason.
std::unique_ptr<kernels::Backend> vulkan_backend(std::string& why) {
  const std::string spec = test::first_usable_device("vulkan", why);
  return spec.empty() ? nullptr : kernels::make_backend(spec);
}

// Free-running greedy continuation of `tokens` (each step fed the stage's own choice).
std::vector<Token> free_greedy(Stage& stage, const std::vector<Token>& tokens, size_t steps, size_t vocab) {
  std::vector<kernels::KvSlot> slots;
  std::vector<int32_t> rows;
  for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i) slots.push_back({0, i});
  rows.push_back(static_cast<int32_t>(tokens.size()) - 1);
  std::vector<float> logits;
  stage.forward({.tokens = tokens, .hidden = {}, .slots = slots, .output_rows = rows}, logits);
  std::vector<Token> out;
  for (size_t s = 0; s < steps; ++s) {
    out.push_back(argmax(std::span<const float>(logits.data(), vocab)));
    const kernels::KvSlot slot{0, static_cast<int32_t>(tokens.size() + s)};
    const int32_t row0 = 0;
    stage.forward({.tokens = std::span<const Token>(&out.back(), 1), .hidden = {}, .slots = std::span(&slot, 1),
                   .output_rows = std::span(&row0, 1)},
                  logits);
  }
  return out;
}

bool software(const kernels::Backend& backend) { return test::software(backend.device()); }

// The Vulkan backend (lavapipe in CI) against llama.cpp with the criterion the CPU meets, and
// its free-running greedy text against the CPU backend's: equal on at least as many prompts as
// the CPU's equals llama.cpp's.
class GoldenVulkanVsLlamaCpp : public GoldenVsLlamaCpp {};
// Both models run on lavapipe in CI: SmolLM2 in about 1.5 minutes, Gemma 3 (its 262k-row
// output head read for every position) in about 4, on 2 busy cores.
TEST_P(GoldenVulkanVsLlamaCpp, LogitsAtEveryPositionAndGreedyTokens) {
  std::string why;
  std::unique_ptr<kernels::Backend> vk = vulkan_backend(why);
  if (!vk) GTEST_SKIP() << why;
  const bool q8 = fixture_.value("kv_type", "f16") == "q8_0";
  // A software device takes llama.cpp's greedy tokens 8 at a time (the same decode kernels).
  check_logits_and_greedy_tokens(fixture_, path_, GetParam(), q8 ? 0.93 : kMinAgreement, vk.get(), software(*vk) ? 8 : 1);
}

// Free-running, so one token at a time (9 prompts x 48 tokens): on lavapipe about 1.5 minutes
// for SmolLM2 and about 8 for Gemma 3 (measured on 2 busy cores).
TEST_P(GoldenVulkanVsLlamaCpp, GreedyTextAsTheCpuBackends) {
  std::string why;
  std::unique_ptr<kernels::Backend> vk = vulkan_backend(why);
  if (!vk) GTEST_SKIP() << why;
  const gguf::GgufFile file = gguf::GgufFile::open(path_);
  const ModelConfig config = ModelConfig::from_gguf(file);
  kernels::CpuBackend cpu(ThreadPool::hardware_threads());
  StageOptions options;
  options.n_ctx = 256;
  options.kv_type = dtype_from_name(fixture_.value("kv_type", "f16")).value();
  Stage on_cpu(file, config, cpu, 0, config.n_layer, options);
  Stage on_vk(file, config, *vk, 0, config.n_layer, options);
  int vk_equals_cpu = 0, cpu_equals_llama = 0, n = 0;
  for (const json& prompt : fixture_["prompts"]) {
    const auto tokens = prompt["tokens"].get<std::vector<Token>>();
    const auto llama = prompt["greedy"].get<std::vector<Token>>();
    const auto vocab = static_cast<size_t>(config.n_vocab);
    const std::vector<Token> a = free_greedy(on_cpu, tokens, llama.size(), vocab);
    const std::vector<Token> b = free_greedy(on_vk, tokens, llama.size(), vocab);
    vk_equals_cpu += a == b;
    cpu_equals_llama += a == llama;
    ++n;
  }
  EXPECT_GE(vk_equals_cpu, cpu_equals_llama);
  std::printf("[ golden   ] %s: free greedy text, %d prompts: %s equals the CPU's on %d, the CPU equals llama.cpp's on %d\n",
              GetParam().c_str(), n, vk->name().c_str(), vk_equals_cpu, cpu_equals_llama);
}

std::string fixture_test_name(const testing::TestParamInfo<std::string>& param_info) {
  std::string name = param_info.param;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}
INSTANTIATE_TEST_SUITE_P(DefaultModels, GoldenVsLlamaCpp, testing::Values("smollm2", "gemma3-270m"), fixture_test_name);
INSTANTIATE_TEST_SUITE_P(DefaultModels, GoldenQ8KvVsLlamaCpp, testing::Values("smollm2-kv-q8_0", "gemma3-270m-kv-q8_0"),
                         fixture_test_name);
INSTANTIATE_TEST_SUITE_P(DefaultModels, GoldenVulkanVsLlamaCpp, testing::Values("smollm2", "gemma3-270m"), fixture_test_name);

}  // namespace
}  // namespace hearth::engine
