// `hearth bench`'s model benchmark: the limit pass, whose decode steps are each followed by one
// read of memory and timed without it, and the fraction of the limit taken from it.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "bench/memory_bandwidth.h"
#include "bench/model_bench.h"
#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/fixtures.h"

namespace hearth::bench {
namespace {

using namespace std::chrono_literals;

gguf::GgufFile tiny_model() { return gguf::GgufFile::open(test::fixtures_dir() / "arch" / "qwen2-tiny.gguf"); }

TEST(ModelBench, TheFractionOfTheLimitIsTheLimitPassDecodeRateAgainstItsReads) {
  TestResult r;
  EXPECT_EQ(r.fraction_of_limit(100), 0.0) << "no limit pass, no fraction";
  r.limit_pass = {.tokens = 10, .decode_seconds = 2.0, .read_bytes = 4000, .read_seconds = 1.0};
  // 10 tokens in 2 s of 100 bytes each: 500 bytes/s, against reads of 4000 bytes/s.
  EXPECT_DOUBLE_EQ(r.limit_pass.decode_tokens_per_second(), 5.0);
  EXPECT_DOUBLE_EQ(r.limit_pass.read_bytes_per_second(), 4000.0);
  EXPECT_DOUBLE_EQ(r.fraction_of_limit(100), 0.125);
}

TEST(ModelBench, EachDecodeStepOfTheLimitPassIsFollowedByOneReadThatItsTimeLeavesOut) {
  const gguf::GgufFile file = tiny_model();
  const engine::ModelConfig config = engine::ModelConfig::from_gguf(file);
  kernels::CpuBackend backend(1);
  ModelBenchParams p;
  p.n_prompt = 0;
  p.n_gen = 8;
  p.repetitions = 2;
  // A read that takes 100 ms of wall time and says it read 1000 bytes in 0.5 s.
  int reads = 0;
  p.read_probe = [&reads] {
    ++reads;
    std::this_thread::sleep_for(100ms);
    return ReadSample{1000, 0.5};
  };
  const std::vector<TestResult> results = run_model_bench(file, config, backend, p);
  ASSERT_EQ(results.size(), 1u);
  const TestResult& tg = results[0];
  EXPECT_EQ(tg.name, "tg8");
  EXPECT_EQ(reads, 8) << "one read after each step of one pass, none in the timed repetitions";
  EXPECT_EQ(tg.limit_pass.tokens, 8);
  EXPECT_EQ(tg.limit_pass.read_bytes, 8000u);
  EXPECT_DOUBLE_EQ(tg.limit_pass.read_seconds, 4.0) << "the reads' own seconds, not the wall time around them";
  // The 0.8 s the reads slept are in neither the pass's decode time nor the timed repetitions'.
  EXPECT_GT(tg.limit_pass.decode_seconds, 0.0);
  EXPECT_LT(tg.limit_pass.decode_seconds, 0.4);
  ASSERT_EQ(tg.tokens_per_second.size(), 2u);
  for (double tps : tg.tokens_per_second) EXPECT_GT(tps, 8 / 0.4);
}

TEST(ModelBench, WithoutAReadProbeThereIsNoLimitPass) {
  const gguf::GgufFile file = tiny_model();
  const engine::ModelConfig config = engine::ModelConfig::from_gguf(file);
  kernels::CpuBackend backend(1);
  ModelBenchParams p;
  p.n_prompt = 4;
  p.n_gen = 4;
  p.repetitions = 1;
  const std::vector<TestResult> results = run_model_bench(file, config, backend, p);
  ASSERT_EQ(results.size(), 2u);
  for (const TestResult& r : results) {
    EXPECT_EQ(r.limit_pass.tokens, 0) << r.name;
    EXPECT_EQ(r.fraction_of_limit(1000), 0.0) << r.name;
  }
}

TEST(ReadBandwidthProbe, OneReadCoversTheWholeArray) {
  ReadBandwidthProbe probe(2, size_t{8} << 20);
  const ReadSample once = probe.read_once();  // picks its way first (measure(3))
  EXPECT_EQ(once.bytes, size_t{8} << 20);
  EXPECT_GT(once.seconds, 0.0);
  const BandwidthResult best = probe.measure(2);
  EXPECT_EQ(best.array_bytes, size_t{8} << 20);
  EXPECT_GT(best.bytes_per_second, 0.0);
}

}  // namespace
}  // namespace hearth::bench
