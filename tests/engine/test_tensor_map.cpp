// The tensor map: names, layer parsing, the switches of a layer, shapes and slice rules, what a
// stage holds — and that the map and real files agree (synthetic models, the architecture
// fixtures, the default models when present): every tensor of a file is described exactly once
// by the stage over all layers, with its shape, and every description names a tensor of the file.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <map>
#include <set>

#include "core/error.h"
#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/synth.h"
#include "engine/model/tensor_map.h"
#include "tests/support/fixtures.h"

namespace hearth::engine {
namespace {

namespace fs = std::filesystem;
using enum LayerTensor;

constexpr LayerTensor kAllRoles[] = {AttnNorm, Q,       K,            V,       AttnOutput, BiasQ, BiasK, BiasV,
                                     QNorm,    KNorm,   PostAttnNorm, FfnNorm, Gate,       Up,    Down,  PostFfnNorm};

// head_dim 32 != n_embd / n_head = 16 (as qwen3-tiny), so a shape built from n_embd / n_head is caught.
ModelConfig small_config() {
  ModelConfig c;
  c.arch = "llama";
  c.n_vocab = 100;
  c.n_embd = 64;
  c.n_layer = 4;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim = 32;
  c.head_dim_v = 32;
  c.n_ff = 96;
  c.n_rot = 24;
  return c;
}

std::vector<std::string> names(const std::vector<TensorDesc>& descs) {
  std::vector<std::string> out;
  for (const TensorDesc& d : descs) out.push_back(d.name);
  return out;
}

std::vector<LayerTensor> roles(const std::vector<TensorDesc>& descs) {
  std::vector<LayerTensor> out;
  for (const TensorDesc& d : descs) out.push_back(d.role);
  return out;
}

TEST(TensorMap, LayerTensorNames) {
  const std::map<LayerTensor, std::string> expected = {
      {AttnNorm, "blk.3.attn_norm.weight"},
      {Q, "blk.3.attn_q.weight"},
      {K, "blk.3.attn_k.weight"},
      {V, "blk.3.attn_v.weight"},
      {AttnOutput, "blk.3.attn_output.weight"},
      {BiasQ, "blk.3.attn_q.bias"},
      {BiasK, "blk.3.attn_k.bias"},
      {BiasV, "blk.3.attn_v.bias"},
      {QNorm, "blk.3.attn_q_norm.weight"},
      {KNorm, "blk.3.attn_k_norm.weight"},
      {PostAttnNorm, "blk.3.post_attention_norm.weight"},
      {FfnNorm, "blk.3.ffn_norm.weight"},
      {Gate, "blk.3.ffn_gate.weight"},
      {Up, "blk.3.ffn_up.weight"},
      {Down, "blk.3.ffn_down.weight"},
      {PostFfnNorm, "blk.3.post_ffw_norm.weight"}};
  ASSERT_EQ(expected.size(), std::size(kAllRoles));
  for (LayerTensor t : kAllRoles) EXPECT_EQ(layer_tensor_name(3, t), expected.at(t));
  EXPECT_EQ(layer_tensor_name(0, AttnNorm), "blk.0.attn_norm.weight");
  EXPECT_EQ(layer_tensor_name(117, Down), "blk.117.ffn_down.weight");
}

TEST(TensorMap, GlobalTensorNames) {
  EXPECT_EQ(global_tensor_name(GlobalTensor::TokenEmbd), "token_embd.weight");
  EXPECT_EQ(global_tensor_name(GlobalTensor::OutputNorm), "output_norm.weight");
  EXPECT_EQ(global_tensor_name(GlobalTensor::Output), "output.weight");
  EXPECT_EQ(global_tensor_name(GlobalTensor::RopeFreqs), "rope_freqs.weight");
}

TEST(TensorMap, TensorLayerOfGoodNames) {
  EXPECT_EQ(tensor_layer("blk.0.attn_norm.weight"), 0);
  EXPECT_EQ(tensor_layer("blk.12.ffn_up.weight"), 12);
  EXPECT_EQ(tensor_layer("blk.7.a"), 7);
  EXPECT_EQ(tensor_layer("blk.2147483647.attn_q.weight"), INT32_MAX);
  for (int32_t il : {0, 1, 9, 10, 99, 100, 12345}) {
    for (LayerTensor t : kAllRoles) EXPECT_EQ(tensor_layer(layer_tensor_name(il, t)), il) << layer_tensor_name(il, t);
  }
}

TEST(TensorMap, TensorLayerOfOtherAndMalformedNames) {
  for (const char* name : {"token_embd.weight", "output_norm.weight", "output.weight", "rope_freqs.weight", "",
                           "blk", "blk.", "blk.x.", "blk.x.attn_q.weight", "blk.-1.a", "blk.+1.a", "blk.3",
                           "blk.3.", "blk..a", "blk.3a.b", "blk. 3.a", " blk.3.a", "xblk.3.a", "BLK.3.a",
                           "blk.03.a", "blk.00.a", "blk.2147483648.a", "blk.4294967296.a",
                           "blk.99999999999999999999999.attn_q.weight"}) {
    EXPECT_EQ(tensor_layer(name), std::nullopt) << '"' << name << '"';
  }
}

TEST(TensorMap, LayerTensorsFollowTheConfigSwitches) {
  ModelConfig c = small_config();
  const std::vector<LayerTensor> base = {AttnNorm, Q, K, V, AttnOutput, FfnNorm, Gate, Up, Down};
  EXPECT_EQ(roles(layer_tensors(c, 1)), base);

  c.qkv_bias = true;
  EXPECT_EQ(roles(layer_tensors(c, 1)),
            (std::vector<LayerTensor>{AttnNorm, Q, K, V, BiasQ, BiasK, BiasV, AttnOutput, FfnNorm, Gate, Up, Down}));
  c = small_config();
  c.qk_norm = true;
  EXPECT_EQ(roles(layer_tensors(c, 1)),
            (std::vector<LayerTensor>{AttnNorm, Q, K, V, QNorm, KNorm, AttnOutput, FfnNorm, Gate, Up, Down}));
  c = small_config();
  c.post_norms = true;
  EXPECT_EQ(roles(layer_tensors(c, 1)), (std::vector<LayerTensor>{AttnNorm, Q, K, V, AttnOutput, PostAttnNorm, FfnNorm,
                                                                   Gate, Up, Down, PostFfnNorm}));
  c.qkv_bias = c.qk_norm = true;
  const std::vector<TensorDesc> all = layer_tensors(c, 2);
  EXPECT_EQ(all.size(), std::size(kAllRoles));
  for (const TensorDesc& d : all) {
    EXPECT_EQ(d.layer, 2);
    EXPECT_EQ(d.name, layer_tensor_name(2, d.role));
    EXPECT_TRUE(d.required);
  }
  // Switches that are not the layer's (tied output, rope factors) change nothing in it.
  c = small_config();
  c.tied_output = c.rope_freq_factors = true;
  EXPECT_EQ(roles(layer_tensors(c, 1)), base);
}

TEST(TensorMap, ShapesAndSliceRules) {
  ModelConfig c = small_config();  // e 64, q_dim 4 * 32 = 128, kv_dim 2 * 32 = 64, ff 96
  c.qkv_bias = c.qk_norm = c.post_norms = true;
  using A = std::array<int64_t, 4>;
  struct Want {
    A ne;
    int n_dims;
    bool norm, f32;
    SliceRule slice;
    int64_t unit;
  };
  const std::map<LayerTensor, Want> want = {
      {AttnNorm, {{64, 1, 1, 1}, 1, true, true, SliceRule::Replicated, 1}},
      {Q, {{64, 128, 1, 1}, 2, false, false, SliceRule::Rows, 32}},
      {K, {{64, 64, 1, 1}, 2, false, false, SliceRule::Rows, 32}},
      {V, {{64, 64, 1, 1}, 2, false, false, SliceRule::Rows, 32}},
      {AttnOutput, {{128, 64, 1, 1}, 2, false, false, SliceRule::Columns, 32}},
      {BiasQ, {{128, 1, 1, 1}, 1, false, true, SliceRule::Rows, 32}},
      {BiasK, {{64, 1, 1, 1}, 1, false, true, SliceRule::Rows, 32}},
      {BiasV, {{64, 1, 1, 1}, 1, false, true, SliceRule::Rows, 32}},
      {QNorm, {{32, 1, 1, 1}, 1, true, true, SliceRule::Replicated, 1}},
      {KNorm, {{32, 1, 1, 1}, 1, true, true, SliceRule::Replicated, 1}},
      {PostAttnNorm, {{64, 1, 1, 1}, 1, true, true, SliceRule::Replicated, 1}},
      {FfnNorm, {{64, 1, 1, 1}, 1, true, true, SliceRule::Replicated, 1}},
      {Gate, {{64, 96, 1, 1}, 2, false, false, SliceRule::Rows, 1}},
      {Up, {{64, 96, 1, 1}, 2, false, false, SliceRule::Rows, 1}},
      {Down, {{96, 64, 1, 1}, 2, false, false, SliceRule::Columns, 1}},
      {PostFfnNorm, {{64, 1, 1, 1}, 1, true, true, SliceRule::Replicated, 1}}};
  for (const TensorDesc& d : layer_tensors(c, 0)) {
    SCOPED_TRACE(d.name);
    const Want& w = want.at(d.role);
    EXPECT_EQ(d.ne, w.ne);
    EXPECT_EQ(d.n_dims, w.n_dims);
    EXPECT_EQ(d.norm, w.norm);
    EXPECT_EQ(d.f32, w.f32);
    EXPECT_EQ(d.slice, w.slice);
    EXPECT_EQ(d.slice_unit, w.unit);
    EXPECT_EQ(layer_tensor(c, 0, d.role).ne, d.ne);
  }

  const TensorDesc embd = global_tensor(c, GlobalTensor::TokenEmbd);
  EXPECT_EQ(embd.ne, (A{64, 100, 1, 1}));
  EXPECT_EQ(embd.n_dims, 2);
  EXPECT_EQ(embd.slice, SliceRule::Replicated);
  EXPECT_EQ(embd.layer, -1);
  const TensorDesc out = global_tensor(c, GlobalTensor::Output);
  EXPECT_EQ(out.ne, (A{64, 100, 1, 1}));
  EXPECT_EQ(out.slice, SliceRule::Rows);
  EXPECT_FALSE(out.norm);
  const TensorDesc out_norm = global_tensor(c, GlobalTensor::OutputNorm);
  EXPECT_EQ(out_norm.ne, (A{64, 1, 1, 1}));
  EXPECT_TRUE(out_norm.norm);
  EXPECT_TRUE(out_norm.f32);
  const TensorDesc freqs = global_tensor(c, GlobalTensor::RopeFreqs);
  EXPECT_EQ(freqs.ne, (A{12, 1, 1, 1}));  // n_rot / 2
  EXPECT_FALSE(freqs.norm);
  EXPECT_TRUE(freqs.f32);
  EXPECT_EQ(freqs.slice, SliceRule::Replicated);
  for (GlobalTensor g : {GlobalTensor::TokenEmbd, GlobalTensor::OutputNorm, GlobalTensor::Output, GlobalTensor::RopeFreqs}) {
    EXPECT_EQ(global_tensor(c, g).global, g);
    EXPECT_EQ(global_tensor(c, g).name, global_tensor_name(g));
  }
}

TEST(TensorMap, SliceGranularityRespectsQuantBlocksOnColumns) {
  ModelConfig c = small_config();  // head_dim 32
  EXPECT_EQ(slice_granularity(layer_tensor(c, 0, AttnOutput), DType::Q4_K), 256);  // lcm(32, 256)
  EXPECT_EQ(slice_granularity(layer_tensor(c, 0, AttnOutput), DType::F16), 32);
  EXPECT_EQ(slice_granularity(layer_tensor(c, 0, Down), DType::Q4_0), 32);
  EXPECT_EQ(slice_granularity(layer_tensor(c, 0, Down), DType::F32), 1);
  EXPECT_EQ(slice_granularity(layer_tensor(c, 0, Q), DType::Q4_K), 32);  // rows: whole heads, any type
  EXPECT_EQ(slice_granularity(layer_tensor(c, 0, Gate), DType::Q4_K), 1);
  c.head_dim = 96;
  EXPECT_EQ(slice_granularity(layer_tensor(c, 0, AttnOutput), DType::Q8_0), 96);
  EXPECT_EQ(slice_granularity(layer_tensor(c, 0, AttnOutput), DType::Q6_K), 768);
}

// Names of stage_tensors(c, first, last) that are global, in order, and the layers it covers.
struct StageShape {
  std::vector<std::string> globals;
  std::set<int32_t> layers;
  size_t n_layer_tensors = 0;
};

StageShape stage_shape(const ModelConfig& c, int32_t first, int32_t last) {
  StageShape s;
  for (const TensorDesc& d : stage_tensors(c, first, last)) {
    if (d.layer < 0) {
      EXPECT_TRUE(s.layers.empty()) << "global tensors come before the layers: " << d.name;
      s.globals.push_back(d.name);
    } else {
      s.layers.insert(d.layer);
      ++s.n_layer_tensors;
    }
  }
  return s;
}

TEST(TensorMap, StageTensorsUntiedOutput) {
  const ModelConfig c = small_config();  // 4 layers, 9 tensors each
  using V = std::vector<std::string>;
  StageShape s = stage_shape(c, 0, 2);
  EXPECT_EQ(s.globals, V{"token_embd.weight"});
  EXPECT_EQ(s.layers, (std::set<int32_t>{0, 1}));
  EXPECT_EQ(s.n_layer_tensors, 18u);
  s = stage_shape(c, 1, 3);
  EXPECT_EQ(s.globals, V{});
  EXPECT_EQ(s.layers, (std::set<int32_t>{1, 2}));
  s = stage_shape(c, 2, 4);
  EXPECT_EQ(s.globals, (V{"output_norm.weight", "output.weight"}));
  EXPECT_EQ(s.layers, (std::set<int32_t>{2, 3}));
  s = stage_shape(c, 0, 4);
  EXPECT_EQ(s.globals, (V{"token_embd.weight", "output_norm.weight", "output.weight"}));
  EXPECT_EQ(s.n_layer_tensors, 36u);
  // Layer tensors in layer order, each layer's in layer_tensors order.
  const std::vector<TensorDesc> mid = stage_tensors(c, 1, 3);
  std::vector<std::string> want = names(layer_tensors(c, 1));
  for (const std::string& n : names(layer_tensors(c, 2))) want.push_back(n);
  EXPECT_EQ(names(mid), want);
}

TEST(TensorMap, StageTensorsTiedOutput) {
  ModelConfig c = small_config();
  c.tied_output = true;
  using V = std::vector<std::string>;
  EXPECT_EQ(stage_shape(c, 0, 2).globals, V{"token_embd.weight"});
  EXPECT_EQ(stage_shape(c, 1, 3).globals, V{});
  // The last stage holds the table as its head; no output.weight anywhere.
  EXPECT_EQ(stage_shape(c, 2, 4).globals, (V{"token_embd.weight", "output_norm.weight"}));
  EXPECT_EQ(stage_shape(c, 0, 4).globals, (V{"token_embd.weight", "output_norm.weight"}));  // once
  EXPECT_EQ(stage_shape(c, 3, 4).globals, (V{"token_embd.weight", "output_norm.weight"}));
}

TEST(TensorMap, StageTensorsRopeFactorsOnEveryStage) {
  ModelConfig c = small_config();
  c.rope_freq_factors = true;
  using V = std::vector<std::string>;
  EXPECT_EQ(stage_shape(c, 0, 1).globals, (V{"token_embd.weight", "rope_freqs.weight"}));
  EXPECT_EQ(stage_shape(c, 1, 3).globals, V{"rope_freqs.weight"});
  EXPECT_EQ(stage_shape(c, 3, 4).globals, (V{"output_norm.weight", "output.weight", "rope_freqs.weight"}));
  EXPECT_EQ(stage_shape(c, 0, 4).globals,
            (V{"token_embd.weight", "output_norm.weight", "output.weight", "rope_freqs.weight"}));
}

TEST(TensorMap, StageTensorsRefuseRangesOutsideTheModel) {
  const ModelConfig c = small_config();
  EXPECT_THROW(stage_tensors(c, -1, 2), Error);
  EXPECT_THROW(stage_tensors(c, 0, 5), Error);
  EXPECT_THROW(stage_tensors(c, 2, 2), Error);
  EXPECT_THROW(stage_tensors(c, 3, 1), Error);
}

TEST(TensorMap, StagesOfASplitPartitionTheLayerTensors) {
  ModelConfig c = small_config();
  c.n_layer = 7;
  c.qkv_bias = true;
  std::multiset<std::string> seen;
  for (auto [first, last] : {std::pair{0, 2}, {2, 3}, {3, 7}}) {
    for (const TensorDesc& d : stage_tensors(c, first, last)) {
      if (d.layer >= 0) seen.insert(d.name);
    }
  }
  const std::vector<TensorDesc> whole = stage_tensors(c, 0, 7);
  size_t n_layer_tensors = 0;
  for (const TensorDesc& d : whole) {
    if (d.layer < 0) continue;
    ++n_layer_tensors;
    EXPECT_EQ(seen.count(d.name), 1u) << d.name;
  }
  EXPECT_EQ(seen.size(), n_layer_tensors);
}

// ---------------------------------------------------------------------------------------------
// The map and the files agree

// Every tensor of the file is described by exactly one entry of the all-layer stage, with the
// file's shape (and F32 where the map says so), and every entry names a tensor of the file.
void expect_file_matches_map(const fs::path& path) {
  SCOPED_TRACE(path.string());
  const gguf::GgufFile file = gguf::GgufFile::open(path);
  const ModelConfig config = ModelConfig::from_gguf(file);
  const std::vector<TensorDesc> descs = stage_tensors(config, 0, config.n_layer);
  std::map<std::string, const TensorDesc*> by_name;
  for (const TensorDesc& d : descs) EXPECT_TRUE(by_name.emplace(d.name, &d).second) << d.name << " described twice";
  size_t matched = 0;
  for (const gguf::TensorInfo& t : file.tensors()) {
    const auto it = by_name.find(std::string(t.name));
    if (it == by_name.end()) {
      ADD_FAILURE() << "tensor " << t.name << " is in the file but not in the map";
      continue;
    }
    ++matched;
    const TensorDesc& d = *it->second;
    EXPECT_EQ(t.ne, d.ne) << t.name;
    EXPECT_EQ(t.n_dims, d.n_dims) << t.name;
    if (d.f32) {
      EXPECT_EQ(t.type, DType::F32) << t.name;
    }
    EXPECT_EQ(tensor_layer(t.name), d.layer >= 0 ? std::optional<int32_t>(d.layer) : std::nullopt) << t.name;
  }
  EXPECT_EQ(matched, descs.size()) << "the map describes tensors the file does not hold";
  EXPECT_EQ(file.tensors().size(), descs.size());
}

fs::path temp_model(const std::string& name) {
  return fs::temp_directory_path() / fmt::format("hearth-tensor-map-{}-{}.gguf", ::getpid(), name);
}

SynthShape tiny_shape(const std::string& arch, bool tied) {
  SynthShape s;
  s.name = "tiny";
  s.arch = arch;
  s.n_embd = 64;
  s.n_layer = 3;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.n_ff = 128;
  s.n_vocab = 512;
  s.tied_output = tied;
  return s;
}

class SynthAgreesWithMap : public testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(SynthAgreesWithMap, EveryTensorDescribedOnce) {
  const auto& [arch, tied] = GetParam();
  const fs::path path = temp_model(fmt::format("{}-{}", arch, tied ? "tied" : "untied"));
  SynthOptions options;
  options.shape = tiny_shape(arch, tied);
  options.type = DType::Q8_0;
  options.n_threads = 1;
  options.force = true;
  const SynthResult r = synthesize_model(options, path);
  expect_file_matches_map(path);
  {
    const gguf::GgufFile file = gguf::GgufFile::open(path);
    const ModelConfig config = ModelConfig::from_gguf(file);
    EXPECT_EQ(config.tied_output, tied);
    EXPECT_EQ(config.qkv_bias, arch == "qwen2");
    EXPECT_EQ(r.n_tensors, stage_tensors(config, 0, config.n_layer).size());
  }
  fs::remove(path);
}

INSTANTIATE_TEST_SUITE_P(LlamaQwen2, SynthAgreesWithMap,
                         testing::Combine(testing::Values("llama", "qwen2"), testing::Bool()));

// The committed fixtures cover what synth does not write: qk norms (qwen3), rope factors, tied heads.
TEST(TensorMapFiles, ArchitectureFixtures) {
  for (const char* name : {"qwen2-tiny", "qwen3-tiny", "llama-ropefreqs-tiny", "llama-linear-tiny"}) {
    expect_file_matches_map(test::fixtures_dir() / "arch" / (std::string(name) + ".gguf"));
  }
}

// The default models: SmolLM2 (llama) and Gemma 3 (qk norms, post norms, tied head).
TEST(TensorMapFiles, DefaultModels) {
  size_t n = 0;
  for (const char* name : {"SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"}) {
    const fs::path path = test::models_dir() / name;
    if (!fs::exists(path)) continue;
    expect_file_matches_map(path);
    ++n;
  }
  if (n == 0) GTEST_SKIP() << "no default model in " << test::models_dir() << " (scripts/get-model.sh)";
}

}  // namespace
}  // namespace hearth::engine
