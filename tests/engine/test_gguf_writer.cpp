// The GGUF writer (round trips through the reader, alignment, streaming, failures that leave no
// file) and synthetic models built with it (they load, run and tokenize).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/format/gguf_writer.h"
#include "engine/model/model_config.h"
#include "engine/model/stage.h"
#include "engine/model/synth.h"
#include "engine/text/tokenizer.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/quants_ref.h"
#include "tests/support/fixtures.h"
#include "tests/support/gguf_builder.h"

namespace hearth::gguf {
namespace {

namespace fs = std::filesystem;

// A fresh temporary directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            fmt::format("hearth-writer-{}-{}-{}", ::getpid(), info->test_suite_name(), info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path_;
};

// Structural equality of two metadata values (type, scalars, strings, arrays recursively).
bool values_equal(const ArrayValue& a, const ArrayValue& b);
bool values_equal(const Value& a, const Value& b) {
  if (a.type() != b.type()) return false;
  return std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        const T& y = *b.get_if<T>();
        if constexpr (std::is_same_v<T, ArrayValue>) {
          return values_equal(x, y);
        } else if constexpr (std::is_floating_point_v<T>) {
          return std::memcmp(&x, &y, sizeof(T)) == 0;  // bit-exact: -0.0 and NaN payloads too
        } else {
          return x == y;
        }
      },
      a.storage());
}
bool values_equal(const ArrayValue& a, const ArrayValue& b) {
  if (a.elem_type != b.elem_type || a.count != b.count) return false;
  if (a.elem_type == ValueType::STRING) return a.strings == b.strings;
  if (a.elem_type == ValueType::ARRAY) {
    for (size_t i = 0; i < a.arrays.size(); ++i) {
      if (!values_equal(a.arrays[i], b.arrays[i])) return false;
    }
    return a.arrays.size() == b.arrays.size();
  }
  const size_t n = static_cast<size_t>(a.count) * detail::fixed_value_size(a.elem_type);
  return n == 0 || std::memcmp(a.raw, b.raw, n) == 0;
}

// Tensor data: byte i of tensor `salt` is a fixed pattern, delivered in uneven pieces.
TensorWriteFn pattern(uint8_t salt) {
  return [salt](TensorSink& sink) {
    uint64_t i = 0;
    size_t piece = 1;
    while (sink.remaining() > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(piece, sink.remaining()));
      std::vector<uint8_t> bytes(n);
      for (size_t k = 0; k < n; ++k) bytes[k] = static_cast<uint8_t>((i + k) * 31 + salt);
      sink.write(bytes.data(), n);
      i += n;
      piece = piece * 3 + 1;
    }
  };
}

void expect_pattern(const GgufFile& f, std::string_view name, uint8_t salt, uint64_t n_bytes) {
  const TensorInfo* t = f.find_tensor(name);
  ASSERT_NE(t, nullptr) << name;
  const auto data = f.tensor_data(*t);
  ASSERT_EQ(data.size(), n_bytes) << name;
  for (size_t i = 0; i < data.size(); ++i) {
    ASSERT_EQ(data[i], static_cast<uint8_t>(i * 31 + salt)) << name << " byte " << i;
  }
}

TEST(GgufWriter, RoundTripsEveryValueType) {
  TempDir dir;
  GgufWriter w;
  w.set_u8("t.u8", 200);
  w.set_i8("t.i8", -100);
  w.set_u16("t.u16", 60000);
  w.set_i16("t.i16", -30000);
  w.set_u32("t.u32", 4000000000u);
  w.set_i32("t.i32", -2000000000);
  w.set_u64("t.u64", 18000000000000000000ull);
  w.set_i64("t.i64", -9000000000000000000ll);
  w.set_f32("t.f32", 3.25f);
  w.set_f64("t.f64", -1e300);
  w.set_bool("t.true", true);
  w.set_bool("t.false", false);
  w.set_string("t.str", "h\xC3\xA9llo");
  w.set_string("t.empty", "");
  w.set_string("t.nul", std::string_view("a\0b", 3));
  const std::vector<uint8_t> u8s = {1, 2, 255};
  const std::vector<int8_t> i8s = {-1, 0, 127};
  const std::vector<uint16_t> u16s = {1, 65535};
  const std::vector<int16_t> i16s = {-32768, 5};
  const std::vector<uint32_t> u32s = {7, 8, 9, 10};
  const std::vector<int32_t> i32s = {-7, 1 << 30};
  const std::vector<uint64_t> u64s = {~0ull};
  const std::vector<int64_t> i64s = {-1, 2};
  const std::vector<float> f32s = {0.5f, -0.0f, 1e-30f};
  const std::vector<double> f64s = {3.141592653589793};
  const std::vector<bool> bools = {true, false, true};
  const bool bool_array[] = {true, false, true};
  w.set_array<uint8_t>("a.u8", u8s);
  w.set_array<int8_t>("a.i8", i8s);
  w.set_array<uint16_t>("a.u16", u16s);
  w.set_array<int16_t>("a.i16", i16s);
  w.set_array<uint32_t>("a.u32", u32s);
  w.set_array<int32_t>("a.i32", i32s);
  w.set_array<uint64_t>("a.u64", u64s);
  w.set_array<int64_t>("a.i64", i64s);
  w.set_array<float>("a.f32", f32s);
  w.set_array<double>("a.f64", f64s);
  w.set_array<bool>("a.bool", bool_array);
  w.set_array<float>("a.empty", std::span<const float>());
  const std::vector<std::string> strs = {"alpha", "", "g\xC3\xA4mma"};
  w.set_string_array("a.str", strs);
  const std::vector<std::string_view> views = {"x", "yz"};
  w.set_string_array("a.views", views);
  const fs::path path = dir / "values.gguf";
  w.write(path);
  EXPECT_EQ(fs::file_size(path), w.file_size());
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"values.gguf"});  // no .tmp left

  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.metadata().size(), w.metadata_count());
  EXPECT_EQ(f.get<uint8_t>("t.u8"), 200);
  EXPECT_EQ(f.get<int8_t>("t.i8"), -100);
  EXPECT_EQ(f.get<uint16_t>("t.u16"), 60000);
  EXPECT_EQ(f.get<int16_t>("t.i16"), -30000);
  EXPECT_EQ(f.get<uint32_t>("t.u32"), 4000000000u);
  EXPECT_EQ(f.get<int32_t>("t.i32"), -2000000000);
  EXPECT_EQ(f.get<uint64_t>("t.u64"), 18000000000000000000ull);
  EXPECT_EQ(f.get<int64_t>("t.i64"), -9000000000000000000ll);
  EXPECT_EQ(f.get<float>("t.f32"), 3.25f);
  EXPECT_EQ(f.get<double>("t.f64"), -1e300);
  EXPECT_TRUE(f.get<bool>("t.true"));
  EXPECT_FALSE(f.get<bool>("t.false"));
  EXPECT_EQ(f.get<std::string>("t.str"), "h\xC3\xA9llo");
  EXPECT_EQ(f.get<std::string>("t.empty"), "");
  EXPECT_EQ(f.get<std::string>("t.nul"), std::string("a\0b", 3));
  EXPECT_EQ(f.get<ArrayValue>("a.u8").to_vector<uint8_t>(), u8s);
  EXPECT_EQ(f.get<ArrayValue>("a.i8").to_vector<int8_t>(), i8s);
  EXPECT_EQ(f.get<ArrayValue>("a.u16").to_vector<uint16_t>(), u16s);
  EXPECT_EQ(f.get<ArrayValue>("a.i16").to_vector<int16_t>(), i16s);
  EXPECT_EQ(f.get<ArrayValue>("a.u32").to_vector<uint32_t>(), u32s);
  EXPECT_EQ(f.get<ArrayValue>("a.i32").to_vector<int32_t>(), i32s);
  EXPECT_EQ(f.get<ArrayValue>("a.u64").to_vector<uint64_t>(), u64s);
  EXPECT_EQ(f.get<ArrayValue>("a.i64").to_vector<int64_t>(), i64s);
  const auto f32_back = f.get<ArrayValue>("a.f32").to_vector<float>();
  ASSERT_EQ(f32_back.size(), f32s.size());
  EXPECT_EQ(std::memcmp(f32_back.data(), f32s.data(), f32s.size() * sizeof(float)), 0);  // -0.0 too
  EXPECT_EQ(f.get<ArrayValue>("a.f64").to_vector<double>(), f64s);
  EXPECT_EQ(f.get<ArrayValue>("a.bool").to_vector<bool>(), bools);
  EXPECT_EQ(f.get<ArrayValue>("a.empty").count, 0u);
  EXPECT_EQ(f.get<ArrayValue>("a.empty").elem_type, ValueType::FLOAT32);
  const auto strs_back = f.get<ArrayValue>("a.str").to_vector<std::string_view>();
  EXPECT_EQ(std::vector<std::string>(strs_back.begin(), strs_back.end()), strs);
  EXPECT_EQ(f.get<ArrayValue>("a.views").to_vector<std::string_view>(), views);
  // Metadata stays in the order it was set.
  EXPECT_EQ(f.metadata().front().key, "t.u8");
  EXPECT_EQ(f.metadata().back().key, "a.views");
}

