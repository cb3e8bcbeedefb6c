// The pipeline across workers: greedy tokens through 2, 3 and 4 stages (workers in this process
// over real TCP, and worker processes) equal the single-process tokens for the golden prompts;
// the error f16 and q8_0 activations cost; a wrong key is refused; thousands of hostile
// connections and frames leave a worker serving its real coordinator; a killed worker is
// reported within 3 seconds and the coordinator stays up.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/generate/model.h"
#include "engine/generate/scheduler.h"
#include "kernels/cpu/cpu_backend.h"
#include "shard/local_cluster.h"
#include "shard/pipeline.h"
#include "shard/probe.h"
#include "shard/stage_assignment.h"
#include "shard/weights.h"
#include "shard/wire.h"
#include "kernels/registry.h"
#include "shard/worker.h"
#include "tests/support/devices.h"
#include "tests/support/fixtures.h"
#include "transport/byte_buffer.h"
#include "transport/handshake.h"
#include "transport/heartbeat.h"
#include "transport/log.h"
#include "transport/tcp_link.h"

namespace hearth::shard {
namespace {

using nlohmann::json;
using engine::Token;

std::filesystem::path smollm2() { return test::models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"; }

std::vector<std::vector<Token>> golden_prompts() {
  const json fixture = json::parse(test::read_file_text(test::fixtures_dir() / "golden" / "smollm2.json"));
  std::vector<std::vector<Token>> prompts;
  for (const json& p : fixture["prompts"]) prompts.push_back(p["tokens"].get<std::vector<Token>>());
  return prompts;
}

struct Outcome {
  std::vector<Token> tokens;
  std::string finish_reason;
  std::string error;
  std::chrono::steady_clock::time_point finished_at;
};

// Runs all prompts at once through a scheduler on `executor`; greedy, `n_tokens` each.
std::vector<Outcome> run_all(engine::BatchExecutor& executor, const engine::Tokenizer& tokenizer,
                             const std::vector<std::vector<Token>>& prompts, int32_t n_tokens,
                             std::function<void(size_t, size_t)> on_token = {}) {
  engine::Scheduler scheduler(executor, tokenizer, {});
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<Outcome> outcomes(prompts.size());
  size_t done = 0;
  std::vector<engine::SequenceRequest> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    engine::SequenceRequest r;
    r.prompt = prompts[i];
    r.options.max_tokens = n_tokens;
    r.options.sampling.temperature = 0.0f;
    r.options.ignore_eos = true;
    r.on_token = [&, i](const engine::TokenEvent& e) {
      size_t count;
      {
        std::lock_guard<std::mutex> lock(mutex);
        outcomes[i].tokens.push_back(e.sampled.token);
        count = outcomes[i].tokens.size();
      }
      if (on_token) on_token(i, count);
    };
    r.on_finish = [&, i](const engine::SequenceResult& result) {
      std::lock_guard<std::mutex> lock(mutex);
      outcomes[i].finish_reason = result.finish_reason;
      outcomes[i].error = result.error;
      outcomes[i].finished_at = std::chrono::steady_clock::now();
      ++done;
      cv.notify_all();
    };
    requests.push_back(std::move(r));
  }
  EXPECT_TRUE(scheduler.submit(std::move(requests)).has_value());
  std::unique_lock<std::mutex> lock(mutex);
  EXPECT_TRUE(cv.wait_for(lock, std::chrono::minutes(5), [&] { return done == prompts.size(); }));
  return outcomes;
}

// Workers in this process, each listening on a loopback port.
class InProcessCluster {
 public:
  InProcessCluster(size_t n, const transport::ClusterKey& key) {
    for (size_t i = 0; i < n; ++i) {
      WorkerOptions o;
      o.threads = 1;
      o.memory_bytes = 1ull << 30;
      workers_.push_back(std::make_unique<Worker>(o, key));
      threads_.emplace_back([w = workers_.back().get()] { w->run(); });
    }
  }
  ~InProcessCluster() {
    for (auto& w : workers_) w->stop();
    for (auto& t : threads_) t.join();
  }
  std::vector<std::string> addresses() const {
    std::vector<std::string> a;
    for (const auto& w : workers_) a.push_back(w->address());
    return a;
  }
  Worker& worker(size_t i) { return *workers_[i]; }

