#include "shard/weights.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <string_view>
#include <unordered_set>

#include "core/error.h"
#include "engine/model/tensor_map.h"
#include "shard/wire.h"

namespace hearth::shard {

std::vector<ByteRange> merge_ranges(std::vector<ByteRange> ranges) {
  std::erase_if(ranges, [](const ByteRange& r) { return r.length == 0; });
  std::sort(ranges.begin(), ranges.end(), [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
  std::vector<ByteRange> out;
  for (const ByteRange& r : ranges) {
    if (!out.empty() && r.offset <= out.back().offset + out.back().length) {
      out.back().length = std::max(out.back().offset + out.back().length, r.offset + r.length) - out.back().offset;
    } else {
      out.push_back(r);
    }
  }
  return out;
}

std::vector<ByteRange> subtract_ranges(const std::vector<ByteRange>& want, const std::vector<ByteRange>& have) {
  std::vector<ByteRange> out;
  for (ByteRange w : want) {
    uint64_t at = w.offset;
    const uint64_t end = w.offset + w.length;
    for (const ByteRange& h : have) {
      const uint64_t h_end = h.offset + h.length;
      if (h_end <= at || h.offset >= end) continue;
      if (h.offset > at) out.push_back({at, h.offset - at});
      at = std::max(at, h_end);
    }
    if (at < end) out.push_back({at, end - at});
  }
  return merge_ranges(out);
}

uint64_t total_bytes(const std::vector<ByteRange>& ranges) {
  uint64_t total = 0;
  for (const ByteRange& r : ranges) total += r.length;
  return total;
}

std::vector<ByteRange> stage_byte_ranges(const gguf::GgufFile& file, const engine::ModelConfig& config, int32_t first,
                                         int32_t last) {
  // What the stage loads, and what any stage of the model may load (the rest are tensors the
  // map does not describe).
  std::unordered_set<std::string_view> stage, model;
  const std::vector<engine::TensorDesc> stage_descs = engine::stage_tensors(config, first, last);
  const std::vector<engine::TensorDesc> model_descs = engine::stage_tensors(config, 0, config.n_layer);
  for (const engine::TensorDesc& d : stage_descs) stage.insert(d.name);
  for (const engine::TensorDesc& d : model_descs) model.insert(d.name);

  std::vector<ByteRange> ranges = {{0, file.data_offset()}};
  for (const gguf::TensorInfo& t : file.tensors()) {
    bool needed = stage.contains(t.name);
    if (!needed && !model.contains(t.name)) {
      // A tensor the map does not describe: sent with its layer when it names one, else to
      // every stage (shared tensors any stage may read).
      const std::optional<int32_t> layer = engine::tensor_layer(t.name);
      needed = !layer || (*layer >= first && *layer < last);
    }
    if (needed) ranges.push_back({file.data_offset() + t.offset, t.n_bytes});
  }
  return merge_ranges(ranges);
}

WeightCache::WeightCache(std::filesystem::path dir, std::string identity, uint64_t size) : size_(size) {
  if (identity.empty() || identity.find_first_not_of("0123456789abcdef") != std::string::npos) {
    throw Error("the model identity must be lower-case hex");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("cannot create the weight cache {}: {}", dir.string(), ec.message()));
  path_ = dir / (identity + ".gguf");
  ranges_path_ = dir / (identity + ".ranges");
}

std::vector<ByteRange> WeightCache::held() const {
  std::error_code ec;
  if (!std::filesystem::exists(path_, ec) || std::filesystem::file_size(path_, ec) != size_) return {};
  std::ifstream in(ranges_path_);
  std::vector<ByteRange> ranges;
  uint64_t offset = 0, length = 0;
  while (in >> offset >> length) {
    if (offset <= size_ && length <= size_ - offset) ranges.push_back({offset, length});
  }
  return merge_ranges(ranges);
}

void WeightCache::write(uint64_t offset, std::span<const std::byte> bytes) {
  if (offset > size_ || bytes.size() > size_ - offset) {
    throw WireError(fmt::format("weight chunk at {} (+{}) lies outside the {}-byte model", offset, bytes.size(), size_));
  }
  if (fd_ < 0) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) throw Error(fmt::format("cannot open {}: {}", path_.string(), std::strerror(errno)));
    if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) throw Error(fmt::format("cannot size {}", path_.string()));
  }
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(fmt::format("cannot write {}: {}", path_.string(), std::strerror(errno)));
    done += static_cast<size_t>(n);
  }
  written_.push_back({offset, bytes.size()});
}

void WeightCache::commit() {
  if (fd_ >= 0) {
    ::fsync(fd_);
    ::close(fd_);
    fd_ = -1;
  }
  std::vector<ByteRange> all = held();
  all.insert(all.end(), written_.begin(), written_.end());
  written_.clear();
  const std::filesystem::path tmp = ranges_path_.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const ByteRange& r : merge_ranges(all)) out << r.offset << ' ' << r.length << '\n';
    if (!out) throw Error(fmt::format("cannot write {}", tmp.string()));
  }
  std::filesystem::rename(tmp, ranges_path_);
}

void send_weights(transport::Link& link, const std::filesystem::path& path, const std::vector<ByteRange>& ranges,
                  const std::function<void(uint64_t, uint64_t)>& progress) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}", path.string()));
  const uint64_t total = total_bytes(ranges);
  uint64_t sent = 0;
  std::vector<char> buffer(kWeightChunkBytes);
  for (const ByteRange& r : ranges) {
    for (uint64_t at = r.offset; at < r.offset + r.length;) {
      const uint64_t n = std::min<uint64_t>(kWeightChunkBytes, r.offset + r.length - at);
      in.seekg(static_cast<std::streamoff>(at));
      in.read(buffer.data(), static_cast<std::streamsize>(n));
      if (!in) throw Error(fmt::format("cannot read {} at {}", path.string(), at));
      const uint64_t offset = at;
      const transport::ByteSpan segments[] = {std::as_bytes(std::span(&offset, 1)),
                                              std::as_bytes(std::span(buffer.data(), n))};
      link.send(msg::kWeightChunk, segments);
      at += n;
      sent += n;
      if (progress) progress(sent, total);
    }
  }
  link.send(msg::kWeightsDone, transport::ByteSpan{});
}

nlohmann::json ranges_to_json(const std::vector<ByteRange>& ranges) {
  nlohmann::json j = nlohmann::json::array();
  for (const ByteRange& r : ranges) j.push_back({r.offset, r.length});
  return j;
}

std::vector<ByteRange> ranges_from_json(const nlohmann::json& j, uint64_t size) {
  if (!j.is_array() || j.size() > 1000000) throw WireError("byte ranges must be a list");
  std::vector<ByteRange> ranges;
  for (const auto& r : j) {
    if (!r.is_array() || r.size() != 2 || !r[0].is_number_unsigned() || !r[1].is_number_unsigned()) {
      throw WireError("a byte range must be [offset, length]");
    }
    const ByteRange b{r[0].get<uint64_t>(), r[1].get<uint64_t>()};
    if (b.offset > size || b.length > size - b.offset) throw WireError("a byte range lies outside the model");
    ranges.push_back(b);
  }
  return merge_ranges(ranges);
}

}  // namespace hearth::shard
