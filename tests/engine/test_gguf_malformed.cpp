// Malformed and hostile GGUF files, built byte by byte. Each must be refused with a GgufError
// that says what was wrong and where — never a crash, an abort, an out-of-bounds read, a huge
// allocation or a leak (this suite runs under AddressSanitizer and UBSan in scripts/test.sh).
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "engine/format/gguf.h"
#include "tests/support/gguf_builder.h"

namespace hearth::gguf {
namespace {

using namespace hearth::test;

constexpr uint64_t kHuge = 1ull << 63;

struct Expectation {
  std::string reason_contains;
  std::optional<uint64_t> offset;  // the byte offset the error must name, when fixed
};

// `offset`: the byte offset the error must name, where the test knows it.
void expect_refused(const std::vector<uint8_t>& bytes, const std::string& reason,
                    std::optional<uint64_t> offset = std::nullopt) {
  const Expectation want{reason, offset};
  try {
    (void)GgufFile::from_bytes(bytes, "bad.gguf");
    ADD_FAILURE() << "file was accepted; expected an error containing '" << want.reason_contains << "'";
  } catch (const GgufError& e) {
    EXPECT_NE(e.reason().find(want.reason_contains), std::string::npos)
        << "error was: " << e.what() << "\nexpected it to contain: " << want.reason_contains;
    if (want.offset) {
      EXPECT_EQ(e.offset(), *want.offset) << e.what();
    }
    EXPECT_NE(std::string(e.what()).find("bad.gguf: invalid GGUF at offset"), std::string::npos) << e.what();
  }
}

void expect_refused(const GgufSpec& spec, const std::string& reason, std::optional<uint64_t> offset = std::nullopt) {
  expect_refused(build_gguf(spec), reason, offset);
}

// Offset of the first tensor info in a spec's file (header + all KVs).
uint64_t tensor_infos_start(const GgufSpec& spec) {
  GgufSpec only_kvs = spec;
  only_kvs.tensors.clear();
  only_kvs.write_data = false;
  only_kvs.claimed_tensor_count = spec.claimed_tensor_count.value_or(spec.tensors.size());
  return build_gguf(only_kvs).size();
}

GgufSpec one_tensor(TensorSpec t) {
  GgufSpec s;
  s.kvs = {kv_str("general.architecture", "llama")};
  s.tensors = {std::move(t)};
  return s;
}

// --- header -----------------------------------------------------------------------------------

TEST(GgufMalformed, EmptyFile) { expect_refused(std::vector<uint8_t>{}, "shorter than the 24-byte GGUF header", 0); }

TEST(GgufMalformed, TruncatedHeader) {
  auto bytes = build_gguf(small_model_spec());
  bytes.resize(20);
  expect_refused(bytes, "file is 20 bytes, shorter than the 24-byte GGUF header", 0);
}

TEST(GgufMalformed, WrongMagic) {
  GgufSpec s = small_model_spec();
  s.magic = "GGML";
  expect_refused(s, "bad magic 'GGML'", 0);
}

TEST(GgufMalformed, Version1IsRefused) {
  GgufSpec s = small_model_spec();
  s.version = 1;
  expect_refused(s, "GGUF version 1 is not supported", 4);
}

TEST(GgufMalformed, UnsupportedFutureVersion) {
  GgufSpec s = small_model_spec();
  s.version = 4;
  expect_refused(s, "unsupported GGUF version 4", 4);
}

TEST(GgufMalformed, BigEndianFile) {
  GgufSpec s = small_model_spec();
  s.version = 0x03000000;  // version 3 written big-endian
  expect_refused(s, "big-endian GGUF (version 3)", 4);
}

TEST(GgufMalformed, TensorCountBeyondFile) {
  GgufSpec s = small_model_spec();
  s.claimed_tensor_count = 1ull << 60;
  expect_refused(s, "tensor count 1152921504606846976 cannot fit", 8);
}

TEST(GgufMalformed, MetadataCountBeyondFile) {
  GgufSpec s = small_model_spec();
  s.claimed_kv_count = kHuge;
  expect_refused(s, "metadata count 9223372036854775808 cannot fit", 16);
}

TEST(GgufMalformed, MetadataCountOneMoreThanPresent) {
  GgufSpec s;
  s.kvs = {kv_str("general.architecture", "llama"), kv_u32("a.b", 1)};
  s.claimed_kv_count = 3;  // the third entry reads into the end of the file
  expect_refused(s, "metadata key needs 8 bytes but only 0 are left");
}

// --- metadata ---------------------------------------------------------------------------------

TEST(GgufMalformed, KeyLengthLies2Pow63) {
  GgufSpec s;
  s.kvs = {kv_u32("general.alignment", 32)};
  s.kvs[0].claimed_key_length = kHuge;
  expect_refused(s, "metadata key claims a length of 9223372036854775808 bytes", 24);
}

TEST(GgufMalformed, KeyTooLong) {
  GgufSpec s;
  s.kvs = {kv_u32(std::string(70000, 'k'), 1)};
  expect_refused(s, "metadata key is 70000 bytes long, more than the limit of 65535", 24);
}

TEST(GgufMalformed, EmptyKey) {
  GgufSpec s;
  s.kvs = {kv_u32("", 1)};
  expect_refused(s, "metadata key 0 is empty", 24);
}

TEST(GgufMalformed, StringValueLengthBeyondFile) {
  GgufSpec s;
  s.kvs = {kv_raw("general.name", [](GgufBytes& b) { b.u32(kString).str("abc", 1ull << 40); })};
  expect_refused(s, "string value claims a length of 1099511627776 bytes");
}

TEST(GgufMalformed, UnknownValueType) {
  GgufSpec s;
  s.kvs = {kv_raw("x", [](GgufBytes& b) { b.u32(13).u32(0); })};
  expect_refused(s, "value of key 'x' has unknown value type 13", 24 + 8 + 1);
}

TEST(GgufMalformed, UnknownArrayElementType) {
  GgufSpec s;
  s.kvs = {kv_raw("x", [](GgufBytes& b) { b.u32(kArray).u32(99).u64(1); })};
  expect_refused(s, "array element type has unknown value type 99");
}

TEST(GgufMalformed, ArrayCountBeyondFile) {
  GgufSpec s;
  s.kvs = {kv_raw("tokenizer.ggml.scores", [](GgufBytes& b) { b.u32(kArray).u32(kF32).u64(1ull << 40).put<float>(1); })};
  expect_refused(s, "array of key 'tokenizer.ggml.scores' claims 1099511627776 elements of type float32");
}

TEST(GgufMalformed, StringArrayCountBeyondFile) {
  GgufSpec s;
  s.kvs = {kv_raw("tokenizer.ggml.tokens", [](GgufBytes& b) { b.u32(kArray).u32(kString).u64(kHuge).str("a"); })};
  expect_refused(s, "claims 9223372036854775808 elements of type string");
}

TEST(GgufMalformed, StringInsideArrayLies) {
  GgufSpec s;
  s.kvs = {kv_raw("tokenizer.ggml.tokens",
                  [](GgufBytes& b) { b.u32(kArray).u32(kString).u64(2).str("ok").str("liar", kHuge); })};
  expect_refused(s, "array string claims a length of 9223372036854775808 bytes");
}

TEST(GgufMalformed, ArraysNestedTooDeep) {
  GgufSpec s;
  s.kvs = {kv_raw("deep", [](GgufBytes& b) {
    b.u32(kArray);
    for (int i = 0; i < 100; ++i) b.u32(kArray).u64(1);
    b.u32(kU8).u64(0);
  })};
  expect_refused(s, "array value of key 'deep' is nested more than 8 levels deep");
}

TEST(GgufMalformed, BoolOutOfRange) {
  GgufSpec s;
  s.kvs = {kv_raw("flag", [](GgufBytes& b) { b.u32(kBool).u8(2); })};
  expect_refused(s, "bool value of key 'flag' is 2, not 0 or 1");
}

TEST(GgufMalformed, DuplicateKey) {
  GgufSpec s;
  s.kvs = {kv_u32("llama.block_count", 2), kv_u32("llama.context_length", 8), kv_u32("llama.block_count", 3)};
  // The third entry starts after the header and two entries of 8 + 17/20 + 4 + 4 bytes.
  expect_refused(s, "duplicate metadata key 'llama.block_count'", 24 + (8 + 17 + 4 + 4) + (8 + 20 + 4 + 4));
}

TEST(GgufMalformed, AlignmentNotPowerOfTwo) {
  GgufSpec s = small_model_spec();
  s.kvs.push_back(kv_u32("general.alignment", 3));
  expect_refused(s, "general.alignment is 3, not a power of two");
}

TEST(GgufMalformed, AlignmentZero) {
  GgufSpec s = small_model_spec();
  s.kvs.push_back(kv_u32("general.alignment", 0));
  expect_refused(s, "general.alignment is 0, not a power of two");
}

TEST(GgufMalformed, AlignmentWrongType) {
  GgufSpec s = small_model_spec();
  s.kvs.push_back(kv_str("general.alignment", "32"));
  expect_refused(s, "general.alignment has type string, expected uint32");
}

// --- tensor infos -------------------------------------------------------------------------------

TEST(GgufMalformed, FiveDimensions) {
  const GgufSpec s = one_tensor({"t", {32, 1, 1, 1, 1}, 0, std::nullopt, std::nullopt});
  const uint64_t info = tensor_infos_start(s);
  expect_refused(s, "tensor 't' has 5 dimensions, more than the maximum of 4", info + 8 + 1);
}

TEST(GgufMalformed, ZeroDimension) {
  expect_refused(one_tensor({"t", {32, 0}, 0, std::nullopt, std::nullopt}), "tensor 't' dimension 1 is 0");
}

TEST(GgufMalformed, NegativeDimension) {
  expect_refused(one_tensor({"t", {32, 0xFFFFFFFFFFFFFFF0ull}, 0, std::nullopt, std::nullopt}), "tensor 't' dimension 1 is -16 (negative as int64)");
}

TEST(GgufMalformed, ElementCountOverflow) {
  expect_refused(one_tensor({"t", {1ull << 32, 1ull << 32}, 0, std::nullopt, std::nullopt}), "tensor 't' element count overflows int64 at dimension 1");
}

TEST(GgufMalformed, ByteSizeOverflow) {
  // 2^62 F32 elements fit int64 but take 2^64 bytes.
  expect_refused(one_tensor({"t", {1ull << 31, 1ull << 31}, 0, std::nullopt, std::nullopt}), "tensor 't' byte size overflows");
}

TEST(GgufMalformed, UnknownTensorType) {
  expect_refused(one_tensor({"t", {32}, 99, std::nullopt, std::nullopt}), "tensor 't' has unknown type 99");
}

TEST(GgufMalformed, RemovedTensorType) {
  expect_refused(one_tensor({"t", {32}, 4 /* Q4_2, removed */, std::nullopt, std::nullopt}), "tensor 't' has unknown type 4");
}

TEST(GgufMalformed, RowNotWholeBlocks) {
  expect_refused(one_tensor({"t", {33, 2}, 2 /*Q4_0*/, std::nullopt, std::nullopt}), "tensor 't' of type Q4_0 has a row of 33 elements, not a multiple of its block size 32");
}

TEST(GgufMalformed, EmptyTensorName) {
  expect_refused(one_tensor({"", {32}, 0, std::nullopt, std::nullopt}), "tensor 0 has an empty name");
}

TEST(GgufMalformed, TensorNameTooLong) {
  expect_refused(one_tensor({std::string(300, 'n'), {32}, 0, std::nullopt, std::nullopt}), "tensor name is 300 bytes long, more than the limit of 256");
}

TEST(GgufMalformed, MisalignedTensorOffset) {
  expect_refused(one_tensor({"t", {32}, 0, 7, std::nullopt}), "tensor 't' data offset 7 is not a multiple of the alignment 32");
}

TEST(GgufMalformed, DuplicateTensorName) {
  GgufSpec s = small_model_spec();
  s.tensors.push_back({"blk.0.attn_norm.weight", {64}, 0, std::nullopt, std::nullopt});
  expect_refused(s, "duplicate tensor name 'blk.0.attn_norm.weight'");
}

TEST(GgufMalformed, TensorDataPastEndOfFile) {
  GgufSpec s = small_model_spec();
  s.data_bytes_delta = -1;  // the last tensor is one byte short
  expect_refused(s, "tensor 'output_norm.weight' data (128 bytes at offset");
}

TEST(GgufMalformed, TensorOffsetFarPastEndOfFile) {
  expect_refused(one_tensor({"t", {32}, 0, 1ull << 62, std::nullopt}), "runs past the end of the file");
}

TEST(GgufMalformed, OverlappingTensors) {
  GgufSpec s;
  s.tensors = {{"a", {64}, 0, 0, std::nullopt}, {"b", {64}, 0, 128, std::nullopt}, {"c", {64}, 0, 64, std::nullopt}};
  expect_refused(s, "tensor 'c' data at offset 64 overlaps tensor 'a' [0, 256)");
}

TEST(GgufMalformed, TruncatedInsideTensorInfos) {
  GgufSpec s = small_model_spec();
  s.write_data = false;
  auto bytes = build_gguf(s);
  bytes.resize(bytes.size() - 5);  // cut the last tensor's offset field
  expect_refused(bytes, "tensor data offset needs 8 bytes but only 3 are left");
}

TEST(GgufMalformed, DataSectionStartsPastEndOfFile) {
  GgufSpec s = one_tensor({"t", {32}, 0, std::nullopt, std::nullopt});
  s.write_data = false;  // the file ends right after the infos, before the alignment padding
  expect_refused(s, "tensor data section would start at");
}

TEST(GgufMalformed, NDimsLiesAboutDimsPresent) {
  // n_dims says 3 but only one dimension follows: the reader takes the type and the offset
  // as dimensions 1 and 2; the type (F32 = 0) and the offset (0) make a zero dimension.
  expect_refused(one_tensor({"t", {32}, 0, std::nullopt, 3u}), "tensor 't' dimension 1 is 0");
}

// Every strict prefix of a valid file is refused cleanly (no reads past the end).
TEST(GgufMalformed, EveryTruncationIsRefused) {
  const auto full = build_gguf(small_model_spec());
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW((void)GgufFile::from_bytes(std::move(prefix)), GgufError) << "prefix of " << n << " bytes";
  }
  EXPECT_NO_THROW((void)GgufFile::from_bytes(full));
}

}  // namespace
}  // namespace hearth::gguf
