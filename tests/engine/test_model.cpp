// Opening models for generation: the clear errors a user gets for files hearth cannot run, and
// a tiny random llama model (built byte by byte) that loads, runs and generates through a
// scheduler as `hearth run` does.
#include <gtest/gtest.h>

#include <unistd.h>

#include <fstream>
#include <random>

#include "engine/generate/model.h"
#include "engine/generate/scheduler.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/gguf_builder.h"

namespace hearth::engine {
namespace {

using namespace hearth::test;

constexpr uint64_t kEmbd = 256, kFf = 512, kVocab = 8;

// A llama-architecture model with one layer, random f32 weights (or `weight_type` for attn_q)
// and a byte-level BPE vocabulary of single characters.
GgufSpec tiny_llama(const std::string& arch = "llama", uint32_t q_type = 0) {
  GgufSpec s;
  s.kvs = {kv_str("general.architecture", arch),
           kv_u32(arch + ".block_count", 1),
           kv_u32(arch + ".context_length", 64),
           kv_u32(arch + ".embedding_length", kEmbd),
           kv_u32(arch + ".feed_forward_length", kFf),
           kv_u32(arch + ".attention.head_count", 4),
           kv_u32(arch + ".attention.head_count_kv", 2),
           kv_f32(arch + ".attention.layer_norm_rms_epsilon", 1e-5f),
           kv_str("tokenizer.ggml.model", "gpt2"),
           kv_str("tokenizer.ggml.pre", "gpt2"),
           kv_str_array("tokenizer.ggml.tokens", {"a", "b", "c", "d", "e", "Ġ", "<s>", "</s>"}),
           kv_raw("tokenizer.ggml.token_type",
                  [](GgufBytes& b) {
                    b.u32(kArray).u32(kI32).u64(8);
                    for (int t : {1, 1, 1, 1, 1, 1, 3, 3}) b.put<int32_t>(t);
                  }),
           kv_str_array("tokenizer.ggml.merges", {}),
           kv_u32("tokenizer.ggml.bos_token_id", 6),
           kv_u32("tokenizer.ggml.eos_token_id", 7)};
  const uint64_t kv = kEmbd / 2;
  s.tensors = {{"token_embd.weight", {kEmbd, kVocab}, 0, std::nullopt, std::nullopt},
               {"output_norm.weight", {kEmbd}, 0, std::nullopt, std::nullopt},
               {"blk.0.attn_norm.weight", {kEmbd}, 0, std::nullopt, std::nullopt},
               {"blk.0.attn_q.weight", {kEmbd, kEmbd}, q_type, std::nullopt, std::nullopt},
               {"blk.0.attn_k.weight", {kEmbd, kv}, 0, std::nullopt, std::nullopt},
               {"blk.0.attn_v.weight", {kEmbd, kv}, 0, std::nullopt, std::nullopt},
               {"blk.0.attn_output.weight", {kEmbd, kEmbd}, 0, std::nullopt, std::nullopt},
               {"blk.0.ffn_norm.weight", {kEmbd}, 0, std::nullopt, std::nullopt},
               {"blk.0.ffn_gate.weight", {kEmbd, kFf}, 0, std::nullopt, std::nullopt},
               {"blk.0.ffn_up.weight", {kEmbd, kFf}, 0, std::nullopt, std::nullopt},
               {"blk.0.ffn_down.weight", {kFf, kEmbd}, 0, std::nullopt, std::nullopt}};
  return s;
}

// Writes the spec with small random f32 values in every F32 tensor (norm weights near 1).
std::filesystem::path write_model(const GgufSpec& spec, const std::string& name) {
  auto bytes = build_gguf(spec);
  const gguf::GgufFile parsed = gguf::GgufFile::from_bytes(bytes);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  for (const gguf::TensorInfo& t : parsed.tensors()) {
    if (t.type != DType::F32) continue;
    const bool norm = std::string_view(t.name).find("norm") != std::string_view::npos;
    for (int64_t i = 0; i < t.n_elements; ++i) {
      const float v = norm ? 1.0f : normal(rng);
      std::memcpy(bytes.data() + parsed.data_offset() + t.offset + static_cast<uint64_t>(i) * 4, &v, 4);
    }
  }
  const auto path = std::filesystem::temp_directory_path() / (name + "-" + std::to_string(::getpid()) + ".gguf");
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

std::string open_error(const std::filesystem::path& path) {
  kernels::CpuBackend backend(1);
  try {
    Model model(path, backend, {});
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Model, UnsupportedArchitectureIsNamed) {
  const auto path = write_model(tiny_llama("mamba"), "arch");
  EXPECT_NE(open_error(path).find("architecture 'mamba' is not supported"), std::string::npos) << open_error(path);
  std::filesystem::remove(path);
}

TEST(Model, UnsupportedTensorTypeNamesTheTensor) {
  const auto path = write_model(tiny_llama("llama", 16 /* IQ2_XXS */), "qtype");
  const std::string error = open_error(path);
  EXPECT_NE(error.find("tensor 'blk.0.attn_q.weight' has type IQ2_XXS"), std::string::npos) << error;
  std::filesystem::remove(path);
}

TEST(Model, MissingTensorIsNamed) {
  GgufSpec spec = tiny_llama();
  spec.tensors.pop_back();
  const auto path = write_model(spec, "missing");
  EXPECT_NE(open_error(path).find("tensor 'blk.0.ffn_down.weight' is missing"), std::string::npos) << open_error(path);
  std::filesystem::remove(path);
}

TEST(Model, NotAGgufFile) {
  const auto path = std::filesystem::temp_directory_path() / ("not-gguf-" + std::to_string(::getpid()) + ".gguf");
  std::ofstream(path) << "this is a text file, not a model";
  EXPECT_NE(open_error(path).find("not a GGUF file"), std::string::npos) << open_error(path);
  std::filesystem::remove(path);
}

TEST(Model, TinyModelGeneratesDeterministically) {
  const auto path = write_model(tiny_llama(), "tiny");
  kernels::CpuBackend backend(2);
  ModelOptions options;
  options.n_ctx = 32;
  Model model(path, backend, options);
  const auto prompt = model.tokenize_prompt("abc");
  EXPECT_EQ(prompt, (std::vector<Token>{0, 1, 2}));  // add_bos is off by default for gpt2 vocabularies
  // As `hearth run` generates: one sequence through a scheduler over the whole model.
  LocalExecutor executor(model.stage());
  Scheduler scheduler(executor, model.tokenizer(), {});
  GenerationOptions gen;
  gen.max_tokens = 10;
  gen.ignore_eos = true;
  gen.sampling.seed = 42;
  std::string streamed;
  const GenerationResult a = generate(scheduler, prompt, gen, [&](std::string_view s) {
    streamed += s;
    return true;
  });
  EXPECT_EQ(a.tokens.size(), 10u);
  EXPECT_EQ(a.finish_reason, "length");
  EXPECT_EQ(a.prompt_tokens, 3);
  EXPECT_EQ(streamed, a.text);
  EXPECT_EQ(a.text, model.tokenizer().decode(a.tokens));
  const GenerationResult b = generate(scheduler, prompt, gen, nullptr);
  EXPECT_EQ(a.tokens, b.tokens);  // same seed, same tokens (the KV cache is overwritten, not reused)
  gen.sampling.seed = 43;
  const GenerationResult other_seed = generate(scheduler, prompt, gen, nullptr);
  EXPECT_NE(a.tokens, other_seed.tokens);
  gen.sampling.seed = 42;

  // The context bounds both the prompt and the generation.
  std::vector<Token> long_prompt(40, 1);
  try {
    generate(scheduler, long_prompt, gen, nullptr);
    ADD_FAILURE() << "a prompt longer than the context was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the prompt has 40 tokens but the context holds 32"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--ctx-size"), std::string::npos) << e.what();
  }
  EXPECT_THROW(generate(scheduler, std::vector<Token>(32, 1), gen, nullptr), Error);  // no room for one token
  EXPECT_THROW(generate(scheduler, {}, gen, nullptr), Error);
  gen.max_tokens = -1;
  const GenerationResult c = generate(scheduler, prompt, gen, nullptr);
  EXPECT_EQ(c.tokens.size(), 32u - 3u);
  EXPECT_EQ(c.finish_reason, "length");
  EXPECT_EQ(std::vector<Token>(c.tokens.begin(), c.tokens.begin() + 10), a.tokens);

  // The callback stops the sequence by returning false: it is not called again and nothing
  // after that text is kept.
  int calls = 0;
  std::string first_piece;
  const GenerationResult d = generate(scheduler, prompt, gen, [&](std::string_view s) {
    ++calls;
    first_piece = s;
    return false;
  });
  EXPECT_EQ(d.finish_reason, "cancelled");
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(d.text, first_piece);
  ASSERT_LT(d.tokens.size(), c.tokens.size());
  EXPECT_EQ(std::vector<Token>(c.tokens.begin(), c.tokens.begin() + static_cast<std::ptrdiff_t>(d.tokens.size())), d.tokens);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace hearth::engine