 private:
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
};

std::vector<PipelineStageSpec> even_stages(const std::vector<std::string>& addresses, int32_t n_layer) {
  std::vector<PipelineStageSpec> stages;
  const int32_t n = static_cast<int32_t>(addresses.size());
  for (int32_t i = 0; i < n; ++i) stages.push_back({addresses[static_cast<size_t>(i)], n_layer * i / n, n_layer * (i + 1) / n});
  return stages;
}

TEST(WeightRanges, MergeAndSubtract) {
  EXPECT_EQ(merge_ranges({{10, 5}, {0, 3}, {3, 2}, {14, 6}, {30, 0}}), (std::vector<ByteRange>{{0, 5}, {10, 10}}));
  const std::vector<ByteRange> want = {{0, 100}, {200, 50}};
  EXPECT_EQ(subtract_ranges(want, {}), want);
  EXPECT_EQ(subtract_ranges(want, {{0, 100}, {200, 50}}), std::vector<ByteRange>{});
  EXPECT_EQ(subtract_ranges(want, {{10, 20}, {90, 120}}), (std::vector<ByteRange>{{0, 10}, {30, 60}, {210, 40}}));
  EXPECT_EQ(total_bytes({{0, 10}, {30, 60}}), 70u);
  EXPECT_EQ(ranges_from_json(json::parse("[[5, 5], [0, 5]]"), 100), (std::vector<ByteRange>{{0, 10}}));
  EXPECT_THROW(ranges_from_json(json::parse("[[90, 20]]"), 100), WireError);
  EXPECT_THROW(ranges_from_json(json::parse("[[1]]"), 100), WireError);
  EXPECT_THROW(ranges_from_json(json::parse("{}"), 100), WireError);
}

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(smollm2())) GTEST_SKIP() << "default model not fetched (scripts/get-model.sh smollm2)";
    transport::set_log_sink([](std::string_view) {});  // refusals are expected here; keep the output readable
    engine::ModelOptions o;
    o.n_ctx = 256;
    o.n_seq = 9;
    model_ = std::make_unique<engine::Model>(smollm2(), backend_, o);
    prompts_ = golden_prompts();
  }
  void TearDown() override { transport::set_log_sink({}); }

  // The single-process tokens (the scheduler on one Stage; test_scheduler shows these equal a
  // greedy loop over Stage::forward).
  const std::vector<Outcome>& reference() {
    if (reference_.empty()) {
      engine::LocalExecutor local(model_->stage());
      reference_ = run_all(local, model_->tokenizer(), prompts_, kTokens);
    }
    return reference_;
  }

  PipelineOptions options() const {
    PipelineOptions o;
    o.n_ctx = 256;
    o.n_seq = 9;
    return o;
  }

  static constexpr int32_t kTokens = 16;
  kernels::CpuBackend backend_{2};
  std::unique_ptr<engine::Model> model_;
  std::vector<std::vector<Token>> prompts_;
  std::vector<Outcome> reference_;
};

TEST_F(PipelineTest, TwoThreeAndFourStagesGiveTheSingleProcessTokens) {
  const std::vector<Outcome>& want = reference();
  for (size_t n_stages : {2u, 3u, 4u}) {
    SCOPED_TRACE(fmt::format("{} stages", n_stages));
    const transport::ClusterKey key = transport::generate_cluster_key();
    InProcessCluster cluster(n_stages, key);
    PipelineExecutor pipeline(smollm2(), model_->config(), even_stages(cluster.addresses(), model_->config().n_layer), key,
                              options());
    EXPECT_EQ(pipeline.max_in_flight(), static_cast<int32_t>(n_stages));
    const std::vector<Outcome> got = run_all(pipeline, model_->tokenizer(), prompts_, kTokens);
    for (size_t i = 0; i < prompts_.size(); ++i) {
      EXPECT_EQ(got[i].finish_reason, "length") << got[i].error;
      EXPECT_EQ(got[i].tokens, want[i].tokens) << "prompt " << i;
    }
    // Token ids to stage 0, a few bytes of tokens back: no vocabulary of floats on the wire.
    EXPECT_LT(pipeline.bytes_received(), 64u * prompts_.size() * kTokens);
    // Every stage reports the time it computed (the server's per-stage busy metric).
    const std::vector<double> busy = pipeline.stage_busy_seconds();
    ASSERT_EQ(busy.size(), n_stages);
    for (double b : busy) EXPECT_GT(b, 0.0);
  }
}

// The KV cache type travels in the stage assignment: with q8_0 caches on two worker stages the
// tokens are those of one process with a q8_0 cache, which differ from the f16 ones (so the
// workers did not keep their default).
TEST_F(PipelineTest, AQ8_0KvCacheReachesTheWorkers) {
  engine::ModelOptions o;
  o.n_ctx = 256;
  o.n_seq = 9;
  o.kv_type = DType::Q8_0;
  engine::Model q8_model(smollm2(), backend_, o);
  engine::LocalExecutor local(q8_model.stage());
  const std::vector<Outcome> want = run_all(local, model_->tokenizer(), prompts_, kTokens);
  size_t differ_from_f16 = 0;
  for (size_t i = 0; i < prompts_.size(); ++i) differ_from_f16 += want[i].tokens != reference()[i].tokens;
  ASSERT_GT(differ_from_f16, 0u) << "q8_0 and f16 caches give the same tokens: the test would not see the type";

  const transport::ClusterKey key = transport::generate_cluster_key();
  InProcessCluster cluster(2, key);
  PipelineOptions po = options();
  po.kv_type = DType::Q8_0;
  PipelineExecutor pipeline(smollm2(), model_->config(), even_stages(cluster.addresses(), model_->config().n_layer), key, po);
  const std::vector<Outcome> got = run_all(pipeline, model_->tokenizer(), prompts_, kTokens);
  for (size_t i = 0; i < prompts_.size(); ++i) EXPECT_EQ(got[i].tokens, want[i].tokens) << "prompt " << i;
}

