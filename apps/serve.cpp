// `hearth serve`: the OpenAI-compatible HTTP API over a model on this machine. The port answers
// at once (/health: 503 while the model loads, then 200); SIGINT / SIGTERM stop it cleanly.
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "apps/commands.h"
#include "apps/stop_signals.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/generate/model.h"
#include "engine/generate/scheduler.h"
#include "engine/grammar/vocabulary.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/registry.h"
#include "server/openai_server.h"
#include "server/tool_calls.h"
#include "apps/cluster.h"
#include "shard/plan.h"

namespace hearth::apps {

namespace {

std::string read_api_key_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("cannot read the API key file {}", path));
  std::string key;
  std::getline(in, key);
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ' || key.back() == '\t')) key.pop_back();
  if (key.empty()) throw Error(fmt::format("the API key file {} is empty", path));
  return key;
}

// MemAvailable from /proc/meminfo in bytes; 0 when unknown.
uint64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

// A queued request costs no KV cache (it has no slot yet): it holds its prompt (tokens and the
// request's text, a few bytes a token) and a request thread (its stack's touched pages, its
// buffers). Budget an eighth of the memory available now at 256 KiB + 64 bytes a context token
// each, between 256 (generous: llama.cpp's server queues without a bound) and 1024.
int32_t default_queue_depth(int32_t n_ctx) {
  const uint64_t per_request = (256u << 10) + 64ull * static_cast<uint64_t>(std::max(n_ctx, 1));
  const uint64_t available = available_memory_bytes();
  if (available == 0) return 256;
  return static_cast<int32_t>(std::clamp<uint64_t>(available / 8 / per_request, 256, 1024));
}

// Raises the soft open-file limit to the hard one (every connection is a descriptor) and
// returns how many connections fit under it: what is left after 256 for the model, links and
// logs, at most 4096.
int32_t default_max_connections() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return 768;
  if (lim.rlim_cur != RLIM_INFINITY && (lim.rlim_max == RLIM_INFINITY || lim.rlim_cur < lim.rlim_max)) {
    rlimit raised = lim;
    raised.rlim_cur = lim.rlim_max == RLIM_INFINITY ? 65536 : std::min<rlim_t>(lim.rlim_max, 65536);
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  const uint64_t soft = lim.rlim_cur == RLIM_INFINITY ? 65536 : static_cast<uint64_t>(lim.rlim_cur);
  return static_cast<int32_t>(std::clamp<uint64_t>(soft > 256 ? soft - 256 : 16, 16, 4096));
}

}  // namespace

