#include "engine/model/synth.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <future>
#include <optional>

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/format/gguf.h"
#include "engine/format/gguf_writer.h"
#include "engine/model/model_config.h"
#include "engine/model/tensor_map.h"
#include "kernels/cpu/quants_ref.h"

namespace hearth::engine {
namespace {

constexpr float kWeightStd = 0.02f;
constexpr size_t kChunkBytes = size_t{8} << 20;  // tensor data generated and written per block

// Generated vocabulary: 256 byte tokens, BOS and EOS, then merges and their results, then
// filler tokens up to the requested size.
constexpr int32_t kBosId = 256;
constexpr int32_t kEosId = 257;
constexpr int32_t kMinGeneratedVocab = 259;  // bytes, BOS, EOS and at least one merge

// ---------------------------------------------------------------------------------------------
// Shapes

std::vector<SynthShape> make_shapes() {
  std::vector<SynthShape> s;
  auto add = [&](std::string name, std::string arch, int32_t embd, int32_t layers, int32_t heads, int32_t kv,
                 int32_t ff, int32_t vocab, int32_t ctx, float rope, float eps, bool tied, std::string what) {
    SynthShape x;
    x.name = std::move(name);
    x.arch = std::move(arch);
    x.n_embd = embd;
    x.n_layer = layers;
    x.n_head = heads;
    x.n_head_kv = kv;
    x.n_ff = ff;
    x.n_vocab = vocab;
    x.n_ctx_train = ctx;
    x.rope_freq_base = rope;
    x.norm_eps = eps;
    x.tied_output = tied;
    x.description = std::move(what);
    s.push_back(std::move(x));
  };
  add("smollm2-135m", "llama", 576, 30, 9, 3, 1536, 49152, 8192, 1e5f, 1e-5f, true, "SmolLM2 135M");
  add("llama-1b", "llama", 2048, 16, 32, 8, 8192, 128256, 131072, 5e5f, 1e-5f, true, "Llama 3.2 1B");
  add("llama-8b", "llama", 4096, 32, 32, 8, 14336, 128256, 131072, 5e5f, 1e-5f, false, "Llama 3.1 8B");
  add("llama-70b", "llama", 8192, 80, 64, 8, 28672, 128256, 131072, 5e5f, 1e-5f, false, "Llama 3.1 70B");
  add("qwen2-7b", "qwen2", 3584, 28, 28, 4, 18944, 152064, 32768, 1e6f, 1e-6f, false, "Qwen2 7B (q/k/v biases)");
  return s;
}

// llama.cpp's llama_ftype for a file whose matrices are all `type`.
uint32_t file_type_of(DType type) {
  switch (type) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q4_1: return 3;
    case DType::Q8_0: return 7;
    case DType::Q5_0: return 8;
    case DType::Q5_1: return 9;
    case DType::BF16: return 32;
    default: HEARTH_CHECK(false, "no file type for {}", dtype_name(type));
  }
  return 0;
}

std::string types_list() {
  std::string out;
  for (DType t : synth_types()) out += (out.empty() ? "" : ", ") + std::string(dtype_name(t));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Random numbers. Speed matters more than exact Gaussianity: a 64-bit splitmix64 hash of a
// counter (so each element depends only on its seed and index, whatever the thread split) gives
// four 16-bit indices into a table of 65 536 standard-normal samples (Box-Muller, drawn once
// from a fixed seed). One hash per four values keeps generation well below quantization cost.

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t hash_name(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
  return h;
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

const std::vector<float>& normal_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    uint64_t counter = 0x5EED;
    const auto uniform = [&counter] {  // (0, 1]
      return (static_cast<double>(mix64(counter += kGolden) >> 11) + 1.0) * 0x1.0p-53;
    };
    for (size_t i = 0; i < t.size(); i += 2) {
      const double r = std::sqrt(-2.0 * std::log(uniform())), theta = 6.283185307179586 * uniform();
      t[i] = static_cast<float>(r * std::cos(theta));
      t[i + 1] = static_cast<float>(r * std::sin(theta));
    }
    return t;
  }();
  return table;
}

// out[0, n) ~ N(0, stddev^2), a function of (seed, index) only.
void fill_normal(uint64_t seed, float* out, int64_t n, float stddev) {
  const float* table = normal_table().data();
  int64_t i = 0;
  for (uint64_t c = 1; i + 4 <= n; i += 4, ++c) {
    const uint64_t z = mix64(seed + c * kGolden);
    out[i] = table[z & 0xFFFF] * stddev;
    out[i + 1] = table[(z >> 16) & 0xFFFF] * stddev;
    out[i + 2] = table[(z >> 32) & 0xFFFF] * stddev;
    out[i + 3] = table[z >> 48] * stddev;
  }
  if (i < n) {
    uint64_t z = mix64(seed + static_cast<uint64_t>(i / 4 + 1) * kGolden);
    for (; i < n; ++i, z >>= 16) out[i] = table[z & 0xFFFF] * stddev;
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor data

enum class Fill { Normal, Ones };

struct Generator {
  ThreadPool pool;
  uint64_t seed;
  uint64_t total_bytes = 0;
  uint64_t done_bytes = 0;
  const std::function<void(uint64_t, uint64_t)>* progress = nullptr;
  std::vector<std::vector<float>> scratch;  // one row per thread

  Generator(int n_threads, uint64_t s) : pool(n_threads), seed(s), scratch(static_cast<size_t>(pool.size())) {}

  // Streams `rows` rows of `row_len` values of `type` into the sink. Rows are generated in
  // parallel into one block while the previous block is written, so generation and I/O overlap.
  void stream(gguf::TensorSink& sink, std::string_view name, DType type, int64_t rows, int64_t row_len, Fill fill) {
    const size_t row_bytes = dtype_row_bytes(type, row_len);
    const int64_t chunk_rows = std::max<int64_t>(1, static_cast<int64_t>(kChunkBytes / row_bytes));
    const uint64_t tensor_seed = mix64(seed ^ hash_name(name));
    std::vector<uint8_t> blocks[2];
    std::future<void> pending;  // declared after the buffers: destroyed (joined) first
    int which = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows, which ^= 1) {
      const int64_t n_rows = std::min(chunk_rows, rows - r0);
      std::vector<uint8_t>& block = blocks[which];
      block.resize(static_cast<size_t>(n_rows) * row_bytes);
      pool.parallel_for(n_rows, [&](int64_t begin, int64_t end, int thread) {
        std::vector<float>& x = scratch[static_cast<size_t>(thread)];
        x.resize(static_cast<size_t>(row_len));
        for (int64_t r = begin; r < end; ++r) {
          if (fill == Fill::Ones) {
            std::fill(x.begin(), x.end(), 1.0f);
          } else {
            fill_normal(mix64(tensor_seed + static_cast<uint64_t>(r0 + r)), x.data(), row_len, kWeightStd);
          }
          kernels::ref::quantize_row(type, x.data(), block.data() + static_cast<size_t>(r) * row_bytes, row_len);
        }
      });
      if (pending.valid()) pending.get();
      pending = std::async(std::launch::async, [&sink, &block] { sink.write(block.data(), block.size()); });
      done_bytes += block.size();
      if (progress != nullptr && *progress) (*progress)(done_bytes, total_bytes);
    }
    if (pending.valid()) pending.get();
  }
};

// ---------------------------------------------------------------------------------------------
// Tokenizer

// GPT-2's byte-level alphabet: byte b as the code point a byte-level BPE vocabulary uses for it
// (printable bytes map to themselves, the rest to U+0100 onwards), UTF-8 encoded.
std::string byte_token(int b) {
  const auto printable = [](int c) { return (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255); };
  int cp = b;
  if (!printable(b)) {
    int n = 0;
    for (int c = 0; c < b; ++c) n += printable(c) ? 0 : 1;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// A self-contained byte-level BPE vocabulary of exactly n_vocab tokens: any text tokenizes (every
// byte has a token), a few merges exercise the merge path (llama.cpp refuses a BPE vocabulary
// without merges), and fillers reach the size whose embedding and output head are benchmarked.
void write_generated_tokenizer(gguf::GgufWriter& w, const SynthShape& shape) {
  const auto n = static_cast<size_t>(shape.n_vocab);
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  tokens.reserve(n);
  types.reserve(n);
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(byte_token(b));
    types.push_back(1);  // normal
  }
  tokens.emplace_back("<|begin_of_text|>");
  tokens.emplace_back("<|end_of_text|>");
  types.push_back(3);  // control
  types.push_back(3);
  std::vector<std::pair<std::string, std::string>> pairs;
  const std::string space = byte_token(' ');
  for (char c = 'a'; c <= 'z'; ++c) pairs.emplace_back(space, std::string(1, c));
  for (char a = 'a'; a <= 'z'; ++a) {
    for (char b = 'a'; b <= 'z'; ++b) pairs.emplace_back(std::string(1, a), std::string(1, b));
  }
  for (const auto& [left, right] : pairs) {
    if (tokens.size() >= n) break;
    merges.push_back(left + " " + right);
    tokens.push_back(left + right);
    types.push_back(1);
  }
  // Fillers: printable ASCII only, so llama.cpp's byte-level decoding of every token succeeds.
  for (size_t i = 0; tokens.size() < n; ++i) {
    tokens.push_back(fmt::format("<synth_{}>", i));
    types.push_back(1);
  }
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", shape.arch == "qwen2" ? "qwen2" : "llama-bpe");
  w.set_string_array("tokenizer.ggml.tokens", std::span<const std::string>(tokens));
  w.set_array<int32_t>("tokenizer.ggml.token_type", types);
  w.set_string_array("tokenizer.ggml.merges", std::span<const std::string>(merges));
  w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(kBosId));
  w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(kEosId));
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  w.set_bool("tokenizer.ggml.add_eos_token", false);
}

// Copies every tokenizer.* key of `path`; returns the size of its vocabulary.
int32_t copy_tokenizer(gguf::GgufWriter& w, const std::filesystem::path& path) {
  const gguf::GgufFile src = gguf::GgufFile::open(path);
  const gguf::Value* tokens = src.find("tokenizer.ggml.tokens");
  const gguf::ArrayValue* list = tokens != nullptr ? tokens->get_if<gguf::ArrayValue>() : nullptr;
  if (list == nullptr || list->elem_type != gguf::ValueType::STRING || list->count == 0) {
    throw Error(fmt::format("{}: --tokenizer-from needs a file with a tokenizer (metadata key 'tokenizer.ggml.tokens' "
                            "as a non-empty array of strings)",
                            path.string()));
  }
  if (list->count > static_cast<uint64_t>(INT32_MAX)) {
    throw Error(fmt::format("{}: a vocabulary of {} tokens is too large", path.string(), list->count));
  }
  for (const gguf::KeyValue& kv : src.metadata()) {
    if (kv.key.starts_with("tokenizer.")) w.set_value(kv.key, kv.value);
  }
  return static_cast<int32_t>(list->count);
}

// The ModelConfig that ModelConfig::from_gguf will read from a file of this shape (the parts the
// tensor map needs): head size n_embd / n_head, rope over the whole head, q/k/v biases for qwen2.
ModelConfig synth_config(const SynthShape& s) {
  ModelConfig c;
  c.arch = s.arch;
  c.n_vocab = s.n_vocab;
  c.n_ctx_train = s.n_ctx_train;
  c.n_embd = s.n_embd;
  c.n_layer = s.n_layer;
  c.n_head = s.n_head;
  c.n_head_kv = s.n_head_kv;
  c.head_dim = s.n_head > 0 ? s.n_embd / s.n_head : 0;
  c.head_dim_v = c.head_dim;
  c.n_ff = s.n_ff;
  c.n_rot = c.head_dim;
  c.qkv_bias = s.arch == "qwen2";
  c.tied_output = s.tied_output;
  return c;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

const std::vector<SynthShape>& synth_shapes() {
  static const std::vector<SynthShape> shapes = make_shapes();
  return shapes;
}

const SynthShape& synth_shape(std::string_view name) {
  for (const SynthShape& s : synth_shapes()) {
    if (s.name == name) return s;
  }
  std::string known;
  for (const SynthShape& s : synth_shapes()) known += (known.empty() ? "" : ", ") + s.name;
  throw Error(fmt::format("unknown shape '{}' (known: {})", name, known));
}

uint64_t synth_param_count(const SynthShape& s) {
  const ModelConfig config = synth_config(s);
  const auto values = [](const TensorDesc& d) {
    return static_cast<uint64_t>(d.ne[0] * d.ne[1] * d.ne[2] * d.ne[3]);
  };
  uint64_t layer = 0;  // every layer holds the same tensors
  for (const TensorDesc& d : layer_tensors(config, 0)) layer += values(d);
  uint64_t global = values(global_tensor(config, GlobalTensor::TokenEmbd)) +
                    values(global_tensor(config, GlobalTensor::OutputNorm));
  if (!config.tied_output) global += values(global_tensor(config, GlobalTensor::Output));
  return global + static_cast<uint64_t>(s.n_layer) * layer;
}

std::string synth_shapes_text() {
  std::string out = fmt::format("{:<14} {:<6} {:>6} {:>6} {:>6} {:>8} {:>7} {:>7} {:>10} {:>6}  {}\n", "shape", "arch",
                                "embd", "layers", "heads", "kv-heads", "ff", "vocab", "rope-base", "params", "model");
  for (const SynthShape& s : synth_shapes()) {
    const double p = static_cast<double>(synth_param_count(s));
    const std::string params = p >= 1e9 ? fmt::format("{:.1f}B", p / 1e9) : fmt::format("{:.0f}M", p / 1e6);
    out += fmt::format("{:<14} {:<6} {:>6} {:>6} {:>6} {:>8} {:>7} {:>7} {:>10.0e} {:>6}  {}{}\n", s.name, s.arch,
                       s.n_embd, s.n_layer, s.n_head, s.n_head_kv, s.n_ff, s.n_vocab, s.rope_freq_base, params,
                       s.description, s.tied_output ? ", tied output" : "");
  }
  return out;
}

const std::vector<DType>& synth_types() {
  static const std::vector<DType> types = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1,
                                           DType::Q8_0, DType::F16,  DType::BF16, DType::F32};
  return types;
}

DType synth_type(std::string_view name) {
  const std::optional<DType> type = dtype_from_name(name);
  if (!type) throw Error(fmt::format("unknown type '{}' (synth writes: {})", name, types_list()));
  if (std::find(synth_types().begin(), synth_types().end(), *type) == synth_types().end()) {
    throw Error(fmt::format("type {} cannot be quantized by synth (it writes: {})", dtype_name(*type), types_list()));
  }
  return *type;
}

void validate_synth_request(const SynthShape& s, DType type) {
  if (s.arch != "llama" && s.arch != "qwen2") {
    throw Error(fmt::format("architecture '{}' cannot be synthesized (supported: llama, qwen2)", s.arch));
  }
  const std::pair<const char*, int32_t> dims[] = {{"--embd", s.n_embd},      {"--layers", s.n_layer},
                                                   {"--heads", s.n_head},     {"--kv-heads", s.n_head_kv},
                                                   {"--ff", s.n_ff},          {"--vocab", s.n_vocab}};
  for (const auto& [option, value] : dims) {
    if (value <= 0) throw Error(fmt::format("{} {} must be positive", option, value));
  }
  if (s.n_embd % s.n_head != 0) {
    throw Error(fmt::format("--heads {} does not divide --embd {}", s.n_head, s.n_embd));
  }
  if (s.n_head % s.n_head_kv != 0) {
    throw Error(fmt::format("--kv-heads {} does not divide --heads {}", s.n_head_kv, s.n_head));
  }
  if ((s.n_embd / s.n_head) % 2 != 0) {
    throw Error(fmt::format("the head size {} (--embd {} / --heads {}) must be even for rotary embeddings",
                            s.n_embd / s.n_head, s.n_embd, s.n_head));
  }
  if (std::find(synth_types().begin(), synth_types().end(), type) == synth_types().end()) {
    throw Error(fmt::format("type {} cannot be quantized by synth (it writes: {})", dtype_name(type), types_list()));
  }
  const int64_t block = dtype_block_size(type);
  if (s.n_embd % block != 0) {
    throw Error(fmt::format("--embd {} is not a multiple of {}'s block size {}", s.n_embd, dtype_name(type), block));
  }
  if (s.n_ff % block != 0) {
    throw Error(fmt::format("--ff {} is not a multiple of {}'s block size {}", s.n_ff, dtype_name(type), block));
  }
}

SynthResult synthesize_model(const SynthOptions& options, const std::filesystem::path& out) {
  SynthShape shape = options.shape;
  validate_synth_request(shape, options.type);
  std::error_code ec;
  if (!options.force && std::filesystem::exists(out, ec)) {
    throw Error(fmt::format("{} exists (use --force to overwrite it)", out.string()));
  }

  gguf::GgufWriter w;
  const std::string a = shape.arch;
  const std::string type_name(dtype_name(options.type));
  SynthResult result;
  result.name = fmt::format("hearth synthetic {} {}", shape.name, type_name);
  w.set_string("general.architecture", a);
  w.set_string("general.name", result.name);
  w.set_u32("general.file_type", file_type_of(options.type));
  w.set_u32("general.quantization_version", 2);
  w.set_u64("hearth.synth.seed", options.seed);

  // A copied tokenizer decides the vocabulary size, so it comes before the hyperparameters.
  if (!options.tokenizer_from.empty()) {
    shape.n_vocab = copy_tokenizer(w, options.tokenizer_from);
  } else if (shape.n_vocab < kMinGeneratedVocab) {
    throw Error(fmt::format("--vocab {} is too small for the generated byte-level vocabulary (at least {})",
                            shape.n_vocab, kMinGeneratedVocab));
  }

  const ModelConfig config = synth_config(shape);  // what the file will say, for the tensor map
  w.set_u32(a + ".context_length", static_cast<uint32_t>(shape.n_ctx_train));
  w.set_u32(a + ".embedding_length", static_cast<uint32_t>(shape.n_embd));
  w.set_u32(a + ".block_count", static_cast<uint32_t>(shape.n_layer));
  w.set_u32(a + ".feed_forward_length", static_cast<uint32_t>(shape.n_ff));
  w.set_u32(a + ".attention.head_count", static_cast<uint32_t>(shape.n_head));
  w.set_u32(a + ".attention.head_count_kv", static_cast<uint32_t>(shape.n_head_kv));
  w.set_f32(a + ".attention.layer_norm_rms_epsilon", shape.norm_eps);
  w.set_f32(a + ".rope.freq_base", shape.rope_freq_base);
  w.set_u32(a + ".rope.dimension_count", static_cast<uint32_t>(config.n_rot));
  w.set_u32(a + ".vocab_size", static_cast<uint32_t>(shape.n_vocab));

  if (options.tokenizer_from.empty()) write_generated_tokenizer(w, shape);

  const int n_threads = options.n_threads > 0 ? options.n_threads : ThreadPool::hardware_threads();
  Generator gen(n_threads, options.seed);  // outlives `w`'s callbacks, which run inside w.write
  gen.progress = &options.progress;
  const DType t = options.type;

  // Each tensor's data is a row stream: [rows, row_len] of `type`, every value from `fill`;
  // rows == 0 declares a vector [row_len].
  const auto add = [&](const std::string& name, DType type, int64_t row_len, int64_t rows, Fill fill) {
    const std::string n = name;
    Generator* g = &gen;
    if (rows == 0) {
      rows = 1;
      w.add_tensor(name, type, {row_len},
                   [g, n, type, row_len, fill](gguf::TensorSink& sink) { g->stream(sink, n, type, 1, row_len, fill); });
    } else {
      w.add_tensor(name, type, {row_len, rows}, [g, n, type, row_len, rows, fill](gguf::TensorSink& sink) {
        g->stream(sink, n, type, rows, row_len, fill);
      });
    }
    gen.total_bytes += dtype_row_bytes(type, row_len) * static_cast<uint64_t>(rows);
  };
  // The tensors of the tensor map, in the order llama.cpp's converters write them: the
  // embedding, every layer, then the head. Norms are ones; norms and biases F32.
  const auto add_desc = [&](const TensorDesc& d) {
    add(d.name, d.f32 ? DType::F32 : t, d.ne[0], d.n_dims == 1 ? 0 : d.ne[1], d.norm ? Fill::Ones : Fill::Normal);
  };
  add_desc(global_tensor(config, GlobalTensor::TokenEmbd));
  for (int32_t il = 0; il < config.n_layer; ++il) {
    for (const TensorDesc& d : layer_tensors(config, il)) add_desc(d);
  }
  add_desc(global_tensor(config, GlobalTensor::OutputNorm));
  if (!config.tied_output) add_desc(global_tensor(config, GlobalTensor::Output));

  w.write(out);
  result.shape = shape;
  result.n_params = synth_param_count(shape);
  result.file_bytes = w.file_size();
  result.n_tensors = w.tensor_count();
  return result;
}

}  // namespace hearth::engine
