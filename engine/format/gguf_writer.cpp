#include "engine/format/gguf_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <variant>

#include "core/error.h"

namespace hearth::gguf {

static_assert(std::endian::native == std::endian::little, "GGUF files are little-endian; so is this writer's host");

namespace {

constexpr std::string_view kAlignmentKey = "general.alignment";

uint64_t align_up(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

std::string system_reason(int err) { return std::error_code(err, std::generic_category()).message(); }

// Little-endian byte encoding of metadata values.
class Encoder {
 public:
  template <class T>
  void put(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
  }
  void raw(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    bytes.insert(bytes.end(), p, p + n);
  }
  void str(std::string_view s) {
    put<uint64_t>(s.size());
    raw(s.data(), s.size());
  }
  void type(ValueType t) { put<uint32_t>(static_cast<uint32_t>(t)); }

  std::vector<uint8_t> bytes;
};

// Encodes an array's element type, count and elements (without the leading ARRAY type id).
void encode_array_body(Encoder& e, const ArrayValue& a) {
  e.type(a.elem_type);
  e.put<uint64_t>(a.count);
  if (a.elem_type == ValueType::STRING) {
    HEARTH_CHECK(a.strings.size() == a.count, "string array of {} entries claims {}", a.strings.size(), a.count);
    for (std::string_view s : a.strings) e.str(s);
  } else if (a.elem_type == ValueType::ARRAY) {
    HEARTH_CHECK(a.arrays.size() == a.count, "nested array of {} entries claims {}", a.arrays.size(), a.count);
    for (const ArrayValue& inner : a.arrays) encode_array_body(e, inner);
  } else {
    const size_t size = detail::fixed_value_size(a.elem_type);
    HEARTH_CHECK(size != 0, "array of unknown element type {}", static_cast<uint32_t>(a.elem_type));
    if (a.count != 0) e.raw(a.raw, static_cast<size_t>(a.count) * size);
  }
}

// The file being written: buffered writes to a descriptor, with errors naming the path.
class OutFile {
 public:
  explicit OutFile(std::filesystem::path path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(fmt::format("cannot create {}: {}", path_.string(), system_reason(errno)));
    buffer_.reserve(kBufferBytes);
  }
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;

  void write(const void* data, size_t n) {
    if (buffer_.size() + n <= kBufferBytes) {
      const auto* p = static_cast<const uint8_t*>(data);
      buffer_.insert(buffer_.end(), p, p + n);
      return;
    }
    flush();
    if (n >= kBufferBytes) {
      write_fully(data, n);  // large blocks skip the copy
    } else {
      write(data, n);
    }
  }
  void zeros(uint64_t n) {
    static constexpr uint8_t kZeros[256] = {};
    while (n > 0) {
      const size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof(kZeros)));
      write(kZeros, k);
      n -= k;
    }
  }
  uint64_t position() const { return written_ + buffer_.size(); }

  // Flushes and closes; errors reported by close (delayed write errors on some filesystems)
  // count as write errors.
  void close() {
    flush();
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw Error(fmt::format("cannot write {}: {}", path_.string(), system_reason(errno)));
  }

 private:
  static constexpr size_t kBufferBytes = size_t{4} << 20;

  void flush() {
    if (buffer_.empty()) return;
    write_fully(buffer_.data(), buffer_.size());
    buffer_.clear();
  }
  void write_fully(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const ssize_t k = ::write(fd_, p, std::min<size_t>(n, size_t{1} << 30));
      if (k < 0) {
        if (errno == EINTR) continue;
        throw Error(fmt::format("cannot write {}: {}", path_.string(), system_reason(errno)));
      }
      if (k == 0) throw Error(fmt::format("cannot write {}: the write made no progress", path_.string()));
      p += k;
      n -= static_cast<size_t>(k);
      written_ += static_cast<uint64_t>(k);
    }
  }

  std::filesystem::path path_;
  int fd_ = -1;
  std::vector<uint8_t> buffer_;
  uint64_t written_ = 0;
};

class CountingSink final : public TensorSink {
 public:
  CountingSink(OutFile& out, uint64_t n_bytes) : out_(out), remaining_(n_bytes) {}
  void write(const void* data, size_t n) override {
    if (n > remaining_) overflow_ = true;
    if (overflow_) return;  // reported once the callback returns, with the tensor's name
    out_.write(data, n);
    remaining_ -= n;
  }
  uint64_t remaining() const override { return remaining_; }
  bool overflowed() const { return overflow_; }

