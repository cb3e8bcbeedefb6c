// GGUF reader (versions 2 and 3): memory-mapped, zero-copy, and hardened against malformed
// and hostile files. Every count, length, shape and offset read from the file is checked
// against the bytes actually left before anything is allocated or indexed; every failure is
// a GgufError naming the file, the byte offset and what was wrong.
//
// Layout (little-endian):
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x      { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
//   padding to `general.alignment` (default 32) | tensor data
// where string = u64 length + bytes, and array value = u32 elem_type + u64 count + elems.
#pragma once

#include <array>
#include <cstring>
#include <type_traits>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/mapped_file.h"

namespace hearth::gguf {

inline constexpr uint32_t kDefaultAlignment = 32;
inline constexpr int kMaxDims = 4;
inline constexpr int kMaxArrayNesting = 8;
inline constexpr size_t kMaxKeyLength = 65535;
inline constexpr size_t kMaxTensorNameLength = 256;

enum class ValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

// "uint32", "string", "array"...; "unknown(N)" for values outside the enum.
std::string value_type_name(ValueType type);

// A malformed file: what was wrong and at which byte offset.
class GgufError : public Error {
 public:
  GgufError(const std::string& file, uint64_t offset, const std::string& what);
  uint64_t offset() const { return offset_; }
  const std::string& reason() const { return reason_; }

 private:
  uint64_t offset_;
  std::string reason_;
};

// A metadata key that is absent or has another type than the caller asked for.
class MetadataError : public Error {
 public:
  using Error::Error;
};

// A typed array value. Fixed-size elements stay in the file mapping (`raw`); strings are views
// into it; nested arrays are parsed recursively.
struct ArrayValue {
  ValueType elem_type = ValueType::UINT8;
  uint64_t count = 0;
  const uint8_t* raw = nullptr;              // count * element size bytes, fixed-size types only
  std::vector<std::string_view> strings;     // elem_type == STRING
  std::vector<ArrayValue> arrays;            // elem_type == ARRAY

  // Element i converted to T, which must be the element type's own C++ type
  // (uint32_t for UINT32, float for FLOAT32, bool for BOOL, std::string_view for STRING).
  template <class T>
  T at(uint64_t i) const;
  template <class T>
  std::vector<T> to_vector() const;
};

class Value {
 public:
  using Storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                               std::string_view, ArrayValue, uint64_t, int64_t, double>;
  explicit Value(Storage storage) : storage_(std::move(storage)) {}

  // The variant's alternatives are listed in ValueType order, so the index is the type.
  ValueType type() const { return static_cast<ValueType>(storage_.index()); }
  template <class T>
  const T* get_if() const {
    return std::get_if<T>(&storage_);
  }
  const Storage& storage() const { return storage_; }

  // A short printable form: scalars as they are, strings quoted, arrays as "[type x N]".
  std::string to_display_string(size_t max_chars = 80) const;

 private:
  Storage storage_;
};

struct KeyValue {
  std::string_view key;
  Value value;
  uint64_t offset;  // where the entry starts in the file
};

struct TensorInfo {
  std::string_view name;
  DType type = DType::F32;
  int n_dims = 0;
  std::array<int64_t, kMaxDims> ne{1, 1, 1, 1};  // ne[0] is the contiguous (row) dimension
  int64_t n_elements = 0;
  uint64_t n_bytes = 0;
  uint64_t offset = 0;       // relative to the start of the data section
  uint64_t info_offset = 0;  // where this tensor's info starts in the file
};

class GgufFile {
 public:
  // Maps and parses `path`. Throws hearth::Error for I/O errors, GgufError for a bad file.
  static GgufFile open(const std::filesystem::path& path);
  // Parses bytes held in memory (`name` appears in errors).
  static GgufFile from_bytes(std::vector<uint8_t> bytes, std::string name = "<memory>");
  static GgufFile parse(std::shared_ptr<const MappedFile> file);

  const std::string& path() const { return file_->name(); }
  uint32_t version() const { return version_; }
  uint64_t file_size() const { return file_->size(); }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }

  const std::vector<KeyValue>& metadata() const { return metadata_; }
  const Value* find(std::string_view key) const;
  bool contains(std::string_view key) const { return find(key) != nullptr; }

  // The value of `key` as exactly type T (uint32_t, float, bool, std::string, std::string_view,
  // ArrayValue...). Throws MetadataError naming the key and both types when absent or mistyped.
  template <class T>
  T get(std::string_view key) const;
  template <class T>
  T get_or(std::string_view key, T fallback) const {
    return contains(key) ? get<T>(key) : fallback;
  }
  // Any integer-typed value as uint64_t (negative values refused): for keys whose integer
  // width differs between writers.
  uint64_t get_uint(std::string_view key) const;
  // Any float- or integer-typed value as double.
  double get_number(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;
  // The tensor's bytes, inside the mapping (validated at parse time).
  std::span<const uint8_t> tensor_data(const TensorInfo& tensor) const;

  const std::shared_ptr<const MappedFile>& mapping() const { return file_; }

 private:
  GgufFile() = default;
  const Value& require(std::string_view key) const;
  [[noreturn]] void throw_mistyped(std::string_view key, const Value& value, std::string_view wanted) const;

  std::shared_ptr<const MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<KeyValue> metadata_;
  std::unordered_map<std::string_view, size_t> key_index_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string_view, size_t> tensor_index_;
};

// ---------------------------------------------------------------------------------------------
// Template definitions

namespace detail {
template <class T>
constexpr ValueType value_type_of();
template <> constexpr ValueType value_type_of<uint8_t>() { return ValueType::UINT8; }
template <> constexpr ValueType value_type_of<int8_t>() { return ValueType::INT8; }
template <> constexpr ValueType value_type_of<uint16_t>() { return ValueType::UINT16; }
template <> constexpr ValueType value_type_of<int16_t>() { return ValueType::INT16; }
template <> constexpr ValueType value_type_of<uint32_t>() { return ValueType::UINT32; }
template <> constexpr ValueType value_type_of<int32_t>() { return ValueType::INT32; }
template <> constexpr ValueType value_type_of<float>() { return ValueType::FLOAT32; }
template <> constexpr ValueType value_type_of<bool>() { return ValueType::BOOL; }
template <> constexpr ValueType value_type_of<std::string_view>() { return ValueType::STRING; }
template <> constexpr ValueType value_type_of<std::string>() { return ValueType::STRING; }
template <> constexpr ValueType value_type_of<ArrayValue>() { return ValueType::ARRAY; }
template <> constexpr ValueType value_type_of<uint64_t>() { return ValueType::UINT64; }
template <> constexpr ValueType value_type_of<int64_t>() { return ValueType::INT64; }
template <> constexpr ValueType value_type_of<double>() { return ValueType::FLOAT64; }
size_t fixed_value_size(ValueType type);  // 0 for STRING / ARRAY
[[noreturn]] void throw_array_mistyped(ValueType have, ValueType wanted);
[[noreturn]] void throw_array_index(uint64_t index, uint64_t count);
}  // namespace detail

template <class T>
T ArrayValue::at(uint64_t i) const {
  constexpr ValueType wanted = detail::value_type_of<T>();
  if (elem_type != wanted) detail::throw_array_mistyped(elem_type, wanted);
  if (i >= count) detail::throw_array_index(i, count);
  if constexpr (std::is_same_v<T, std::string_view>) {
    return strings[i];
  } else if constexpr (std::is_same_v<T, bool>) {
    return raw[i] != 0;
  } else {
    T v;
    std::memcpy(&v, raw + i * sizeof(T), sizeof(T));  // the mapping is only byte-aligned
    return v;
  }
}

template <class T>
std::vector<T> ArrayValue::to_vector() const {
  std::vector<T> out;
  out.reserve(count);
  for (uint64_t i = 0; i < count; ++i) out.push_back(at<T>(i));
  return out;
}

template <class T>
T GgufFile::get(std::string_view key) const {
  const Value& value = require(key);
  using Stored = std::conditional_t<std::is_same_v<T, std::string>, std::string_view, T>;
  const Stored* v = value.get_if<Stored>();
  if (v == nullptr) throw_mistyped(key, value, value_type_name(detail::value_type_of<T>()));
  return T(*v);
}

}  // namespace hearth::gguf