TEST(GgufWriter, SettingAKeyAgainReplacesItInPlace) {
  TempDir dir;
  GgufWriter w;
  w.set_u32("first", 1);
  w.set_string("second", "x");
  w.set_u32("first", 2);
  w.set_string("first", "now a string");
  EXPECT_EQ(w.metadata_count(), 2u);
  w.write(dir / "m.gguf");
  const GgufFile f = GgufFile::open(dir / "m.gguf");
  ASSERT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.metadata()[0].key, "first");
  EXPECT_EQ(f.get<std::string>("first"), "now a string");
}

TEST(GgufWriter, CopiesValuesVerbatimIncludingNestedArrays) {
  using namespace hearth::test;
  GgufSpec spec = small_model_spec();
  spec.kvs.push_back(kv_raw("nested", [](GgufBytes& b) {
    b.u32(kArray).u32(kArray).u64(2);
    b.u32(kU16).u64(3).put<uint16_t>(1).put<uint16_t>(2).put<uint16_t>(3);
    b.u32(kString).u64(2).str("p").str("");
  }));
  spec.kvs.push_back(kv_raw("deep", [](GgufBytes& b) {
    b.u32(kArray).u32(kArray).u64(1);
    b.u32(kArray).u64(1);
    b.u32(kF64).u64(1).put<double>(2.5);
  }));
  spec.kvs.push_back(kv_raw("i64", [](GgufBytes& b) { b.u32(kI64).put<int64_t>(-5); }));
  spec.kvs.push_back(kv_raw("empty_strs", [](GgufBytes& b) { b.u32(kArray).u32(kString).u64(0); }));
  const GgufFile src = GgufFile::from_bytes(build_gguf(spec));

  TempDir dir;
  GgufWriter w;
  for (const KeyValue& kv : src.metadata()) w.set_value(kv.key, kv.value);
  w.write(dir / "copy.gguf");
  const GgufFile f = GgufFile::open(dir / "copy.gguf");
  ASSERT_EQ(f.metadata().size(), src.metadata().size());
  for (size_t i = 0; i < src.metadata().size(); ++i) {
    EXPECT_EQ(f.metadata()[i].key, src.metadata()[i].key);
    EXPECT_TRUE(values_equal(f.metadata()[i].value, src.metadata()[i].value)) << src.metadata()[i].key;
  }
  const ArrayValue nested = f.get<ArrayValue>("nested");
  ASSERT_EQ(nested.arrays.size(), 2u);
  EXPECT_EQ(nested.arrays[0].to_vector<uint16_t>(), (std::vector<uint16_t>{1, 2, 3}));
  EXPECT_EQ(nested.arrays[1].to_vector<std::string_view>(), (std::vector<std::string_view>{"p", ""}));
}

