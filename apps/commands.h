// Subcommands of the `hearth` executable. Each takes its parsed arguments and returns the
// process exit code; user errors are thrown as hearth::Error and reported by main().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hearth::apps {

struct InfoArgs {
  std::string model;
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
  int32_t threads = 0;
  bool ignore_eos = false;
};
int run_generate(const RunArgs& args);

}  // namespace hearth::apps