TEST_F(PipelineTest, WorkerProcessesGiveTheSingleProcessTokens) {
  const std::vector<Outcome>& want = reference();
  for (int n_stages : {2, 3, 4}) {
    SCOPED_TRACE(fmt::format("{} worker processes", n_stages));
    LocalCluster cluster(HEARTH_BINARY, n_stages, 1);
    const std::vector<PipelineStageSpec> stages =
        plan_stages(model_->file(), model_->config(), local_cluster_spec(n_stages, 8ull << 30, 10.0, cluster.addresses()), [] {
          PlanOptions p;
          p.n_ctx = 256;
          p.n_seq = 9;
          p.allow_drop_nodes = false;
          return p;
        }());
    ASSERT_EQ(stages.size(), static_cast<size_t>(n_stages));
    PipelineExecutor pipeline(smollm2(), model_->config(), stages, cluster.key(), options());
    const std::vector<Outcome> got = run_all(pipeline, model_->tokenizer(), prompts_, kTokens);
    for (size_t i = 0; i < prompts_.size(); ++i) EXPECT_EQ(got[i].tokens, want[i].tokens) << "prompt " << i;
  }
}

// A cluster mixing devices: a worker process on the Vulkan backend (the first usable device:
// lavapipe in CI) for the first half of the layers, one on the CPU for the rest, against the
// single-process CPU tokens. Free-running greedy text is only as stable as its closest call: a
// near-tie taken the other way changes the rest of a text (llama.cpp against itself changes 4
// of these 9 SmolLM2 texts), and the Vulkan shaders, not bit-identical to the CPU's kernels,
// take some. So what is asserted is the golden test's near-tie rule: wherever the mixed
// pipeline's text first leaves the CPU's, and the CPU's still equals llama.cpp's, llama.cpp's two
// best logits there are within kTieMargin (0.25) of each other — a wrong kernel departs at a
// clear choice. (Measured on lavapipe, 4 prompts x 16 tokens: 1 text identical, 3 departing at
// margins 0.19, 0.12, 0.14; the CPU's text equals llama.cpp's on 3.) Four prompts: lavapipe runs
// a layer slowly.
TEST_F(PipelineTest, AVulkanStageBesideACpuStageGivesTheCpuTokens) {
  std::string why;
  const std::string vulkan = test::first_usable_device("vulkan", why);
  if (vulkan.empty()) GTEST_SKIP() << why;
  constexpr size_t kPrompts = 4;
  const std::vector<std::vector<Token>> prompts(prompts_.begin(), prompts_.begin() + kPrompts);
  const json fixture = json::parse(test::read_file_text(test::fixtures_dir() / "golden" / "smollm2.json"));
  engine::LocalExecutor local(model_->stage());
  const std::vector<Outcome> cpu = run_all(local, model_->tokenizer(), prompts, kTokens);
  LocalCluster cluster(HEARTH_BINARY, 1, {vulkan, "cpu"});
  PipelineExecutor pipeline(smollm2(), model_->config(), even_stages(cluster.addresses(), model_->config().n_layer),
                            cluster.key(), options());
  const std::vector<Outcome> mixed = run_all(pipeline, model_->tokenizer(), prompts, kTokens);
  constexpr double kTieMargin = 0.25;
  int mixed_equals_cpu = 0, cpu_equals_llama = 0;
  for (size_t i = 0; i < kPrompts; ++i) {
    ASSERT_EQ(mixed[i].tokens.size(), static_cast<size_t>(kTokens)) << mixed[i].error;
    const auto llama = fixture["prompts"][i]["greedy"].get<std::vector<Token>>();
    const auto margin = fixture["prompts"][i]["greedy_margin"].get<std::vector<double>>();
    mixed_equals_cpu += mixed[i].tokens == cpu[i].tokens;
    cpu_equals_llama += std::equal(cpu[i].tokens.begin(), cpu[i].tokens.end(), llama.begin());
    const auto t = static_cast<size_t>(
        std::mismatch(mixed[i].tokens.begin(), mixed[i].tokens.end(), cpu[i].tokens.begin()).first - mixed[i].tokens.begin());
    if (t == mixed[i].tokens.size()) {
      std::printf("[ pipeline ] prompt %zu: %s + cpu gives the CPU's %d tokens\n", i, vulkan.c_str(), kTokens);
      continue;
    }
    const bool judged = std::equal(cpu[i].tokens.begin(), cpu[i].tokens.begin() + static_cast<std::ptrdiff_t>(t) + 1,
                                   llama.begin());
    std::printf("[ pipeline ] prompt %zu: %s + cpu leaves the CPU's text at token %zu (llama.cpp's margin there %.3g%s)\n", i,
                vulkan.c_str(), t, margin[t], judged ? "" : ", not judged: the CPU had left llama.cpp's text");
    if (judged) {
      EXPECT_LT(margin[t], kTieMargin) << "prompt " << i << " left the CPU's text at a clear choice, token " << t;
    }
  }
  std::printf("[ pipeline ] %zu prompts, %d tokens: %s + cpu equals the CPU's text on %d, the CPU equals llama.cpp's on %d\n",
              kPrompts, kTokens, vulkan.c_str(), mixed_equals_cpu, cpu_equals_llama);
}

