// Builds GGUF files byte by byte for tests — valid ones, and ones that lie in exactly one
// field. Nothing here validates: a test sets whatever count, length, shape or offset it wants.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace hearth::test {

class GgufBytes {
 public:
  template <class T>
  GgufBytes& put(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
    return *this;
  }
  GgufBytes& u8(uint8_t v) { return put(v); }
  GgufBytes& u32(uint32_t v) { return put(v); }
  GgufBytes& u64(uint64_t v) { return put(v); }
  GgufBytes& raw(std::string_view s) {
    bytes.insert(bytes.end(), s.begin(), s.end());
    return *this;
  }
  // A GGUF string (u64 length + bytes); `claimed_length` lets a test lie about the length.
  GgufBytes& str(std::string_view s, std::optional<uint64_t> claimed_length = std::nullopt) {
    u64(claimed_length.value_or(s.size()));
    return raw(s);
  }
  GgufBytes& pad_to(uint64_t alignment) {
    while (bytes.size() % alignment != 0) bytes.push_back(0);
    return *this;
  }
  size_t size() const { return bytes.size(); }

  std::vector<uint8_t> bytes;
};

// GGUF value type ids (as in engine/format/gguf.h, repeated here so tests can write invalid ones).
enum : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

struct KvSpec {
  std::string key;
  std::function<void(GgufBytes&)> write;  // writes the value type and the value
  std::optional<uint64_t> claimed_key_length;
};

inline KvSpec kv_u32(std::string key, uint32_t v) {
  return {std::move(key), [v](GgufBytes& b) { b.u32(kU32).u32(v); }, std::nullopt};
}
inline KvSpec kv_f32(std::string key, float v) {
  return {std::move(key), [v](GgufBytes& b) { b.u32(kF32).put(v); }, std::nullopt};
}
inline KvSpec kv_str(std::string key, std::string v) {
  return {std::move(key), [v](GgufBytes& b) { b.u32(kString).str(v); }, std::nullopt};
}
inline KvSpec kv_bool(std::string key, bool v) {
  return {std::move(key), [v](GgufBytes& b) { b.u32(kBool).u8(v ? 1 : 0); }, std::nullopt};
}
inline KvSpec kv_str_array(std::string key, std::vector<std::string> items) {
  return {std::move(key),
          [items](GgufBytes& b) {
            b.u32(kArray).u32(kString).u64(items.size());
            for (const auto& s : items) b.str(s);
          },
          std::nullopt};
}
inline KvSpec kv_raw(std::string key, std::function<void(GgufBytes&)> write) {
  return {std::move(key), std::move(write), std::nullopt};
}

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;                      // F32
  std::optional<uint64_t> offset;         // default: next aligned offset after the previous tensor
  std::optional<uint32_t> claimed_n_dims;  // default: dims.size()
};

struct GgufSpec {
  std::string magic = "GGUF";
  uint32_t version = 3;
  std::optional<uint64_t> claimed_tensor_count;
  std::optional<uint64_t> claimed_kv_count;
  std::vector<KvSpec> kvs;
  std::vector<TensorSpec> tensors;
  uint64_t alignment = 32;    // used to place the data section and default offsets
  bool write_data = true;     // write tensor data (a byte pattern) after the infos
  int64_t data_bytes_delta = 0;  // add (or remove, if negative) bytes at the end of the file
};

inline constexpr uint64_t kMaxWrittenData = 64ull << 20;  // larger claims are lies; no data written

// Bytes a tensor takes (wrapping on overflow), or 0 for an unknown type.
inline uint64_t tensor_bytes(const TensorSpec& t) {
  const DTypeTraits* traits = dtype_traits_or_null(t.type);
  if (traits == nullptr) return 0;
  uint64_t n = 1;
  for (uint64_t d : t.dims) {
    if (__builtin_mul_overflow(n, d, &n)) return ~0ull;
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(n / static_cast<uint64_t>(traits->block_size), traits->block_bytes, &bytes)) return ~0ull;
  return bytes;
}

inline std::vector<uint8_t> build_gguf(const GgufSpec& spec) {
  GgufBytes b;
  b.raw(spec.magic);
  b.u32(spec.version);
  b.u64(spec.claimed_tensor_count.value_or(spec.tensors.size()));
  b.u64(spec.claimed_kv_count.value_or(spec.kvs.size()));
  for (const KvSpec& kv : spec.kvs) {
    b.str(kv.key, kv.claimed_key_length);
    kv.write(b);
  }
  uint64_t next_offset = 0;
  uint64_t data_end = 0;
  for (const TensorSpec& t : spec.tensors) {
    b.str(t.name);
    b.u32(t.claimed_n_dims.value_or(static_cast<uint32_t>(t.dims.size())));
    for (uint64_t d : t.dims) b.u64(d);
    b.u32(t.type);
    const uint64_t offset = t.offset.value_or(next_offset);
    b.u64(offset);
    uint64_t end = 0;
    if (__builtin_add_overflow(offset, tensor_bytes(t), &end)) end = ~0ull;
    // Lying shapes and offsets describe absurd sizes; only plausible ones get data written.
    if (end <= kMaxWrittenData) data_end = std::max(data_end, end);
    next_offset = end > kMaxWrittenData ? 0 : (end + spec.alignment - 1) / spec.alignment * spec.alignment;
  }
  if (spec.write_data && !spec.tensors.empty()) {
    b.pad_to(spec.alignment);
    for (uint64_t i = 0; i < data_end; ++i) b.u8(static_cast<uint8_t>(i * 7 + 3));
  }
  if (spec.data_bytes_delta > 0) {
    for (int64_t i = 0; i < spec.data_bytes_delta; ++i) b.u8(0);
  } else if (spec.data_bytes_delta < 0) {
    b.bytes.resize(b.bytes.size() - static_cast<size_t>(-spec.data_bytes_delta));
  }
  return b.bytes;
}

// A small, valid model-like file used as the base of many tests.
inline GgufSpec small_model_spec() {
  GgufSpec s;
  s.kvs = {kv_str("general.architecture", "llama"),
           kv_str("general.name", "tiny test model"),
           kv_u32("llama.block_count", 2),
           kv_u32("llama.context_length", 128),
           kv_u32("llama.embedding_length", 64),
           kv_u32("llama.attention.head_count", 4),
           kv_u32("llama.attention.head_count_kv", 2),
           kv_f32("llama.rope.freq_base", 10000.0f),
           kv_str("tokenizer.ggml.model", "gpt2"),
           kv_str_array("tokenizer.ggml.tokens", {"a", "b", "c", "<s>"}),
           kv_bool("tokenizer.ggml.add_bos_token", true)};
  s.tensors = {{"token_embd.weight", {64, 4}, 2 /*Q4_0*/, std::nullopt, std::nullopt},
               {"blk.0.attn_norm.weight", {64}, 0 /*F32*/, std::nullopt, std::nullopt},
               {"blk.0.ffn_up.weight", {64, 3}, 8 /*Q8_0*/, std::nullopt, std::nullopt},
               {"output_norm.weight", {64}, 1 /*F16*/, std::nullopt, std::nullopt}};
  return s;
}

}  // namespace hearth::test