 private:
  OutFile& out_;
  uint64_t remaining_;
  bool overflow_ = false;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Metadata

void GgufWriter::set_encoded(std::string_view key, std::vector<uint8_t> encoded) {
  if (key.empty() || key.size() > kMaxKeyLength) {
    throw Error(fmt::format("metadata key of {} bytes: keys must be 1 to {} bytes long", key.size(), kMaxKeyLength));
  }
  if (key == kAlignmentKey) {
    // The reader (and llama.cpp) require a uint32 power of two; refuse anything else here
    // rather than write a file nobody can open.
    uint32_t type = 0, value = 0;
    std::memcpy(&type, encoded.data(), sizeof(type));
    if (type != static_cast<uint32_t>(ValueType::UINT32) || encoded.size() != 8) {
      throw Error(fmt::format("metadata key '{}' must be a uint32, not {}", key,
                              value_type_name(static_cast<ValueType>(type))));
    }
    std::memcpy(&value, encoded.data() + 4, sizeof(value));
    if (value == 0 || (value & (value - 1)) != 0) {
      throw Error(fmt::format("metadata key '{}' = {} is not a power of two", key, value));
    }
    alignment_ = value;
  }
  const auto [it, inserted] = key_index_.emplace(std::string(key), metadata_.size());
  if (inserted) {
    metadata_.push_back({std::string(key), std::move(encoded)});
  } else {
    metadata_[it->second].value = std::move(encoded);
  }
}

#define HEARTH_GGUF_SETTER(name, T, vtype)             \
  void GgufWriter::name(std::string_view key, T v) {   \
    Encoder e;                                         \
    e.type(ValueType::vtype);                          \
    e.put<T>(v);                                       \
    set_encoded(key, std::move(e.bytes));              \
  }
HEARTH_GGUF_SETTER(set_u8, uint8_t, UINT8)
HEARTH_GGUF_SETTER(set_i8, int8_t, INT8)
HEARTH_GGUF_SETTER(set_u16, uint16_t, UINT16)
HEARTH_GGUF_SETTER(set_i16, int16_t, INT16)
HEARTH_GGUF_SETTER(set_u32, uint32_t, UINT32)
HEARTH_GGUF_SETTER(set_i32, int32_t, INT32)
HEARTH_GGUF_SETTER(set_u64, uint64_t, UINT64)
HEARTH_GGUF_SETTER(set_i64, int64_t, INT64)
HEARTH_GGUF_SETTER(set_f32, float, FLOAT32)
HEARTH_GGUF_SETTER(set_f64, double, FLOAT64)
#undef HEARTH_GGUF_SETTER

void GgufWriter::set_bool(std::string_view key, bool v) {
  Encoder e;
  e.type(ValueType::BOOL);
  e.put<uint8_t>(v ? 1 : 0);
  set_encoded(key, std::move(e.bytes));
}

void GgufWriter::set_string(std::string_view key, std::string_view v) {
  Encoder e;
  e.type(ValueType::STRING);
  e.str(v);
  set_encoded(key, std::move(e.bytes));
}

void GgufWriter::set_fixed_array(std::string_view key, ValueType elem_type, const void* data, size_t count,
                                 size_t elem_size) {
  Encoder e;
  e.type(ValueType::ARRAY);
  e.type(elem_type);
  e.put<uint64_t>(count);
  if (count != 0) e.raw(data, count * elem_size);
  set_encoded(key, std::move(e.bytes));
}

void GgufWriter::set_string_array(std::string_view key, std::span<const std::string> values) {
  Encoder e;
  e.type(ValueType::ARRAY);
  e.type(ValueType::STRING);
  e.put<uint64_t>(values.size());
  for (const std::string& s : values) e.str(s);
  set_encoded(key, std::move(e.bytes));
}

void GgufWriter::set_string_array(std::string_view key, std::span<const std::string_view> values) {
  Encoder e;
  e.type(ValueType::ARRAY);
  e.type(ValueType::STRING);
  e.put<uint64_t>(values.size());
  for (std::string_view s : values) e.str(s);
  set_encoded(key, std::move(e.bytes));
}

void GgufWriter::set_value(std::string_view key, const Value& value) {
  Encoder e;
  e.type(value.type());
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string_view>) {
          e.str(v);
        } else if constexpr (std::is_same_v<T, ArrayValue>) {
          encode_array_body(e, v);
        } else if constexpr (std::is_same_v<T, bool>) {
          e.put<uint8_t>(v ? 1 : 0);
        } else {
          e.put<T>(v);
        }
      },
      value.storage());
  set_encoded(key, std::move(e.bytes));
}

// ---------------------------------------------------------------------------------------------
// Tensors

