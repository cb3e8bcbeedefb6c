// Subcommands of the `hearth` executable. Each takes its parsed arguments and returns the
// process exit code; user errors are thrown as hearth::Error and reported by main().
#pragma once

#include <string>

namespace hearth::apps {

struct InfoArgs {
  std::string model;
  bool json = false;
  bool tensors = false;
  bool metadata = false;
};
int run_info(const InfoArgs& args);

}  // namespace hearth::apps
