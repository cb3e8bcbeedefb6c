#include "engine/format/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

namespace hearth::gguf {

std::string value_type_name(ValueType type) {
  switch (type) {
    case ValueType::UINT8: return "uint8";
    case ValueType::INT8: return "int8";
    case ValueType::UINT16: return "uint16";
    case ValueType::INT16: return "int16";
    case ValueType::UINT32: return "uint32";
    case ValueType::INT32: return "int32";
    case ValueType::FLOAT32: return "float32";
    case ValueType::BOOL: return "bool";
    case ValueType::STRING: return "string";
    case ValueType::ARRAY: return "array";
    case ValueType::UINT64: return "uint64";
    case ValueType::INT64: return "int64";
    case ValueType::FLOAT64: return "float64";
  }
  return fmt::format("unknown({})", static_cast<uint32_t>(type));
}

GgufError::GgufError(const std::string& file, uint64_t offset, const std::string& what)
    : Error(fmt::format("{}: invalid GGUF at offset {}: {}", file, offset, what)), offset_(offset), reason_(what) {}

namespace detail {

size_t fixed_value_size(ValueType type) {
  switch (type) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL: return 1;
    case ValueType::UINT16:
    case ValueType::INT16: return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32: return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64: return 8;
    case ValueType::STRING:
    case ValueType::ARRAY: return 0;
  }
  return 0;
}

void throw_array_mistyped(ValueType have, ValueType wanted) {
  throw MetadataError(fmt::format("array of {} read as array of {}", value_type_name(have), value_type_name(wanted)));
}

void throw_array_index(uint64_t index, uint64_t count) {
  throw MetadataError(fmt::format("array index {} out of range (array has {} elements)", index, count));
}

}  // namespace detail

namespace {

bool is_known_value_type(uint32_t raw) { return raw <= static_cast<uint32_t>(ValueType::FLOAT64); }

// Bounds-checked little-endian reader over the file's bytes. Every read checks the bytes left
// first; every failure throws GgufError at the offset where the offending field starts.
class Cursor {
 public:
  Cursor(const MappedFile& file) : data_(file.data()), size_(file.size()), name_(file.name()) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  template <class... Args>
  [[noreturn]] void fail_at(uint64_t offset, fmt::format_string<Args...> format, Args&&... args) const {
    throw GgufError(name_, offset, fmt::format(format, std::forward<Args>(args)...));
  }

  void need(uint64_t n, std::string_view what) const {
    if (n > remaining()) {
      fail_at(pos_, "{} needs {} bytes but only {} are left in the file (size {})", what, n, remaining(), size_);
    }
  }

  template <class T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  const uint8_t* take(uint64_t n, std::string_view what) {
    need(n, what);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }

