// What a coordinator asks of a worker (the LoadStage message) and how both sides name a model
// file: a content identity, so a worker finds its own copy of the same file wherever it lies.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "shard/wire.h"

namespace hearth::shard {

// SHA-256 over the file size, its first 4 MiB (header, metadata, tensor table and the first
// weights) and its last 4 MiB, in hex. Cheap on any size and different for different files in
// practice; not a defence against a peer that forges a file (peers are authenticated).
std::string model_identity(const std::filesystem::path& path);

struct StageAssignment {
  uint64_t session = 0;        // the coordinator's run; links of one pipeline carry it
  int32_t stage = 0;           // index in the pipeline
  int32_t n_stages = 1;
  int32_t first = 0, last = 0; // layers [first, last)
  int32_t n_ctx = 0;
  int32_t n_seq = 1;
  int32_t n_batch = 512;       // most tokens per step the coordinator sends: sizes the stage's arena
  DType kv_type = DType::F16;
  WireDtype wire = WireDtype::F32;
  std::string model_name;      // the file name, for messages and the search in --model-dir
  std::string model_path;      // the coordinator's path (used when it exists here with the same identity)
  uint64_t model_size = 0;
  std::string model_identity;
  std::string next;            // host:port of the next stage's worker; empty on the last stage

  nlohmann::json to_json() const;
  // Throws WireError for a missing or out-of-range field.
  static StageAssignment from_json(const nlohmann::json& j);
};

}  // namespace hearth::shard