void GgufWriter::add_tensor(std::string_view name, DType type, std::span<const int64_t> ne, TensorWriteFn write_data) {
  if (name.empty() || name.size() > kMaxTensorNameLength) {
    throw Error(fmt::format("tensor name '{}' must be 1 to {} bytes long", name, kMaxTensorNameLength));
  }
  if (tensor_index_.count(std::string(name)) != 0) throw Error(fmt::format("tensor '{}' is added twice", name));
  const DTypeTraits* traits = dtype_traits_or_null(static_cast<uint32_t>(type));
  if (traits == nullptr) throw Error(fmt::format("tensor '{}' has unknown type id {}", name, static_cast<uint32_t>(type)));
  if (ne.empty() || ne.size() > static_cast<size_t>(kMaxDims)) {
    throw Error(fmt::format("tensor '{}' has {} dimensions; GGUF allows 1 to {}", name, ne.size(), kMaxDims));
  }
  uint64_t n_elements = 1;
  for (int64_t d : ne) {
    if (d < 1) throw Error(fmt::format("tensor '{}' has a dimension of {}", name, d));
    if (__builtin_mul_overflow(n_elements, static_cast<uint64_t>(d), &n_elements)) {
      throw Error(fmt::format("tensor '{}' has too many elements", name));
    }
  }
  if (ne[0] % traits->block_size != 0) {
    throw Error(fmt::format("tensor '{}' has rows of {} elements, not a multiple of {}'s block size {}", name, ne[0],
                            traits->name, traits->block_size));
  }
  if (!write_data) throw Error(fmt::format("tensor '{}' has no data source", name));
  const uint64_t n_bytes = n_elements / static_cast<uint64_t>(traits->block_size) * traits->block_bytes;
  tensor_index_.emplace(std::string(name), tensors_.size());
  tensors_.push_back({std::string(name), type, std::vector<int64_t>(ne.begin(), ne.end()), n_bytes, std::move(write_data)});
}

// Offsets are computed at write time: general.alignment may be set after tensors are added.
uint64_t GgufWriter::header_size() const {
  uint64_t n = 4 + 4 + 8 + 8;
  for (const Entry& kv : metadata_) n += 8 + kv.key.size() + kv.value.size();
  for (const Tensor& t : tensors_) n += 8 + t.name.size() + 4 + 8 * t.ne.size() + 4 + 8;
  return n;
}

uint64_t GgufWriter::data_offset() const { return align_up(header_size(), alignment_); }

uint64_t GgufWriter::data_size() const {
  uint64_t n = 0;
  for (const Tensor& t : tensors_) n = align_up(n, alignment_) + t.n_bytes;
  return align_up(n, alignment_);
}

uint64_t GgufWriter::file_size() const { return tensors_.empty() ? header_size() : data_offset() + data_size(); }

void GgufWriter::write(const std::filesystem::path& path) const {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  // Removes the temporary file unless the rename below succeeded.
  struct TmpGuard {
    const std::filesystem::path& tmp;
    bool armed = true;
    ~TmpGuard() {
      if (armed) ::unlink(tmp.c_str());
    }
  };
  OutFile out(tmp);
  TmpGuard guard{tmp};

  Encoder head;
  head.raw("GGUF", 4);
  head.put<uint32_t>(3);
  head.put<uint64_t>(tensors_.size());
  head.put<uint64_t>(metadata_.size());
  out.write(head.bytes.data(), head.bytes.size());
  for (const Entry& kv : metadata_) {
    Encoder e;
    e.str(kv.key);
    out.write(e.bytes.data(), e.bytes.size());
    out.write(kv.value.data(), kv.value.size());
  }
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  offsets.reserve(tensors_.size());
  for (const Tensor& t : tensors_) {
    offset = align_up(offset, alignment_);
    offsets.push_back(offset);
    Encoder e;
    e.str(t.name);
    e.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) e.put<uint64_t>(static_cast<uint64_t>(d));
    e.put<uint32_t>(static_cast<uint32_t>(t.type));
    e.put<uint64_t>(offset);
    out.write(e.bytes.data(), e.bytes.size());
    offset += t.n_bytes;
  }
  if (!tensors_.empty()) {
    const uint64_t data_start = align_up(out.position(), alignment_);
    out.zeros(data_start - out.position());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      out.zeros(data_start + offsets[i] - out.position());
      CountingSink sink(out, t.n_bytes);
      t.write_data(sink);
      if (sink.overflowed() || sink.remaining() != 0) {
        throw Error(fmt::format("writing {}: the data source of tensor '{}' delivered {} {} bytes", path.string(),
                                t.name, sink.overflowed() ? "more than its" : "fewer than its", t.n_bytes));
      }
    }
    out.zeros(align_up(out.position() - data_start, alignment_) + data_start - out.position());
  }
  out.close();
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error(fmt::format("cannot rename {} to {}: {}", tmp.string(), path.string(), ec.message()));
  guard.armed = false;
}

}  // namespace hearth::gguf