TEST(GgufWriter, RoundTripsTensorsStreamedInPieces) {
  TempDir dir;
  GgufWriter w;
  w.set_string("general.architecture", "test");
  w.add_tensor("a.f32", DType::F32, {5}, pattern(1));
  w.add_tensor("b.q4_0", DType::Q4_0, {64, 3}, pattern(2));
  w.add_tensor("c.f16", DType::F16, {7, 2, 3}, pattern(3));
  w.add_tensor("d.q8_0", DType::Q8_0, {32, 1, 1, 2}, pattern(4));
  w.add_tensor("e.bf16", DType::BF16, {1}, pattern(5));
  EXPECT_EQ(w.tensor_count(), 5u);
  const fs::path path = dir / "t.gguf";
  w.write(path);
  EXPECT_EQ(fs::file_size(path), w.file_size());

  const GgufFile f = GgufFile::open(path);
  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.tensors()[0].name, "a.f32");
  EXPECT_EQ(f.tensors()[4].name, "e.bf16");
  const TensorInfo* b = f.find_tensor("b.q4_0");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->type, DType::Q4_0);
  EXPECT_EQ(b->n_dims, 2);
  EXPECT_EQ(b->ne, (std::array<int64_t, 4>{64, 3, 1, 1}));
  const TensorInfo* d = f.find_tensor("d.q8_0");
  EXPECT_EQ(d->n_dims, 4);
  EXPECT_EQ(d->ne, (std::array<int64_t, 4>{32, 1, 1, 2}));
  EXPECT_EQ(f.find_tensor("c.f16")->ne, (std::array<int64_t, 4>{7, 2, 3, 1}));
  for (const TensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.offset % kDefaultAlignment, 0u) << t.name;
    EXPECT_EQ((f.data_offset() + t.offset) % kDefaultAlignment, 0u) << t.name;
  }
  expect_pattern(f, "a.f32", 1, 20);
  expect_pattern(f, "b.q4_0", 2, 3 * 2 * 18);
  expect_pattern(f, "c.f16", 3, 42 * 2);
  expect_pattern(f, "d.q8_0", 4, 2 * 34);
  expect_pattern(f, "e.bf16", 5, 2);
}

TEST(GgufWriter, HonoursGeneralAlignment) {
  TempDir dir;
  GgufWriter w;
  w.add_tensor("x", DType::F32, {3}, pattern(7));
  w.add_tensor("y", DType::Q8_0, {32}, pattern(8));
  w.set_u32("general.alignment", 256);  // after the tensors: offsets follow it anyway
  EXPECT_EQ(w.alignment(), 256u);
  w.write(dir / "a.gguf");
  const GgufFile f = GgufFile::open(dir / "a.gguf");
  EXPECT_EQ(f.alignment(), 256u);
  EXPECT_EQ(f.data_offset() % 256, 0u);
  for (const TensorInfo& t : f.tensors()) EXPECT_EQ(t.offset % 256, 0u) << t.name;
  EXPECT_EQ(f.file_size() % 256, 0u);
  expect_pattern(f, "x", 7, 12);
  expect_pattern(f, "y", 8, 34);

  EXPECT_THROW(w.set_u32("general.alignment", 48), Error);
  EXPECT_THROW(w.set_u32("general.alignment", 0), Error);
  EXPECT_THROW(w.set_u64("general.alignment", 64), Error);
  EXPECT_EQ(w.alignment(), 256u);
}

TEST(GgufWriter, RefusesBadTensorDeclarations) {
  GgufWriter w;
  w.add_tensor("t", DType::F32, {4}, pattern(0));
  EXPECT_THROW(w.add_tensor("t", DType::F32, {4}, pattern(0)), Error);             // duplicate
  EXPECT_THROW(w.add_tensor("q", DType::Q4_0, {48, 2}, pattern(0)), Error);        // 48 % 32
  EXPECT_THROW(w.add_tensor("z", DType::F32, {4, 0}, pattern(0)), Error);          // empty dim
  EXPECT_THROW(w.add_tensor("", DType::F32, {4}, pattern(0)), Error);              // no name
  EXPECT_THROW(w.add_tensor("five", DType::F32, {1, 1, 1, 1, 1}, pattern(0)), Error);
  EXPECT_THROW(w.add_tensor("none", DType::F32, {4}, nullptr), Error);
  EXPECT_THROW(w.set_u32("", 1), Error);
  EXPECT_EQ(w.tensor_count(), 1u);
}

