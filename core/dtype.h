// Element types of tensors, with the numeric ids GGUF files use (ggml's `ggml_type`).
//
// Every type a GGUF file may name is listed here, so the reader can size and bounds-check any
// tensor; whether hearth can *compute* with a type is a separate question, answered by the
// kernels (`kernels::ref::can_dequantize`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace hearth {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  // 4, 5: Q4_2 and Q4_3, removed from ggml long ago.
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  // 31..33: Q4_0_4_4, Q4_0_4_8, Q4_0_8_8, removed (repacked at load time instead).
  TQ1_0 = 34,
  TQ2_0 = 35,
  // 36..38: IQ4_NL_4_4, IQ4_NL_4_8, IQ4_NL_8_8, removed.
  MXFP4 = 39,
  NVFP4 = 40,
  Q1_0 = 41,
};

struct DTypeTraits {
  std::string_view name;  // as ggml and gguf-py spell it: "Q4_K", "BF16"
  int64_t block_size;     // elements per block (1 for plain types)
  size_t block_bytes;     // bytes per block
  bool quantized;         // stored in blocks with scales
};

// Traits of a known type id, or nullptr when `raw` names no type (or a removed one).
const DTypeTraits* dtype_traits_or_null(uint32_t raw);
// Traits of a valid DType (aborts on a value that is not a known type: a programming error).
const DTypeTraits& dtype_traits(DType type);

inline std::string_view dtype_name(DType type) { return dtype_traits(type).name; }
inline int64_t dtype_block_size(DType type) { return dtype_traits(type).block_size; }
inline size_t dtype_block_bytes(DType type) { return dtype_traits(type).block_bytes; }

// The type named `name` (case-insensitive, "q4_k" == "Q4_K"), if any.
std::optional<DType> dtype_from_name(std::string_view name);

// Bytes of one row of `n` elements; `n` must be a multiple of the block size.
size_t dtype_row_bytes(DType type, int64_t n);

}  // namespace hearth