TEST_F(PipelineTest, WireDtypesCostABoundedLogitError) {
  // Two stages in this process, hidden states through the wire codec between them, against the
  // logits of one stage over every layer at every position of every golden prompt.
  const engine::ModelConfig& c = model_->config();
  const gguf::GgufFile& file = model_->file();
  engine::StageOptions so;
  so.n_ctx = 256;
  engine::Stage whole(file, c, backend_, 0, c.n_layer, so);
  engine::Stage first(file, c, backend_, 0, c.n_layer / 2, so);
  engine::Stage second(file, c, backend_, c.n_layer / 2, c.n_layer, so);
  for (WireDtype dtype : {WireDtype::F32, WireDtype::F16, WireDtype::Q8_0}) {
    double nmse_sum = 0, nmse_max = 0;
    int positions = 0, top1_same = 0;
    for (const auto& prompt : prompts_) {
      const int32_t n = static_cast<int32_t>(prompt.size());
      std::vector<kernels::KvSlot> slots;
      std::vector<int32_t> rows;
      for (int32_t t = 0; t < n; ++t) {
        slots.push_back({0, t});
        rows.push_back(t);
      }
      std::vector<float> want, hidden, got;
      whole.forward({.tokens = prompt, .hidden = {}, .slots = slots, .output_rows = rows}, want);
      first.forward({.tokens = prompt, .hidden = {}, .slots = slots, .output_rows = {}}, hidden);
      std::vector<std::byte> wire;
      encode_hidden(dtype, hidden, c.n_embd, wire);
      std::vector<float> received(hidden.size());
      decode_hidden(dtype, wire, c.n_embd, received);
      second.forward({.tokens = {}, .hidden = received, .slots = slots, .output_rows = rows}, got);
      const size_t v = static_cast<size_t>(c.n_vocab);
      for (int32_t t = 0; t < n; ++t) {
        const float* a = want.data() + static_cast<size_t>(t) * v;
        const float* b = got.data() + static_cast<size_t>(t) * v;
        double err = 0, ref = 0;
        for (size_t k = 0; k < v; ++k) {
          err += (double(a[k]) - b[k]) * (double(a[k]) - b[k]);
          ref += double(a[k]) * a[k];
        }
        const double nmse = err / ref;
        nmse_sum += nmse;
        nmse_max = std::max(nmse_max, nmse);
        top1_same += std::max_element(a, a + v) - a == std::max_element(b, b + v) - b;
        ++positions;
      }
    }
    const double agreement = double(top1_same) / positions;
    std::printf("wire %-4s: %zu bytes/token/hop, logits NMSE mean %.3g max %.3g, top-1 agreement %d/%d (%.1f%%)\n",
                wire_dtype_name(dtype), wire_row_bytes(dtype, c.n_embd), nmse_sum / positions, nmse_max, top1_same, positions,
                100.0 * agreement);
    if (dtype == WireDtype::F32) {
      EXPECT_EQ(nmse_max, 0.0);  // exact: the same floats cross the cut
      EXPECT_EQ(top1_same, positions);
    } else if (dtype == WireDtype::F16) {
      // Measured on SmolLM2 (bounds set ~2.5x above): mean NMSE 1.1e-3, max 1.2e-2, top-1 98.3%.
      EXPECT_LT(nmse_sum / positions, 3e-3);
      EXPECT_GE(agreement, 0.96);
    } else {
      // Measured: mean NMSE 5.6e-3, max 5.5e-2, top-1 95.7%.
      EXPECT_LT(nmse_sum / positions, 1.5e-2);
      EXPECT_GE(agreement, 0.92);
    }
  }
}

