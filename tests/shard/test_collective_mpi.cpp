// The Open MPI collective, run by ctest under `mpiexec -np 2` and `-np 3` (the test sets Open
// MPI's allow-run-as-root variables itself, for CI containers that run as root): every
// operation against its definition, the same bits as the in-process collective's rank-order
// sum, and a split into sub-groups.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <thread>

#include "core/fp16.h"
#include "engine/batch/batch.h"
#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/stage.h"
#include "engine/model/synth.h"
#include "engine/model/tensor_parallel.h"
#include "kernels/cpu/cpu_backend.h"
#include "shard/collective_mpi.h"
#include "shard/mpi_pipeline.h"
#include "shard/tensor_parallel_steps.h"

namespace hearth::shard {
namespace {

float value(int rank, size_t i) { return static_cast<float>(rank + 1) * 0.37f + static_cast<float>(i % 97) * 1e-3f; }

std::unique_ptr<MpiCollective>& world() {
  static std::unique_ptr<MpiCollective> w = MpiCollective::world();
  return w;
}

TEST(Mpi, AllReduceSumsInRankOrder) {
  Collective& c = *world();
  for (size_t size : {size_t{1}, size_t{576}, size_t{4099}}) {
    std::vector<float> data(size);
    for (size_t i = 0; i < size; ++i) data[i] = value(c.rank(), i);
    c.all_reduce_sum(data);
    for (size_t i = 0; i < size; ++i) {
      float expected = 0.0f;
      for (int r = 0; r < c.size(); ++r) expected += value(r, i);
      ASSERT_EQ(data[i], expected) << i;
    }
  }
}

TEST(Mpi, AllReduceF16) {
  Collective& c = *world();
  std::vector<uint16_t> data(300);
  for (size_t i = 0; i < data.size(); ++i) data[i] = fp32_to_fp16(value(c.rank(), i));
  c.all_reduce_sum_f16(data);
  for (size_t i = 0; i < data.size(); ++i) {
    float expected = 0.0f;
    for (int r = 0; r < c.size(); ++r) expected += fp16_to_fp32(fp32_to_fp16(value(r, i)));
    ASSERT_EQ(data[i], fp32_to_fp16(expected)) << i;
  }
}

TEST(Mpi, AllGatherOfUnequalParts) {
  Collective& c = *world();
  std::vector<int64_t> counts;
  for (int r = 0; r < c.size(); ++r) counts.push_back(3 + 5 * r);
  std::vector<float> mine(static_cast<size_t>(counts[static_cast<size_t>(c.rank())]));
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = value(c.rank(), i);
  std::vector<float> all(static_cast<size_t>(std::accumulate(counts.begin(), counts.end(), int64_t{0})));
  c.all_gather(mine, all, counts);
  size_t at = 0;
  for (int r = 0; r < c.size(); ++r) {
    for (int64_t i = 0; i < counts[static_cast<size_t>(r)]; ++i) ASSERT_EQ(all[at++], value(r, static_cast<size_t>(i)));
  }
}

TEST(Mpi, BroadcastAndBarrier) {
  Collective& c = *world();
  for (int root = 0; root < c.size(); ++root) {
    std::vector<std::byte> data(37, std::byte{static_cast<unsigned char>(c.rank())});
    c.broadcast(data, root);
    for (std::byte b : data) ASSERT_EQ(b, std::byte{static_cast<unsigned char>(root)});
    c.barrier();
  }
}

TEST(Mpi, SplitFormsSubGroups) {
  MpiCollective& w = *world();
  // Even and odd ranks: two groups (one, when there is a single rank).
  const auto group = w.split(w.rank() % 2, w.rank());
  EXPECT_EQ(group->size(), (w.size() + 1 - w.rank() % 2) / 2);
  EXPECT_EQ(group->rank(), w.rank() / 2);
  std::vector<float> one = {1.0f};
  group->all_reduce_sum(one);
  EXPECT_EQ(one[0], static_cast<float>(group->size()));
}

// The latency of one all-reduce of a llama-1b hidden state (2048 floats, 8 KiB), back to back
// after a barrier: what the collective costs apart from the shards' compute (a stage's own
// figure includes waiting for the slowest shard). Printed, not bounded (shared machines); the
// sums are checked. bench/tp-bench.sh runs it with a count: --gtest_filter=*Latency* plus
// HEARTH_MPI_LATENCY_ROUNDS.
TEST(Mpi, AllReduceLatency) {
  Collective& c = *world();
  const char* env = std::getenv("HEARTH_MPI_LATENCY_ROUNDS");
  const int rounds = env != nullptr ? std::max(1, std::atoi(env)) : 200;
  std::vector<float> data(2048);
  std::vector<double> us;
  c.barrier();
  for (int round = 0; round < rounds; ++round) {
    for (size_t i = 0; i < data.size(); ++i) data[i] = value(c.rank(), i);
    const auto start = std::chrono::steady_clock::now();
    c.all_reduce_sum(data);
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
    float expected = 0.0f;
    for (int r = 0; r < c.size(); ++r) expected += value(r, 5);
    ASSERT_EQ(data[5], expected);
  }
  std::sort(us.begin(), us.end());
  const double mean = std::accumulate(us.begin(), us.end(), 0.0) / static_cast<double>(us.size());
  if (c.rank() == 0) std::printf("[ mpi latency ] %d ranks: all-reduce of 2048 floats: median %.1f us, mean %.1f us, p90 %.1f us over %d\n",
              c.size(), us[us.size() / 2], mean, us[us.size() * 9 / 10], rounds);
}

// A synthetic model (grouped-query, Q8_0), each rank its own copy.
std::filesystem::path synth_model(int rank) {
  engine::SynthOptions options;
  options.shape.name = "tp-mpi";
  options.shape.n_head = 6;
  options.shape.n_head_kv = 3;
  options.shape.n_embd = 384;
  options.shape.n_layer = 3;
  options.shape.n_ff = 768;
  options.shape.n_vocab = 2048;
  options.type = DType::Q8_0;
  options.seed = 7;
  options.n_threads = 1;
  options.force = true;
  const auto path = std::filesystem::temp_directory_path() / fmt::format("hearth-test-tp-mpi-{}-{}.gguf", ::getppid(), rank);
  engine::synthesize_model(options, path);
  return path;
}

// A prompt then greedy steps through `forward`; every step's logits, concatenated.
template <class Forward>
std::vector<float> run_steps(Forward&& forward, size_t vocab) {
  std::vector<float> all, logits;
  std::vector<engine::Token> tokens = {5, 77, 901, 1500, 33, 2047, 12};
  std::vector<kernels::KvSlot> slots;
  std::vector<int32_t> rows;
  for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i) slots.push_back({0, i}), rows.push_back(i);
  forward(engine::StageInput{.tokens = tokens, .hidden = {}, .slots = slots, .output_rows = rows}, logits);
  all = logits;
  for (int32_t s = 0; s < 6; ++s) {
    const engine::Token t = static_cast<engine::Token>(
        std::max_element(logits.end() - static_cast<std::ptrdiff_t>(vocab), logits.end()) - (logits.end() - static_cast<std::ptrdiff_t>(vocab)));
    const kernels::KvSlot slot{0, static_cast<int32_t>(tokens.size()) + s};
    const int32_t row = 0;
    forward(engine::StageInput{.tokens = std::span(&t, 1), .hidden = {}, .slots = std::span(&slot, 1),
                               .output_rows = std::span(&row, 1)},
            logits);
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

// A tensor-parallel stage over the MPI ranks (rank 0 leads, the others follow its steps, as
// `mpirun hearth run --tp N` does) gives the same bits as the same shards as threads of one
// process, and the logits of one device: within rounding joined by sums, bit for bit joined by
// gathers.
void same_bits_as_in_process_shards_and_one_device(engine::TpJoin join) {
  MpiCollective& w = *world();
  // The synthetic model's 3 KV heads cut into 2 or 3 shards (4 ranks run the pipeline test).
  if (w.size() > 3) GTEST_SKIP() << "3 KV heads do not cut into " << w.size() << " shards";
  const std::filesystem::path path = synth_model(w.rank());
  const gguf::GgufFile file = gguf::GgufFile::open(path);
  const engine::ModelConfig config = engine::ModelConfig::from_gguf(file);
  const std::vector<double> shares = w.size() == 2 ? std::vector<double>{2, 1} : std::vector<double>{};
  const auto slices = engine::tensor_slices(config, w.size(), shares, engine::slice_granularity_of(file, config));
  engine::StageOptions options;
  options.n_ctx = 32;
  options.tp_join = join;
  const auto vocab = static_cast<size_t>(config.n_vocab);

  kernels::CpuBackend backend(1);
  engine::StageOptions o = options;
  o.tp_comm = &w;
  o.tp_slice = slices[static_cast<size_t>(w.rank())];
  if (w.rank() == 0) lead_steps(o, w);
  engine::Stage stage(file, config, backend, 0, config.n_layer, o);
  if (w.rank() != 0) {
    follow_steps(stage, w);
    std::filesystem::remove(path);
    return;
  }
  const std::vector<float> mpi = run_steps([&](const engine::StageInput& in, std::vector<float>& out) { stage.forward(in, out); }, vocab);
  stop_followers(w);

  // The same shards as threads.
  auto ranks = make_in_process_group(w.size());
  std::vector<std::unique_ptr<kernels::CpuBackend>> backends;
  std::vector<std::unique_ptr<engine::Stage>> stages(static_cast<size_t>(w.size()));
  for (int r = 0; r < w.size(); ++r) backends.push_back(std::make_unique<kernels::CpuBackend>(1));
  std::vector<std::thread> threads;
  for (int r = 1; r < w.size(); ++r) {
    threads.emplace_back([&, r] {
      const auto i = static_cast<size_t>(r);
      engine::StageOptions so = options;
      so.tp_comm = ranks[i].get();
      so.tp_slice = slices[i];
      stages[i] = std::make_unique<engine::Stage>(file, config, *backends[i], 0, config.n_layer, so);
      follow_steps(*stages[i], *ranks[i]);
    });
  }
  engine::StageOptions so = options;
  so.tp_comm = ranks[0].get();
  so.tp_slice = slices[0];
  lead_steps(so, *ranks[0]);
  stages[0] = std::make_unique<engine::Stage>(file, config, *backends[0], 0, config.n_layer, so);
  const std::vector<float> threaded =
      run_steps([&](const engine::StageInput& in, std::vector<float>& out) { stages[0]->forward(in, out); }, vocab);
  stop_followers(*ranks[0]);
  for (auto& t : threads) t.join();
  EXPECT_EQ(mpi, threaded);

  kernels::CpuBackend one_backend(1);
  engine::StageOptions whole = options;
  whole.tp_join = engine::TpJoin::SumPartials;
  engine::Stage one(file, config, one_backend, 0, config.n_layer, whole);
  const std::vector<float> single = run_steps([&](const engine::StageInput& in, std::vector<float>& out) { one.forward(in, out); }, vocab);
  double err = 0.0, norm = 0.0;
  for (size_t i = 0; i < single.size(); ++i) {
    err += (double(mpi[i]) - single[i]) * (double(mpi[i]) - single[i]);
    norm += double(single[i]) * single[i];
  }
  std::printf("[ mpi tp ] %d ranks joined by %s: %zu logits, NMSE against one device %.2g\n", w.size(),
              engine::tp_join_name(join), single.size(), err / norm);
  EXPECT_LE(err / norm, 1e-8);
  if (join == engine::TpJoin::GatherSlices) {
    EXPECT_EQ(mpi, single);
  }
  std::filesystem::remove(path);
}

TEST(MpiTensorParallel, SameBitsAsInProcessShardsAndOneDevice) {
  same_bits_as_in_process_shards_and_one_device(engine::TpJoin::SumPartials);
}

TEST(MpiTensorParallel, JoinedByGathersBitForBitOneDevice) {
  same_bits_as_in_process_shards_and_one_device(engine::TpJoin::GatherSlices);
}

// Pipeline stages of tensor-parallel groups over the ranks (shard/mpi_pipeline.h), the stages
// linked by MPI point-to-point: 2 ranks make 2 stages of 1 shard, 3 ranks 3 stages, 4 ranks 2
// stages of 2 shards (joined by gathers). The logits are one device's bit for bit.
TEST(MpiPipeline, StagesOfGroupsGiveOneDevicesBits) {
  MpiCollective& w = *world();
  const std::filesystem::path path = synth_model(w.rank());
  const gguf::GgufFile file = gguf::GgufFile::open(path);
  const engine::ModelConfig config = engine::ModelConfig::from_gguf(file);
  const int tp = w.size() >= 4 ? 2 : 1;
  if (w.size() % tp != 0 || w.size() / tp > config.n_layer) GTEST_SKIP() << w.size() << " ranks";
  const MpiGrid grid = mpi_grid(w.rank(), w.size(), tp, config.n_layer);
  const auto group = w.split(grid.stage, grid.shard);
  const auto slices = engine::tensor_slices(config, tp, {}, engine::slice_granularity_of(file, config));
  engine::StageOptions o;
  o.n_ctx = 32;
  if (tp > 1) {
    o.tp_join = engine::TpJoin::GatherSlices;
    o.tp_comm = group.get();
    o.tp_slice = slices[static_cast<size_t>(grid.shard)];
    if (grid.leader()) lead_steps(o, *group);
  }
  if (w.rank() == 0 && grid.stages > 1) lead_pipeline(o, w, grid);
  kernels::CpuBackend backend(1);
  engine::Stage stage(file, config, backend, grid.first_layer(grid.stage, config.n_layer),
                      grid.first_layer(grid.stage + 1, config.n_layer), o);
  const auto vocab = static_cast<size_t>(config.n_vocab);
  if (w.rank() != 0) {
    if (grid.leader()) {
      relay_pipeline(stage, w, grid);
      if (tp > 1) stop_followers(*group);
    } else {
      follow_steps(stage, *group);
    }
    std::filesystem::remove(path);
    return;
  }
  const std::vector<float> piped = run_steps([&](const engine::StageInput& in, std::vector<float>& out) { stage.forward(in, out); }, vocab);
  stop_pipeline(w, grid);
  if (tp > 1) stop_followers(*group);
  kernels::CpuBackend one_backend(1);
  engine::StageOptions whole;
  whole.n_ctx = 32;
  engine::Stage one(file, config, one_backend, 0, config.n_layer, whole);
  const std::vector<float> single = run_steps([&](const engine::StageInput& in, std::vector<float>& out) { one.forward(in, out); }, vocab);
  std::printf("[ mpi pipeline ] %d stages of %d shards: %zu logits, %s one device's\n", grid.stages, grid.shards,
              single.size(), piped == single ? "bit for bit" : "NOT");
  EXPECT_EQ(piped, single);
  std::filesystem::remove(path);
}

// The leader of an mpirun pipeline (LocalExecutor over stage 0) asks the last stage, another
// process, for the greedy candidate (candidate_row_width(1) floats a row) instead of the
// vocabulary's logits, and samples the tokens one device's logits give.
TEST(MpiPipeline, LeaderSamplesFromTheLastStagesCandidates) {
  MpiCollective& w = *world();
  const std::filesystem::path path = synth_model(w.rank());
  const gguf::GgufFile file = gguf::GgufFile::open(path);
  const engine::ModelConfig config = engine::ModelConfig::from_gguf(file);
  if (w.size() > config.n_layer) GTEST_SKIP() << w.size() << " ranks";
  const MpiGrid grid = mpi_grid(w.rank(), w.size(), 1, config.n_layer);
  engine::StageOptions o;
  o.n_ctx = 32;
  std::vector<size_t> returned;  // floats the last stage sent back, per step
  if (w.rank() == 0) {
    lead_pipeline(o, w, grid);
    o.rest_of_pipeline = [inner = o.rest_of_pipeline, &returned](const engine::StageInput& in, std::vector<float>& out) {
      inner(in, out);
      returned.push_back(out.size());
    };
  }
  kernels::CpuBackend backend(1);
  engine::Stage stage(file, config, backend, grid.first_layer(grid.stage, config.n_layer),
                      grid.first_layer(grid.stage + 1, config.n_layer), o);
  if (w.rank() != 0) {
    relay_pipeline(stage, w, grid);
    std::filesystem::remove(path);
    return;
  }
  engine::SamplingParams greedy;
  greedy.temperature = 0.0f;
  const auto generate = [&](engine::Stage& st) {
    engine::LocalExecutor executor(st);
    std::vector<engine::Token> tokens = {5, 77, 901, 1500, 33};
    for (int step = 0; step < 4; ++step) {
      const int32_t pos0 = step == 0 ? 0 : static_cast<int32_t>(tokens.size()) - 1;
      const std::span<const engine::Token> feed = std::span<const engine::Token>(tokens).subspan(static_cast<size_t>(pos0));
      const engine::BatchEntry e{.slot = 0, .pos0 = pos0, .tokens = feed, .sample = true,
                                 .begin = step == 0 ? &greedy : nullptr};
      executor.submit(std::span(&e, 1));
      tokens.push_back(executor.collect().at(0).token);
    }
    return tokens;
  };
  const std::vector<engine::Token> piped = generate(stage);
  stop_pipeline(w, grid);
  kernels::CpuBackend one_backend(1);
  engine::StageOptions whole;
  whole.n_ctx = 32;
  engine::Stage one(file, config, one_backend, 0, config.n_layer, whole);
  EXPECT_EQ(piped, generate(one));
  ASSERT_EQ(returned.size(), 4u);
  for (size_t n : returned) EXPECT_EQ(n, static_cast<size_t>(engine::candidate_row_width(1)));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace hearth::shard

int main(int argc, char** argv) {
  hearth::shard::MpiRuntime mpi(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  // Only rank 0 prints; every rank runs every test.
  if (mpi.world_rank() != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  hearth::shard::world().reset();
  return rc;
}
