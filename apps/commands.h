// Subcommands of the `hearth` executable. Each takes its parsed arguments and returns the
// process exit code; user errors are thrown as hearth::Error and reported by main().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "apps/cluster.h"
#include "apps/tensor_parallel.h"

namespace hearth::apps {

// --backend KIND[:N] and --device N, as run, serve, bench and worker take them.
struct BackendArgs {
  std::string kind = "cpu";
  int device = -1;  // -1: not given
  // The kernels::make_backend spec; throws hearth::Error for a contradiction ("cuda:1" + --device 0).
  std::string spec() const;
};

struct InfoArgs {
  std::string model;
  bool system = false;
  bool json = false;
  bool tensors = false;
  bool metadata = false;
};
int run_info(const InfoArgs& args);

struct RunArgs {
  std::string model;
  std::string prompt;
  int32_t n_predict = 256;
  float temperature = 0.8f;
  int32_t top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  bool seed_given = false;
  bool chat = false;
  std::string system;
  std::string chat_template;
  std::vector<std::string> stop;
  int32_t ctx_size = 0;
  std::string kv_type = "f16";
  int32_t threads = 0;
  BackendArgs backend;
  bool ignore_eos = false;
  ClusterArgs cluster;
  TpArgs tp;
};
int run_generate(const RunArgs& args);

// `hearth synth`: a synthetic GGUF model for benchmarks (engine/model/synth.h does the work).
struct SynthArgs {
  bool list_shapes = false;
  std::string shape;        // a built-in shape, or empty for the dimensions below
  bool custom_dims = false;  // any of --arch/--embd/--layers/--heads/--kv-heads/--ff/--vocab given
  std::string arch = "llama";
  int32_t embd = 0;
  int32_t layers = 0;
  int32_t heads = 0;
  int32_t kv_heads = 0;     // 0: as many as --heads
  int32_t ff = 0;
  int32_t vocab = 32000;
  std::string type;
  bool pure = false;        // a mix's default type for every matrix (llama-quantize --pure)
  std::string tokenizer_from;
  uint64_t seed = 0;
  bool force = false;
  int32_t threads = 0;
  std::string output;
};
int run_synth(const SynthArgs& args);

// `hearth bench`: pp/tg tokens/s in llama-bench's terms, with the bandwidth limit.
struct BenchArgs {
  std::string model;
  int32_t n_prompt = 512;
  int32_t n_gen = 128;
  int32_t depth = 0;
  int32_t repetitions = 5;
  int32_t n_batch = 512;
  std::string kv_type = "f16";
  int32_t threads = 0;
  BackendArgs backend;
  std::string output = "md";
};
int run_bench(const BenchArgs& args);

// `hearth serve`: the OpenAI-compatible HTTP API (server/), continuous batching (engine/scheduler).
struct ServeArgs {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;
  std::string api_key_file;
  int32_t parallel = 4;
  bool prefix_cache = true;  // reuse a slot's KV for a prompt that begins with its tokens
  int32_t queue = -1;              // -1: as memory allows (default_queue_depth in serve.cpp)
  double queue_timeout = 300;      // seconds a request may wait for a slot (0: no limit)
  double shutdown_grace = 5;       // seconds streams in flight may run on after SIGTERM
  std::string tool_format = "auto";  // tool-call format: auto (from the chat template), generic, hermes, llama3
  int32_t stored_responses = 256;  // /v1/responses kept for previous_response_id
  double idle_timeout = 30;        // seconds an idle keep-alive connection stays open
  int32_t max_connections = 0;     // 0: from the open-file limit
  int32_t ctx_size = 0;
  int32_t batch_size = 512;
  std::string kv_type = "f16";
  std::string alias;
  std::string chat_template;
  int32_t threads = 0;
  BackendArgs backend;
  ClusterArgs cluster;
  TpArgs tp;
};
int run_serve(const ServeArgs& args);

// `hearth worker`: a cluster node (shard/worker.h).
struct WorkerArgs {
  std::string listen = "127.0.0.1:7070";
  std::string cluster_key;
  int32_t threads = 0;
  BackendArgs backend;
  std::vector<std::string> model_dirs;
  std::string memory;
  std::string cache_dir;  // empty: $XDG_CACHE_HOME/hearth/weights or ~/.cache/hearth/weights
  bool no_cache = false;
  bool advertise = false;  // send discovery beacons (transport/discovery.h)
};
int run_worker(const WorkerArgs& args);
// `hearth plan`: the pipeline plan (which node runs which layers) for a model on a cluster.
struct PlanArgs {
  std::string model;
  std::string nodes_file;            // JSON description of the nodes (shard/plan.h)
  std::vector<std::string> workers;  // live workers to ask (shard/probe.h)
  std::string cluster_key;           // their key file, with --workers or --discover
  bool discover = false;             // the workers heard on the local network (transport/discovery.h)
  int32_t min_nodes = 0;             // --discover: stop once this many are heard (0: listen the whole time)
  double discover_timeout = 5;       // --discover: seconds to listen at most
  int32_t local = 0;                 // N hypothetical nodes sharing this machine
  double bandwidth_gbps = 0;         // --local: GB/s per node (0: measure)
  std::string memory;                // --local: memory to share (empty: available memory)
  int32_t ctx_size = 0;              // 0: min(4096, the model's)
  int32_t parallel = 1;
  std::string kv_type = "f16";
  std::string wire_dtype = "f16";
  std::string split;                 // "0-10,10-24" or "10,14": forced split, one entry per node
  std::string coordinator;           // overrides the file's coordinator
  bool keep_all_nodes = false;
  std::string output = "md";
};
int run_plan(const PlanArgs& args);
// `hearth bench serve`: load on an OpenAI-compatible server (bench/serve_bench.h does the work).
struct BenchServeArgs {
  std::string url;
  std::string model;
  int32_t concurrency = 1;
  double rate = 0;          // > 0: open loop (Poisson); excludes --concurrency
  int32_t requests = 100;
  int32_t input_len = 128;
  int32_t output_len = 128;
  double temperature = 0.0;
  std::string api_key;
  std::string endpoint = "chat";
  uint64_t seed = 1;
  int32_t warmup = 1;
  std::string goodput;      // "ttft:MS,tpot:MS"
  double timeout_s = 300;
  bool ignore_eos = true;
  std::string output = "md";
};
int run_bench_serve(const BenchServeArgs& args);

}  // namespace hearth::apps