std::string error_of(const GgufWriter& w, const fs::path& path) {
  try {
    w.write(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(GgufWriter, IoErrorsNameThePathAndTheReason) {
  TempDir dir;
  GgufWriter w;
  w.set_u32("k", 1);
  const fs::path path = dir / "no-such-dir" / "m.gguf";
  const std::string message = error_of(w, path);
  EXPECT_NE(message.find((dir / "no-such-dir" / "m.gguf.tmp").string()), std::string::npos) << message;
  EXPECT_NE(message.find("No such file or directory"), std::string::npos) << message;
}

TEST(GgufWriter, AFailedWriteLeavesNoFileAndKeepsTheOldOne) {
  TempDir dir;
  const fs::path path = dir / "m.gguf";
  std::ofstream(path) << "old contents";

  GgufWriter throws;
  throws.add_tensor("ok", DType::F32, {4}, pattern(0));
  throws.add_tensor("bad", DType::F32, {1024}, [](TensorSink& sink) {
    std::vector<uint8_t> half(2048);
    sink.write(half.data(), half.size());
    throw Error("generator failed");
  });
  EXPECT_EQ(error_of(throws, path), "generator failed");

  GgufWriter short_data;
  short_data.add_tensor("short", DType::F32, {8}, [](TensorSink& sink) {
    std::vector<uint8_t> bytes(31);
    sink.write(bytes.data(), bytes.size());
  });
  EXPECT_NE(error_of(short_data, path).find("'short'"), std::string::npos);

  GgufWriter long_data;
  long_data.add_tensor("long", DType::F32, {8}, [](TensorSink& sink) {
    std::vector<uint8_t> bytes(33);
    sink.write(bytes.data(), bytes.size());
  });
  EXPECT_NE(error_of(long_data, path).find("'long'"), std::string::npos);

  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.gguf"});
  EXPECT_EQ(hearth::test::read_file_text(path), "old contents");
}

}  // namespace
}  // namespace hearth::gguf

// ---------------------------------------------------------------------------------------------
// Synthetic models

namespace hearth::engine {
namespace {

namespace fs = std::filesystem;

fs::path temp_model(const std::string& name) {
  return fs::temp_directory_path() / fmt::format("hearth-synth-{}-{}.gguf", ::getpid(), name);
}

SynthShape tiny_shape(const std::string& arch = "llama") {
  SynthShape s;
  s.name = "tiny";
  s.arch = arch;
  s.n_embd = 64;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.n_ff = 128;
  s.n_vocab = 512;
  return s;
}

// Runs every layer over a few tokens; returns the logits of the last one.
std::vector<float> forward_logits(const fs::path& path) {
  const gguf::GgufFile file = gguf::GgufFile::open(path);
  const ModelConfig config = ModelConfig::from_gguf(file);
  kernels::CpuBackend backend(2);
  StageOptions options;
  options.n_ctx = 16;
  Stage stage(file, config, backend, 0, config.n_layer, options);
  const std::vector<Token> tokens = {256, 72, 101, 300, 7};
  std::vector<kernels::KvSlot> slots;
  for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i) slots.push_back({0, i});
  const std::vector<int32_t> rows = {static_cast<int32_t>(tokens.size()) - 1};
  StageInput input;
  input.tokens = tokens;
  input.slots = slots;
  input.output_rows = rows;
  std::vector<float> logits;
  stage.forward(input, logits);
  return logits;
}

class SynthTiny : public ::testing::TestWithParam<DType> {};

TEST_P(SynthTiny, LoadsAndRunsAForwardPass) {
  const DType type = GetParam();
  const fs::path path = temp_model(std::string(dtype_name(type)));
  SynthOptions options;
  options.shape = tiny_shape();
  options.type = type;
  options.seed = 11;
  options.n_threads = 2;
  options.force = true;
  const SynthResult r = synthesize_model(options, path);
  EXPECT_EQ(r.name, fmt::format("hearth synthetic tiny {}", dtype_name(type)));
  EXPECT_EQ(r.file_bytes, fs::file_size(path));
  EXPECT_EQ(r.n_tensors, 1 + 2 * 9 + 2u);  // embedding, 9 per layer, output norm and head

  const gguf::GgufFile file = gguf::GgufFile::open(path);
  EXPECT_EQ(file.get<std::string>("general.architecture"), "llama");
  EXPECT_EQ(file.get<std::string>("general.name"), r.name);
  const ModelConfig c = ModelConfig::from_gguf(file);
  EXPECT_EQ(c.n_embd, 64);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_head, 4);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.n_ff, 128);
  EXPECT_EQ(c.n_vocab, 512);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FALSE(c.tied_output);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(file.find_tensor("blk.1.ffn_down.weight")->type, type);
  EXPECT_EQ(file.find_tensor("blk.1.ffn_norm.weight")->type, DType::F32);
  EXPECT_EQ(file.find_tensor("token_embd.weight")->type, type);

  // Weights look like N(0, 0.02) after quantization; norms are exactly 1.
  const gguf::TensorInfo* wq = file.find_tensor("blk.0.attn_q.weight");
  std::vector<float> row(64 * 64);
  kernels::ref::dequantize_row(type, file.tensor_data(*wq).data(), row.data(), static_cast<int64_t>(row.size()));
  double sum = 0, sum2 = 0;
  for (float v : row) {
    sum += v;
    sum2 += double{v} * v;
  }
  const double mean = sum / static_cast<double>(row.size());
  const double std = std::sqrt(sum2 / static_cast<double>(row.size()) - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.002);
  EXPECT_NEAR(std, 0.02, 0.003);
  const auto norm = file.tensor_data(*file.find_tensor("output_norm.weight"));
  for (size_t i = 0; i < norm.size(); i += 4) {
    float v;
    std::memcpy(&v, norm.data() + i, 4);
    ASSERT_EQ(v, 1.0f);
  }

  const std::vector<float> logits = forward_logits(path);
  ASSERT_EQ(logits.size(), 512u);
  float lo = logits[0], hi = logits[0];
  for (float v : logits) {
    ASSERT_TRUE(std::isfinite(v));
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  EXPECT_LT(lo, hi);

  // The generated vocabulary tokenizes and decodes any text.
  const Tokenizer tok = Tokenizer::from_gguf(file);
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.bos(), 256);
  EXPECT_EQ(tok.eos(), 257);
  const std::string text = "hello world\n\xC3\xA9t\xC3\xA9 42!";
  const std::vector<Token> ids = tok.encode(text, true, false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 256);
  EXPECT_EQ(tok.decode(std::span<const Token>(ids).subspan(1)), text);
  fs::remove(path);
}

INSTANTIATE_TEST_SUITE_P(Types, SynthTiny, ::testing::Values(DType::Q4_0, DType::Q8_0, DType::F16),
                         [](const auto& p) { return std::string(dtype_name(p.param)); });

TEST(Synth, Qwen2HasBiasesAndRuns) {
  const fs::path path = temp_model("qwen2");
  SynthOptions options;
  options.shape = tiny_shape("qwen2");
  options.type = DType::Q5_1;
  options.force = true;
  synthesize_model(options, path);
  const gguf::GgufFile file = gguf::GgufFile::open(path);
  const ModelConfig c = ModelConfig::from_gguf(file);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_EQ(file.find_tensor("blk.0.attn_k.bias")->type, DType::F32);
  EXPECT_EQ(file.find_tensor("blk.0.attn_k.bias")->ne[0], 32);
  for (float v : forward_logits(path)) ASSERT_TRUE(std::isfinite(v));
  fs::remove(path);
}

TEST(Synth, SameSeedSameBytesAnyThreadCount) {
  const fs::path a = temp_model("seed-a"), b = temp_model("seed-b"), c = temp_model("seed-c");
  SynthOptions options;
  options.shape = tiny_shape();
  options.type = DType::Q4_1;
  options.force = true;
  options.seed = 5;
  options.n_threads = 1;
  synthesize_model(options, a);
  options.n_threads = 2;
  synthesize_model(options, b);
  options.seed = 6;
  synthesize_model(options, c);
  const auto bytes_a = hearth::test::read_file_bytes(a);
  EXPECT_EQ(bytes_a, hearth::test::read_file_bytes(b));
  const auto bytes_c = hearth::test::read_file_bytes(c);
  ASSERT_EQ(bytes_a.size(), bytes_c.size());
  EXPECT_NE(bytes_a, bytes_c);
  for (const auto& p : {a, b, c}) fs::remove(p);
}

