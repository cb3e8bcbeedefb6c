#include "kernels/backend.h"

#include "core/error.h"

namespace hearth::kernels {

Tensor Tensor::rows(int64_t first, int64_t count) const {
  HEARTH_CHECK(layout == 0, "rows() of a weight in a backend's own layout");
  HEARTH_CHECK(first >= 0 && count >= 0 && first + count <= n_rows(), "rows [{}, +{}) of {}", first, count, n_rows());
  Tensor t = *this;
  t.ne = {ne[0], count, 1, 1};
  t.offset = offset + static_cast<size_t>(first) * row_bytes();
  return t;
}

Tensor Tensor::reshaped(std::array<int64_t, 4> shape) const {
  HEARTH_CHECK(layout == 0, "reshaped() of a weight in a backend's own layout");
  Tensor t = *this;
  t.ne = shape;
  HEARTH_CHECK(t.n_elements() == n_elements() && t.n_bytes() == n_bytes(), "reshape of {} elements to {}", n_elements(),
               t.n_elements());
  return t;
}

std::string_view op_name(Op op) {
  switch (op) {
    case Op::GetRows: return "get_rows";
    case Op::Matmul: return "matmul";
    case Op::RmsNorm: return "rms_norm";
    case Op::Add: return "add";
    case Op::AddBias: return "add_bias";
    case Op::Scale: return "scale";
    case Op::Softcap: return "softcap";
    case Op::Rope: return "rope";
    case Op::Glu: return "glu";
    case Op::KvStore: return "kv_store";
    case Op::Attention: return "attention";
  }
  return "?";
}

Tensor Backend::new_tensor(DType type, std::array<int64_t, 4> ne) {
  Tensor t;
  t.type = type;
  t.ne = ne;
  t.buffer = new_buffer(t.n_bytes());
  return t;
}

Tensor Backend::upload(DType type, std::array<int64_t, 4> ne, const void* host) {
  Tensor t = new_tensor(type, ne);
  write(t, host, t.n_bytes());
  return t;
}

Tensor upload_i32(Backend& backend, std::span<const int32_t> values) {
  return backend.upload(DType::I32, {static_cast<int64_t>(values.size()), 1, 1, 1}, values.data());
}

Tensor upload_slots(Backend& backend, std::span<const KvSlot> slots) {
  return backend.upload(DType::I32, {2, static_cast<int64_t>(slots.size()), 1, 1}, slots.data());
}

size_t Arena::reserve(size_t bytes) {
  HEARTH_CHECK(buffer_ == nullptr, "reserve() after allocate()");
  const size_t offset = size_;
  regions_.emplace_back(offset, bytes);
  size_ += (bytes + kAlignment - 1) / kAlignment * kAlignment;
  return offset;
}

void Arena::allocate(Backend& backend) {
  HEARTH_CHECK(buffer_ == nullptr, "allocate() twice");
  buffer_ = backend.new_buffer(size_ == 0 ? kAlignment : size_);
}

Tensor Arena::tensor(size_t offset, DType type, std::array<int64_t, 4> ne) const {
  HEARTH_CHECK(buffer_ != nullptr, "tensor() before allocate()");
  Tensor t;
  t.type = type;
  t.ne = ne;
  t.buffer = buffer_;
  t.offset = offset;
  size_t region = 0;
  for (const auto& [at, bytes] : regions_) {
    if (at == offset) region = bytes;
  }
  HEARTH_CHECK(t.n_bytes() <= region, "a tensor of {} bytes in an arena region of {} at {}", t.n_bytes(), region, offset);
  return t;
}

}  // namespace hearth::kernels
