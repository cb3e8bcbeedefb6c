// Reading valid GGUF files: every value type, typed accessors and their errors, tensor infos,
// alignment, both versions, files on disk.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/format/gguf.h"
#include "tests/support/gguf_builder.h"

namespace hearth::gguf {
namespace {

using namespace hearth::test;

GgufSpec every_value_type_spec() {
  GgufSpec s;
  s.kvs = {
      kv_raw("v.u8", [](GgufBytes& b) { b.u32(kU8).u8(200); }),
      kv_raw("v.i8", [](GgufBytes& b) { b.u32(kI8).put<int8_t>(-5); }),
      kv_raw("v.u16", [](GgufBytes& b) { b.u32(kU16).put<uint16_t>(65000); }),
      kv_raw("v.i16", [](GgufBytes& b) { b.u32(kI16).put<int16_t>(-30000); }),
      kv_raw("v.u32", [](GgufBytes& b) { b.u32(kU32).u32(4000000000u); }),
      kv_raw("v.i32", [](GgufBytes& b) { b.u32(kI32).put<int32_t>(-2000000000); }),
      kv_raw("v.f32", [](GgufBytes& b) { b.u32(kF32).put<float>(0.25f); }),
      kv_raw("v.bool", [](GgufBytes& b) { b.u32(kBool).u8(1); }),
      kv_raw("v.str", [](GgufBytes& b) { b.u32(kString).str("héllo\n世界"); }),
      kv_raw("v.u64", [](GgufBytes& b) { b.u32(kU64).u64(1ull << 40); }),
      kv_raw("v.i64", [](GgufBytes& b) { b.u32(kI64).put<int64_t>(-(1ll << 40)); }),
      kv_raw("v.f64", [](GgufBytes& b) { b.u32(kF64).put<double>(-1.5e300); }),
      kv_raw("a.i32", [](GgufBytes& b) { b.u32(kArray).u32(kI32).u64(3).put<int32_t>(1).put<int32_t>(-2).put<int32_t>(3); }),
      kv_raw("a.f32", [](GgufBytes& b) { b.u32(kArray).u32(kF32).u64(2).put<float>(1.5f).put<float>(-0.5f); }),
      kv_raw("a.bool", [](GgufBytes& b) { b.u32(kArray).u32(kBool).u64(2).u8(0).u8(1); }),
      kv_raw("a.empty", [](GgufBytes& b) { b.u32(kArray).u32(kU64).u64(0); }),
      kv_str_array("a.str", {"x", "", "long string"}),
      kv_raw("a.nested",
             [](GgufBytes& b) {
               b.u32(kArray).u32(kArray).u64(2);
               b.u32(kU8).u64(2).u8(7).u8(8);
               b.u32(kString).u64(1).str("inner");
             }),
  };
  return s;
}

TEST(GgufReader, ReadsEveryValueType) {
  const GgufFile f = GgufFile::from_bytes(build_gguf(every_value_type_spec()));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.metadata().size(), 18u);
  EXPECT_EQ(f.get<uint8_t>("v.u8"), 200);
  EXPECT_EQ(f.get<int8_t>("v.i8"), -5);
  EXPECT_EQ(f.get<uint16_t>("v.u16"), 65000);
  EXPECT_EQ(f.get<int16_t>("v.i16"), -30000);
  EXPECT_EQ(f.get<uint32_t>("v.u32"), 4000000000u);
  EXPECT_EQ(f.get<int32_t>("v.i32"), -2000000000);
  EXPECT_EQ(f.get<float>("v.f32"), 0.25f);
  EXPECT_TRUE(f.get<bool>("v.bool"));
  EXPECT_EQ(f.get<std::string>("v.str"), "héllo\n世界");
  EXPECT_EQ(f.get<std::string_view>("v.str"), "héllo\n世界");
  EXPECT_EQ(f.get<uint64_t>("v.u64"), 1ull << 40);
  EXPECT_EQ(f.get<int64_t>("v.i64"), -(1ll << 40));
  EXPECT_EQ(f.get<double>("v.f64"), -1.5e300);

