// Helpers shared by the tests: where fixtures and models live, reading binary files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace hearth::test {

inline std::filesystem::path fixtures_dir() { return HEARTH_FIXTURES_DIR; }

// Models fetched by scripts/get-model.sh; HEARTH_MODELS_DIR in the environment overrides.
inline std::filesystem::path models_dir() {
  if (const char* env = std::getenv("HEARTH_MODELS_DIR"); env != nullptr && *env != '\0') return env;
  return HEARTH_MODELS_DIR;
}

inline std::vector<uint8_t> read_file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read fixture " + path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline std::string read_file_text(const std::filesystem::path& path) {
  const auto bytes = read_file_bytes(path);
  return {bytes.begin(), bytes.end()};
}

}  // namespace hearth::test
