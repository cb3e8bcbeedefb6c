#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/quant_blocks.h"
#include "tests/support/fixtures.h"

namespace hearth {
namespace {

TEST(DType, SizesMatchBlockStructs) {
  EXPECT_EQ(dtype_block_bytes(DType::Q4_0), sizeof(BlockQ4_0));
  EXPECT_EQ(dtype_block_bytes(DType::Q4_1), sizeof(BlockQ4_1));
  EXPECT_EQ(dtype_block_bytes(DType::Q5_0), sizeof(BlockQ5_0));
  EXPECT_EQ(dtype_block_bytes(DType::Q5_1), sizeof(BlockQ5_1));
  EXPECT_EQ(dtype_block_bytes(DType::Q8_0), sizeof(BlockQ8_0));
  EXPECT_EQ(dtype_block_bytes(DType::Q8_1), sizeof(BlockQ8_1));
  EXPECT_EQ(dtype_block_bytes(DType::Q2_K), sizeof(BlockQ2_K));
  EXPECT_EQ(dtype_block_bytes(DType::Q3_K), sizeof(BlockQ3_K));
  EXPECT_EQ(dtype_block_bytes(DType::Q4_K), sizeof(BlockQ4_K));
  EXPECT_EQ(dtype_block_bytes(DType::Q5_K), sizeof(BlockQ5_K));
  EXPECT_EQ(dtype_block_bytes(DType::Q6_K), sizeof(BlockQ6_K));
  EXPECT_EQ(dtype_block_bytes(DType::Q8_K), sizeof(BlockQ8_K));
  EXPECT_EQ(dtype_block_size(DType::Q4_K), kQK_K);
}

// Every type gguf-py knows has the same id, block size and byte size here.
TEST(DType, MatchesGgufPythonTable) {
  const auto table = nlohmann::json::parse(test::read_file_text(test::fixtures_dir() / "quants/sizes.json"));
  int checked = 0;
  for (const auto& [name, size] : table["sizes"].items()) {
    SCOPED_TRACE(name);
    const auto type = dtype_from_name(name);
    ASSERT_TRUE(type.has_value()) << "type unknown to hearth";
    EXPECT_EQ(static_cast<uint32_t>(*type), table["ids"][name].get<uint32_t>());
    EXPECT_EQ(dtype_block_size(*type), size[0].get<int64_t>());
    if (name == "Q8_1") {
      // gguf-py lists 40 bytes; ggml's block_q8_1 (two f16 + 32 int8) is 36. Q8_1 is an
      // activation format that never appears in model files; hearth follows ggml.
      EXPECT_EQ(dtype_block_bytes(*type), 36u);
    } else {
      EXPECT_EQ(dtype_block_bytes(*type), size[1].get<size_t>());
    }
    ++checked;
  }
  EXPECT_GE(checked, 30);
}

TEST(DType, UnknownAndRemovedIds) {
  EXPECT_EQ(dtype_traits_or_null(4), nullptr);   // Q4_2, removed
  EXPECT_EQ(dtype_traits_or_null(31), nullptr);  // Q4_0_4_4, removed
  EXPECT_EQ(dtype_traits_or_null(1000), nullptr);
  EXPECT_NE(dtype_traits_or_null(30), nullptr);
}

TEST(DType, NamesRoundTrip) {
  EXPECT_EQ(dtype_from_name("q4_k"), DType::Q4_K);
  EXPECT_EQ(dtype_from_name("BF16"), DType::BF16);
  EXPECT_FALSE(dtype_from_name("Q4_2").has_value());
  EXPECT_FALSE(dtype_from_name("").has_value());
  EXPECT_EQ(dtype_name(DType::IQ4_XS), "IQ4_XS");
  EXPECT_EQ(dtype_row_bytes(DType::Q4_0, 64), 36u);
  EXPECT_EQ(dtype_row_bytes(DType::F16, 7), 14u);
}

}  // namespace
}  // namespace hearth
