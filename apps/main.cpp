// The `hearth` executable: one binary, one subcommand per job.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <string>

#include "apps/commands.h"
#include "core/build_info.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"hearth: run one large language model across the machines you own"};
  app.require_subcommand(1);
  app.set_version_flag("--version", fmt::format("hearth {} ({}, {}, {})", hearth::build::kVersion,
                                                hearth::build::kCommit, hearth::build::kCompiler,
                                                hearth::build::kBuildType));

  hearth::apps::InfoArgs info_args;
  CLI::App* info = app.add_subcommand("info", "Describe a GGUF model: architecture, shape, tokenizer, tensors");
  info->add_option("model", info_args.model, "Path to a .gguf file")->required()->check(CLI::ExistingFile);
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
  run->add_option("-t,--threads", run_args.threads, "CPU threads (0: all)")->capture_default_str();
  run->add_flag("--ignore-eos", run_args.ignore_eos, "Keep generating past the end-of-generation token");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (*info) return hearth::apps::run_info(info_args);
    if (*run) {
      run_args.seed_given = run->count("--seed") > 0;
      return hearth::apps::run_generate(run_args);
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
