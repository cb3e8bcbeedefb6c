// GGUF v3 writer: the counterpart of gguf.h's reader, for files hearth makes itself (synthetic
// benchmark models, tools). Metadata is encoded as it is set; tensor data is not held at all —
// each tensor names a callback that streams its bytes into a sink when the file is written, so
// a 40 GB model never sits in memory.
//
// Output contract: `write(path)` writes `path.tmp`, then renames it to `path`. On any failure
// (an I/O error, a callback that throws or writes the wrong number of bytes) the temporary file
// is removed and `path` is left as it was; I/O errors are hearth::Error naming the path and the
// system's reason (strerror).
//
// Layout written (see gguf.h): header, metadata in the order first set, tensor infos in the
// order added, padding to `general.alignment` (default 32), then each tensor's data at an
// aligned offset, padded after each tensor (as gguf-py does).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "engine/format/gguf.h"

namespace hearth::gguf {

// Where a tensor's bytes go while the file is written. Buffered; `write` may be called any
// number of times with any sizes, and must deliver exactly the tensor's byte size in total.
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  virtual void write(const void* data, size_t n_bytes) = 0;
  // Bytes this tensor still expects.
  virtual uint64_t remaining() const = 0;
};

// Produces one tensor's data into the sink. May throw; the write is then abandoned.
using TensorWriteFn = std::function<void(TensorSink& sink)>;

class GgufWriter {
 public:
  GgufWriter() = default;

  // Metadata. Setting a key again replaces its value (keeping its original position), so a
  // caller can copy keys from another file and then override some.
  void set_u8(std::string_view key, uint8_t v);
  void set_i8(std::string_view key, int8_t v);
  void set_u16(std::string_view key, uint16_t v);
  void set_i16(std::string_view key, int16_t v);
  void set_u32(std::string_view key, uint32_t v);
  void set_i32(std::string_view key, int32_t v);
  void set_u64(std::string_view key, uint64_t v);
  void set_i64(std::string_view key, int64_t v);
  void set_f32(std::string_view key, float v);
  void set_f64(std::string_view key, double v);
  void set_bool(std::string_view key, bool v);
  void set_string(std::string_view key, std::string_view v);

  // Arrays of fixed-size values: T is the element's C++ type (uint8_t ... double, bool).
  template <class T>
  void set_array(std::string_view key, std::span<const T> values);
  void set_string_array(std::string_view key, std::span<const std::string> values);
  void set_string_array(std::string_view key, std::span<const std::string_view> values);

  // A value read from another file, copied verbatim (type, nested arrays and all).
  void set_value(std::string_view key, const Value& value);

  bool contains(std::string_view key) const { return key_index_.count(std::string(key)) != 0; }
  size_t metadata_count() const { return metadata_.size(); }

  // The alignment the file will use: `general.alignment` when set (it must be a uint32 power
  // of two; set_u32 refuses anything else for that key), otherwise 32.
  uint32_t alignment() const { return alignment_; }

  // Declares a tensor: `ne[0]` is the row length and must be a multiple of the type's block
  // size; trailing dimensions of 1 may be left out of `ne` (1 to 4 dimensions). `write_data`
  // runs during write() and must deliver exactly byte_size() bytes. Throws hearth::Error for a
  // duplicate or bad name, a bad shape or an unknown type.
  void add_tensor(std::string_view name, DType type, std::span<const int64_t> ne, TensorWriteFn write_data);
  void add_tensor(std::string_view name, DType type, std::initializer_list<int64_t> ne, TensorWriteFn write_data) {
    add_tensor(name, type, std::span<const int64_t>(ne.begin(), ne.size()), std::move(write_data));
  }
  size_t tensor_count() const { return tensors_.size(); }

  // The size the file will have, in bytes.
  uint64_t file_size() const;

  // Writes the file (see the output contract above). May be called more than once.
  void write(const std::filesystem::path& path) const;

 private:
  struct Entry {
    std::string key;
    std::vector<uint8_t> value;  // u32 value type + the encoded value
  };
  struct Tensor {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    uint64_t n_bytes;
    TensorWriteFn write_data;
  };

  void set_encoded(std::string_view key, std::vector<uint8_t> encoded);
  void set_fixed_array(std::string_view key, ValueType elem_type, const void* data, size_t count, size_t elem_size);
  uint64_t header_size() const;
  uint64_t data_offset() const;
  uint64_t data_size() const;

  std::vector<Entry> metadata_;
  std::unordered_map<std::string, size_t> key_index_;
  std::vector<Tensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
  uint32_t alignment_ = kDefaultAlignment;
};

namespace detail {
template <class T>
inline constexpr bool is_fixed_gguf_type_v =
    std::is_same_v<T, uint8_t> || std::is_same_v<T, int8_t> || std::is_same_v<T, uint16_t> ||
    std::is_same_v<T, int16_t> || std::is_same_v<T, uint32_t> || std::is_same_v<T, int32_t> ||
    std::is_same_v<T, float> || std::is_same_v<T, bool> || std::is_same_v<T, uint64_t> ||
    std::is_same_v<T, int64_t> || std::is_same_v<T, double>;
}  // namespace detail

template <class T>
void GgufWriter::set_array(std::string_view key, std::span<const T> values) {
  static_assert(detail::is_fixed_gguf_type_v<T>, "set_array takes fixed-size GGUF element types");
  if constexpr (std::is_same_v<T, bool>) {
    // bool's object representation is not guaranteed to be one byte of 0/1: convert.
    std::vector<uint8_t> bytes(values.size());
    for (size_t i = 0; i < values.size(); ++i) bytes[i] = values[i] ? 1 : 0;
    set_fixed_array(key, ValueType::BOOL, bytes.data(), bytes.size(), 1);
  } else {
    set_fixed_array(key, detail::value_type_of<T>(), values.data(), values.size(), sizeof(T));
  }
}

}  // namespace hearth::gguf