int run_serve(const ServeArgs& args) {
  if (args.parallel < 1 || args.parallel > 256) throw Error(fmt::format("--parallel {}: must be 1..256", args.parallel));
  if (args.queue < -1) throw Error(fmt::format("--queue {}: must be >= 0", args.queue));
  if (!(args.queue_timeout >= 0)) throw Error(fmt::format("--queue-timeout {}: must be >= 0 seconds", args.queue_timeout));
  if (args.tool_format != "auto" && !server::tool_format_from_name(args.tool_format)) {
    throw Error(fmt::format("--tool-format {}: expected auto, generic, hermes or llama3", args.tool_format));
  }
  if (args.stored_responses < 0) throw Error(fmt::format("--stored-responses {}: must be 0 or more", args.stored_responses));
  if (!(args.shutdown_grace >= 0 && args.shutdown_grace <= 3600)) {
    throw Error(fmt::format("--shutdown-grace {}: must be 0..3600 seconds", args.shutdown_grace));
  }
  if (!(args.idle_timeout > 0 && args.idle_timeout <= 3600)) {
    throw Error(fmt::format("--idle-timeout {}: must be more than 0 and at most 3600 seconds", args.idle_timeout));
  }
  if (args.max_connections < 0) throw Error(fmt::format("--max-connections {}: must be >= 1 (0: automatic)", args.max_connections));
  if (!args.api_key.empty() && !args.api_key_file.empty()) throw Error("give --api-key or --api-key-file, not both");

  if (args.tp.enabled() && args.cluster.enabled()) {
    throw Error("--tp with --local-stages / --workers (pipeline stages of tensor-parallel groups) is not built yet");
  }
  const int threads = args.threads > 0 ? args.threads : ThreadPool::hardware_threads();
  const auto model_options_of = [&] {
    engine::ModelOptions o;
    o.n_batch = args.batch_size;
    o.n_ctx = args.ctx_size;
    o.n_seq = args.parallel;
    o.kv_type = shard::parse_plan_dtype(args.kv_type, "--kv-type");
    o.chat_template = args.chat_template;
    // A cluster's workers hold the layers; tensor-parallel shards load their own slices.
    o.load_weights = !args.cluster.enabled() && !args.tp.enabled();
    return o;
  };
  const auto tp_stage_options = [&](const engine::Model& m, const engine::ModelOptions& o) {
    engine::StageOptions so;
    so.n_ctx = m.n_ctx();
    so.n_seq = o.n_seq;
    so.kv_type = o.kv_type;
    so.max_batch = o.n_batch;
    return so;
  };
  if (TpRuntime::mpi_follower(args.tp)) {
    // An mpirun rank other than 0: no HTTP; its shard follows rank 0's steps until rank 0 stops.
    const auto backend = kernels::make_backend(args.backend.spec(), {.n_threads = threads});
    const engine::ModelOptions o = model_options_of();
    const engine::Model m(args.model, *backend, o);
    TpRuntime tp(args.tp, m, args.backend.spec(), threads, tp_stage_options(m, o));
    tp.follow();
    return 0;
  }

  StopSignals stop_signals;  // before any thread starts

  server::ServerOptions options;
  options.host = args.host;
  options.port = args.port;
  options.api_key = args.api_key_file.empty() ? args.api_key : read_api_key_file(args.api_key_file);
  options.model_id = args.alias.empty() ? std::filesystem::path(args.model).stem().string() : args.alias;
  // The context is known once the model is read; the queue's default budgets for the largest.
  const int32_t queue = args.queue >= 0 ? args.queue : default_queue_depth(args.ctx_size > 0 ? args.ctx_size : 4096);
  // Every admitted or queued request holds a request thread while it waits and streams; a few
  // more answer /health, /metrics and the refusals of a full queue. Idle connections hold none.
  options.http_threads = args.parallel + queue + 8;
  options.max_connections = args.max_connections > 0 ? args.max_connections : default_max_connections();
  options.idle_timeout_s = args.idle_timeout;
  options.queue_timeout_s = args.queue_timeout;
  options.shutdown_grace_s = args.shutdown_grace;
  options.tool_format = args.tool_format;
  options.stored_responses = static_cast<size_t>(args.stored_responses);
  server::OpenAiServer http(options);
  const int port = http.bind();
  std::thread listener([&] { http.run(); });
  std::fprintf(stderr, "hearth: listening on http://%s:%d (loading %s)\n", args.host.c_str(), port, args.model.c_str());

  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<engine::Model> model;
  std::unique_ptr<engine::LocalExecutor> local;
  std::unique_ptr<ClusterRuntime> cluster;
  std::unique_ptr<TpRuntime> tp;
  std::unique_ptr<engine::Scheduler> scheduler;
  try {
    backend = kernels::make_backend(args.backend.spec(), {.n_threads = threads});
    const engine::ModelOptions model_options = model_options_of();
    model = std::make_unique<engine::Model>(args.model, *backend, model_options);
    engine::BatchExecutor* executor = nullptr;
    if (args.cluster.enabled()) {
      ClusterArgs cluster_args = args.cluster;
      cluster_args.backend = args.backend.spec();
      cluster_args.n_batch = args.batch_size;
      cluster = start_cluster(cluster_args, *model, *backend, model->n_ctx(), args.parallel, model_options.kv_type, threads);
      std::fprintf(stderr, "hearth: pipeline: %s\n", cluster->describe().c_str());
      executor = &cluster->executor();
    } else if (args.tp.enabled()) {
      tp = std::make_unique<TpRuntime>(args.tp, *model, args.backend.spec(), threads,
                                       tp_stage_options(*model, model_options));
      std::fprintf(stderr, "hearth: tensor parallel: %s\n", tp->describe().c_str());
      local = std::make_unique<engine::LocalExecutor>(tp->stage(), engine::grammar::vocabulary_from_gguf(model->file()));
      executor = local.get();
    } else {
      local = std::make_unique<engine::LocalExecutor>(model->stage(), engine::grammar::vocabulary_from_gguf(model->file()));
      executor = local.get();
    }
    engine::SchedulerOptions scheduler_options;
    scheduler_options.max_queue = queue;
    scheduler_options.step_tokens = args.batch_size;
    scheduler_options.prefix_cache = args.prefix_cache;
    scheduler = std::make_unique<engine::Scheduler>(*executor, model->tokenizer(), scheduler_options);
  } catch (...) {
    http.stop();
    listener.join();
    throw;
  }
  http.attach(*model, *scheduler);
  const engine::ModelConfig& c = model->config();
  std::fprintf(stderr,
               "hearth: serving %s as '%s' (%s, %d layers) on %s [%s], %d threads; %d parallel sequences of %d tokens "
               "(%s KV cache), queue %d (timeout %g s), up to %d connections%s\n",
               args.model.c_str(), options.model_id.c_str(), c.arch.c_str(), c.n_layer, backend->name().c_str(),
               backend->name() == "cpu" ? kernels::cpu_description().c_str() : backend->device().name.c_str(), threads, args.parallel, model->n_ctx(), args.kv_type.c_str(), queue, args.queue_timeout, options.max_connections,
               options.api_key.empty() ? "" : "; API key required");

  std::fprintf(stderr, "hearth: %s received, stopping (requests in flight have %g s to finish)\n", stop_signals.wait(),
               args.shutdown_grace);
  http.stop();
  listener.join();
  scheduler.reset();  // finishes what is still running as cancelled
  cluster.reset();    // then the pipeline and its local workers
  local.reset();
  tp.reset();         // then the tensor-parallel shards (followers stop)
  return 0;
}

}  // namespace hearth::apps
