// `hearth run`: generate text from a prompt on this machine. Only the generated text goes to
// stdout (streamed as it is produced); loading messages and timings go to stderr.
#include <cstdio>
#include <memory>
#include <random>

#include "apps/commands.h"
#include "apps/tensor_parallel.h"
#include "core/thread_pool.h"
#include "engine/generate/model.h"
#include "engine/generate/scheduler.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/registry.h"
#include "shard/plan.h"

namespace hearth::apps {

int run_generate(const RunArgs& args) {
  const int threads = args.threads > 0 ? args.threads : ThreadPool::hardware_threads();
  const std::unique_ptr<kernels::Backend> backend_ptr = kernels::make_backend(args.backend.spec(), {.n_threads = threads});
  kernels::Backend& backend = *backend_ptr;
  engine::ModelOptions model_options;
  model_options.n_ctx = args.ctx_size;
  model_options.kv_type = shard::parse_plan_dtype(args.kv_type, "--kv-type");
  model_options.chat_template = args.chat_template;
  // A cluster's workers hold the layers; tensor-parallel shards load their own slices.
  model_options.load_weights = !args.cluster.enabled() && !args.tp.enabled();
  if (args.tp.enabled() && args.cluster.enabled()) {
    throw Error("--tp with --local-stages / --workers (pipeline stages of tensor-parallel groups) is not built yet");
  }
  engine::Model model(args.model, backend, model_options);
  const engine::ModelConfig& c = model.config();
  std::unique_ptr<TpRuntime> tp;
  if (args.tp.enabled()) {
    engine::StageOptions stage_options;
    stage_options.n_ctx = model.n_ctx();
    stage_options.n_seq = 1;
    stage_options.kv_type = model_options.kv_type;
    stage_options.max_batch = model_options.n_batch;
    tp = std::make_unique<TpRuntime>(args.tp, model, args.backend.spec(), threads, stage_options);
    if (!tp->leader()) {  // an mpirun rank other than 0: its shard follows rank 0's steps
      tp->follow();
      return 0;
    }
  }
  std::fprintf(stderr,
               "hearth: %s (%s, %d layers, %d-token vocabulary) on %s [%s] with %d threads, context %d (%s KV cache)\n",
               args.model.c_str(), c.arch.c_str(), c.n_layer, c.n_vocab, backend.name().c_str(),
               backend.name() == "cpu" ? kernels::cpu_description().c_str() : backend.device().name.c_str(), threads, model.n_ctx(), args.kv_type.c_str());

  std::string text = args.prompt;
  if (args.chat) {
    std::vector<engine::ChatMessage> messages;
    if (!args.system.empty()) messages.push_back({"system", args.system});
    messages.push_back({"user", args.prompt});
    text = model.format_chat(messages);
  } else if (!args.system.empty()) {
    throw Error("--system needs --chat");
  }
  const std::vector<engine::Token> prompt = model.tokenize_prompt(text);

  engine::GenerationOptions options;
  options.max_tokens = args.n_predict;
  options.stop = args.stop;
  options.ignore_eos = args.ignore_eos;
  engine::SamplingParams& s = options.sampling;
  s.temperature = args.temperature;
  s.top_k = args.top_k;
  s.top_p = args.top_p;
  s.min_p = args.min_p;
  s.repeat_penalty = args.repeat_penalty;
  s.presence_penalty = args.presence_penalty;
  s.frequency_penalty = args.frequency_penalty;
  s.seed = args.seed_given ? args.seed : std::random_device{}();

  // One generation loop for every case: the scheduler `serve` uses, over the layers in this
  // process or over a cluster's pipeline (a single-process run is a cluster of one).
  std::unique_ptr<ClusterRuntime> cluster;
  std::unique_ptr<engine::LocalExecutor> local;
  engine::BatchExecutor* executor = nullptr;
  if (args.cluster.enabled()) {
    ClusterArgs cluster_args = args.cluster;
    cluster_args.backend = args.backend.spec();  // --local-stages workers run on the same backend
    cluster_args.n_batch = model_options.n_batch;
    cluster = start_cluster(cluster_args, model, backend, model.n_ctx(), 1, model_options.kv_type, threads);
    std::fprintf(stderr, "hearth: pipeline: %s\n", cluster->describe().c_str());
    executor = &cluster->executor();
  } else if (tp != nullptr) {
    std::fprintf(stderr, "hearth: tensor parallel: %s\n", tp->describe().c_str());
    local = std::make_unique<engine::LocalExecutor>(tp->stage());
    executor = local.get();
  } else {
    local = std::make_unique<engine::LocalExecutor>(model.stage());
    executor = local.get();
  }
  engine::SchedulerOptions scheduler_options;
  scheduler_options.step_tokens = model_options.n_batch;  // prompt tokens per forward pass, as `serve -b` and `bench -b` default
  engine::Scheduler scheduler(*executor, model.tokenizer(), scheduler_options);

  auto print = [](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  };
  const engine::GenerationResult r = engine::generate(scheduler, prompt, options, print);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  // Time to the first token covers the prompt; the rate of generation counts the tokens after it.
  const size_t after_first = r.tokens.empty() ? 0 : r.tokens.size() - 1;
  const double gen_rate = r.generation_seconds > 0 ? static_cast<double>(after_first) / r.generation_seconds : 0.0;
  const double pp_rate = r.prompt_seconds > 0 ? r.prompt_tokens / r.prompt_seconds : 0.0;
  std::fprintf(stderr, "hearth: prompt %d tokens in %.2f s to the first token (%.1f tokens/s); generated %zu tokens, "
               "%.2f s after the first (%.1f tokens/s); finish: %s; seed %llu\n",
               r.prompt_tokens, r.prompt_seconds, pp_rate, r.tokens.size(), r.generation_seconds, gen_rate,
               r.finish_reason.c_str(), static_cast<unsigned long long>(s.seed));
  if (tp != nullptr) {
    const engine::Stage::TpStats& st = tp->stage().tp_stats();
    const uint64_t steps = std::max<uint64_t>(1, st.gathers);
    std::fprintf(stderr,
                 "hearth: tensor parallel (shard 0): %llu layer collectives (all-reduces, or all-gathers joined by "
                 "gathers), %.1f us each (host copies and waiting for the other shards included); %llu logits gathers "
                 "or top-k exchanges, %.1f us each; %.1f KiB handed to the collectives per step\n",
                 static_cast<unsigned long long>(st.all_reduces),
                 st.all_reduces > 0 ? st.all_reduce_seconds / static_cast<double>(st.all_reduces) * 1e6 : 0.0,
                 static_cast<unsigned long long>(st.gathers),
                 st.gathers > 0 ? st.gather_seconds / static_cast<double>(st.gathers) * 1e6 : 0.0,
                 static_cast<double>(st.bytes) / static_cast<double>(steps) / 1024.0);
  }
  return 0;
}

}  // namespace hearth::apps