  // A GGUF string: u64 length + bytes. The length is checked against the file, and against
  // `max_length` when the caller has a tighter limit.
  std::string_view read_string(std::string_view what, uint64_t max_length = std::numeric_limits<uint64_t>::max()) {
    const uint64_t start = pos_;
    const auto length = read<uint64_t>(what);
    if (length > remaining()) {
      fail_at(start, "{} claims a length of {} bytes but only {} bytes are left in the file", what, length,
              remaining());
    }
    if (length > max_length) fail_at(start, "{} is {} bytes long, more than the limit of {}", what, length, max_length);
    const uint8_t* p = take(length, what);
    return {reinterpret_cast<const char*>(p), static_cast<size_t>(length)};
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& name_;
};

ValueType read_value_type(Cursor& c, std::string_view what) {
  const uint64_t at = c.pos();
  const auto raw = c.read<uint32_t>(what);
  if (!is_known_value_type(raw)) c.fail_at(at, "{} has unknown value type {}", what, raw);
  return static_cast<ValueType>(raw);
}

ArrayValue read_array(Cursor& c, std::string_view key, int depth);

Value read_scalar(Cursor& c, ValueType type, std::string_view key) {
  const uint64_t at = c.pos();
  switch (type) {
    case ValueType::UINT8: return Value(c.read<uint8_t>("value"));
    case ValueType::INT8: return Value(c.read<int8_t>("value"));
    case ValueType::UINT16: return Value(c.read<uint16_t>("value"));
    case ValueType::INT16: return Value(c.read<int16_t>("value"));
    case ValueType::UINT32: return Value(c.read<uint32_t>("value"));
    case ValueType::INT32: return Value(c.read<int32_t>("value"));
    case ValueType::FLOAT32: return Value(c.read<float>("value"));
    case ValueType::UINT64: return Value(c.read<uint64_t>("value"));
    case ValueType::INT64: return Value(c.read<int64_t>("value"));
    case ValueType::FLOAT64: return Value(c.read<double>("value"));
    case ValueType::BOOL: {
      const auto b = c.read<uint8_t>("value");
      if (b > 1) c.fail_at(at, "bool value of key '{}' is {}, not 0 or 1", key, b);
      return Value(b == 1);
    }
    case ValueType::STRING: return Value(c.read_string("string value"));
    case ValueType::ARRAY: return Value(read_array(c, key, 0));
  }
  c.fail_at(at, "unknown value type");
}

ArrayValue read_array(Cursor& c, std::string_view key, int depth) {
  const uint64_t start = c.pos();
  if (depth >= kMaxArrayNesting) {
    c.fail_at(start, "array value of key '{}' is nested more than {} levels deep", key, kMaxArrayNesting);
  }
  ArrayValue array;
  array.elem_type = read_value_type(c, "array element type");
  const uint64_t count_at = c.pos();
  array.count = c.read<uint64_t>("array count");
  // Each element takes at least this many bytes, so a count the file cannot hold is refused
  // before anything is allocated for it.
  const size_t fixed = detail::fixed_value_size(array.elem_type);
  const uint64_t min_elem_bytes = fixed != 0 ? fixed : array.elem_type == ValueType::STRING ? 8 : 12;
  if (array.count > c.remaining() / min_elem_bytes) {
    c.fail_at(count_at, "array of key '{}' claims {} elements of type {} (at least {} bytes each) but only {} bytes are left",
              key, array.count, value_type_name(array.elem_type), min_elem_bytes, c.remaining());
  }
  switch (array.elem_type) {
    case ValueType::STRING:
      array.strings.reserve(array.count);
      for (uint64_t i = 0; i < array.count; ++i) array.strings.push_back(c.read_string("array string"));
      break;
    case ValueType::ARRAY:
      array.arrays.reserve(array.count);
      for (uint64_t i = 0; i < array.count; ++i) array.arrays.push_back(read_array(c, key, depth + 1));
      break;
    case ValueType::BOOL: {
      const uint64_t at = c.pos();
      array.raw = c.take(array.count, "bool array");
      for (uint64_t i = 0; i < array.count; ++i) {
        if (array.raw[i] > 1) c.fail_at(at + i, "bool array element {} of key '{}' is {}, not 0 or 1", i, key, array.raw[i]);
      }
      break;
    }
    default:
      array.raw = c.take(array.count * fixed, "array data");
      break;
  }
  return array;
}

uint64_t align_up(uint64_t x, uint64_t alignment) { return (x + alignment - 1) / alignment * alignment; }

}  // namespace

// ---------------------------------------------------------------------------------------------

GgufFile GgufFile::open(const std::filesystem::path& path) { return parse(MappedFile::open(path)); }

GgufFile GgufFile::from_bytes(std::vector<uint8_t> bytes, std::string name) {
  return parse(MappedFile::from_bytes(std::move(bytes), std::move(name)));
}

GgufFile GgufFile::parse(std::shared_ptr<const MappedFile> file) {
  GgufFile g;
  g.file_ = std::move(file);
  Cursor c(*g.file_);

  // Header.
  constexpr uint64_t kHeaderBytes = 4 + 4 + 8 + 8;
  if (c.remaining() < kHeaderBytes) {
    c.fail_at(0, "file is {} bytes, shorter than the {}-byte GGUF header", c.remaining(), kHeaderBytes);
  }
  const uint8_t* magic = c.take(4, "magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    auto printable = [](uint8_t ch) { return ch >= 0x20 && ch < 0x7f ? static_cast<char>(ch) : '.'; };
    c.fail_at(0, "bad magic '{}{}{}{}' (bytes {:02x} {:02x} {:02x} {:02x}): not a GGUF file", printable(magic[0]),
              printable(magic[1]), printable(magic[2]), printable(magic[3]), magic[0], magic[1], magic[2], magic[3]);
  }
  g.version_ = c.read<uint32_t>("version");
  if (g.version_ != 2 && g.version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(g.version_);
    if (swapped >= 1 && swapped <= 3) c.fail_at(4, "big-endian GGUF (version {}) is not supported", swapped);
    if (g.version_ == 1) c.fail_at(4, "GGUF version 1 is not supported (hearth reads versions 2 and 3)");
    c.fail_at(4, "unsupported GGUF version {} (hearth reads versions 2 and 3)", g.version_);
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Smallest possible entries: a KV is key length (8) + 1 key byte + type (4) + 1 value byte;
  // a tensor info is name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
  constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;
  constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
  if (n_kv > c.remaining() / kMinKvBytes) {
    c.fail_at(16, "metadata count {} cannot fit in the {} bytes left in the file", n_kv, c.remaining());
  }
  if (n_tensors > c.remaining() / kMinTensorInfoBytes) {
    c.fail_at(8, "tensor count {} cannot fit in the {} bytes left in the file", n_tensors, c.remaining());
  }

  // Metadata.
  g.metadata_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t entry_at = c.pos();
    const std::string_view key = c.read_string("metadata key", kMaxKeyLength);
    if (key.empty()) c.fail_at(entry_at, "metadata key {} is empty", i);
    const ValueType type = read_value_type(c, fmt::format("value of key '{}'", key));
    Value value = read_scalar(c, type, key);
    if (!g.key_index_.emplace(key, g.metadata_.size()).second) {
      c.fail_at(entry_at, "duplicate metadata key '{}'", key);
    }
    g.metadata_.push_back(KeyValue{key, std::move(value), entry_at});
  }

  if (const Value* a = g.find("general.alignment")) {
    const uint64_t at = g.metadata_[g.key_index_.at("general.alignment")].offset;
    const auto* alignment = a->get_if<uint32_t>();
    if (alignment == nullptr) {
      c.fail_at(at, "general.alignment has type {}, expected uint32", value_type_name(a->type()));
    }
    if (*alignment == 0 || !std::has_single_bit(*alignment)) {
      c.fail_at(at, "general.alignment is {}, not a power of two", *alignment);
    }
    g.alignment_ = *alignment;
  }

  // Tensor infos.
  g.tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.info_offset = c.pos();
    t.name = c.read_string("tensor name", kMaxTensorNameLength);
    if (t.name.empty()) c.fail_at(t.info_offset, "tensor {} has an empty name", i);
    const uint64_t dims_at = c.pos();
    const auto n_dims = c.read<uint32_t>("tensor n_dims");
    if (n_dims > kMaxDims) {
      c.fail_at(dims_at, "tensor '{}' has {} dimensions, more than the maximum of {}", t.name, n_dims, kMaxDims);
    }
    t.n_dims = static_cast<int>(n_dims);
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim_at = c.pos();
      const auto dim = c.read<uint64_t>("tensor dimension");
      if (dim == 0) c.fail_at(dim_at, "tensor '{}' dimension {} is 0", t.name, d);
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        c.fail_at(dim_at, "tensor '{}' dimension {} is {} (negative as int64)", t.name, d, static_cast<int64_t>(dim));
      }
      t.ne[d] = static_cast<int64_t>(dim);
      if (__builtin_mul_overflow(n_elements, t.ne[d], &n_elements)) {
        c.fail_at(dim_at, "tensor '{}' element count overflows int64 at dimension {}", t.name, d);
      }
    }
    t.n_elements = n_elements;
    const uint64_t type_at = c.pos();
    const auto raw_type = c.read<uint32_t>("tensor type");
    const DTypeTraits* traits = dtype_traits_or_null(raw_type);
    if (traits == nullptr) c.fail_at(type_at, "tensor '{}' has unknown type {}", t.name, raw_type);
    t.type = static_cast<DType>(raw_type);
    if (t.ne[0] % traits->block_size != 0) {
      c.fail_at(dims_at, "tensor '{}' of type {} has a row of {} elements, not a multiple of its block size {}",
                t.name, traits->name, t.ne[0], traits->block_size);
    }
    const auto blocks = static_cast<uint64_t>(n_elements / traits->block_size);
    if (__builtin_mul_overflow(blocks, static_cast<uint64_t>(traits->block_bytes), &t.n_bytes)) {
      c.fail_at(dims_at, "tensor '{}' byte size overflows", t.name);
    }
    const uint64_t offset_at = c.pos();
    t.offset = c.read<uint64_t>("tensor data offset");
    if (t.offset % g.alignment_ != 0) {
      c.fail_at(offset_at, "tensor '{}' data offset {} is not a multiple of the alignment {}", t.name, t.offset,
                g.alignment_);
    }
    if (!g.tensor_index_.emplace(t.name, g.tensors_.size()).second) {
      c.fail_at(t.info_offset, "duplicate tensor name '{}'", t.name);
    }
    g.tensors_.push_back(t);
  }

  // Tensor data: every range inside the file, none overlapping.
  g.data_offset_ = align_up(c.pos(), g.alignment_);
  if (!g.tensors_.empty()) {
    if (g.data_offset_ > g.file_->size()) {
      c.fail_at(c.pos(), "tensor data section would start at {} (aligned to {}), past the end of the {}-byte file",
                g.data_offset_, g.alignment_, g.file_->size());
    }
    const uint64_t data_size = g.file_->size() - g.data_offset_;
    std::vector<const TensorInfo*> by_offset;
    by_offset.reserve(g.tensors_.size());
    for (const TensorInfo& t : g.tensors_) {
      if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
        c.fail_at(t.info_offset,
                  "tensor '{}' data ({} bytes at offset {} of the data section) runs past the end of the file "
                  "(the data section holds {} bytes)",
                  t.name, t.n_bytes, t.offset, data_size);
      }
      by_offset.push_back(&t);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      const TensorInfo& prev = *by_offset[i - 1];
      const TensorInfo& cur = *by_offset[i];
      if (cur.offset < prev.offset + prev.n_bytes) {
        c.fail_at(cur.info_offset, "tensor '{}' data at offset {} overlaps tensor '{}' [{}, {})", cur.name, cur.offset,
                  prev.name, prev.offset, prev.offset + prev.n_bytes);
      }
    }
  }
  return g;
}