TEST_F(PipelineTest, AWrongClusterKeyIsRefusedAtTheHandshake) {
  const transport::ClusterKey key = transport::generate_cluster_key();
  InProcessCluster cluster(1, key);
  try {
    PipelineExecutor pipeline(smollm2(), model_->config(), even_stages(cluster.addresses(), model_->config().n_layer),
                              transport::generate_cluster_key(), options());
    FAIL() << "a coordinator with another key was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("authentication"), std::string::npos) << e.what();
  }
  // The worker counts the refusal on its connection's thread, which may finish after the
  // coordinator has already seen the link fail.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (cluster.worker(0).refused() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(cluster.worker(0).refused(), 1u);
}

TEST_F(PipelineTest, AWorkerWithoutTheModelSaysSoAndStaysUp) {
  const transport::ClusterKey key = transport::generate_cluster_key();
  InProcessCluster cluster(1, key);
  StageAssignment a;
  a.session = 42;
  a.first = 0;
  a.last = model_->config().n_layer;
  a.n_ctx = 64;
  a.model_name = "elsewhere.gguf";
  a.model_path = "/nonexistent/elsewhere.gguf";
  a.model_size = 12345;
  a.model_identity = std::string(64, 'a');
  auto link = transport::tcp_connect(cluster.addresses()[0], transport::Timeout(5000), pipeline_frame_limits());
  transport::HandshakeOptions hs;
  hs.capabilities = json{{"role", "coordinator"}}.dump();
  transport::handshake(*link, transport::Role::initiator, key, hs);
  send_json(*link, msg::kLoadStage, a.to_json(), transport::Timeout(5000));
  transport::ByteBuffer buffer;
  const auto reply = link->receive(buffer, transport::Timeout(10000));
  ASSERT_TRUE(reply.has_value());
  ASSERT_EQ(reply->type, msg::kStageReady);
  const json ready = parse_json(reply->payload, "StageReady");
  EXPECT_FALSE(ready["ok"].get<bool>());
  EXPECT_NE(ready["error"].get<std::string>().find("no copy of the model elsewhere.gguf"), std::string::npos) << ready.dump();
  // The worker still serves a real pipeline afterwards.
  PipelineExecutor pipeline(smollm2(), model_->config(), even_stages(cluster.addresses(), model_->config().n_layer), key,
                            options());
  const std::vector<Outcome> got = run_all(pipeline, model_->tokenizer(), {prompts_[0]}, kTokens);
  EXPECT_EQ(got[0].tokens, reference()[0].tokens);
}

// A worker on a GPU backend tells planners its device's memory and bandwidth, not the host's:
// a stage's weights and cache live on the device, and decode reads them there. On lavapipe the
// device is 2 GiB of "device" memory read at well under a GB/s, where the host triad says tens.
TEST_F(PipelineTest, AGpuWorkerAdvertisesItsDevicesMemoryAndBandwidth) {
  std::string why;
  const std::string vulkan = test::first_usable_device("vulkan", why);
  if (vulkan.empty()) GTEST_SKIP() << why;
  uint64_t device_memory = 0;
  bool software = false;
  for (const kernels::BackendReport& r : kernels::list_backends()) {
    for (const kernels::DeviceInfo& d : r.devices) {
      if (d.spec() != vulkan) continue;
      device_memory = d.memory_free;
      software = test::software(d);
    }
  }
  ASSERT_GT(device_memory, 0u);
  LocalCluster cluster(HEARTH_BINARY, 1, {vulkan, "cpu"});
  const NodeSpec gpu = probe_worker(cluster.addresses()[0], cluster.key(), "gpu", transport::Timeout(10000), 0.0);
  const NodeSpec cpu = probe_worker(cluster.addresses()[1], cluster.key(), "cpu", transport::Timeout(10000), 0.0);
  EXPECT_EQ(gpu.backend, "vulkan");
  EXPECT_EQ(gpu.memory_bytes, device_memory) << "the device's memory, not the host's";
  EXPECT_GT(cpu.memory_bytes, 0u);
  EXPECT_GT(gpu.bandwidth_gbps, 0.0);
  EXPECT_GT(cpu.bandwidth_gbps, 0.0);
  std::printf("[ pipeline ] %s worker: %.2f GB/s (matrix-vector on the device); cpu worker: %.2f GB/s (triad)\n",
              vulkan.c_str(), gpu.bandwidth_gbps, cpu.bandwidth_gbps);
  // The device entry carries the measurement; the worker's other devices do not.
  int with_bandwidth = 0;
  for (const std::string& line : gpu.devices) with_bandwidth += line.find("GB/s") != std::string::npos;
  EXPECT_EQ(with_bandwidth, 1) << "only the device stages run on is measured";
  // lavapipe reads weights far slower than the host's triad: a worker that advertised the
  // triad for its device would fail here.
  if (software) {
    EXPECT_LT(gpu.bandwidth_gbps, cpu.bandwidth_gbps / 3);
  }
}

