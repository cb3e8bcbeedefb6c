// `hearth serve`: the OpenAI-compatible HTTP API over a model on this machine. The port answers
// at once (/health: 503 while the model loads, then 200); SIGINT / SIGTERM stop it cleanly.
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
#include "kernels/cpu/cpu_features.h"
#include "kernels/registry.h"
#include "server/openai_server.h"
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

}  // namespace

int run_serve(const ServeArgs& args) {
  if (args.parallel < 1 || args.parallel > 256) throw Error(fmt::format("--parallel {}: must be 1..256", args.parallel));
  if (args.queue < 0) throw Error(fmt::format("--queue {}: must be >= 0", args.queue));
  if (!args.api_key.empty() && !args.api_key_file.empty()) throw Error("give --api-key or --api-key-file, not both");

  StopSignals stop_signals;  // before any thread starts

  server::ServerOptions options;
  options.host = args.host;
  options.port = args.port;
  options.api_key = args.api_key_file.empty() ? args.api_key : read_api_key_file(args.api_key_file);
  options.model_id = args.alias.empty() ? std::filesystem::path(args.model).stem().string() : args.alias;
  // Every admitted or queued request holds a connection thread while it streams; a few more
  // answer /health, /metrics and the refusals of a full queue.
  options.http_threads = args.parallel + args.queue + 8;
  server::OpenAiServer http(options);
  const int port = http.bind();
  std::thread listener([&] { http.run(); });
  std::fprintf(stderr, "hearth: listening on http://%s:%d (loading %s)\n", args.host.c_str(), port, args.model.c_str());

  const int threads = args.threads > 0 ? args.threads : ThreadPool::hardware_threads();
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<engine::Model> model;
  std::unique_ptr<engine::LocalExecutor> local;
  std::unique_ptr<ClusterRuntime> cluster;
  std::unique_ptr<engine::Scheduler> scheduler;
  try {
    backend = kernels::make_backend(args.backend.spec(), {.n_threads = threads});
    engine::ModelOptions model_options;
    model_options.n_batch = args.batch_size;
    model_options.n_ctx = args.ctx_size;
    model_options.n_seq = args.parallel;
    model_options.kv_type = shard::parse_plan_dtype(args.kv_type, "--kv-type");
    model_options.chat_template = args.chat_template;
    model_options.load_weights = !args.cluster.enabled();  // a cluster's workers hold the layers
    model = std::make_unique<engine::Model>(args.model, *backend, model_options);
    engine::BatchExecutor* executor = nullptr;
    if (args.cluster.enabled()) {
      ClusterArgs cluster_args = args.cluster;
      cluster_args.backend = args.backend.spec();
      cluster_args.n_batch = args.batch_size;
      cluster = start_cluster(cluster_args, *model, model->n_ctx(), args.parallel, model_options.kv_type, threads);
      std::fprintf(stderr, "hearth: pipeline: %s\n", cluster->describe().c_str());
      executor = &cluster->executor();
    } else {
      local = std::make_unique<engine::LocalExecutor>(model->stage());
      executor = local.get();
    }
    engine::SchedulerOptions scheduler_options;
    scheduler_options.max_queue = args.queue;
    scheduler_options.step_tokens = args.batch_size;
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
               "(%s KV cache), queue %d%s\n",
               args.model.c_str(), options.model_id.c_str(), c.arch.c_str(), c.n_layer, backend->name().c_str(),
               backend->name() == "cpu" ? kernels::cpu_description().c_str() : backend->device().name.c_str(), threads, args.parallel, model->n_ctx(), args.kv_type.c_str(), args.queue,
               options.api_key.empty() ? "" : "; API key required");

  std::fprintf(stderr, "hearth: %s received, stopping\n", stop_signals.wait());
  http.stop();
  listener.join();
  scheduler.reset();  // finishes what is still running as cancelled
  cluster.reset();    // then the pipeline and its local workers
  return 0;
}

}  // namespace hearth::apps