const Value* GgufFile::find(std::string_view key) const {
  auto it = key_index_.find(key);
  return it == key_index_.end() ? nullptr : &metadata_[it->second].value;
}

const Value& GgufFile::require(std::string_view key) const {
  const Value* v = find(key);
  if (v == nullptr) throw MetadataError(fmt::format("{}: metadata key '{}' is missing", path(), key));
  return *v;
}

void GgufFile::throw_mistyped(std::string_view key, const Value& value, std::string_view wanted) const {
  std::string have = value_type_name(value.type());
  if (const auto* a = value.get_if<ArrayValue>()) have = fmt::format("array of {}", value_type_name(a->elem_type));
  throw MetadataError(fmt::format("{}: metadata key '{}' has type {}, expected {}", path(), key, have, wanted));
}

uint64_t GgufFile::get_uint(std::string_view key) const {
  const Value& value = require(key);
  return std::visit(
      [&](const auto& v) -> uint64_t {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          if constexpr (std::is_signed_v<T>) {
            if (v < 0) throw MetadataError(fmt::format("{}: metadata key '{}' is negative ({})", path(), key, v));
          }
          return static_cast<uint64_t>(v);
        } else {
          throw_mistyped(key, value, "an integer");
        }
      },
      value.storage());
}

double GgufFile::get_number(std::string_view key) const {
  const Value& value = require(key);
  return std::visit(
      [&](const auto& v) -> double {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
          return static_cast<double>(v);
        } else {
          throw_mistyped(key, value, "a number");
        }
      },
      value.storage());
}

const TensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> GgufFile::tensor_data(const TensorInfo& tensor) const {
  return file_->bytes().subspan(data_offset_ + tensor.offset, tensor.n_bytes);
}

std::string Value::to_display_string(size_t max_chars) const {
  return std::visit(
      [&](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string_view>) {
          size_t cut = std::min(max_chars, v.size());
          while (cut > 0 && cut < v.size() && (static_cast<uint8_t>(v[cut]) & 0xC0) == 0x80) --cut;  // UTF-8 boundary
          std::string s(v.substr(0, cut));
          for (char& ch : s) {
            if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
          }
          return fmt::format("\"{}\"{}", s, cut < v.size() ? "..." : "");
        } else if constexpr (std::is_same_v<T, ArrayValue>) {
          return fmt::format("[{} x {}]", value_type_name(v.elem_type), v.count);
        } else if constexpr (std::is_same_v<T, bool>) {
          return v ? "true" : "false";
        } else if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, int8_t>) {
          return fmt::format("{}", static_cast<int>(v));
        } else {
          return fmt::format("{}", v);
        }
      },
      storage_);
}

}  // namespace hearth::gguf
