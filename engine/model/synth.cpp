#include "engine/model/synth.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <future>
#include <map>
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

// ---------------------------------------------------------------------------------------------
// Weight types and llama.cpp's mixes
//
// llama-quantize's k-quant file types are mixes: a default type plus exceptions by tensor role
// and layer (llama.cpp, src/llama-quant.cpp, llama_tensor_get_type). For the tensors synth
// writes (llama / qwen2: separate q, k, v; no experts) they come to:
//
//   mix     ftype  default  attn_v                         ffn_down                    attn_output
//   Q2_K      10   Q2_K     Q4_K if n_gqa >= 4, else Q3_K  Q3_K                        Q3_K
//   Q3_K_S    11   Q3_K     -                              -                           -
//   Q3_K_M    12   Q3_K     Q5_K in layers 0-1, else Q4_K  Q5_K if i < n/16, else Q4_K Q4_K
//   Q3_K_L    13   Q3_K     Q5_K                           Q5_K                        Q5_K
//   Q4_K_S    14   Q4_K     Q5_K in layers 0-3             Q5_K if i < n/8             -
//   Q4_K_M    15   Q4_K     Q6_K if more_bits(i)           Q6_K if more_bits(i)        -
//   Q5_K_S    16   Q5_K     -                              -                           -
//   Q5_K_M    17   Q5_K     Q6_K if more_bits(i)           Q6_K if more_bits(i)        -
//
// with "-" the default type, i the layer, n the layer count, n_gqa = heads / kv-heads, and
// more_bits(i) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2 (integer division): the first and
// last eighth of the layers and every third layer between. Also:
//   - output.weight gets Q6_K in every mix (Q8_0 when its rows, n_embd, are not a multiple of
//     256); so does token_embd.weight when the head is tied to it; an untied token_embd, attn_q,
//     attn_k, ffn_gate and ffn_up get the default type;
//   - a "70B" model (llama.cpp's LLM_TYPE_70B: 80 layers, of qwen2 or of a llama with fewer KV
//     heads than heads) gets Q5_K for attn_v where the table says Q3_K or Q4_K;
//   - last, any k-quant tensor whose rows (ne[0]) are not a multiple of 256 falls back: Q2_K,
//     Q3_K -> Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0; and to F16 when the rows are not a
//     multiple of 32 either (where llama-quantize gives up on a 32-block type, synth writes F16
//     too). The single k-quant types (every matrix Q4_K, ...) fall back the same way; the single
//     32-block types (Q4_0 ... Q8_0) refuse such rows instead (validate_synth_request).
// llama.cpp's Q6_K file type needs no row of the table: every matrix is Q6_K, as synth's Q6_K.

// One role's exception in a mix: `when` picks `yes` or `no` by layer.
enum class When { Never, Always, MoreBits, FirstLayers, FirstFraction, GqaAtLeast4 };

struct RoleRule {
  When when = When::Never;
  DType yes = DType::Q4_K;
  DType no = DType::Q4_K;  // Never: the default type, whatever this says
  int param = 0;           // FirstLayers: a count; FirstFraction: the divisor of n
};

struct MixRules {
  SynthMix mix;
  const char* name;
  uint32_t file_type;
  DType base;
  RoleRule attn_v, ffn_down, attn_output;
};

constexpr RoleRule kDefault{};
constexpr RoleRule always(DType t) { return {When::Always, t, t, 0}; }

const MixRules kMixes[] = {
    {SynthMix::Q2_K, "Q2_K", 10, DType::Q2_K, {When::GqaAtLeast4, DType::Q4_K, DType::Q3_K, 0}, always(DType::Q3_K),
     always(DType::Q3_K)},
    {SynthMix::Q3_K_S, "Q3_K_S", 11, DType::Q3_K, kDefault, kDefault, kDefault},
    {SynthMix::Q3_K_M, "Q3_K_M", 12, DType::Q3_K, {When::FirstLayers, DType::Q5_K, DType::Q4_K, 2},
     {When::FirstFraction, DType::Q5_K, DType::Q4_K, 16}, always(DType::Q4_K)},
    {SynthMix::Q3_K_L, "Q3_K_L", 13, DType::Q3_K, always(DType::Q5_K), always(DType::Q5_K), always(DType::Q5_K)},
    {SynthMix::Q4_K_S, "Q4_K_S", 14, DType::Q4_K, {When::FirstLayers, DType::Q5_K, DType::Q4_K, 4},
     {When::FirstFraction, DType::Q5_K, DType::Q4_K, 8}, kDefault},
    {SynthMix::Q4_K_M, "Q4_K_M", 15, DType::Q4_K, {When::MoreBits, DType::Q6_K, DType::Q4_K, 0},
     {When::MoreBits, DType::Q6_K, DType::Q4_K, 0}, kDefault},
    {SynthMix::Q5_K_S, "Q5_K_S", 16, DType::Q5_K, kDefault, kDefault, kDefault},
    {SynthMix::Q5_K_M, "Q5_K_M", 17, DType::Q5_K, {When::MoreBits, DType::Q6_K, DType::Q5_K, 0},
     {When::MoreBits, DType::Q6_K, DType::Q5_K, 0}, kDefault},
};