TEST_F(PipelineTest, WeightsAreStreamedOnceToWorkersWithoutTheModel) {
  const std::filesystem::path cache = std::filesystem::temp_directory_path() / fmt::format("hearth-test-cache-{}", ::getpid());
  std::filesystem::remove_all(cache);
  const transport::ClusterKey key = transport::generate_cluster_key();
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    WorkerOptions o;
    o.threads = 1;
    o.memory_bytes = 1ull << 30;
    o.cache_dir = cache / fmt::format("worker{}", i);  // two machines: two caches
    o.use_coordinator_path = false;                    // and neither sees the coordinator's file
    workers.push_back(std::make_unique<Worker>(o, key));
    threads.emplace_back([w = workers.back().get()] { w->run(); });
  }
  const std::vector<std::string> addresses = {workers[0]->address(), workers[1]->address()};
  const std::vector<PipelineStageSpec> stages = even_stages(addresses, model_->config().n_layer);
  const gguf::GgufFile& file = model_->file();
  uint64_t expected = 0;
  for (const auto& s : stages) {
    const uint64_t stage_bytes = total_bytes(stage_byte_ranges(file, model_->config(), s.first, s.last));
    EXPECT_LT(stage_bytes, std::filesystem::file_size(smollm2()));  // each stage gets only its part
    expected += stage_bytes;
  }
  {
    PipelineExecutor pipeline(smollm2(), model_->config(), stages, key, options());
    EXPECT_EQ(pipeline.weight_bytes_sent(), expected);
    const std::vector<Outcome> got = run_all(pipeline, model_->tokenizer(), prompts_, kTokens);
    for (size_t i = 0; i < prompts_.size(); ++i) {
      EXPECT_EQ(got[i].tokens, reference()[i].tokens) << "prompt " << i << ": " << got[i].finish_reason << " " << got[i].error;
    }
  }
  EXPECT_EQ(workers[0]->weight_bytes_received() + workers[1]->weight_bytes_received(), expected);
  {  // A second run (a restarted coordinator) finds everything in the caches: nothing is sent.
    PipelineExecutor again(smollm2(), model_->config(), stages, key, options());
    EXPECT_EQ(again.weight_bytes_sent(), 0u);
    const std::vector<Outcome> got = run_all(again, model_->tokenizer(), {prompts_[0]}, kTokens);
    EXPECT_EQ(got[0].tokens, reference()[0].tokens);
  }
  for (auto& w : workers) w->stop();
  for (auto& t : threads) t.join();
  std::filesystem::remove_all(cache);
}