  const auto ints = f.get<ArrayValue>("a.i32").to_vector<int32_t>();
  EXPECT_EQ(ints, (std::vector<int32_t>{1, -2, 3}));
  EXPECT_EQ(f.get<ArrayValue>("a.f32").at<float>(1), -0.5f);
  EXPECT_TRUE(f.get<ArrayValue>("a.bool").at<bool>(1));
  EXPECT_EQ(f.get<ArrayValue>("a.empty").count, 0u);
  const auto strs = f.get<ArrayValue>("a.str").to_vector<std::string_view>();
  ASSERT_EQ(strs.size(), 3u);
  EXPECT_EQ(strs[1], "");
  EXPECT_EQ(strs[2], "long string");
  const ArrayValue& nested = f.get<ArrayValue>("a.nested");
  ASSERT_EQ(nested.arrays.size(), 2u);
  EXPECT_EQ(nested.arrays[0].at<uint8_t>(1), 8);
  EXPECT_EQ(nested.arrays[1].at<std::string_view>(0), "inner");

  // Metadata keeps file order.
  EXPECT_EQ(f.metadata().front().key, "v.u8");
  EXPECT_EQ(f.metadata().back().key, "a.nested");
}

TEST(GgufReader, TypedAccessorErrorsNameKeyAndTypes) {
  const GgufFile f = GgufFile::from_bytes(build_gguf(every_value_type_spec()), "test.gguf");
  try {
    (void)f.get<uint32_t>("v.i32");
    FAIL() << "expected MetadataError";
  } catch (const MetadataError& e) {
    EXPECT_STREQ(e.what(), "test.gguf: metadata key 'v.i32' has type int32, expected uint32");
  }
  try {
    (void)f.get<uint32_t>("llama.block_count");
    FAIL() << "expected MetadataError";
  } catch (const MetadataError& e) {
    EXPECT_STREQ(e.what(), "test.gguf: metadata key 'llama.block_count' is missing");
  }
  try {
    (void)f.get<std::string>("a.str");
    FAIL() << "expected MetadataError";
  } catch (const MetadataError& e) {
    EXPECT_STREQ(e.what(), "test.gguf: metadata key 'a.str' has type array of string, expected string");
  }
  EXPECT_THROW((void)f.get<ArrayValue>("a.i32").at<uint32_t>(0), MetadataError);
  EXPECT_THROW((void)f.get<ArrayValue>("a.i32").at<int32_t>(3), MetadataError);
  EXPECT_EQ(f.get_or<uint32_t>("missing.key", 42u), 42u);
}

TEST(GgufReader, LenientIntegerAndNumberAccessors) {
  const GgufFile f = GgufFile::from_bytes(build_gguf(every_value_type_spec()));
  EXPECT_EQ(f.get_uint("v.u8"), 200u);
  EXPECT_EQ(f.get_uint("v.u16"), 65000u);
  EXPECT_EQ(f.get_uint("v.u64"), 1ull << 40);
  EXPECT_THROW((void)f.get_uint("v.i32"), MetadataError);  // negative
  EXPECT_THROW((void)f.get_uint("v.f32"), MetadataError);
  EXPECT_THROW((void)f.get_uint("v.str"), MetadataError);
  EXPECT_EQ(f.get_number("v.f32"), 0.25);
  EXPECT_EQ(f.get_number("v.i16"), -30000.0);
  EXPECT_THROW((void)f.get_number("v.bool"), MetadataError);
}

TEST(GgufReader, TensorInfosAndData) {
  const GgufSpec spec = small_model_spec();
  const auto bytes = build_gguf(spec);
  const GgufFile f = GgufFile::from_bytes(bytes);
  ASSERT_EQ(f.tensors().size(), 4u);
  const TensorInfo* embd = f.find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, DType::Q4_0);
  EXPECT_EQ(embd->n_dims, 2);
  EXPECT_EQ(embd->ne[0], 64);
  EXPECT_EQ(embd->ne[1], 4);
  EXPECT_EQ(embd->ne[2], 1);
  EXPECT_EQ(embd->n_elements, 256);
  EXPECT_EQ(embd->n_bytes, 8u * 18u);
  EXPECT_EQ(embd->offset, 0u);
  const TensorInfo* up = f.find_tensor("blk.0.ffn_up.weight");
  ASSERT_NE(up, nullptr);
  EXPECT_EQ(up->n_bytes, 6u * 34u);
  EXPECT_EQ(up->offset % 32, 0u);
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  // The data span is the bytes the builder wrote there.
  const auto data = f.tensor_data(*up);
  ASSERT_EQ(data.size(), up->n_bytes);
  for (size_t i = 0; i < data.size(); ++i) {
    ASSERT_EQ(data[i], static_cast<uint8_t>((up->offset + i) * 7 + 3));
  }
}