const MixRules& mix_rules(SynthMix mix) {
  for (const MixRules& m : kMixes) {
    if (m.mix == mix) return m;
  }
  HEARTH_CHECK(false, "no rules for mix {}", static_cast<int>(mix));
  return kMixes[0];
}

bool more_bits(int32_t i, int32_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

DType apply_rule(const RoleRule& r, DType base, int32_t layer, int32_t n_layer, int32_t n_gqa) {
  switch (r.when) {
    case When::Never: return base;
    case When::Always: return r.yes;
    case When::MoreBits: return more_bits(layer, n_layer) ? r.yes : r.no;
    case When::FirstLayers: return layer < r.param ? r.yes : r.no;
    case When::FirstFraction: return layer < n_layer / r.param ? r.yes : r.no;
    case When::GqaAtLeast4: return n_gqa >= 4 ? r.yes : r.no;
  }
  return base;
}

bool is_k_quant(DType t) {
  return t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K;
}

// llama-quantize's fallback for rows that do not fill the blocks of `t`: a k-quant's 32-block
// twin, and F16 when that does not fit either (llama-quantize refuses a 32-block type, such as a
// mix's Q8_0 head, whose rows do not fit; synth writes F16 there too).
DType row_fallback(DType t, int64_t row_len) {
  if (row_len % dtype_block_size(t) == 0) return t;
  DType f = DType::F16;
  switch (t) {
    case DType::Q2_K:
    case DType::Q3_K: f = DType::Q4_0; break;
    case DType::Q4_K: f = DType::Q5_0; break;
    case DType::Q5_K: f = DType::Q5_1; break;
    case DType::Q6_K: f = DType::Q8_0; break;
    default: break;
  }
  return row_len % dtype_block_size(f) == 0 ? f : DType::F16;
}

// The type of one tensor under `type`, before the row fallback.
DType mixed_type(const SynthType& type, const SynthShape& shape, const TensorDesc& d) {
  if (d.f32) return DType::F32;
  if (type.mix == SynthMix::None) return type.base;
  const MixRules& m = mix_rules(type.mix);
  const bool head = d.layer < 0 && (d.global == GlobalTensor::Output ||
                                    (d.global == GlobalTensor::TokenEmbd && shape.tied_output));
  if (head) return d.ne[0] % dtype_block_size(m.base) != 0 ? DType::Q8_0 : DType::Q6_K;
  if (d.layer < 0) return m.base;
  const int32_t n_gqa = shape.n_head_kv > 0 ? shape.n_head / shape.n_head_kv : 1;
  switch (d.role) {
    case LayerTensor::V: {
      DType t = apply_rule(m.attn_v, m.base, d.layer, shape.n_layer, n_gqa);
      const bool is_70b = shape.n_layer == 80 && (shape.arch == "qwen2" || shape.n_head != shape.n_head_kv);
      if (is_70b && (t == DType::Q3_K || t == DType::Q4_K)) t = DType::Q5_K;
      return t;
    }
    case LayerTensor::Down: return apply_rule(m.ffn_down, m.base, d.layer, shape.n_layer, n_gqa);
    case LayerTensor::AttnOutput: return apply_rule(m.attn_output, m.base, d.layer, shape.n_layer, n_gqa);
    default: return m.base;
  }
}

// llama.cpp's llama_ftype for a file whose matrices are all `type` (for a k-quant: the file type
// whose default it is, as llama-quantize --pure writes); nullopt for a type synth does not write.
std::optional<uint32_t> file_type_of(DType type) {
  switch (type) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q4_1: return 3;
    case DType::Q8_0: return 7;
    case DType::Q5_0: return 8;
    case DType::Q5_1: return 9;
    case DType::Q2_K: return 10;
    case DType::Q3_K: return 11;
    case DType::Q4_K: return 14;
    case DType::Q5_K: return 16;
    case DType::Q6_K: return 18;
    case DType::BF16: return 32;
    default: return std::nullopt;
  }
}

// Single types in listing order (Q2_K alone is reachable as a pure mix).
constexpr DType kSingleTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q3_K,
                                  DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::F16,  DType::BF16, DType::F32};