TEST_F(PipelineTest, HostileFramesLeaveTheWorkerServingItsRealPeer) {
  const std::vector<Outcome>& want = reference();
  const transport::ClusterKey key = transport::generate_cluster_key();
  InProcessCluster cluster(2, key);
  PipelineExecutor pipeline(smollm2(), model_->config(), even_stages(cluster.addresses(), model_->config().n_layer), key,
                            options());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> frames{0};
  // The attacker: against worker 0, (a) connections that send garbage instead of a handshake,
  // (b) authenticated connections that send random or mutated pipeline frames, and (c)
  // authenticated "upstream" links for made-up sessions that send mutated Batch frames.
  std::thread attacker([&] {
    std::mt19937_64 rng(7);
    const std::string address = cluster.addresses()[0];
    const StageAssignment valid = [&] {
      StageAssignment a;
      a.session = 1;
      a.n_stages = 2;
      a.first = 0;
      a.last = 15;
      a.n_ctx = 64;
      a.model_name = "x.gguf";
      a.model_path = "/nonexistent";
      a.model_identity = "00";
      return a;
    }();
    const std::string load = valid.to_json().dump();
    engine::SamplingParams params;
    const std::vector<Token> tokens = {1, 2, 3};
    const engine::BatchEntry entry{0, 0, tokens, true, &params};
    const std::vector<std::byte> batch = encode_batch_head(9, std::span(&entry, 1), 0, WireDtype::F32);
    auto mutate = [&](std::vector<std::byte> bytes) {
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips && !bytes.empty(); ++f) bytes[rng() % bytes.size()] = static_cast<std::byte>(rng());
      if (rng() % 4 == 0) bytes.resize(rng() % (bytes.size() + 1));
      return bytes;
    };
    while (!stop && frames < 10000) {
      try {
        auto link = transport::tcp_connect(address, transport::Timeout(2000), pipeline_frame_limits());
        const int kind = static_cast<int>(rng() % 3);
        if (kind == 0) {
          std::vector<std::byte> garbage(1 + rng() % 64);
          for (auto& b : garbage) b = static_cast<std::byte>(rng());
          // Not a handshake: a user message type before Hello.
          link->send(msg::kBatch, garbage, transport::Timeout(1000));
          frames += 1;
        } else {
          transport::HandshakeOptions hs;
          hs.capabilities = kind == 1 ? json{{"role", "coordinator"}}.dump() : json{{"role", "upstream"}, {"session", rng() % 4}}.dump();
          transport::handshake(*link, transport::Role::initiator, key, hs);
          for (int i = 0; i < 4 && frames < 10000; ++i) {
            if (kind == 1) {
              const std::string text = (rng() % 2) ? load : std::string("{\"session\": \"x\"}");
              const auto bytes = mutate(std::vector<std::byte>(reinterpret_cast<const std::byte*>(text.data()),
                                                               reinterpret_cast<const std::byte*>(text.data()) + text.size()));
              link->send(rng() % 2 ? msg::kLoadStage : msg::kSampled, bytes, transport::Timeout(1000));
            } else {
              link->send(msg::kBatch, mutate(batch), transport::Timeout(1000));
            }
            frames += 1;
          }
        }
        link->close("attack over");
      } catch (const Error&) {
        frames += 1;  // the worker hung up on us: that frame was refused
      }
    }
  });
  // Meanwhile the real coordinator keeps generating, and must get the right tokens.
  int rounds = 0, rounds_under_attack = 0;
  do {
    const bool attacked = frames < 10000;
    const std::vector<Outcome> got = run_all(pipeline, model_->tokenizer(), prompts_, kTokens);
    for (size_t i = 0; i < prompts_.size(); ++i) {
      if (got[i].tokens != want[i].tokens) {
        stop = true;
        attacker.join();
        FAIL() << "round " << rounds << " prompt " << i << ": " << got[i].error;
      }
    }
    ++rounds;
    rounds_under_attack += attacked ? 1 : 0;
  } while (frames < 10000);
  stop = true;
  attacker.join();
  std::printf("%llu hostile frames on %llu refused connections while the real peer ran %d rounds correctly\n",
              static_cast<unsigned long long>(frames.load()), static_cast<unsigned long long>(cluster.worker(0).refused()),
              rounds);
  EXPECT_GE(frames.load(), 10000u);
  EXPECT_GE(rounds_under_attack, 1);
}

// A coordinator's next session (a pipeline rebuilt after another node was lost) that gives a
// worker the layers it already holds starts without loading them; the stage kept from the last
// session still has that session's KV cache, which a new session never reads: its tokens are the
// single-process ones. Other layers are loaded (and the kept ones freed first).
TEST_F(PipelineTest, ASessionWithTheSameLayersReusesTheLoadedStage) {
  const std::vector<Outcome>& want = reference();
  const transport::ClusterKey key = transport::generate_cluster_key();
  InProcessCluster cluster(2, key);
  const auto stages = even_stages(cluster.addresses(), model_->config().n_layer);
  const auto loaded = [&] { return cluster.worker(0).stages_loaded() + cluster.worker(1).stages_loaded(); };
  const auto reused = [&] { return cluster.worker(0).stages_reused() + cluster.worker(1).stages_reused(); };
  {
    PipelineExecutor first(smollm2(), model_->config(), stages, key, options());
    run_all(first, model_->tokenizer(), {prompts_.rbegin(), prompts_.rend()}, kTokens);  // other slots, other tokens
  }
  EXPECT_EQ(loaded(), 2u);
  {
    PipelineExecutor again(smollm2(), model_->config(), stages, key, options());
    EXPECT_EQ(reused(), 2u);
    EXPECT_EQ(loaded(), 2u);
    const std::vector<Outcome> got = run_all(again, model_->tokenizer(), prompts_, kTokens);
    for (size_t p = 0; p < prompts_.size(); ++p) EXPECT_EQ(got[p].tokens, want[p].tokens) << "prompt " << p;
  }
  const uint64_t before = loaded();
  std::vector<PipelineStageSpec> other = stages;
  other[0].last = other[1].first = other[0].last + 3;
  PipelineExecutor moved(smollm2(), model_->config(), other, key, options());
  EXPECT_EQ(loaded(), before + 2);
  const std::vector<Outcome> got = run_all(moved, model_->tokenizer(), {prompts_[0]}, kTokens);
  EXPECT_EQ(got[0].tokens, want[0].tokens);
}

