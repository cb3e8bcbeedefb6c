// End-to-end model benchmark in llama-bench's terms: pp<N> (prompt processing: N tokens in
// batches, tokens/s) and tg<N> (generation: N tokens one at a time, tokens/s), each repeated
// and reported as mean ± sd, optionally at a filled context depth — and the physical limit of
// tg beside it: measured memory bandwidth / bytes of weights read per token.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "kernels/backend.h"

namespace hearth::bench {

struct ModelBenchParams {
  int32_t n_prompt = 512;     // pp test size (0: skip)
  int32_t n_gen = 128;        // tg test size (0: skip)
  int32_t depth = 0;          // context already filled before each test
  int32_t repetitions = 5;
  int32_t n_batch = 512;
  DType kv_type = DType::F16;  // of the KV cache
  uint64_t seed = 1234;       // random token ids
  // Called right after each timed tg repetition (optional): the memory bandwidth (bytes/s) at
  // that moment, so that the fraction of the limit pairs each repetition with the bandwidth the
  // machine gave just then (a shared machine's bandwidth drifts by half between minutes).
  std::function<double()> bandwidth_probe;
};

struct TestResult {
  std::string name;           // "pp512", "tg128", "pp512 @ d4096"
  int32_t n_tokens = 0;
  std::vector<double> tokens_per_second;  // one per repetition
  std::vector<double> bandwidth;          // tg with a bandwidth_probe: bytes/s after each repetition
  double mean() const;
  double stddev() const;
  // tg with a bandwidth_probe: the mean over repetitions of tokens/s x bytes per token / the
  // bandwidth probed after it; 0 without one.
  double fraction_of_limit(uint64_t bytes_per_token) const;
};

// Bytes of weights a decode step reads: every layer tensor and the output head, plus one
// embedding row.
uint64_t weight_bytes_per_token(const gguf::GgufFile& file, const engine::ModelConfig& config);

// Runs the tests on a Stage over every layer on `backend` (one warm-up run first).
std::vector<TestResult> run_model_bench(const gguf::GgufFile& file, const engine::ModelConfig& config,
                                        kernels::Backend& backend, const ModelBenchParams& params);

}  // namespace hearth::bench
