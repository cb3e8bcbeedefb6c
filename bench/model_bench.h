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

#include "bench/memory_bandwidth.h"
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
  // Optional (the CPU): one read of memory (ReadBandwidthProbe::read_once). With it, after the
  // timed tg repetitions comes one more tg pass, the limit pass, untimed for tokens/s: each decode
  // step is timed alone and followed by one read, so that the decode and the bandwidth it is
  // held against are measured over the same seconds, milliseconds apart. A shared machine's read
  // bandwidth switches between states (here 34 and 62 GB/s on two threads) that last seconds, as
  // long as a tg repetition: a bandwidth probed after each repetition put the same decode at 52%
  // of its limit once and at 115% another time.
  std::function<ReadSample()> read_probe;
};

// The limit pass of a tg test (see ModelBenchParams::read_probe).
struct LimitPass {
  int32_t tokens = 0;           // decode steps
  double decode_seconds = 0.0;  // their time, the reads between them excluded
  size_t read_bytes = 0;        // the reads'
  double read_seconds = 0.0;
  double decode_tokens_per_second() const { return decode_seconds > 0 ? tokens / decode_seconds : 0.0; }
  double read_bytes_per_second() const { return read_seconds > 0 ? static_cast<double>(read_bytes) / read_seconds : 0.0; }
};

struct TestResult {
  std::string name;           // "pp512", "tg128", "pp512 @ d4096"
  int32_t n_tokens = 0;
  std::vector<double> tokens_per_second;  // one per repetition
  LimitPass limit_pass;                   // tg with a read_probe
  double mean() const;
  double stddev() const;
  // tg with a read_probe: the limit pass's decode rate x bytes per token / its reads' rate; 0
  // without one.
  double fraction_of_limit(uint64_t bytes_per_token) const;
};

// Bytes of weights a decode step reads: every layer tensor and the output head, plus one
// embedding row.
uint64_t weight_bytes_per_token(const gguf::GgufFile& file, const engine::ModelConfig& config);

// Runs the tests on a Stage over every layer on `backend` (one warm-up run first).
std::vector<TestResult> run_model_bench(const gguf::GgufFile& file, const engine::ModelConfig& config,
                                        kernels::Backend& backend, const ModelBenchParams& params);

}  // namespace hearth::bench
