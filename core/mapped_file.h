// A read-only view of a whole file's bytes: memory-mapped from disk, or owned in memory
// (tests build files byte by byte; an exactly-sized heap buffer lets AddressSanitizer see
// any read past the end, which a page-padded mapping would hide).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace hearth {

class MappedFile {
 public:
  // Maps `path` read-only. Throws hearth::Error naming the path and the OS reason on failure.
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path);
  // Takes ownership of `bytes`; `name` is used in error messages.
  static std::shared_ptr<const MappedFile> from_bytes(std::vector<uint8_t> bytes, std::string name);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& name() const { return name_; }
  // Drops the pages wholly inside `bytes` (a range of this file) from this process's memory,
  // for bytes that were copied elsewhere; reading them again faults them back in from the file.
  // Nothing happens for an in-memory file.
  void release(std::span<const uint8_t> bytes) const;

 private:
  MappedFile() = default;

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;  // non-null when mmap'ed
  std::vector<uint8_t> owned_;
  std::string name_;
};

}  // namespace hearth
