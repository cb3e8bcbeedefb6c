// A reusable receive buffer: grows when a message needs more room, never shrinks, never
// zero-fills. A receiver keeps one per link and passes it to every Link::receive, so steady
// state receives allocate nothing.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

namespace hearth::transport {

class ByteBuffer {
 public:
  ByteBuffer() = default;
  explicit ByteBuffer(size_t capacity) { reserve(capacity); }

  // Makes room for n bytes (capacity >= n). Growing allocates exactly n bytes, 64-byte
  // aligned; the old contents are NOT kept. Never shrinks.
  void reserve(size_t n);

  // Sets the size to n (reserving first) and returns the bytes to be overwritten.
  std::span<std::byte> resize_for_overwrite(size_t n) {
    reserve(n);
    size_ = n;
    return {data_.get(), n};
  }

  std::span<const std::byte> bytes() const { return {data_.get(), size_}; }
  std::byte* data() { return data_.get(); }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }

 private:
  struct AlignedDelete {
    void operator()(std::byte* p) const;
  };
  std::unique_ptr<std::byte[], AlignedDelete> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

}  // namespace hearth::transport