// A stage that refuses a frame tells the stage before it why (a Close frame), and that stage
// passes the reason on to the coordinator, whose failure names it. The second stage here is a
// fake: it closes the link from worker 0 with a reason of its own when the first Batch arrives,
// and keeps its own link to the coordinator open (heartbeats only), so the reason can reach the
// coordinator only through worker 0.
TEST_F(PipelineTest, AStagesReasonForClosingReachesTheCoordinatorThroughTheStageBeforeIt) {
  const transport::ClusterKey key = transport::generate_cluster_key();
  InProcessCluster cluster(1, key);
  transport::TcpListener listener(pipeline_frame_limits());
  const std::string reason = "the fake stage refused this batch (test reason 4711)";
  std::unique_ptr<transport::TcpLink> from_coordinator, from_upstream;
  std::vector<std::unique_ptr<transport::LinkMonitor>> monitors;
  std::string fake_error;
  std::thread fake([&] {
    try {
      while (!from_coordinator || !from_upstream) {
        auto link = listener.accept(transport::Timeout(60000));
        if (!link) throw Error("nobody connected");
        transport::HandshakeOptions hs;
        hs.capabilities = json{{"backend", "cpu"}}.dump();
        const json caps = json::parse(transport::handshake(*link, transport::Role::responder, key, hs).peer_capabilities);
        monitors.push_back(std::make_unique<transport::LinkMonitor>(*link));  // heartbeats: a live stage
        if (caps.at("role") == "coordinator") {
          transport::ByteBuffer b;
          const auto m = link->receive(b, transport::Timeout(30000));
          if (!m || m->type != msg::kLoadStage) throw Error("no LoadStage from the coordinator");
          send_json(*link, msg::kStageReady, {{"ok", true}}, transport::Timeout(5000));
          from_coordinator = std::move(link);
        } else {
          from_upstream = std::move(link);
        }
      }
      transport::ByteBuffer b;
      const auto m = from_upstream->receive(b, transport::Timeout(60000));
      if (!m || m->type != msg::kBatch) throw Error("no Batch from worker 0");
      from_upstream->close(reason);
    } catch (const std::exception& e) {
      fake_error = e.what();
    }
  });
  std::vector<Outcome> got;
  std::string failure;
  try {
    const int32_t n_layer = model_->config().n_layer;
    PipelineExecutor pipeline(smollm2(), model_->config(),
                              {{cluster.addresses()[0], 0, n_layer / 2}, {listener.address(), n_layer / 2, n_layer}}, key,
                              options());
    got = run_all(pipeline, model_->tokenizer(), {prompts_[0]}, 4);
    failure = pipeline.failure();
  } catch (const std::exception& e) {
    listener.close();
    fake.join();
    FAIL() << e.what() << " / the fake stage: " << fake_error;
  }
  fake.join();
  ASSERT_EQ(fake_error, "");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].finish_reason, "error");
  EXPECT_NE(got[0].error.find(reason), std::string::npos) << got[0].error;
  EXPECT_EQ(failure.rfind("stage 0 (", 0), 0u) << failure;  // reported by worker 0: the fake never closed its own link
  EXPECT_NE(failure.find(reason), std::string::npos) << failure;
  monitors.clear();
}

TEST_F(PipelineTest, AKilledWorkerIsReportedWithinThreeSecondsAndTheCoordinatorStaysUp) {
  LocalCluster cluster(HEARTH_BINARY, 3, 1);
  PipelineExecutor pipeline(smollm2(), model_->config(), even_stages(cluster.addresses(), model_->config().n_layer),
                            cluster.key(), options());
  std::chrono::steady_clock::time_point killed_at{};
  std::once_flag once;
  // Kill the middle worker once every sequence has generated a few tokens.
  const std::vector<Outcome> got = run_all(pipeline, model_->tokenizer(), prompts_, 200, [&](size_t, size_t count) {
    if (count == 4) {
      std::call_once(once, [&] {
        killed_at = std::chrono::steady_clock::now();
        ::kill(cluster.pid(1), SIGKILL);
      });
    }
  });
  ASSERT_NE(killed_at, std::chrono::steady_clock::time_point{});
  for (const Outcome& o : got) {
    EXPECT_EQ(o.finish_reason, "error");
    EXPECT_NE(o.error.find("stage"), std::string::npos) << o.error;
    EXPECT_LT(std::chrono::duration<double>(o.finished_at - killed_at).count(), 3.0);
  }
  // The coordinator is still there: a new request gets a clear error, not a hang. (A bare
  // PipelineExecutor cannot rebuild; shard/recovery.h's can, tests/api/test_node_loss.py.)
  const std::vector<Outcome> after = run_all(pipeline, model_->tokenizer(), {prompts_[0]}, 4);
  EXPECT_EQ(after[0].finish_reason, "error");
  EXPECT_NE(after[0].error.find("cannot be served now: stage "), std::string::npos) << after[0].error;
}

}  // namespace
}  // namespace hearth::shard
