#include "transport/byte_buffer.h"

#include <new>

namespace hearth::transport {

namespace {
constexpr std::align_val_t kAlignment{64};
}

void ByteBuffer::AlignedDelete::operator()(std::byte* p) const { ::operator delete[](p, kAlignment); }

void ByteBuffer::reserve(size_t n) {
  if (n <= capacity_) return;
  data_.reset();  // release first: the old contents are not kept, so never hold both
  size_ = 0;
  capacity_ = 0;
  data_.reset(static_cast<std::byte*>(::operator new[](n, kAlignment)));
  capacity_ = n;
}

}  // namespace hearth::transport