bool writable_single(DType t) {
  return t == DType::Q2_K || std::find(std::begin(kSingleTypes), std::end(kSingleTypes), t) != std::end(kSingleTypes);
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

SynthType::SynthType(DType pure) : name(dtype_name(pure)), base(pure), file_type(file_type_of(pure).value_or(0)) {}

const std::vector<SynthType>& synth_types() {
  static const std::vector<SynthType> types = [] {
    std::vector<SynthType> out(std::begin(kSingleTypes), std::end(kSingleTypes));
    for (const MixRules& m : kMixes) {
      SynthType t;
      t.name = m.name;
      t.base = m.base;
      t.mix = m.mix;
      t.file_type = m.file_type;
      out.push_back(t);
    }
    return out;
  }();
  return types;
}

std::string synth_type_names() {
  std::string out;
  for (const SynthType& t : synth_types()) out += (out.empty() ? "" : ", ") + t.name;
  return out;
}

SynthType synth_type(std::string_view name, bool pure) {
  const auto same = [name](std::string_view known) {
    return known.size() == name.size() && std::equal(known.begin(), known.end(), name.begin(), [](char a, char b) {
             return std::toupper(static_cast<unsigned char>(a)) == std::toupper(static_cast<unsigned char>(b));
           });
  };
  for (const SynthType& t : synth_types()) {
    if (!same(t.name)) continue;
    if (!pure || t.mix == SynthMix::None) return t;
    SynthType p(t.base);
    p.name = t.name + " pure";
    p.file_type = t.file_type;
    return p;
  }
  const std::optional<DType> known = dtype_from_name(name);
  if (known) {
    throw Error(fmt::format("type {} cannot be quantized by synth (it writes: {})", dtype_name(*known),
                            synth_type_names()));
  }
  throw Error(fmt::format("unknown type '{}' (synth writes: {})", name, synth_type_names()));
}

std::vector<SynthTensorType> synth_tensor_types(const SynthShape& shape, const SynthType& type) {
  const ModelConfig config = synth_config(shape);
  std::vector<SynthTensorType> out;
  const auto add = [&](const TensorDesc& d) {
    out.push_back({d.name, row_fallback(mixed_type(type, shape, d), d.ne[0])});
  };
  add(global_tensor(config, GlobalTensor::TokenEmbd));
  for (int32_t il = 0; il < config.n_layer; ++il) {
    for (const TensorDesc& d : layer_tensors(config, il)) add(d);
  }
  add(global_tensor(config, GlobalTensor::OutputNorm));
  if (!config.tied_output) add(global_tensor(config, GlobalTensor::Output));
  return out;
}

void validate_synth_request(const SynthShape& s, const SynthType& type) {
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
  const bool known = type.mix != SynthMix::None ? type.base == mix_rules(type.mix).base : writable_single(type.base);
  if (!known) {
    throw Error(fmt::format("type {} cannot be quantized by synth (it writes: {})", type.name, synth_type_names()));
  }
  if (type.mix != SynthMix::None || is_k_quant(type.base)) return;  // rows of any length fall back
  const int64_t block = dtype_block_size(type.base);
  if (s.n_embd % block != 0) {
    throw Error(fmt::format("--embd {} is not a multiple of {}'s block size {}", s.n_embd, type.name, block));
  }
  if (s.n_ff % block != 0) {
    throw Error(fmt::format("--ff {} is not a multiple of {}'s block size {}", s.n_ff, type.name, block));
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
  SynthResult result;
  result.name = fmt::format("hearth synthetic {} {}", shape.name, options.type.name);
  w.set_string("general.architecture", a);
  w.set_string("general.name", result.name);
  w.set_u32("general.file_type", options.type.file_type);
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
  std::map<std::string, DType, std::less<>> types;  // tensor name -> its type
  for (const SynthTensorType& tt : synth_tensor_types(shape, options.type)) types.emplace(tt.name, tt.type);
  std::map<DType, std::pair<size_t, uint64_t>> per_type;  // tensors and bytes of each type

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
    const uint64_t bytes = dtype_row_bytes(type, row_len) * static_cast<uint64_t>(rows);
    gen.total_bytes += bytes;
    per_type[type].first += 1;
    per_type[type].second += bytes;
  };
  // The tensors of the tensor map, in the order llama.cpp's converters write them: the
  // embedding, every layer, then the head. Norms are ones; norms and biases F32.
  const auto add_desc = [&](const TensorDesc& d) {
    const auto it = types.find(d.name);
    HEARTH_CHECK(it != types.end(), "no type chosen for {}", d.name);
    add(d.name, it->second, d.ne[0], d.n_dims == 1 ? 0 : d.ne[1], d.norm ? Fill::Ones : Fill::Normal);
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
  std::vector<std::pair<DType, std::pair<size_t, uint64_t>>> by_bytes(per_type.begin(), per_type.end());
  std::stable_sort(by_bytes.begin(), by_bytes.end(),
                   [](const auto& x, const auto& y) { return x.second.second > y.second.second; });
  for (const auto& [type, counts] : by_bytes) {
    if (!result.tensor_types.empty()) result.tensor_types += ", ";
    result.tensor_types += fmt::format("{} {}", dtype_name(type), counts.first);
  }
  return result;
}

}  // namespace hearth::engine
