// `hearth info` on the default models against what the independent `gguf` Python package reads
// from the same files (fixtures by scripts/reference/make_model_info_fixtures.py). Needs the
// models fetched by scripts/get-model.sh (scripts/test.sh does that); skipped without them.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "engine/format/gguf.h"
#include "engine/format/model_info.h"
#include "tests/support/fixtures.h"

namespace hearth::engine {
namespace {

using json = nlohmann::json;

class ModelInfoVsGguf : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    expected_ = json::parse(test::read_file_text(test::fixtures_dir() / "models" / (GetParam() + ".json")));
    path_ = test::models_dir() / expected_["file"].get<std::string>();
    if (!std::filesystem::exists(path_)) {
      GTEST_SKIP() << path_ << " not present: run scripts/get-model.sh " << GetParam();
    }
  }
  json expected_;
  std::filesystem::path path_;
};

// A metadata value as the fixture writes it: floats as doubles, strings, ints, bools.
json scalar_json(const gguf::Value& v) {
  return std::visit(
      [](const auto& x) -> json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string_view>) {
          return std::string(x);
        } else if constexpr (std::is_same_v<T, gguf::ArrayValue>) {
          return nullptr;
        } else if constexpr (std::is_floating_point_v<T>) {
          return static_cast<double>(x);
        } else {
          return x;
        }
      },
      v.storage());
}

json array_element_json(const gguf::ArrayValue& a, uint64_t i) {
  switch (a.elem_type) {
    case gguf::ValueType::STRING: return std::string(a.at<std::string_view>(i));
    case gguf::ValueType::INT32: return a.at<int32_t>(i);
    case gguf::ValueType::UINT32: return a.at<uint32_t>(i);
    case gguf::ValueType::FLOAT32: return static_cast<double>(a.at<float>(i));
    case gguf::ValueType::BOOL: return a.at<bool>(i);
    default: ADD_FAILURE() << "unexpected array type in fixture model"; return nullptr;
  }
}

TEST_P(ModelInfoVsGguf, SummaryMatches) {
  const gguf::GgufFile file = gguf::GgufFile::open(path_);
  const json info = json::parse(model_info_json(file, {.tensors = true, .metadata = true}).dump());
  for (const char* key : {"file_size", "gguf_version", "alignment", "data_offset", "tensor_count", "metadata_count",
                          "architecture", "name", "file_type", "parameters", "tensor_bytes"}) {
    EXPECT_EQ(info[key], expected_[key]) << key;
  }
  for (const auto& [key, value] : expected_["hparams"].items()) EXPECT_EQ(info["hparams"][key], value) << key;
  for (const auto& [key, value] : expected_["rope"].items()) EXPECT_EQ(info["rope"][key], value) << key;
  for (const auto& [key, value] : expected_["tokenizer"].items()) EXPECT_EQ(info["tokenizer"][key], value) << key;
  // Nothing reported that gguf-py did not see.
  EXPECT_EQ(info["hparams"].size(), expected_["hparams"].size());
  EXPECT_EQ(info["rope"].size(), expected_["rope"].size());

  ASSERT_EQ(info["tensor_types"].size(), expected_["tensor_types"].size());
  for (const json& t : info["tensor_types"]) {
    const json& want = expected_["tensor_types"][t["type"].get<std::string>()];
    EXPECT_EQ(t["count"], want["count"]) << t["type"];
    EXPECT_EQ(t["bytes"], want["bytes"]) << t["type"];
  }
}

TEST_P(ModelInfoVsGguf, EveryTensorMatches) {
  const gguf::GgufFile file = gguf::GgufFile::open(path_);
  const json info = json::parse(model_info_json(file, {.tensors = true}).dump());
  const json& want = expected_["tensors"];
  ASSERT_EQ(info["tensors"].size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const json& t = info["tensors"][i];
    SCOPED_TRACE(want[i][0].get<std::string>());
    EXPECT_EQ(t["name"], want[i][0]);
    EXPECT_EQ(t["type"], want[i][1]);
    EXPECT_EQ(t["shape"], want[i][2]);
    EXPECT_EQ(t["file_offset"], want[i][3]);
    EXPECT_EQ(t["bytes"], want[i][4]);
  }
}

TEST_P(ModelInfoVsGguf, EveryMetadataValueMatches) {
  const gguf::GgufFile file = gguf::GgufFile::open(path_);
  const json& want = expected_["metadata"];
  ASSERT_EQ(file.metadata().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const gguf::KeyValue& kv = file.metadata()[i];
    SCOPED_TRACE(want[i]["key"].get<std::string>());
    EXPECT_EQ(std::string(kv.key), want[i]["key"]);
    EXPECT_EQ(gguf::value_type_name(kv.value.type()), want[i]["type"]);
    if (const auto* a = kv.value.get_if<gguf::ArrayValue>()) {
      EXPECT_EQ(gguf::value_type_name(a->elem_type), want[i]["elem_type"]);
      ASSERT_EQ(a->count, want[i]["count"].get<uint64_t>());
      for (uint64_t j = 0; j < std::min<uint64_t>(3, a->count); ++j) {
        EXPECT_EQ(array_element_json(*a, j), want[i]["first"][j]) << "element " << j;
      }
      if (a->count > 0) {
        EXPECT_EQ(array_element_json(*a, a->count - 1), want[i]["last"]);
      }
    } else {
      EXPECT_EQ(scalar_json(kv.value), want[i]["value"]);
    }
  }
}

TEST_P(ModelInfoVsGguf, TextNamesTheFacts) {
  const gguf::GgufFile file = gguf::GgufFile::open(path_);
  const std::string text = model_info_text(model_info_json(file));
  auto expect_line = [&](const std::string& label, const std::string& value) {
    const std::string needle = fmt::format("{:<22} {}", label, value);
    EXPECT_NE(text.find(needle), std::string::npos) << "missing line '" << needle << "' in:\n" << text;
  };
  const json& hp = expected_["hparams"];
  expect_line("architecture", expected_["architecture"].get<std::string>());
  expect_line("name", expected_["name"].get<std::string>());
  expect_line("context length", std::to_string(hp["context_length"].get<int>()));
  expect_line("embedding size", std::to_string(hp["embedding_length"].get<int>()));
  expect_line("layers", std::to_string(hp["block_count"].get<int>()));
  expect_line("heads", std::to_string(hp["head_count"].get<int>()));
  expect_line("KV heads", std::to_string(hp["head_count_kv"].get<int>()));
  expect_line("vocabulary size", std::to_string(expected_["tokenizer"]["vocab_size"].get<int>()));
  expect_line("tokenizer", expected_["tokenizer"]["model"].get<std::string>());
  expect_line("parameters", "");
  EXPECT_NE(text.find(fmt::format("({})", expected_["parameters"].get<uint64_t>())), std::string::npos);
  EXPECT_NE(text.find("rope"), std::string::npos);
  for (const auto& [type, _] : expected_["tensor_types"].items()) EXPECT_NE(text.find("  " + type + " "), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(DefaultModels, ModelInfoVsGguf, testing::Values("smollm2", "gemma3-270m"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace hearth::engine