TEST(Synth, CopiedTokenizerTokenizesLikeTheOriginal) {
  const fs::path source = hearth::test::models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(source)) GTEST_SKIP() << source << " is absent (scripts/get-model.sh)";
  const fs::path path = temp_model("tokenizer");
  SynthOptions options;
  options.shape = tiny_shape();
  options.shape.n_vocab = 1000;  // the copied vocabulary's size wins
  options.type = DType::Q8_0;
  options.tokenizer_from = source;
  options.force = true;
  const SynthResult r = synthesize_model(options, path);
  EXPECT_EQ(r.shape.n_vocab, 49152);

  const gguf::GgufFile original = gguf::GgufFile::open(source);
  const gguf::GgufFile copy = gguf::GgufFile::open(path);
  EXPECT_EQ(copy.find_tensor("token_embd.weight")->ne[1], 49152);
  EXPECT_EQ(copy.get_uint("llama.vocab_size"), 49152u);
  size_t n_tokenizer_keys = 0;
  for (const gguf::KeyValue& kv : original.metadata()) {
    if (!kv.key.starts_with("tokenizer.")) continue;
    ++n_tokenizer_keys;
    const gguf::Value* v = copy.find(kv.key);
    ASSERT_NE(v, nullptr) << kv.key;
    EXPECT_TRUE(gguf::values_equal(*v, kv.value)) << kv.key;
  }
  EXPECT_GT(n_tokenizer_keys, 5u);

  const Tokenizer a = Tokenizer::from_gguf(original);
  const Tokenizer b = Tokenizer::from_gguf(copy);
  for (const std::string text : {"Hello, world!", "  The quick brown fox\n\njumps 1234567 times.",
                                 "<|im_start|>user\nWhat is 2+2?<|im_end|>", "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC"}) {
    EXPECT_EQ(a.encode(text, true, true), b.encode(text, true, true)) << text;
    EXPECT_EQ(a.encode(text, false, false), b.encode(text, false, false)) << text;
  }
  EXPECT_EQ(a.eos(), b.eos());
  EXPECT_EQ(a.bos(), b.bos());
  for (float v : forward_logits(path)) ASSERT_TRUE(std::isfinite(v));
  fs::remove(path);
}

std::string synth_error(const SynthShape& shape, DType type, const fs::path& path, bool force = false) {
  SynthOptions options;
  options.shape = shape;
  options.type = type;
  options.force = force;
  try {
    synthesize_model(options, path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Synth, RefusesBadRequests) {
  const fs::path path = temp_model("refused");
  fs::remove(path);
  try {
    synth_shape("llama-3b");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama-3b"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("smollm2-135m, llama-1b, llama-8b, llama-70b, qwen2-7b"), std::string::npos)
        << e.what();
  }
  SynthShape s = tiny_shape();
  s.n_head = 5;
  EXPECT_NE(synth_error(s, DType::Q4_0, path).find("--heads 5 does not divide --embd 64"), std::string::npos);
  s = tiny_shape();
  s.n_head_kv = 3;
  EXPECT_NE(synth_error(s, DType::Q4_0, path).find("--kv-heads 3 does not divide --heads 4"), std::string::npos);
  s = tiny_shape();
  s.n_ff = 48;
  EXPECT_NE(synth_error(s, DType::Q4_0, path).find("--ff 48"), std::string::npos);
  s = tiny_shape();
  s.n_vocab = 100;
  EXPECT_NE(synth_error(s, DType::Q4_0, path).find("--vocab 100"), std::string::npos);
  s = tiny_shape("gemma3");
  EXPECT_NE(synth_error(s, DType::Q4_0, path).find("gemma3"), std::string::npos);
  EXPECT_NE(synth_error(tiny_shape(), DType::IQ2_XXS, path).find("IQ2_XXS cannot be quantized"), std::string::npos);
  EXPECT_NE(synth_error(tiny_shape(), DType::Q8_K, path).find("Q8_K cannot be quantized"), std::string::npos);
  EXPECT_FALSE(fs::exists(path));

  EXPECT_THROW(synth_type("IQ4_NL"), Error);
  EXPECT_THROW(synth_type("Q8_K"), Error);
  EXPECT_THROW(synth_type("Q9_9"), Error);
  EXPECT_THROW(synth_type("Q4_K_L"), Error);
  EXPECT_EQ(synth_type("q5_1").base, DType::Q5_1);
  EXPECT_EQ(synth_type("bf16").base, DType::BF16);
  EXPECT_EQ(synth_type("Q6_K").base, DType::Q6_K);
  EXPECT_EQ(synth_type("q4_k_m").mix, SynthMix::Q4_K_M);
  EXPECT_EQ(synth_type("Q4_K_M").file_type, 15u);
  // Q2_K is llama.cpp's Q2_K mix; --pure gives every matrix its default type, keeping the file type.
  EXPECT_EQ(synth_type("Q2_K").mix, SynthMix::Q2_K);
  const SynthType pure = synth_type("Q2_K", true);
  EXPECT_EQ(pure.mix, SynthMix::None);
  EXPECT_EQ(pure.base, DType::Q2_K);
  EXPECT_EQ(pure.file_type, 10u);
  EXPECT_EQ(pure.name, "Q2_K pure");
  EXPECT_EQ(synth_type("Q8_0", true).name, "Q8_0");
  try {
    synth_type("Q4_K_L");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q4_K_M"), std::string::npos) << e.what();  // names what exists
  }

  // An existing output is kept unless forced.
  std::ofstream(path) << "precious";
  EXPECT_NE(synth_error(tiny_shape(), DType::Q8_0, path).find("--force"), std::string::npos);
  EXPECT_EQ(hearth::test::read_file_text(path), "precious");
  EXPECT_EQ(synth_error(tiny_shape(), DType::Q8_0, path, true), "");
  EXPECT_NO_THROW(gguf::GgufFile::open(path));
  fs::remove(path);
}

TEST(Synth, ShapesHaveTheRealModelsSizes) {
  EXPECT_NEAR(static_cast<double>(synth_param_count(synth_shape("smollm2-135m"))), 134.5e6, 0.5e6);
  EXPECT_NEAR(static_cast<double>(synth_param_count(synth_shape("llama-1b"))), 1.236e9, 0.005e9);
  EXPECT_NEAR(static_cast<double>(synth_param_count(synth_shape("llama-8b"))), 8.03e9, 0.01e9);
  EXPECT_NEAR(static_cast<double>(synth_param_count(synth_shape("llama-70b"))), 70.55e9, 0.05e9);
  EXPECT_NEAR(static_cast<double>(synth_param_count(synth_shape("qwen2-7b"))), 7.62e9, 0.01e9);
  for (const SynthShape& s : synth_shapes()) {
    EXPECT_NO_THROW(validate_synth_request(s, DType::Q4_0)) << s.name;
    EXPECT_NO_THROW(validate_synth_request(s, synth_type("Q4_K_M"))) << s.name;
    EXPECT_NE(synth_shapes_text().find(s.name), std::string::npos);
  }
}

// ---------------------------------------------------------------------------------------------
// K-quants and llama.cpp's mixes

// A copy of `src` with every tensor dequantized to F32 (same metadata): the reference that a
// quantized model's logits are compared with.
void write_f32_copy(const fs::path& src, const fs::path& dst) {
  const gguf::GgufFile file = gguf::GgufFile::open(src);
  gguf::GgufWriter w;
  for (const gguf::KeyValue& kv : file.metadata()) w.set_value(kv.key, kv.value);
  for (const gguf::TensorInfo& t : file.tensors()) {
    const std::vector<int64_t> ne(t.ne.begin(), t.ne.begin() + t.n_dims);
    w.add_tensor(t.name, DType::F32, ne, [&file, &t](gguf::TensorSink& sink) {
      const int64_t row = t.ne[0];
      const size_t row_bytes = dtype_row_bytes(t.type, row);
      const std::span<const uint8_t> data = file.tensor_data(t);
      std::vector<float> out(static_cast<size_t>(row));
      for (int64_t r = 0; r < t.n_elements / row; ++r) {
        kernels::ref::dequantize_row(t.type, data.data() + static_cast<size_t>(r) * row_bytes, out.data(), row);
        sink.write(out.data(), out.size() * sizeof(float));
      }
    });
  }
  w.write(dst);
}

double logits_nmse(const std::vector<float>& ref, const std::vector<float>& got) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    err += (double{ref[i]} - got[i]) * (double{ref[i]} - got[i]);
    norm += double{ref[i]} * ref[i];
  }
  return err / norm;
}

