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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (*info) return hearth::apps::run_info(info_args);
  } catch (const hearth::Error& e) {
    std::fprintf(stderr, "hearth: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hearth: unexpected error: %s\n", e.what());
    return 2;
  }
  return 0;
}
