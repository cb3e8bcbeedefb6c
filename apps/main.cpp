// The `hearth` executable: one binary, one subcommand per job.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <string>

#include "apps/commands.h"
#include "transport/handshake.h"
#include "core/build_info.h"
#include "core/error.h"

namespace {

// Links between nodes are encrypted (docs/wire-protocol.md); plaintext only for measurements,
// and only where both ends ask for it.
bool insecure_plaintext = false;
void add_plaintext_option(CLI::App* command) {
  command->add_flag("--insecure-plaintext", insecure_plaintext,
                    "Ask for unencrypted links to other nodes (measurements only: a device on the network can then "
                    "read and alter the hidden states; links stay encrypted unless both ends ask)");
}

void add_backend_options(CLI::App* command, hearth::apps::BackendArgs& backend) {
  command->add_option("--backend", backend.kind,
                      "Backend the layers run on: cpu, cuda or vulkan where built in (`hearth info --system` lists what "
                      "this binary has and finds), optionally with a device: cuda:1, vulkan:0")
      ->capture_default_str();
  command->add_option("--device", backend.device, "Device of that backend (default 0)");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hearth: run one large language model across the machines you own"};
  app.require_subcommand(1);
  app.set_version_flag("--version", fmt::format("hearth {} ({}, {}, {})", hearth::build::kVersion,
                                                hearth::build::kCommit, hearth::build::kCompiler,
                                                hearth::build::kBuildType));

  hearth::apps::InfoArgs info_args;
  CLI::App* info = app.add_subcommand("info", "Describe a GGUF model: architecture, shape, tokenizer, tensors");
  info->add_option("model", info_args.model, "Path to a .gguf file")->check(CLI::ExistingFile);
  info->add_flag("--system", info_args.system,
                 "Describe this machine instead (or as well): CPU kernel level, threads, memory, build");
  info->add_flag("--json", info_args.json, "Print machine-readable JSON instead of text");
  info->add_flag("--tensors", info_args.tensors, "List every tensor with type, shape and offset");
  info->add_flag("--metadata", info_args.metadata, "List every metadata key with its type and value");

  hearth::apps::RunArgs run_args;
  CLI::App* run = app.add_subcommand("run", "Generate text from a prompt with a model on this machine");
  run->add_option("-m,--model", run_args.model, "Path to a .gguf file")->required()->check(CLI::ExistingFile);
  run->add_option("-p,--prompt", run_args.prompt, "The prompt (with --chat: the user's message)")->required();
  run->add_option("-n,--n-predict", run_args.n_predict, "Tokens to generate at most (-1: until the model stops)")
      ->capture_default_str();
  run->add_option("--temp", run_args.temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  run->add_option("--top-k", run_args.top_k, "Keep the k most likely tokens (0: off)")->capture_default_str();
  run->add_option("--top-p", run_args.top_p, "Nucleus sampling threshold (1: off)")->capture_default_str();
  run->add_option("--min-p", run_args.min_p, "Drop tokens below min-p times the best one's probability (0: off)")
      ->capture_default_str();
  run->add_option("--repeat-penalty", run_args.repeat_penalty, "Penalty for repeated tokens (1: off)")
      ->capture_default_str();
  run->add_option("--presence-penalty", run_args.presence_penalty, "OpenAI presence penalty")->capture_default_str();
  run->add_option("--frequency-penalty", run_args.frequency_penalty, "OpenAI frequency penalty")->capture_default_str();
  run->add_option("--seed", run_args.seed, "Random seed (same seed, same text); random when not given");
  run->add_flag("--chat", run_args.chat, "Apply the model's chat template to the prompt");
  run->add_option("--system", run_args.system, "System message (with --chat)");
  run->add_option("--chat-template", run_args.chat_template,
                  "Use this template instead of the model's: chatml, llama3, llama2, mistral, zephyr, gemma, phi3, deepseek");
  run->add_option("--stop", run_args.stop, "Stop when this text is generated (repeatable; not printed)");
  run->add_option("-c,--ctx-size", run_args.ctx_size, "Context size in tokens (0: min(4096, the model's))")
      ->capture_default_str();
  run->add_option("--kv-type", run_args.kv_type, "KV cache type: f16, f32, q8_0 (half the memory of f16)")
      ->capture_default_str();
  run->add_option("-t,--threads", run_args.threads, "CPU threads (0: all)")->capture_default_str();
  add_backend_options(run, run_args.backend);
  run->add_flag("--ignore-eos", run_args.ignore_eos, "Keep generating past the end-of-generation token");
  hearth::apps::add_cluster_options(*run, run_args.cluster);
  add_plaintext_option(run);
  hearth::apps::add_tp_options(*run, run_args.tp);

  hearth::apps::SynthArgs synth_args;
  CLI::App* synth = app.add_subcommand(
      "synth", "Write a synthetic GGUF model (real dimensions, random weights) for benchmarks");
  synth->footer(
      "Usage: hearth synth (--shape NAME | --arch llama --embd N --layers N --heads N --kv-heads N --ff N [--vocab N])\n"
      "             --type TYPE [--pure] [--tokenizer-from MODEL.gguf] [--seed S] [--force] -o OUT.gguf\n"
      "       hearth synth --list-shapes\n"
      "Types: one type for every matrix (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q3_K, Q4_K, Q5_K, Q6_K, F16, BF16, F32),\n"
      "or llama.cpp's mixes, which choose each tensor's type as llama-quantize does (Q2_K, Q3_K_S, Q3_K_M,\n"
      "Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M: e.g. Q4_K_M gives attn_v and ffn_down Q6_K in the first and\n"
      "last eighth of the layers and every third between, and the output head Q6_K). Norms and biases are\n"
      "F32. K-quant rows whose length is not a multiple of 256 fall back as in llama.cpp (Q4_K -> Q5_0, ...).");
  synth->add_flag("--list-shapes", synth_args.list_shapes, "List the built-in shapes and exit");
  synth->add_option("--shape", synth_args.shape, "A built-in shape (see --list-shapes)");
  synth->add_option("--arch", synth_args.arch, "Architecture of a custom shape: llama or qwen2")->capture_default_str();
  synth->add_option("--embd", synth_args.embd, "Custom shape: embedding length");
  synth->add_option("--layers", synth_args.layers, "Custom shape: number of layers");
  synth->add_option("--heads", synth_args.heads, "Custom shape: attention heads");
  synth->add_option("--kv-heads", synth_args.kv_heads, "Custom shape: key/value heads (default: --heads)");
  synth->add_option("--ff", synth_args.ff, "Custom shape: feed-forward length");
  synth->add_option("--vocab", synth_args.vocab, "Custom shape: vocabulary size")->capture_default_str();
  synth->add_option("--type", synth_args.type, "Weight type or llama.cpp mix (see below), e.g. Q4_0, Q8_0, Q6_K, Q4_K_M");
  synth->add_flag("--pure", synth_args.pure,
                  "With a mix: every matrix of its default type (Q4_K_M -> Q4_K), as llama-quantize --pure");
  synth->add_option("--tokenizer-from", synth_args.tokenizer_from,
                    "Copy the tokenizer (every tokenizer.* key) from this GGUF; the vocabulary size follows it")
      ->check(CLI::ExistingFile);
  synth->add_option("--seed", synth_args.seed, "Seed of the random weights")->capture_default_str();
  synth->add_flag("--force", synth_args.force, "Overwrite the output file if it exists");
  synth->add_option("-t,--threads", synth_args.threads, "CPU threads (0: all)")->capture_default_str();
  synth->add_option("-o,--output", synth_args.output, "The .gguf file to write");

  hearth::apps::BenchArgs bench_args;
  CLI::App* bench = app.add_subcommand("bench", "Measure prompt (pp) and generation (tg) tokens/s, llama-bench style");
  bench->add_option("-m,--model", bench_args.model, "Path to a .gguf file (required unless `bench serve`)")
      ->check(CLI::ExistingFile);
  bench->add_option("-p,--n-prompt", bench_args.n_prompt, "Prompt tokens of the pp test (0: skip)")->capture_default_str();
  bench->add_option("-n,--n-gen", bench_args.n_gen, "Generated tokens of the tg test (0: skip)")->capture_default_str();
  bench->add_option("-d,--depth", bench_args.depth, "Context already filled before each test")->capture_default_str();
  bench->add_option("-r,--repetitions", bench_args.repetitions, "Repetitions of each test")->capture_default_str();
  bench->add_option("-b,--batch-size", bench_args.n_batch, "Prompt tokens per forward pass")->capture_default_str();
  bench->add_option("--kv-type", bench_args.kv_type, "KV cache type: f16, f32, q8_0")->capture_default_str();
  bench->add_option("-t,--threads", bench_args.threads, "CPU threads (0: all)")->capture_default_str();
  add_backend_options(bench, bench_args.backend);
  bench->add_option("-o,--output", bench_args.output, "Output format: md, json, csv")->capture_default_str();

  hearth::apps::ServeArgs serve_args;
  CLI::App* serve = app.add_subcommand("serve", "Serve a model through an OpenAI-compatible HTTP API");
  serve->add_option("-m,--model", serve_args.model, "Path to a .gguf file")->required()->check(CLI::ExistingFile);
  serve->add_option("--host", serve_args.host, "Address to listen on (0.0.0.0: every interface)")->capture_default_str();
  serve->add_option("--port", serve_args.port, "Port to listen on (0: any free port)")->capture_default_str();
  serve->add_option("--api-key", serve_args.api_key, "Require 'Authorization: Bearer KEY' on the API");
  serve->add_option("--api-key-file", serve_args.api_key_file, "Read the API key from this file (first line)")
      ->check(CLI::ExistingFile);
  serve->add_option("-P,--parallel", serve_args.parallel, "Sequences generated at once (KV-cache slots)")
      ->capture_default_str();
  serve->add_flag("--prefix-cache,!--no-prefix-cache", serve_args.prefix_cache,
                  "Reuse the KV cache of a slot's last request for a prompt that begins with the same tokens (default: on)");
  serve->add_option("--queue", serve_args.queue,
                    "Sequences that may wait for a slot; beyond: 503 + Retry-After (default: as memory allows, 256..1024)");
  serve->add_option("--queue-timeout", serve_args.queue_timeout,
                    "Seconds a request may wait for a slot before a 503 + Retry-After (0: no limit)")
      ->capture_default_str();
  serve->add_option("--shutdown-grace", serve_args.shutdown_grace,
                    "On SIGTERM/SIGINT, seconds requests in flight may run on before streams end with an error event")
      ->capture_default_str();
  serve->add_option("--idle-timeout", serve_args.idle_timeout, "Seconds an idle keep-alive connection stays open")
      ->capture_default_str();
  serve->add_option("--max-connections", serve_args.max_connections,
                    "Open connections at most; past it the longest idle is closed (default: from the open-file limit, <= 4096)");
  serve->add_option("-c,--ctx-size", serve_args.ctx_size, "Context of each sequence in tokens (0: min(4096, the model's))")
      ->capture_default_str();
  serve->add_option("-b,--batch-size", serve_args.batch_size, "Tokens per forward step (decodes + prompt chunks)")
      ->capture_default_str();
  serve->add_option("--kv-type", serve_args.kv_type, "KV cache type: f16, f32, q8_0 (half the memory of f16)")
      ->capture_default_str();
  serve->add_option("--alias", serve_args.alias, "Model name in the API (default: the file name without .gguf)");
  serve->add_option("--chat-template", serve_args.chat_template,
                    "Use this template instead of the model's: chatml, llama3, llama2, mistral, zephyr, gemma, phi3, deepseek");
  serve->add_option("--tool-format", serve_args.tool_format,
                    "Tool-call format: auto (what the chat template shows), generic (JSON, any model), hermes "
                    "(<tool_call>, Qwen 2.5/3), llama3 (Llama 3.1/3.2 JSON)")
      ->capture_default_str();
  serve->add_option("--stored-responses", serve_args.stored_responses,
                    "Responses (/v1/responses) kept in memory for previous_response_id; the oldest go first")
      ->capture_default_str();
  serve->add_option("-t,--threads", serve_args.threads, "CPU threads (0: all)")->capture_default_str();
  add_backend_options(serve, serve_args.backend);
  hearth::apps::add_cluster_options(*serve, serve_args.cluster);
  add_plaintext_option(serve);
  hearth::apps::add_tp_options(*serve, serve_args.tp);

  hearth::apps::WorkerArgs worker_args;
  CLI::App* worker = app.add_subcommand("worker", "Run pipeline stages for a coordinator (a node of a cluster)");
  worker->add_option("--listen", worker_args.listen, "HOST:PORT to listen on (port 0: any free port)")->capture_default_str();
  add_plaintext_option(worker);
  worker->add_flag("--advertise", worker_args.advertise,
                   "Announce this worker on the local network for coordinators started with --discover (beacons "
                   "sealed with the cluster key: other devices learn nothing from them)");
  worker->add_option("--cluster-key", worker_args.cluster_key, "The cluster's key file (hex); peers without it are refused")
      ->required()
      ->check(CLI::ExistingFile);
  worker->add_option("-t,--threads", worker_args.threads, "CPU threads (0: all)")->capture_default_str();
  add_backend_options(worker, worker_args.backend);
  worker->add_option("--model-dir", worker_args.model_dirs, "Where to look for the coordinator's model (repeatable)");
  worker->add_option("--memory", worker_args.memory, "Memory this worker offers (e.g. 8GiB; default: what is available)");
  worker->add_option("--cache-dir", worker_args.cache_dir,
                     "Where weights streamed by a coordinator are kept (default: ~/.cache/hearth/weights)");
  worker->add_flag("--no-weight-streaming", worker_args.no_cache,
                   "Refuse to receive weights: only serve models found locally");
  hearth::apps::PlanArgs plan_args;
  CLI::App* plan = app.add_subcommand("plan", "Split a model across nodes: layers per node, memory, estimated tokens/s");
  plan->footer(
      "Usage: hearth plan -m MODEL (--nodes FILE | --workers HOST:PORT,... | --local N [--bandwidth GBPS] [--memory SIZE])\n"
      "                   [-c N] [--parallel N] [--kv-type f16|f32|q8_0] [--wire-dtype f32|f16|q8_0]\n"
      "                   [--split 0-10,10-30 | --split 10,20] [--coordinator NAME] [--keep-all-nodes] [-o md|json]\n"
      "\n"
      "The nodes file is JSON: a list of nodes, or {\"nodes\": [...], \"links\": [...], \"default_link\": {...},\n"
      "\"local_link\": {...}, \"coordinator\": NAME}. A node: {\"name\": \"desktop\", \"host\": \"192.168.1.10:7070\"\n"
      "(optional; nodes of one host use the local link), \"backend\": \"cpu\"|\"cuda\"|\"vulkan\", \"memory\": \"10GiB\"\n"
      "(or bytes), \"bandwidth_gbps\": 300 (measured matvec GB/s), \"layer_overhead_ms\": 0.1 (optional)}.\n"
      "A link: {\"a\": NODE, \"b\": NODE, \"gbps\": 1, \"latency_ms\": 0.2}; unlisted pairs use default_link\n"
      "(1 Gbit/s, 0.2 ms) or, on one host, local_link (40 Gbit/s, 0.02 ms).\n"
      "Stage time = weight bytes read per token / bandwidth + layers x overhead + the hop to the next stage;\n"
      "the plan minimises the slowest stage, then the time of one token, and fits weights + KV cache\n"
      "(context x parallel sequences) + compute buffers + 64 MiB in each node's memory.");
  plan->add_option("-m,--model", plan_args.model, "Path to a .gguf file")->required()->check(CLI::ExistingFile);
  plan->add_option("--nodes", plan_args.nodes_file, "JSON file describing the nodes (format below)")
      ->check(CLI::ExistingFile);
  plan->add_option("--workers", plan_args.workers, "Live workers to ask for their capabilities (host:port,...)")
      ->delimiter(',');
  plan->add_option("--cluster-key", plan_args.cluster_key, "The workers' key file (hex), with --workers or --discover")
      ->check(CLI::ExistingFile);
  plan->add_flag("--discover", plan_args.discover, "Plan over the workers found on the local network (--advertise)");
  plan->add_option("--min-nodes", plan_args.min_nodes,
                   "With --discover: stop listening once this many are heard (0: listen the whole --discover-timeout)")
      ->capture_default_str();
  plan->add_option("--discover-timeout", plan_args.discover_timeout, "With --discover: seconds to listen at most")
      ->capture_default_str();
  plan->add_option("--local", plan_args.local, "N hypothetical nodes on this machine, sharing its memory");
  plan->add_option("--bandwidth", plan_args.bandwidth_gbps, "--local: memory bandwidth in GB/s (default: measured)");
  plan->add_option("--memory", plan_args.memory, "--local: memory the nodes share (default: available memory)");
  plan->add_option("-c,--ctx-size", plan_args.ctx_size, "Context size per sequence (0: min(4096, the model's))")
      ->capture_default_str();
  plan->add_option("--parallel", plan_args.parallel, "Parallel sequences (KV cache slots)")->capture_default_str();
  plan->add_option("--kv-type", plan_args.kv_type, "KV cache type: f16, f32, q8_0")->capture_default_str();
  plan->add_option("--wire-dtype", plan_args.wire_dtype, "Activations on links: f32, f16, q8_0")->capture_default_str();
  plan->add_option("--split", plan_args.split,
                   "Force a split, one entry per node in file order: ranges 0-10,10-30 or counts 10,20 (0: unused)");
  plan->add_option("--coordinator", plan_args.coordinator, "The node that runs tokenizer, sampler and server");
  plan->add_flag("--keep-all-nodes", plan_args.keep_all_nodes, "Give every node at least one layer");
  plan->add_option("-o,--output", plan_args.output, "Output format: md, json")->capture_default_str();
  hearth::apps::BenchServeArgs bench_serve_args;
  CLI::App* bench_serve = bench->add_subcommand(
      "serve", "Load an OpenAI-compatible server (hearth serve, llama.cpp, vLLM): TTFT/TPOT/ITL, throughput, goodput");
  bench_serve->footer(
      "Prompts are seeded random common English words, about one token each (the chat template adds a few);\n"
      "the mean input length printed is the server's usage.prompt_tokens. Without --rate, --concurrency\n"
      "clients send back to back (closed loop); with --rate R, requests arrive as a Poisson process.");
  bench_serve->add_option("--url", bench_serve_args.url, "Server base URL, e.g. http://127.0.0.1:8080 (/v1 is added unless present)")
      ->required();
  bench_serve->add_option("--model", bench_serve_args.model, "Model name sent in each request")->required();
  auto* concurrency = bench_serve->add_option("-c,--concurrency", bench_serve_args.concurrency, "Closed loop: concurrent clients")
                          ->capture_default_str();
  bench_serve->add_option("--rate", bench_serve_args.rate, "Open loop: Poisson arrivals at R requests/s")->excludes(concurrency);
  bench_serve->add_option("-n,--requests", bench_serve_args.requests, "Measured requests")->capture_default_str();
  bench_serve->add_option("--input-len", bench_serve_args.input_len, "Prompt length in words (≈ tokens)")->capture_default_str();
  bench_serve->add_option("--output-len", bench_serve_args.output_len, "max_tokens of each request")->capture_default_str();
  bench_serve->add_option("--temperature", bench_serve_args.temperature, "Sampling temperature sent")->capture_default_str();
  bench_serve->add_option("--api-key", bench_serve_args.api_key, "Sent as 'Authorization: Bearer KEY'");
  bench_serve->add_option("--endpoint", bench_serve_args.endpoint, "chat (/v1/chat/completions) or completions (/v1/completions)")
      ->capture_default_str();
  bench_serve->add_option("--seed", bench_serve_args.seed, "Seed of prompts and arrival times")->capture_default_str();
  bench_serve->add_option("--warmup", bench_serve_args.warmup, "Requests sent and discarded first")->capture_default_str();
  bench_serve->add_option("--goodput", bench_serve_args.goodput, "Latency bounds of goodput in ms, e.g. ttft:500,tpot:50");
  bench_serve->add_option("--timeout", bench_serve_args.timeout_s, "Seconds one request may take")->capture_default_str();
  bench_serve->add_flag("--ignore-eos,!--no-ignore-eos", bench_serve_args.ignore_eos,
                        "Send the non-standard \"ignore_eos\": true so servers that know it generate exactly "
                        "--output-len tokens (--no-ignore-eos for servers that refuse unknown fields, e.g. OpenAI's)")
      ->capture_default_str();
  bench_serve->add_option("-o,--output", bench_serve_args.output, "Output format: md, json")->capture_default_str();

  try {
    app.parse(argc, argv);
    if (insecure_plaintext) hearth::transport::set_link_encryption_default(false);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (*serve) return hearth::apps::run_serve(serve_args);
    if (*worker) return hearth::apps::run_worker(worker_args);
    if (*plan) return hearth::apps::run_plan(plan_args);
    if (*info) return hearth::apps::run_info(info_args);
    if (*bench_serve) return hearth::apps::run_bench_serve(bench_serve_args);
    if (*bench) {
      if (bench_args.model.empty()) throw hearth::Error("bench needs -m MODEL (or: hearth bench serve --url URL --model NAME)");
      return hearth::apps::run_bench(bench_args);
    }
    if (*run) {
      run_args.seed_given = run->count("--seed") > 0;
      return hearth::apps::run_generate(run_args);
    }
    if (*synth) {
      for (const char* option : {"--arch", "--embd", "--layers", "--heads", "--kv-heads", "--ff", "--vocab"}) {
        if (synth->count(option) > 0) synth_args.custom_dims = true;
      }
      return hearth::apps::run_synth(synth_args);
    }
  } catch (const hearth::Error& e) {
    std::fprintf(stderr, "hearth: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hearth: unexpected error: %s\n", e.what());
    return 2;
  }
  return 0;
}