// Rows of 256 (k-quant blocks) but for ffn_down, whose rows (n_ff = 640) fall back; grouped-query
// attention with 4 query heads per KV head (the Q2_K mix's attn_v rule); an untied head.
SynthShape kquant_shape() {
  SynthShape s = tiny_shape();
  s.name = "kq";
  s.n_embd = 256;
  s.n_head = 4;
  s.n_head_kv = 1;
  s.n_ff = 640;
  return s;
}

class SynthKQuant : public ::testing::TestWithParam<std::string> {};

// The file holds the types synth_tensor_types chose and the mix's file type; the CPU backend
// loads and runs it (its k-quant kernels reading the quantizers' bytes), and its logits match
// those of the same weights dequantized to F32 up to the activations' 8-bit rounding.
TEST_P(SynthKQuant, RunsLikeItsDequantizedCopy) {
  const SynthType type = synth_type(GetParam());
  const fs::path path = temp_model("kq-" + GetParam()), copy = temp_model("kq-f32-" + GetParam());
  SynthOptions options;
  options.shape = kquant_shape();
  options.type = type;
  options.seed = 3;
  options.n_threads = 2;
  options.force = true;
  const SynthResult r = synthesize_model(options, path);
  EXPECT_EQ(r.name, "hearth synthetic kq " + GetParam());
  {
    const gguf::GgufFile file = gguf::GgufFile::open(path);
    EXPECT_EQ(file.get_uint("general.file_type"), type.file_type);
    const std::vector<SynthTensorType> expected = synth_tensor_types(options.shape, type);
    ASSERT_EQ(file.tensors().size(), expected.size());
    std::set<DType> seen;
    for (const SynthTensorType& e : expected) {
      const gguf::TensorInfo* t = file.find_tensor(e.name);
      ASSERT_NE(t, nullptr) << e.name;
      EXPECT_EQ(t->type, e.type) << e.name;
      seen.insert(e.type);
    }
    EXPECT_TRUE(seen.count(type.base)) << "no matrix of the default type";
    EXPECT_EQ(file.find_tensor("blk.0.ffn_norm.weight")->type, DType::F32);
    if (dtype_block_size(type.base) == 256) {
      EXPECT_NE(file.find_tensor("blk.0.ffn_down.weight")->type, type.base) << "rows of 640 must fall back";
    }
  }
  write_f32_copy(path, copy);
  const std::vector<float> got = forward_logits(path), want = forward_logits(copy);
  ASSERT_EQ(got.size(), want.size());
  for (float v : got) ASSERT_TRUE(std::isfinite(v));
  // The F32 copy runs with F32 activations, the quantized model with 8-bit ones: that rounding
  // alone measured 1.0e-4 (Q8_0) and 1.2e-4 (Q4_0) with 32-value Q8_0 activation blocks, and
  // 1.5e-4 to 2.1e-4 for the k-quants, whose Q8_K activation blocks of 256 are coarser. A kernel
  // that misread the blocks' layout would be orders of magnitude above.
  const double e = logits_nmse(want, got);
  EXPECT_LT(e, 4e-4) << GetParam();
  RecordProperty("logits_nmse", fmt::format("{:.3g}", e));
  fs::remove(path);
  fs::remove(copy);
}

INSTANTIATE_TEST_SUITE_P(Types, SynthKQuant,
                         ::testing::Values("Q8_0", "Q4_0", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K_S",
                                           "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M"),
                         [](const auto& p) { return p.param; });

std::map<std::string, DType> type_table(const SynthShape& shape, const SynthType& type) {
  std::map<std::string, DType> out;
  for (const SynthTensorType& t : synth_tensor_types(shape, type)) out[t.name] = t.type;
  return out;
}

