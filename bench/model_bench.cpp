#include "bench/model_bench.h"

#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "engine/model/stage.h"

namespace hearth::bench {

double TestResult::mean() const {
  if (tokens_per_second.empty()) return 0.0;
  return std::accumulate(tokens_per_second.begin(), tokens_per_second.end(), 0.0) /
         static_cast<double>(tokens_per_second.size());
}

double TestResult::stddev() const {
  if (tokens_per_second.size() < 2) return 0.0;
  const double m = mean();
  double sq = 0.0;
  for (double v : tokens_per_second) sq += (v - m) * (v - m);
  return std::sqrt(sq / static_cast<double>(tokens_per_second.size() - 1));
}

double TestResult::fraction_of_limit(uint64_t bytes_per_token) const {
  const double read = limit_pass.read_bytes_per_second();
  if (read <= 0) return 0.0;
  return limit_pass.decode_tokens_per_second() * static_cast<double>(bytes_per_token) / read;
}

uint64_t weight_bytes_per_token(const gguf::GgufFile& file, const engine::ModelConfig& config) {
  uint64_t bytes = 0;
  for (const gguf::TensorInfo& t : file.tensors()) {
    if (t.name == "token_embd.weight") {
      bytes += config.tied_output ? t.n_bytes : t.n_bytes / static_cast<uint64_t>(t.ne[1]);
    } else {
      bytes += t.n_bytes;
    }
  }
  return bytes;
}

namespace {

using Clock = std::chrono::steady_clock;

// Feeds `tokens` at positions [first, first + n) in batches; logits for the last one only.
void prefill(engine::Stage& stage, const std::vector<engine::Token>& tokens, int32_t first, int32_t n_batch,
             std::vector<float>& out) {
  const auto n = static_cast<int32_t>(tokens.size());
  for (int32_t begin = 0; begin < n; begin += n_batch) {
    const int32_t count = std::min(n_batch, n - begin);
    std::vector<kernels::KvSlot> slots;
    for (int32_t i = 0; i < count; ++i) slots.push_back({0, first + begin + i});
    const int32_t last = count - 1;
    const bool is_last = begin + count == n;
    stage.forward({.tokens = std::span<const engine::Token>(tokens.data() + begin, static_cast<size_t>(count)),
                   .hidden = {},
                   .slots = slots,
                   .output_rows = is_last ? std::span<const int32_t>(&last, 1) : std::span<const int32_t>()},
                  out);
  }
}

}  // namespace

std::vector<TestResult> run_model_bench(const gguf::GgufFile& file, const engine::ModelConfig& config,
                                        kernels::Backend& backend, const ModelBenchParams& p) {
  if (p.repetitions < 1) throw Error("repetitions must be at least 1");
  if (p.n_prompt < 0 || p.n_gen < 0 || p.depth < 0) throw Error("test sizes must not be negative");
  engine::StageOptions options;
  options.n_ctx = p.depth + std::max(p.n_prompt, p.n_gen) + 1;
  options.kv_type = p.kv_type;
  options.max_batch = std::max(1, p.n_batch);
  engine::Stage stage(file, config, backend, 0, config.n_layer, options);
  std::mt19937_64 rng(p.seed);
  std::uniform_int_distribution<engine::Token> token(0, config.n_vocab - 1);
  auto random_tokens = [&](int32_t n) {
    std::vector<engine::Token> t(static_cast<size_t>(n));
    for (auto& v : t) v = token(rng);
    return t;
  };
  std::vector<float> out;
  const std::string at_depth = p.depth > 0 ? fmt::format(" @ d{}", p.depth) : "";
  const std::vector<engine::Token> depth_tokens = random_tokens(p.depth);

  std::vector<TestResult> results;
  if (p.n_prompt > 0) {
    TestResult r{fmt::format("pp{}{}", p.n_prompt, at_depth), p.n_prompt, {}, {}};
    const auto tokens = random_tokens(p.n_prompt);
    for (int rep = -1; rep < p.repetitions; ++rep) {  // rep -1: warm-up
      if (p.depth > 0) prefill(stage, depth_tokens, 0, p.n_batch, out);
      const auto start = Clock::now();
      prefill(stage, tokens, p.depth, p.n_batch, out);
      backend.synchronize();
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      if (rep >= 0) r.tokens_per_second.push_back(p.n_prompt / s);
    }
    results.push_back(std::move(r));
  }
  if (p.n_gen > 0) {
    TestResult r{fmt::format("tg{}{}", p.n_gen, at_depth), p.n_gen, {}, {}};
    const auto tokens = random_tokens(p.n_gen);
    const auto decode = [&](int32_t i) {
      const kernels::KvSlot slot{0, p.depth + i};
      const int32_t row0 = 0;
      stage.forward({.tokens = std::span<const engine::Token>(&tokens[static_cast<size_t>(i)], 1),
                     .hidden = {},
                     .slots = std::span(&slot, 1),
                     .output_rows = std::span(&row0, 1)},
                    out);
    };
    for (int rep = -1; rep < p.repetitions; ++rep) {
      if (p.depth > 0) prefill(stage, depth_tokens, 0, p.n_batch, out);
      const auto start = Clock::now();
      for (int32_t i = 0; i < p.n_gen; ++i) decode(i);
      backend.synchronize();
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      if (rep >= 0) r.tokens_per_second.push_back(p.n_gen / s);
    }
    if (p.read_probe) {  // the limit pass
      if (p.depth > 0) prefill(stage, depth_tokens, 0, p.n_batch, out);
      for (int32_t i = 0; i < p.n_gen; ++i) {
        const auto start = Clock::now();
        decode(i);
        backend.synchronize();
        r.limit_pass.decode_seconds += std::chrono::duration<double>(Clock::now() - start).count();
        r.limit_pass.tokens += 1;
        const ReadSample read = p.read_probe();
        r.limit_pass.read_bytes += read.bytes;
        r.limit_pass.read_seconds += read.seconds;
      }
    }
    results.push_back(std::move(r));
  }
  return results;
}

}  // namespace hearth::bench
