// `hearth run`: generate text from a prompt on this machine. Only the generated text goes to
// stdout (streamed as it is produced); loading messages and timings go to stderr.
#include <cstdio>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <random>

#include "apps/commands.h"
#include "core/thread_pool.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/registry.h"
#include "shard/plan.h"

namespace hearth::apps {

namespace {

// One sequence through the pipeline: the same scheduler the server uses, on a cluster executor.
engine::GenerationResult generate_on_cluster(const RunArgs& args, engine::Model& model, const std::vector<engine::Token>& prompt,
                                             const engine::GenerationOptions& options,
                                             const std::function<bool(std::string_view)>& print) {
  const int threads = args.threads > 0 ? args.threads : ThreadPool::hardware_threads();
  ClusterArgs cluster_args = args.cluster;
  cluster_args.backend = args.backend.spec();
  std::unique_ptr<ClusterRuntime> cluster = start_cluster(cluster_args, model, model.n_ctx(), 1,
                                                          shard::parse_plan_dtype(args.kv_type, "--kv-type"), threads);
  std::fprintf(stderr, "hearth: pipeline: %s\n", cluster->describe().c_str());
  engine::Scheduler scheduler(cluster->executor(), model.tokenizer(), {});
  engine::GenerationResult result;
  result.prompt_tokens = static_cast<int32_t>(prompt.size());
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  std::string error;
  const auto start = std::chrono::steady_clock::now();
  std::optional<std::chrono::steady_clock::time_point> first_token;
  std::vector<engine::SequenceRequest> requests(1);
  requests[0].prompt = prompt;
  requests[0].options = options;
  requests[0].on_token = [&](const engine::TokenEvent& e) {
    if (!first_token) first_token = std::chrono::steady_clock::now();
    result.tokens.push_back(e.sampled.token);
    result.text += e.text;
    print(e.text);
  };
  requests[0].on_finish = [&](const engine::SequenceResult& r) {
    result.text += r.tail;
    print(r.tail);
    std::lock_guard<std::mutex> lock(mutex);
    result.finish_reason = r.finish_reason;
    error = r.error;
    done = true;
    done_cv.notify_all();
  };
  if (!scheduler.submit(std::move(requests))) throw Error("the scheduler refused the request");
  std::unique_lock<std::mutex> lock(mutex);
  done_cv.wait(lock, [&] { return done; });
  if (result.finish_reason == "error") throw Error(error);
  const auto end = std::chrono::steady_clock::now();
  const auto first = first_token.value_or(end);
  result.prompt_seconds = std::chrono::duration<double>(first - start).count();
  result.generation_seconds = std::chrono::duration<double>(end - first).count();
  return result;
}

}  // namespace

int run_generate(const RunArgs& args) {
  const int threads = args.threads > 0 ? args.threads : ThreadPool::hardware_threads();
  const std::unique_ptr<kernels::Backend> backend_ptr = kernels::make_backend(args.backend.spec(), {.n_threads = threads});
  kernels::Backend& backend = *backend_ptr;
  engine::ModelOptions model_options;
  model_options.n_ctx = args.ctx_size;
  model_options.kv_type = shard::parse_plan_dtype(args.kv_type, "--kv-type");
  model_options.chat_template = args.chat_template;
  model_options.load_weights = !args.cluster.enabled();  // a cluster's workers hold the layers
  engine::Model model(args.model, backend, model_options);
  const engine::ModelConfig& c = model.config();
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

  auto print = [](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  };
  const engine::GenerationResult r =
      args.cluster.enabled() ? generate_on_cluster(args, model, prompt, options, print) : model.generate(prompt, options, print);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const double gen_rate = r.generation_seconds > 0 ? static_cast<double>(r.tokens.size()) / r.generation_seconds : 0.0;
  const double pp_rate = r.prompt_seconds > 0 ? r.prompt_tokens / r.prompt_seconds : 0.0;
  std::fprintf(stderr, "hearth: prompt %d tokens in %.2f s (%.1f tokens/s); generated %zu tokens in %.2f s (%.1f tokens/s); "
               "finish: %s; seed %llu\n",
               r.prompt_tokens, r.prompt_seconds, pp_rate, r.tokens.size(), r.generation_seconds, gen_rate,
               r.finish_reason.c_str(), static_cast<unsigned long long>(s.seed));
  return 0;
}

}  // namespace hearth::apps