SynthShape thirty_layers() {
  SynthShape s;
  s.name = "thirty";
  s.n_embd = 512;
  s.n_layer = 30;
  s.n_head = 8;
  s.n_head_kv = 2;
  s.n_ff = 1536;
  return s;
}

// llama.cpp's "more bits" layers of 30: the first eighth (0-2), the last (26-29), and every third
// layer between starting at n/8 + 2 = 5.
const std::set<int> kMoreBits30 = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29};

TEST(SynthMix, Q4KMOfThirtyLayers) {
  const auto table = type_table(thirty_layers(), synth_type("Q4_K_M"));
  EXPECT_EQ(table.size(), 1 + 30 * 9 + 2u);
  EXPECT_EQ(table.at("token_embd.weight"), DType::Q4_K);  // untied: the default type
  EXPECT_EQ(table.at("output.weight"), DType::Q6_K);
  EXPECT_EQ(table.at("output_norm.weight"), DType::F32);
  EXPECT_EQ(table.at("blk.0.attn_v.weight"), DType::Q6_K);
  EXPECT_EQ(table.at("blk.4.attn_v.weight"), DType::Q4_K);
  EXPECT_EQ(table.at("blk.5.attn_v.weight"), DType::Q6_K);
  EXPECT_EQ(table.at("blk.6.attn_v.weight"), DType::Q4_K);
  EXPECT_EQ(table.at("blk.29.ffn_down.weight"), DType::Q6_K);
  for (int il = 0; il < 30; ++il) {
    const DType more = kMoreBits30.count(il) ? DType::Q6_K : DType::Q4_K;
    EXPECT_EQ(table.at(fmt::format("blk.{}.attn_v.weight", il)), more) << il;
    EXPECT_EQ(table.at(fmt::format("blk.{}.ffn_down.weight", il)), more) << il;
    for (const char* name : {"attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"}) {
      EXPECT_EQ(table.at(fmt::format("blk.{}.{}.weight", il, name)), DType::Q4_K) << il << name;
    }
    EXPECT_EQ(table.at(fmt::format("blk.{}.attn_norm.weight", il)), DType::F32);
  }
  // Q5_K_M: the same layers get Q6_K, the rest Q5_K.
  const auto q5 = type_table(thirty_layers(), synth_type("Q5_K_M"));
  for (int il = 0; il < 30; ++il) {
    EXPECT_EQ(q5.at(fmt::format("blk.{}.attn_v.weight", il)), kMoreBits30.count(il) ? DType::Q6_K : DType::Q5_K);
  }
  // A tied head: the embedding is the head, so it gets the head's Q6_K.
  SynthShape tied = thirty_layers();
  tied.tied_output = true;
  const auto t = type_table(tied, synth_type("Q4_K_M"));
  EXPECT_EQ(t.at("token_embd.weight"), DType::Q6_K);
  EXPECT_EQ(t.count("output.weight"), 0u);
  // --pure: every matrix Q4_K.
  for (const auto& [name, type] : type_table(thirty_layers(), synth_type("Q4_K_M", true))) {
    EXPECT_EQ(type, name.find("norm") != std::string::npos ? DType::F32 : DType::Q4_K) << name;
  }
}

TEST(SynthMix, OtherMixesOfThirtyLayers) {
  const SynthShape s = thirty_layers();
  const auto q3m = type_table(s, synth_type("Q3_K_M"));
  EXPECT_EQ(q3m.at("blk.0.attn_v.weight"), DType::Q5_K);
  EXPECT_EQ(q3m.at("blk.1.attn_v.weight"), DType::Q5_K);
  EXPECT_EQ(q3m.at("blk.2.attn_v.weight"), DType::Q4_K);
  EXPECT_EQ(q3m.at("blk.0.ffn_down.weight"), DType::Q5_K);  // i < 30 / 16 = 1
  EXPECT_EQ(q3m.at("blk.1.ffn_down.weight"), DType::Q4_K);
  EXPECT_EQ(q3m.at("blk.7.attn_output.weight"), DType::Q4_K);
  EXPECT_EQ(q3m.at("blk.7.attn_q.weight"), DType::Q3_K);
  EXPECT_EQ(q3m.at("output.weight"), DType::Q6_K);

  const auto q4s = type_table(s, synth_type("Q4_K_S"));
  for (int il = 0; il < 30; ++il) {
    EXPECT_EQ(q4s.at(fmt::format("blk.{}.attn_v.weight", il)), il < 4 ? DType::Q5_K : DType::Q4_K) << il;
    EXPECT_EQ(q4s.at(fmt::format("blk.{}.ffn_down.weight", il)), il < 3 ? DType::Q5_K : DType::Q4_K) << il;
  }
  const auto q2 = type_table(s, synth_type("Q2_K"));  // 8 heads over 2 KV heads: n_gqa 4
  EXPECT_EQ(q2.at("blk.3.attn_v.weight"), DType::Q4_K);
  EXPECT_EQ(q2.at("blk.3.ffn_down.weight"), DType::Q3_K);
  EXPECT_EQ(q2.at("blk.3.attn_output.weight"), DType::Q3_K);
  EXPECT_EQ(q2.at("blk.3.ffn_up.weight"), DType::Q2_K);
  SynthShape mha = s;
  mha.n_head_kv = 8;
  EXPECT_EQ(type_table(mha, synth_type("Q2_K")).at("blk.3.attn_v.weight"), DType::Q3_K);
  for (const auto& [name, type] : type_table(s, synth_type("Q5_K_S"))) {
    const DType want = name.find("norm") != std::string::npos ? DType::F32
                       : name == "output.weight"             ? DType::Q6_K
                                                             : DType::Q5_K;
    EXPECT_EQ(type, want) << name;
  }
  const auto q3l = type_table(s, synth_type("Q3_K_L"));
  EXPECT_EQ(q3l.at("blk.9.attn_v.weight"), DType::Q5_K);
  EXPECT_EQ(q3l.at("blk.9.ffn_down.weight"), DType::Q5_K);
  EXPECT_EQ(q3l.at("blk.9.attn_output.weight"), DType::Q5_K);
  EXPECT_EQ(q3l.at("blk.9.ffn_gate.weight"), DType::Q3_K);
}