TEST(GgufReader, HonoursCustomAlignment) {
  GgufSpec spec = small_model_spec();
  spec.alignment = 256;
  spec.kvs.push_back(kv_u32("general.alignment", 256));
  const GgufFile f = GgufFile::from_bytes(build_gguf(spec));
  EXPECT_EQ(f.alignment(), 256u);
  EXPECT_EQ(f.data_offset() % 256, 0u);
  for (const TensorInfo& t : f.tensors()) EXPECT_EQ(t.offset % 256, 0u);
}

TEST(GgufReader, ReadsVersion2) {
  GgufSpec spec = small_model_spec();
  spec.version = 2;
  const GgufFile f = GgufFile::from_bytes(build_gguf(spec));
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.tensors().size(), 4u);
}

TEST(GgufReader, MetadataOnlyFileNeedsNoPadding) {
  GgufSpec spec;
  spec.kvs = {kv_str("general.architecture", "llama")};
  const GgufFile f = GgufFile::from_bytes(build_gguf(spec));
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.get<std::string>("general.architecture"), "llama");
}

TEST(GgufReader, ScalarTensorWithZeroDims) {
  GgufSpec spec;
  spec.tensors = {{"scale", {}, 0, std::nullopt, std::nullopt}};
  const GgufFile f = GgufFile::from_bytes(build_gguf(spec));
  EXPECT_EQ(f.tensors()[0].n_elements, 1);
  EXPECT_EQ(f.tensors()[0].n_bytes, 4u);
}

TEST(GgufReader, OpensFilesFromDisk) {
  const auto path = std::filesystem::temp_directory_path() / ("hearth-test-" + std::to_string(::getpid()) + ".gguf");
  {
    const auto bytes = build_gguf(small_model_spec());
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.path(), path.string());
  EXPECT_EQ(f.get<std::string>("general.name"), "tiny test model");
  EXPECT_EQ(f.tensors().size(), 4u);
  std::filesystem::remove(path);

  try {
    (void)GgufFile::open(path);
    FAIL() << "expected an error for a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)GgufFile::open(std::filesystem::temp_directory_path()), Error);  // a directory
}

TEST(GgufReader, DisplayStrings) {
  const GgufFile f = GgufFile::from_bytes(build_gguf(every_value_type_spec()));
  EXPECT_EQ(f.find("v.i8")->to_display_string(), "-5");
  EXPECT_EQ(f.find("v.bool")->to_display_string(), "true");
  EXPECT_EQ(f.find("a.str")->to_display_string(), "[string x 3]");
  EXPECT_EQ(f.find("v.str")->to_display_string(3), "\"hé\"...");
  EXPECT_EQ(f.find("v.str")->to_display_string(2), "\"h\"...");  // never half a UTF-8 character
}

}  // namespace
}  // namespace hearth::gguf
