#include "core/dtype.h"

#include <array>
#include <cctype>

#include "core/error.h"

namespace hearth {
namespace {

struct Entry {
  uint32_t id;
  DTypeTraits traits;
};

// Block sizes and byte sizes are the GGUF format's (ggml's type_traits); see core/quant_blocks.h
// for the layouts of the types hearth computes with.
constexpr Entry kEntries[] = {
    {0, {"F32", 1, 4, false}},        {1, {"F16", 1, 2, false}},        {2, {"Q4_0", 32, 18, true}},
    {3, {"Q4_1", 32, 20, true}},      {6, {"Q5_0", 32, 22, true}},      {7, {"Q5_1", 32, 24, true}},
    {8, {"Q8_0", 32, 34, true}},      {9, {"Q8_1", 32, 36, true}},      {10, {"Q2_K", 256, 84, true}},
    {11, {"Q3_K", 256, 110, true}},   {12, {"Q4_K", 256, 144, true}},   {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}},   {15, {"Q8_K", 256, 292, true}},   {16, {"IQ2_XXS", 256, 66, true}},
    {17, {"IQ2_XS", 256, 74, true}},  {18, {"IQ3_XXS", 256, 98, true}}, {19, {"IQ1_S", 256, 50, true}},
    {20, {"IQ4_NL", 32, 18, true}},   {21, {"IQ3_S", 256, 110, true}},  {22, {"IQ2_S", 256, 82, true}},
    {23, {"IQ4_XS", 256, 136, true}}, {24, {"I8", 1, 1, false}},        {25, {"I16", 1, 2, false}},
    {26, {"I32", 1, 4, false}},       {27, {"I64", 1, 8, false}},       {28, {"F64", 1, 8, false}},
    {29, {"IQ1_M", 256, 56, true}},   {30, {"BF16", 1, 2, false}},      {34, {"TQ1_0", 256, 54, true}},
    {35, {"TQ2_0", 256, 66, true}},   {39, {"MXFP4", 32, 17, true}},    {40, {"NVFP4", 64, 36, true}},
    {41, {"Q1_0", 128, 18, true}},
};

constexpr uint32_t kMaxId = 41;

constexpr std::array<const DTypeTraits*, kMaxId + 1> make_table() {
  std::array<const DTypeTraits*, kMaxId + 1> table{};
  for (const Entry& e : kEntries) table[e.id] = &e.traits;
  return table;
}

constexpr auto kTable = make_table();

}  // namespace

const DTypeTraits* dtype_traits_or_null(uint32_t raw) { return raw <= kMaxId ? kTable[raw] : nullptr; }

const DTypeTraits& dtype_traits(DType type) {
  const DTypeTraits* t = dtype_traits_or_null(static_cast<uint32_t>(type));
  HEARTH_CHECK(t != nullptr, "invalid DType value {}", static_cast<uint32_t>(type));
  return *t;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const Entry& e : kEntries) {
    if (e.traits.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i) {
      same = std::toupper(static_cast<unsigned char>(name[i])) == e.traits.name[i];
    }
    if (same) return static_cast<DType>(e.id);
  }
  return std::nullopt;
}

size_t dtype_row_bytes(DType type, int64_t n) {
  const DTypeTraits& t = dtype_traits(type);
  HEARTH_CHECK(n >= 0 && n % t.block_size == 0, "row of {} elements is not whole {} blocks of {}", n, t.name,
               t.block_size);
  return static_cast<size_t>(n / t.block_size) * t.block_bytes;
}

}  // namespace hearth