// llama.cpp's 70B rule: attn_v gets Q5_K where the mix says Q3_K or Q4_K.
TEST(SynthMix, SeventyBGetsQ5KValues) {
  const SynthShape s = synth_shape("llama-70b");
  const auto q4m = type_table(s, synth_type("Q4_K_M"));
  EXPECT_EQ(q4m.at("blk.0.attn_v.weight"), DType::Q6_K);
  EXPECT_EQ(q4m.at("blk.11.attn_v.weight"), DType::Q5_K);  // 80 / 8 = 10: (11 - 10) % 3 != 2
  EXPECT_EQ(q4m.at("blk.11.ffn_down.weight"), DType::Q4_K);
  const auto q3s = type_table(s, synth_type("Q3_K_S"));
  EXPECT_EQ(q3s.at("blk.40.attn_v.weight"), DType::Q5_K);
  EXPECT_EQ(q3s.at("blk.40.attn_q.weight"), DType::Q3_K);
  EXPECT_EQ(type_table(synth_shape("llama-8b"), synth_type("Q3_K_S")).at("blk.31.attn_v.weight"), DType::Q3_K);
}

// Rows that do not fill 256-value blocks fall back as llama-quantize's do; SmolLM2 (n_embd 576,
// n_ff 1536, tied) is the shape where that decides most of the file.
TEST(SynthMix, RowsThatAreNotBlocksOf256FallBack) {
  const auto q4m = type_table(synth_shape("smollm2-135m"), synth_type("Q4_K_M"));
  EXPECT_EQ(q4m.at("token_embd.weight"), DType::Q8_0);  // the tied head: Q8_0 for rows of 576
  EXPECT_EQ(q4m.at("blk.0.attn_v.weight"), DType::Q8_0);  // Q6_K -> Q8_0
  EXPECT_EQ(q4m.at("blk.3.attn_v.weight"), DType::Q5_0);  // Q4_K -> Q5_0
  EXPECT_EQ(q4m.at("blk.0.ffn_down.weight"), DType::Q6_K);  // rows of n_ff = 1536: no fallback
  EXPECT_EQ(q4m.at("blk.3.ffn_down.weight"), DType::Q4_K);
  const auto q5 = type_table(synth_shape("smollm2-135m"), synth_type("Q5_K"));
  EXPECT_EQ(q5.at("blk.3.attn_q.weight"), DType::Q5_1);  // Q5_K -> Q5_1
  const auto q2 = type_table(synth_shape("smollm2-135m"), synth_type("Q2_K"));
  EXPECT_EQ(q2.at("blk.3.attn_q.weight"), DType::Q4_0);  // Q2_K -> Q4_0
  EXPECT_EQ(q2.at("blk.3.attn_v.weight"), DType::Q4_0);  // Q3_K (n_gqa 3) -> Q4_0
  // Rows that are not even whole 32-blocks: F16.
  SynthShape odd = tiny_shape();
  odd.n_embd = 80;
  odd.n_ff = 200;
  const auto t = type_table(odd, synth_type("Q4_K_M"));
  EXPECT_EQ(t.at("output.weight"), DType::F16);  // Q8_0 needs rows of 32 (llama-quantize gives up here)
  EXPECT_EQ(t.at("blk.0.ffn_down.weight"), DType::F16);
  EXPECT_EQ(t.at("blk.0.attn_q.weight"), DType::F16);
  EXPECT_NO_THROW(validate_synth_request(odd, synth_type("Q4_K_M")));
  EXPECT_THROW(validate_synth_request(odd, DType::Q4_0), Error);  // no fallback for the 32-block types
}

// The fallback types load and run too: rows of 288 (Q5_0 / Q8_0 / Q6_K-free) and of 200 (F16).
TEST(SynthMix, FallbackModelRunsLikeItsDequantizedCopy) {
  SynthOptions options;
  options.shape = tiny_shape();
  options.shape.n_embd = 288;
  options.shape.n_ff = 200;
  options.type = synth_type("Q4_K_M");
  options.force = true;
  const fs::path path = temp_model("fallback"), copy = temp_model("fallback-f32");
  const SynthResult r = synthesize_model(options, path);
  EXPECT_EQ(r.tensor_types.find("Q4_K"), std::string::npos) << r.tensor_types;
  {
    const gguf::GgufFile file = gguf::GgufFile::open(path);
    EXPECT_EQ(file.find_tensor("blk.0.attn_q.weight")->type, DType::Q5_0);
    EXPECT_EQ(file.find_tensor("blk.0.ffn_down.weight")->type, DType::F16);
    EXPECT_EQ(file.find_tensor("output.weight")->type, DType::Q8_0);
  }
  write_f32_copy(path, copy);
  EXPECT_LT(logits_nmse(forward_logits(copy), forward_logits(path)), 4e-4);
  fs::remove(path);
  fs::remove(copy);
}

// The rules against a file llama-quantize wrote: Gemma 3 270M Q4_K_M (18 layers, n_embd 640, so
// most tensors fall back; tied head). synth cannot write gemma3, so the table comes from a llama
// shape of the same dimensions; only tensors whose rows agree are compared (gemma3's attn_output
// rows are n_head * 256, not n_embd).
TEST(SynthMix, AgreesWithLlamaQuantizeOnGemma3) {
  const fs::path source = hearth::test::models_dir() / "gemma-3-270m-q4_k_m.gguf";
  if (!fs::exists(source)) GTEST_SKIP() << source << " is absent (scripts/get-model.sh)";
  const gguf::GgufFile file = gguf::GgufFile::open(source);
  SynthShape s;
  s.n_embd = 640;
  s.n_layer = 18;
  s.n_head = 4;
  s.n_head_kv = 1;
  s.n_ff = 2048;
  s.n_vocab = 262144;
  s.tied_output = true;
  size_t compared = 0;
  for (const SynthTensorType& t : synth_tensor_types(s, synth_type("Q4_K_M"))) {
    if (t.name.find("attn_output") != std::string::npos) continue;
    const gguf::TensorInfo* real = file.find_tensor(t.name);
    ASSERT_NE(real, nullptr) << t.name;
    EXPECT_EQ(real->type, t.type) << t.name;
    ++compared;
  }
  EXPECT_EQ(compared, 2 + 18 * 8u);
}

}  // namespace
}  // namespace hearth::engine
