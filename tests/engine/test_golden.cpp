// Whole-model output against llama.cpp on the same GGUF files (fixtures by
// scripts/reference/make_golden_fixtures.py): for every prompt, the logits at every position
// (top-1 identical, NMSE over llama.cpp's top-K logits <= 1e-3) and 48 greedy tokens.
// Needs the default models (scripts/get-model.sh); skipped without them.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "engine/gguf.h"
#include "engine/model_config.h"
#include "engine/stage.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/fixtures.h"

namespace hearth::engine {
namespace {

using json = nlohmann::json;

constexpr double kMaxNmse = 1e-3;

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

TEST_P(GoldenVsLlamaCpp, LogitsAtEveryPositionAndGreedyTokens) {
  const gguf::GgufFile file = gguf::GgufFile::open(path_);
  const ModelConfig config = ModelConfig::from_gguf(file);
  kernels::CpuBackend backend(ThreadPool::hardware_threads());
  StageOptions options;
  options.n_ctx = 256;
  Stage stage(file, config, backend, 0, config.n_layer, options);

  double worst_nmse = 0.0;
  int positions = 0;
  for (const json& prompt : fixture_["prompts"]) {
    SCOPED_TRACE(prompt["text"].get<std::string>());
    const auto tokens = prompt["tokens"].get<std::vector<Token>>();
    const int32_t n = static_cast<int32_t>(tokens.size());
    std::vector<kernels::KvSlot> slots;
    std::vector<int32_t> rows;
    for (int32_t i = 0; i < n; ++i) {
      slots.push_back({0, i});
      rows.push_back(i);
    }
    std::vector<float> logits;
    stage.forward({.tokens = tokens, .hidden = {}, .slots = slots, .output_rows = rows}, logits);
    ASSERT_EQ(logits.size(), static_cast<size_t>(n) * static_cast<size_t>(config.n_vocab));

    for (int32_t i = 0; i < n; ++i) {
      const std::span<const float> row(logits.data() + static_cast<size_t>(i) * static_cast<size_t>(config.n_vocab),
                                       static_cast<size_t>(config.n_vocab));
      const auto ids = prompt["top_ids"][static_cast<size_t>(i)].get<std::vector<int32_t>>();
      const auto ref = prompt["top_logits"][static_cast<size_t>(i)].get<std::vector<double>>();
      EXPECT_EQ(argmax(row), ids[0]) << "top-1 differs at position " << i << " (ours " << row[static_cast<size_t>(argmax(row))]
                                     << ", llama.cpp's top " << ref[0] << ", ours for it " << row[static_cast<size_t>(ids[0])] << ")";
      double err = 0.0, norm = 0.0;
      for (size_t j = 0; j < ids.size(); ++j) {
        const double d = double(row[static_cast<size_t>(ids[j])]) - ref[j];
        err += d * d;
        norm += ref[j] * ref[j];
      }
      const double nmse = err / std::max(norm, 1e-30);
      worst_nmse = std::max(worst_nmse, nmse);
      EXPECT_LE(nmse, kMaxNmse) << "position " << i;
      if (std::getenv("HEARTH_GOLDEN_VERBOSE")) std::printf("pos %d nmse %.3g top %d/%d\n", i, nmse, argmax(row), ids[0]);
      ++positions;
    }

    // Greedy continuation, one token at a time through the KV cache.
    const auto want = prompt["greedy"].get<std::vector<Token>>();
    std::vector<Token> got;
    Token next = argmax(std::span<const float>(logits.data() + static_cast<size_t>(n - 1) * static_cast<size_t>(config.n_vocab),
                                               static_cast<size_t>(config.n_vocab)));
    for (size_t step = 0; step < want.size(); ++step) {
      got.push_back(next);
      const kernels::KvSlot slot{0, n + static_cast<int32_t>(step)};
      const int32_t row0 = 0;
      stage.forward({.tokens = std::span<const Token>(&next, 1), .hidden = {}, .slots = std::span(&slot, 1),
                     .output_rows = std::span(&row0, 1)},
                    logits);
      next = argmax(logits);
      if (std::getenv("HEARTH_GOLDEN_VERBOSE") && step + 1 < want.size() && got.size() == step + 1 &&
          std::equal(got.begin(), got.end(), want.begin()) && next != want[step + 1]) {
        std::printf("diverge at step %zu: ours %d (%.4f) vs llama.cpp %d (ours %.4f)\n", step + 1, next,
                    logits[static_cast<size_t>(next)], want[step + 1], logits[static_cast<size_t>(want[step + 1])]);
      }
    }
    EXPECT_EQ(got, want);
  }
  RecordProperty("worst_nmse", std::to_string(worst_nmse));
  std::printf("[ golden   ] %s: %d positions, worst NMSE %.3g\n", GetParam().c_str(), positions, worst_nmse);
}

INSTANTIATE_TEST_SUITE_P(DefaultModels, GoldenVsLlamaCpp, testing::Values("smollm2", "gemma3-270m"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace hearth::engine
