// Weights for a worker that has no copy of the model: the coordinator streams exactly the byte
// ranges the worker's stage needs (the GGUF header with its tensor table, then the stage's
// tensors) once, and the worker keeps them in a cache keyed by the file's identity — a sparse
// file of the model's size holding those ranges, plus the list of ranges it holds — so a
// restart, or another stage of the same model, does not send them again.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "transport/link.h"

namespace hearth::shard {

struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
  friend bool operator==(const ByteRange&, const ByteRange&) = default;
};

// Sorted, overlapping and touching ranges merged, empty ones dropped.
std::vector<ByteRange> merge_ranges(std::vector<ByteRange> ranges);
// What of `want` is not in `have` (both merged).
std::vector<ByteRange> subtract_ranges(const std::vector<ByteRange>& want, const std::vector<ByteRange>& have);
uint64_t total_bytes(const std::vector<ByteRange>& ranges);

// The bytes a stage of layers [first, last) reads from the file: the header (metadata and
// tensor table) and every tensor Stage loads for it (engine::stage_tensors), plus any tensor the
// tensor map does not describe: with its layer when its name has one, else on every stage.
// Throws hearth::Error when [first, last) is not inside the model.
std::vector<ByteRange> stage_byte_ranges(const gguf::GgufFile& file, const engine::ModelConfig& config, int32_t first,
                                         int32_t last);

// The worker's cache: DIR/<identity>.gguf (sparse) and DIR/<identity>.ranges.
class WeightCache {
 public:
  WeightCache(std::filesystem::path dir, std::string identity, uint64_t size);
  const std::filesystem::path& path() const { return path_; }
  // The ranges held (empty when there is no cache for this identity).
  std::vector<ByteRange> held() const;
  // Writes a received chunk; throws hearth::Error when it lies outside the file.
  void write(uint64_t offset, std::span<const std::byte> bytes);
  // Makes the chunks written so far durable and records them as held.
  void commit();

 private:
  std::filesystem::path path_, ranges_path_;
  uint64_t size_;
  int fd_ = -1;
  std::vector<ByteRange> written_;
};

// Coordinator side: sends `ranges` of the file at `path` as WeightChunk frames (each at most
// kWeightChunkBytes) and then WeightsDone. `progress(sent, total)` after each chunk.
void send_weights(transport::Link& link, const std::filesystem::path& path, const std::vector<ByteRange>& ranges,
                  const std::function<void(uint64_t, uint64_t)>& progress);

nlohmann::json ranges_to_json(const std::vector<ByteRange>& ranges);
// Throws WireError for anything but a list of [offset, length] pairs inside `size`.
std::vector<ByteRange> ranges_from_json(const nlohmann::json& j, uint64_t size);

}  // namespace hearth::shard
