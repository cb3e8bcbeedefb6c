// `hearth bench`: llama-bench style pp/tg throughput of a model on this machine, with the
// memory-bandwidth limit of generation beside it.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "bench/memory_bandwidth.h"
#include "bench/model_bench.h"
#include "core/build_info.h"
#include "core/thread_pool.h"
#include "engine/model/model_config.h"
#include "engine/format/model_info.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/registry.h"
#include "kernels/cpu/cpu_features.h"
#include "shard/plan.h"

namespace hearth::apps {

namespace {
std::string human_size(double bytes) {
  if (bytes >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", bytes / (1024.0 * 1024 * 1024));
  return fmt::format("{:.2f} MiB", bytes / (1024.0 * 1024));
}
std::string human_params(uint64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f} B", static_cast<double>(n) / 1e9);
  return fmt::format("{:.2f} M", static_cast<double>(n) / 1e6);
}
}  // namespace

int run_bench(const BenchArgs& args) {
  if (args.output != "md" && args.output != "json" && args.output != "csv") {
    throw Error(fmt::format("unknown output format '{}' (md, json, csv)", args.output));
  }
  const int threads = args.threads > 0 ? args.threads : ThreadPool::hardware_threads();
  const gguf::GgufFile file = gguf::GgufFile::open(args.model);
  const engine::ModelConfig config = engine::ModelConfig::from_gguf(file);
  const std::unique_ptr<kernels::Backend> backend_ptr = kernels::make_backend(args.backend.spec(), {.n_threads = threads});
  kernels::Backend& backend = *backend_ptr;
  const std::string backend_desc = fmt::format(
      "{} [{}]", backend.name(), backend.name() == "cpu" ? kernels::cpu_description() : backend.device().name);

  bench::ModelBenchParams p;
  p.n_prompt = args.n_prompt;
  p.n_gen = args.n_gen;
  p.depth = args.depth;
  p.repetitions = args.repetitions;
  p.n_batch = args.n_batch;
  p.kv_type = shard::parse_plan_dtype(args.kv_type, "--kv-type");
  std::string kv_type(dtype_name(p.kv_type));  // lower case, as given: f16, f32, q8_0
  for (char& ch : kv_type) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  std::fprintf(stderr, "hearth bench: %s on %s, %d threads, %d repetitions...\n", args.model.c_str(),
               backend_desc.c_str(), threads, p.repetitions);
  // The limit of decoding: the rate the memory holding the weights is read at. On the CPU, what
  // the bench's threads read (bench/memory_bandwidth.h), interleaved with the decode steps of
  // an untimed tg pass after the timed repetitions (ModelBenchParams::read_probe: a shared
  // machine's bandwidth switches between states that last seconds); the fraction of the limit
  // is that pass's decode rate against its reads' rate (a run without tg: the bandwidth is
  // measured once after the tests). On a GPU, the device's own memory (y = a + b on the
  // device), once after the tests, on arrays sized to the device.
  const bool on_host = backend.name() == "cpu";
  std::unique_ptr<bench::ReadBandwidthProbe> probe;
  if (on_host) {
    probe = std::make_unique<bench::ReadBandwidthProbe>(threads);
    p.read_probe = [&probe] { return probe->read_once(); };
  }
  const auto results = bench::run_model_bench(file, config, backend, p);
  bench::BandwidthResult bw;
  std::string bw_method;
  if (!on_host) {
    // Three arrays of up to 512 MiB, a sixteenth of the device each at most (a small GPU).
    const size_t device_bytes = static_cast<size_t>(backend.device().memory_total);
    bw = bench::measure_device_add_bandwidth(
        backend, std::clamp<size_t>(device_bytes / 16 / 4096 * 4096, size_t{4} << 20, size_t{512} << 20));
    bw_method = "device add, y = a + b";
  } else {
    const auto tg = std::find_if(results.begin(), results.end(), [](const bench::TestResult& r) { return r.limit_pass.tokens > 0; });
    if (tg == results.end()) {
      bw = probe->measure(3);
      bw_method = fmt::format("read, {} threads", bw.threads);
    } else {
      bw.bytes_per_second = tg->limit_pass.read_bytes_per_second();
      bw_method = fmt::format("read, {} threads, {} reads of {} MiB, one after each decode step of an untimed {} pass",
                              threads, tg->limit_pass.tokens, tg->limit_pass.read_bytes / tg->limit_pass.tokens >> 20,
                              tg->name);
    }
  }
  const uint64_t bytes_per_token = bench::weight_bytes_per_token(file, config);
  const double limit = bw.bytes_per_second / static_cast<double>(bytes_per_token);
  // A test's fraction of the limit: its limit pass's where it has one.
  const auto fraction = [&](const bench::TestResult& r) {
    const double paired = r.fraction_of_limit(bytes_per_token);
    return paired > 0 ? paired : r.mean() / limit;
  };

  const auto info = engine::model_info_json(file);
  const std::string model_desc = fmt::format("{} {}", config.arch, info["file_type"].is_null() ? std::string("?") : info["file_type"].get<std::string>());
  const uint64_t params = info["parameters"].get<uint64_t>();
  const double size = static_cast<double>(info["tensor_bytes"].get<uint64_t>());

  if (args.output == "json") {
    nlohmann::ordered_json out;
    out["model"] = args.model;
    out["model_type"] = model_desc;
    out["size_bytes"] = info["tensor_bytes"];
    out["params"] = params;
    out["backend"] = backend_desc;
    out["threads"] = threads;
    out["kv_type"] = kv_type;
    out["build_commit"] = build::kCommit;
    out["memory_bandwidth_bytes_per_s"] = bw.bytes_per_second;
    out["memory_bandwidth_method"] = bw_method;
    out["weight_bytes_per_token"] = bytes_per_token;
    out["tg_limit_tokens_per_s"] = limit;
    for (const auto& r : results) {
      out["tests"].push_back({{"test", r.name},
                              {"tokens_per_s_mean", r.mean()},
                              {"tokens_per_s_sd", r.stddev()},
                              {"samples", r.tokens_per_second},
                              {"fraction_of_limit", r.name.starts_with("tg") ? fraction(r) : 0.0},
                              {"limit_pass_tokens_per_s", r.limit_pass.decode_tokens_per_second()}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  if (args.output == "csv") {
    std::printf("model,size,params,backend,threads,kv_type,test,t_s_mean,t_s_sd,build_commit\n");
    for (const auto& r : results) {
      std::printf("\"%s\",%.0f,%llu,%s,%d,%s,%s,%.3f,%.3f,%s\n", model_desc.c_str(), size,
                  static_cast<unsigned long long>(params), backend_desc.c_str(), threads, kv_type.c_str(),
                  r.name.c_str(), r.mean(), r.stddev(), build::kCommit);
    }
    return 0;
  }
  // As llama-bench does for its type_k / type_v: a KV cache column only when it is not the default.
  const bool kv_column = kv_type != "f16";
  std::printf("| model | size | params | backend | threads |%s test | t/s |\n", kv_column ? " kv |" : "");
  std::printf("| --- | ---: | ---: | --- | ---: |%s --- | ---: |\n", kv_column ? " --- |" : "");
  for (const auto& r : results) {
    std::printf("| %s | %s | %s | %s | %d |%s %s | %.2f ± %.2f |\n", model_desc.c_str(), human_size(size).c_str(),
                human_params(params).c_str(), backend_desc.c_str(), threads,
                kv_column ? fmt::format(" {} |", kv_type).c_str() : "", r.name.c_str(), r.mean(), r.stddev());
  }
  std::printf("\nbandwidth limit: %.1f GB/s measured (%s) / %s of weights per token = %.1f tokens/s",
              bw.bytes_per_second / 1e9, bw_method.c_str(), human_size(static_cast<double>(bytes_per_token)).c_str(),
              limit);
  for (const auto& r : results) {
    if (!r.name.starts_with("tg")) continue;
    std::printf("; %s reaches %.1f%% of it", r.name.c_str(), 100.0 * fraction(r));
    if (r.limit_pass.tokens > 0) {
      std::printf(" (%.2f tokens/s between the reads, against %.1f GB/s)", r.limit_pass.decode_tokens_per_second(),
                  r.limit_pass.read_bytes_per_second() / 1e9);
    }
  }
  std::printf("\nbuild: %s (%s)\n", build::kCommit, build::kBuildType);
  return 0;
}

}  // namespace hearth::apps
