// Tokenizer: see tokenizer.h. The behaviour follows llama.cpp's llama-vocab.cpp step by step
// (special-token partition, BPE merge order, SentencePiece bigram order, byte fallback,
// end-of-generation detection), because the contract is "the same ids as llama.cpp".
#include "engine/text/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <string>
#include <type_traits>
#include <variant>
#include <optional>
#include <queue>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "engine/text/tokenizer_pretokenize.h"
#include "engine/text/unicode_text.h"

namespace hearth::engine {
namespace {

// llama.cpp's token attributes: the file's token type, plus bits added while loading (an
// end-of-generation text forces Control, strip flags for some models).
enum Attr : uint32_t {
  kAttrUnknown = 1u << 0,
  kAttrUnused = 1u << 1,
  kAttrNormal = 1u << 2,
  kAttrControl = 1u << 3,
  kAttrUserDefined = 1u << 4,
  kAttrByte = 1u << 5,
  kAttrLstrip = 1u << 7,
  kAttrRstrip = 1u << 8,
};

enum class Kind { Bpe, Spm };

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

uint32_t attr_of_type(int32_t type) {
  switch (type) {
    case 1: return kAttrNormal;
    case 2: return kAttrUnknown;
    case 3: return kAttrControl;
    case 4: return kAttrUserDefined;
    case 5: return kAttrUnused;
    case 6: return kAttrByte;
    default: return 0;  // undefined
  }
}

TokenType public_type(int32_t type) {
  return type >= 0 && type <= 6 ? static_cast<TokenType>(type) : TokenType::Undefined;
}

bool is_c_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

bool in_list(std::string_view text, std::initializer_list<std::string_view> list) {
  return std::find(list.begin(), list.end(), text) != list.end();
}

// Texts llama.cpp recognizes when a file does not name the token by id.
constexpr std::string_view kEotTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "[EOT]", "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", "<end_of_utterance>"};
constexpr std::string_view kEomTexts[] = {"<|eom_id|>"};
constexpr std::string_view kFimPreTexts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>",
    "<PRE>", "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"};
constexpr std::string_view kFimSufTexts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>",
    "<SUF>", "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"};
constexpr std::string_view kFimMidTexts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>",
    "<MID>", "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"};
constexpr std::string_view kFimPadTexts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>",
                                                                  "[PAD]"};
constexpr std::string_view kFimRepTexts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                                                  "<REPO>", "<reponame>"};
constexpr std::string_view kFimSepTexts[] = {"<|file_sep|>"};
constexpr std::string_view kEogTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", "[e~["};

// The array stored under `key`, by reference (token lists are large): a missing or
// mistyped key throws the reader's MetadataError, which names the key and both types.
const gguf::ArrayValue& array_ref(const gguf::GgufFile& file, std::string_view key) {
  const gguf::Value* value = file.find(key);
  const gguf::ArrayValue* array = value != nullptr ? value->get_if<gguf::ArrayValue>() : nullptr;
  if (array == nullptr) {
    (void)file.get<gguf::ArrayValue>(key);
    HEARTH_CHECK(false, "GgufFile::get accepted a missing or mistyped key '{}'", key);
  }
  return *array;
}

// A piece of the text being encoded: raw text still to tokenize, or an already matched token.
struct Fragment {
  Token token;  // -1: raw text [offset, offset + length)
  size_t offset;
  size_t length;
};

// A character (or stray byte) of a word being merged, linked to its neighbours; merging a pair
// grows the left symbol and unlinks the right one (its length becomes 0).
struct Symbol {
  uint32_t start;
  uint32_t length;
  int32_t prev;
  int32_t next;
};

// The word cut into UTF-8 characters, as both BPE variants start merging from.
std::vector<Symbol> split_symbols(std::string_view word) {
  std::vector<Symbol> symbols;
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = std::min(word.size() - pos, unicode::sequence_length_from_lead(static_cast<uint8_t>(word[pos])));
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(len), index - 1,
                       pos + len == word.size() ? -1 : index + 1});
    pos += len;
  }
  return symbols;
}

}  // namespace

struct Tokenizer::Impl {
  Kind kind = Kind::Bpe;
  std::string path;
  std::string model;
  std::string pre;

  // Vocabulary: texts packed in one arena (the GGUF mapping may go away).
  std::string text_arena;
  std::vector<uint32_t> text_offsets;  // n + 1 entries
  std::vector<float> scores;
  std::vector<TokenType> types;
  std::vector<uint32_t> attrs;
  std::unordered_map<std::string_view, Token> text_to_id;  // a repeated text maps to its last id

  // Byte-level BPE: merge "left right" -> rank (the first listing of a pair wins).
  std::string merge_arena;
  std::unordered_map<std::string_view, int32_t> merge_rank;
  std::optional<RegexSplitter> splitter;
  bool ignore_merges = false;

  // SentencePiece byte fallback: <0xXX> (or the byte itself) per byte, -1 when absent.
  std::array<Token, 256> byte_tokens{};

  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;
  Token bos = -1, eos = -1, eot = -1, eom = -1, unk = -1;
  std::vector<Token> eog;  // sorted

  // Special tokens matched in raw text, in llama.cpp's order: longer texts first.
  std::vector<Token> special_tokens;
  std::vector<int32_t> special_rank;  // per token: position in special_tokens, or -1
  // Byte trie over the special texts, to find which of them occur in a text at all.
  std::array<int32_t, 256> trie_root{};
  std::unordered_map<uint64_t, int32_t> trie_edges;  // (node << 8 | byte) -> node
  std::vector<Token> trie_token;                     // per node: the token ending there, or -1

  // Pieces with control tokens rendered (render_special = true), packed.
  std::string piece_arena;
  std::vector<uint32_t> piece_offsets;

  int32_t n_tokens() const { return static_cast<int32_t>(text_offsets.size()) - 1; }
  std::string_view text(Token t) const {
    return std::string_view(text_arena).substr(text_offsets[t], text_offsets[t + 1] - text_offsets[t]);
  }
  std::string_view piece(Token t) const {
    return std::string_view(piece_arena).substr(piece_offsets[t], piece_offsets[t + 1] - piece_offsets[t]);
  }
  Token lookup(std::string_view s) const {
    auto it = text_to_id.find(s);
    return it == text_to_id.end() ? -1 : it->second;
  }
  void check_token(Token t) const {
    if (t < 0 || t >= n_tokens()) {
      throw Error(fmt::format("token id {} is outside the vocabulary (0..{})", t, n_tokens() - 1));
    }
  }

  void load_vocabulary(const gguf::GgufFile& file);
  void load_special_ids(const gguf::GgufFile& file);
  void detect_end_of_generation();
  void build_special_index(const gguf::GgufFile& file);
  void build_pieces();

  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;
  void encode_bpe(std::string_view text, std::vector<Token>& out) const;
  void encode_bpe_word(std::string_view word, std::vector<Token>& out) const;
  void encode_spm(std::string_view text, std::vector<Token>& out) const;
};

// ---------------------------------------------------------------------------------------------
// Loading

void Tokenizer::Impl::load_vocabulary(const gguf::GgufFile& file) {
  constexpr std::string_view kTokens = "tokenizer.ggml.tokens";
  const gguf::ArrayValue& list = array_ref(file, kTokens);
  if (list.elem_type != gguf::ValueType::STRING) {
    throw gguf::MetadataError(fmt::format("{}: metadata key '{}' must be an array of strings, not of {}", path,
                                          kTokens, gguf::value_type_name(list.elem_type)));
  }
  if (list.count == 0) throw gguf::MetadataError(fmt::format("{}: metadata key '{}' is empty", path, kTokens));
  if (list.count > static_cast<uint64_t>(INT32_MAX)) {
    throw gguf::MetadataError(fmt::format("{}: metadata key '{}' lists {} tokens", path, kTokens, list.count));
  }
  const auto n = static_cast<size_t>(list.count);

  // Optional per-token arrays; when present they must cover every token.
  const auto optional_array = [&](std::string_view key) -> const gguf::ArrayValue* {
    if (!file.contains(key)) return nullptr;
    const gguf::ArrayValue& a = array_ref(file, key);
    if (a.count < n) {
      throw gguf::MetadataError(
          fmt::format("{}: metadata key '{}' has {} entries for {} tokens", path, key, a.count, n));
    }
    return &a;
  };
  const auto score_array = optional_array("tokenizer.ggml.scores");
  if (score_array && score_array->elem_type != gguf::ValueType::FLOAT32 &&
      score_array->elem_type != gguf::ValueType::INT32) {
    throw gguf::MetadataError(fmt::format("{}: metadata key 'tokenizer.ggml.scores' must hold float32 or int32, not {}",
                                          path, gguf::value_type_name(score_array->elem_type)));
  }
  const auto type_array = optional_array("tokenizer.ggml.token_type");
  if (type_array && type_array->elem_type != gguf::ValueType::INT32) {
    throw gguf::MetadataError(fmt::format("{}: metadata key 'tokenizer.ggml.token_type' must hold int32, not {}",
                                          path, gguf::value_type_name(type_array->elem_type)));
  }

  text_offsets.reserve(n + 1);
  scores.resize(n, 0.0f);
  types.resize(n, TokenType::Normal);
  attrs.resize(n, kAttrNormal);
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) total += list.strings[i].size();
  text_arena.reserve(total + 64);
  for (size_t i = 0; i < n; ++i) {
    text_offsets.push_back(static_cast<uint32_t>(text_arena.size()));
    std::string_view word = list.strings[i];
    if (word.empty()) {
      text_arena += fmt::format("[EMPTY_{}]", i);  // as llama.cpp names empty entries
    } else {
      text_arena += word;
    }
    if (score_array) {
      scores[i] = score_array->elem_type == gguf::ValueType::FLOAT32
                      ? score_array->at<float>(i)
                      : static_cast<float>(score_array->at<int32_t>(i));
    }
    if (type_array) {
      const int32_t type = type_array->at<int32_t>(i);
      types[i] = public_type(type);
      attrs[i] = attr_of_type(type);
    }
  }
  if (text_arena.size() > UINT32_MAX) {
    throw gguf::MetadataError(fmt::format("{}: metadata key '{}' holds more than 4 GiB of text", path, kTokens));
  }
  text_offsets.push_back(static_cast<uint32_t>(text_arena.size()));

  text_to_id.reserve(n);
  for (Token t = 0; t < n_tokens(); ++t) text_to_id.insert_or_assign(text(t), t);
}

void Tokenizer::Impl::load_special_ids(const gguf::GgufFile& file) {
  // A key overrides the model type's default when it names a token in the vocabulary; an id
  // out of range (or negative) leaves the default, as llama.cpp does.
  const auto read_id = [&](std::string_view key, Token& id) {
    if (id >= n_tokens()) id = -1;
    const gguf::Value* value = file.find(key);
    if (value == nullptr) return;
    const bool is_integer = std::visit(
        [](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          return std::is_integral_v<T> && !std::is_same_v<T, bool>;
        },
        value->storage());
    if (!is_integer) {
      throw gguf::MetadataError(fmt::format("{}: metadata key '{}' has type {}, expected an integer token id", path,
                                            key, gguf::value_type_name(value->type())));
    }
    const bool negative = std::visit(
        [](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) return v < 0;
          return false;
        },
        value->storage());
    if (negative) return;
    const uint64_t v = file.get_uint(key);
    if (v < static_cast<uint64_t>(n_tokens())) id = static_cast<Token>(v);
  };
  read_id("tokenizer.ggml.bos_token_id", bos);
  read_id("tokenizer.ggml.eos_token_id", eos);
  read_id("tokenizer.ggml.eot_token_id", eot);
  read_id("tokenizer.ggml.eom_token_id", eom);
  read_id("tokenizer.ggml.unknown_token_id", unk);

  const auto read_bool = [&](std::string_view key, bool& flag) {
    if (file.contains(key)) flag = file.get<bool>(key);
  };
  read_bool("tokenizer.ggml.add_bos_token", add_bos);
  read_bool("tokenizer.ggml.add_eos_token", add_eos);
}

void Tokenizer::Impl::detect_end_of_generation() {
  // llama.cpp walks its text -> id hash map and takes the first match for each role, so with
  // several candidates its choice follows hash order. Taking the lowest id gives the same
  // answer for the reference models (SmolLM2: <|endoftext|> over <|im_end|>) and is stable.
  // Looking the few known texts up (rather than walking the vocabulary) visits the same
  // tokens: a text repeated in the vocabulary maps to its last id in both.
  Token fim_pre = -1, fim_suf = -1, fim_mid = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
  const auto detect = [&](Token& role, std::span<const std::string_view> texts) {
    if (role != -1) return;  // named by the file
    for (std::string_view s : texts) {
      const Token t = lookup(s);
      if (t >= 0 && (role == -1 || t < role)) role = t;
    }
    if (role >= 0) attrs[role] |= kAttrControl;  // llama.cpp overrides a non-control type here
  };
  detect(eot, kEotTexts);
  detect(eom, kEomTexts);
  detect(fim_pre, kFimPreTexts);
  detect(fim_suf, kFimSufTexts);
  detect(fim_mid, kFimMidTexts);
  detect(fim_pad, kFimPadTexts);
  detect(fim_rep, kFimRepTexts);
  detect(fim_sep, kFimSepTexts);

  std::vector<Token> set;
  for (Token t : {fim_pad, fim_rep, fim_sep}) {
    if (t >= 0) set.push_back(t);
  }
  for (std::string_view s : kEogTexts) {
    if (const Token t = lookup(s); t >= 0) {
      set.push_back(t);
      attrs[t] |= kAttrControl;
    }
  }
  // gpt-oss: these structural tokens must always render.
  for (std::string_view s : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    if (const Token t = lookup(s); t >= 0) attrs[t] = kAttrUserDefined;
  }
  for (Token t : {eos, eot, eom}) {
    if (t >= 0) set.push_back(t);
  }
  std::sort(set.begin(), set.end());
  set.erase(std::unique(set.begin(), set.end()), set.end());

  const auto find_in_set = [&](std::initializer_list<std::string_view> texts) -> Token {
    for (Token t : set) {
      if (in_list(text(t), texts)) return t;
    }
    return -1;
  };
  const auto erase_from_set = [&](Token t) { set.erase(std::find(set.begin(), set.end(), t)); };
  // gpt-oss and solar-open: with <|return|>/<|call|> (or <|calls|>/<|flush|>), <|end|> only
  // ends a message, not the generation.
  const Token end = find_in_set({"<|end|>"});
  if (end >= 0 && ((find_in_set({"<|return|>"}) >= 0 && find_in_set({"<|call|>", "<|calls|>"}) >= 0) ||
                   (find_in_set({"<|call|>", "<|calls|>"}) >= 0 && find_in_set({"<|flush|>"}) >= 0))) {
    erase_from_set(end);
    attrs[end] = kAttrUserDefined;
  }
  // Gemma 4 and PLaMo 2 use </s> as an ordinary token.
  const Token s_end = find_in_set({"</s>"});
  if (s_end >= 0 && find_in_set({"<|tool_response>", "<|plamo:eos|>"}) >= 0) {
    erase_from_set(s_end);
    attrs[s_end] = kAttrNormal;
  }
  eog = std::move(set);
}

void Tokenizer::Impl::build_special_index(const gguf::GgufFile& file) {
  for (Token t = 0; t < n_tokens(); ++t) {
    if (attrs[t] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) special_tokens.push_back(t);
  }
  // Longest first; equal lengths keep id order (llama.cpp's sort leaves their order open).
  std::stable_sort(special_tokens.begin(), special_tokens.end(),
                   [&](Token a, Token b) { return text(a).size() > text(b).size(); });
  special_rank.assign(static_cast<size_t>(n_tokens()), -1);
  for (size_t i = 0; i < special_tokens.size(); ++i) special_rank[special_tokens[i]] = static_cast<int32_t>(i);

  // Phi-3 files: special tokens swallow the whitespace after them (llama.cpp sets this by name).
  std::string name(file.get_or<std::string_view>("general.name", ""));
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (Token t : special_tokens) attrs[t] |= kAttrRstrip;
    if (Token t = lookup("</s>"); t >= 0) attrs[t] |= kAttrRstrip;
    for (std::string_view s : {"<unk>", "<s>", "<|endoftext|>"}) {
      if (Token t = lookup(s); t >= 0) attrs[t] &= ~kAttrRstrip;
    }
  }

  trie_root.fill(-1);
  trie_token.assign(1, -1);  // node 0: the root, whose children live in trie_root
  for (Token t : special_tokens) {
    const std::string_view s = text(t);
    int32_t node = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const auto byte = static_cast<uint8_t>(s[i]);
      int32_t child = -1;
      if (node == 0) {
        child = trie_root[byte];
      } else if (auto it = trie_edges.find((uint64_t(node) << 8) | byte); it != trie_edges.end()) {
        child = it->second;
      }
      if (child < 0) {
        child = static_cast<int32_t>(trie_token.size());
        trie_token.push_back(-1);
        if (node == 0) {
          trie_root[byte] = child;
        } else {
          trie_edges.emplace((uint64_t(node) << 8) | byte, child);
        }
      }
      node = child;
    }
    if (trie_token[node] < 0) trie_token[node] = t;  // a repeated text: the first in order acts
  }
}

void Tokenizer::Impl::build_pieces() {
  piece_offsets.reserve(static_cast<size_t>(n_tokens()) + 1);
  piece_arena.reserve(text_arena.size());
  for (Token t = 0; t < n_tokens(); ++t) {
    piece_offsets.push_back(static_cast<uint32_t>(piece_arena.size()));
    const std::string_view s = text(t);
    const uint32_t attr = attrs[t];
    if (attr & (kAttrUnknown | kAttrControl | kAttrUserDefined)) {
      piece_arena += s;
    } else if (attr & kAttrNormal) {
      if (kind == Kind::Spm) {
        for (size_t i = 0; i < s.size();) {
          if (s.substr(i, kSpmSpace.size()) == kSpmSpace) {
            piece_arena += ' ';
            i += kSpmSpace.size();
          } else {
            piece_arena += s[i++];
          }
        }
      } else {
        // Byte-level BPE: every code point stands for one byte. A code point outside the
        // table (a malformed vocabulary) is kept as it is.
        for (size_t i = 0; i < s.size();) {
          const size_t start = i;
          const uint32_t cpt = unicode::decode_lenient(s, i);
          const int byte = unicode::byte_from_codepoint(cpt);
          if (byte >= 0) {
            piece_arena += static_cast<char>(byte);
          } else {
            piece_arena += s.substr(start, i - start);
          }
        }
      }
    } else if (attr & kAttrByte) {
      // "<0xXX>"
      if (s.size() == 6 && s.substr(0, 3) == "<0x" && s[5] == '>' && std::isxdigit(static_cast<unsigned char>(s[3])) &&
          std::isxdigit(static_cast<unsigned char>(s[4]))) {
        piece_arena += static_cast<char>(std::stoi(std::string(s.substr(3, 2)), nullptr, 16));
      }
    }
    // Undefined and unused tokens render as nothing.
  }
  piece_offsets.push_back(static_cast<uint32_t>(piece_arena.size()));
}

Tokenizer Tokenizer::from_gguf(const gguf::GgufFile& file) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.path = file.path();
  m.model = std::string(file.get<std::string_view>("tokenizer.ggml.model"));
  const std::string_view pre = file.get_or<std::string_view>("tokenizer.ggml.pre", "");

  std::optional<PreTokenizerSpec> spec;
  if (m.model == "llama") {
    m.kind = Kind::Spm;
    m.pre = pre.empty() ? "default" : std::string(pre);
    m.bos = 1;
    m.eos = 2;
    m.unk = 0;
    m.add_space_prefix = true;
    m.add_bos = true;
  } else if (m.model == "gpt2") {
    m.kind = Kind::Bpe;
    m.pre = pre.empty() ? "default" : std::string(pre);  // llama.cpp's fallback for old files
    spec = find_pre_tokenizer(m.pre);
    if (!spec) {
      throw gguf::MetadataError(fmt::format(
          "{}: metadata key 'tokenizer.ggml.pre' names the pre-tokenizer '{}', which hearth does not know "
          "(known: default, llama-bpe, qwen2, smollm, gpt-2, deepseek-llm and their aliases)",
          m.path, m.pre));
    }
    m.bos = 11;  // llama.cpp's defaults for BPE files without the keys
    m.eos = 11;
    m.ignore_merges = spec->ignore_merges;
    m.add_bos = spec->add_bos.value_or(false);
  } else {
    throw gguf::MetadataError(fmt::format(
        "{}: metadata key 'tokenizer.ggml.model' names the tokenizer model '{}', which hearth does not support "
        "(supported: gpt2, llama)",
        m.path, m.model));
  }
  if (file.contains("tokenizer.ggml.add_space_prefix")) {
    m.add_space_prefix = file.get<bool>("tokenizer.ggml.add_space_prefix");
  }

  m.load_vocabulary(file);

  if (m.kind == Kind::Bpe) {
    constexpr std::string_view kMerges = "tokenizer.ggml.merges";
    const gguf::ArrayValue& merges = array_ref(file, kMerges);
    if (merges.elem_type != gguf::ValueType::STRING) {
      throw gguf::MetadataError(fmt::format("{}: metadata key '{}' must be an array of strings, not of {}", m.path,
                                            kMerges, gguf::value_type_name(merges.elem_type)));
    }
    // A merge "a b" splits at the first space after its first byte; without one it becomes
    // the pair ("", ""), written " " here, as llama.cpp reads it.
    std::vector<std::pair<size_t, size_t>> spans;
    spans.reserve(merges.count);
    for (std::string_view merge : merges.strings) {
      const size_t start = m.merge_arena.size();
      if (merge.size() > 1 && merge.find(' ', 1) != std::string_view::npos) {
        m.merge_arena += merge;
      } else {
        m.merge_arena += ' ';
      }
      spans.emplace_back(start, m.merge_arena.size() - start);
    }
    m.merge_rank.reserve(spans.size());
    for (size_t i = 0; i < spans.size(); ++i) {
      m.merge_rank.emplace(std::string_view(m.merge_arena).substr(spans[i].first, spans[i].second),
                           static_cast<int32_t>(i));
    }
    m.splitter.emplace(spec->regexes);
  } else {
    static constexpr char kHex[] = "0123456789ABCDEF";
    for (size_t b = 0; b < 256; ++b) {
      const std::string hex = fmt::format("<0x{}{}>", kHex[b >> 4], kHex[b & 15]);
      Token t = m.lookup(hex);
      if (t < 0) t = m.lookup(std::string(1, static_cast<char>(b)));
      m.byte_tokens[b] = t;
    }
  }

  m.load_special_ids(file);
  m.detect_end_of_generation();
  m.build_special_index(file);
  m.build_pieces();
  return Tokenizer(std::move(impl));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

// ---------------------------------------------------------------------------------------------
// Encoding

// llama.cpp's tokenizer_st_partition: for each special token in turn (longest text first),
// every raw fragment is cut at each occurrence of its text, left to right. This is not the
// same as "longest match at each position" when texts overlap, so it is reproduced as is;
// a trie finds the few special tokens that occur in the text at all, so the cost does not
// grow with the thousands of special tokens some vocabularies have.
std::vector<Fragment> Tokenizer::Impl::partition(std::string_view text_in, bool parse_special) const {
  std::vector<Fragment> fragments;
  if (text_in.empty()) return fragments;
  fragments.push_back({-1, 0, text_in.size()});

  std::vector<Token> candidates;
  for (size_t i = 0; i < text_in.size(); ++i) {
    int32_t node = trie_root[static_cast<uint8_t>(text_in[i])];
    for (size_t j = i + 1; node >= 0; ++j) {
      if (trie_token[node] >= 0) candidates.push_back(trie_token[node]);
      if (j >= text_in.size()) break;
      auto it = trie_edges.find((uint64_t(node) << 8) | static_cast<uint8_t>(text_in[j]));
      node = it == trie_edges.end() ? -1 : it->second;
    }
  }
  if (candidates.empty()) return fragments;
  std::sort(candidates.begin(), candidates.end(), [&](Token a, Token b) { return special_rank[a] < special_rank[b]; });
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());

  std::vector<Fragment> next;
  for (Token special : candidates) {
    const uint32_t attr = attrs[special];
    // Control and unknown tokens only with parse_special; user-defined ones always.
    if (!parse_special && (attr & (kAttrControl | kAttrUnknown))) continue;
    const std::string_view needle = text(special);
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      size_t offset = f.offset;
      size_t length = f.length;
      while (true) {
        const size_t match = text_in.substr(0, offset + length).find(needle, offset);
        if (match == std::string_view::npos) {
          if (length > 0) next.push_back({-1, offset, length});
          break;
        }
        size_t left = match - offset;
        if (attr & kAttrLstrip) {
          while (left > 0 && is_c_space(text_in[offset + left - 1])) --left;
        }
        if (left > 0) next.push_back({-1, offset, left});
        next.push_back({special, match, needle.size()});
        const size_t right_offset = match + needle.size();
        if (right_offset >= offset + length) break;
        size_t right_begin = right_offset;
        size_t right_length = offset + length - right_offset;
        if (attr & kAttrRstrip) {
          while (right_length > 0 && is_c_space(text_in[right_begin])) {
            ++right_begin;
            --right_length;
          }
        }
        offset = right_begin;
        length = right_length;
      }
    }
    fragments.swap(next);
  }
  return fragments;
}

void Tokenizer::Impl::encode_bpe(std::string_view text_in, std::vector<Token>& out) const {
  // Decode as llama.cpp does (invalid bytes become U+FFFD) and encode again: `clean` is what
  // gets split and tokenized.
  std::string clean;
  clean.reserve(text_in.size() + 8);
  for (size_t pos = 0; pos < text_in.size();) unicode::append_utf8(clean, unicode::decode_lenient(text_in, pos));

  const auto& byte_map = unicode::byte_to_utf8_table();
  std::string word;
  for (const auto& [begin, end] : splitter->split(clean)) {
    word.clear();
    for (size_t i = begin; i < end; ++i) word += byte_map[static_cast<uint8_t>(clean[i])];
    encode_bpe_word(word, out);
  }
}

void Tokenizer::Impl::encode_bpe_word(std::string_view word, std::vector<Token>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    if (Token t = lookup(word); t >= 0) {
      out.push_back(t);
      return;
    }
  }
  std::vector<Symbol> symbols = split_symbols(word);

  struct Bigram {
    int32_t left;
    int32_t right;
    int32_t rank;
    uint32_t left_length;
    uint32_t right_length;
  };
  // Lowest rank first; among equal ranks the leftmost.
  const auto later = [](const Bigram& a, const Bigram& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(later)> queue(later);
  std::string key;
  const auto add_bigram = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    key.assign(word.substr(l.start, l.length));
    key += ' ';
    key += word.substr(r.start, r.length);
    auto it = merge_rank.find(key);
    if (it == merge_rank.end()) return;
    queue.push({left, right, it->second, l.length, r.length});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) add_bigram(i - 1, i);

  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& left = symbols[bigram.left];
    Symbol& right = symbols[bigram.right];
    // A symbol only grows to the right, so unchanged lengths mean unchanged texts.
    if (left.length == 0 || right.length == 0 || left.length != bigram.left_length ||
        right.length != bigram.right_length) {
      continue;
    }
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = bigram.left;
    add_bigram(left.prev, bigram.left);
    add_bigram(bigram.left, left.next);
  }

  for (const Symbol& s : symbols) {
    if (s.length == 0) continue;
    const std::string_view piece = word.substr(s.start, s.length);
    if (Token t = lookup(piece); t >= 0) {
      out.push_back(t);
      continue;
    }
    // Not in the vocabulary: llama.cpp looks each byte of the mapped text up on its own.
    for (char c : piece) {
      if (Token t = lookup(std::string_view(&c, 1)); t >= 0) out.push_back(t);
    }
  }
}

void Tokenizer::Impl::encode_spm(std::string_view text_in, std::vector<Token>& out) const {
  std::string text_buf;
  text_buf.reserve(text_in.size() * 3 / 2 + 4);
  for (char c : text_in) {
    if (c == ' ') {
      text_buf += kSpmSpace;
    } else {
      text_buf += c;
    }
  }
  const std::string_view s = text_buf;

  std::vector<Symbol> symbols = split_symbols(s);

  struct Bigram {
    int32_t left;
    int32_t right;
    float score;
    uint32_t size;
  };
  // Highest score first; among equal scores the leftmost.
  const auto lower = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> queue(lower);
  const auto add_bigram = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t size = symbols[left].length + symbols[right].length;
    const Token t = lookup(s.substr(symbols[left].start, size));
    if (t < 0) return;
    queue.push({left, right, scores[t], size});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) add_bigram(i - 1, i);

  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& left = symbols[bigram.left];
    Symbol& right = symbols[bigram.right];
    if (left.length == 0 || right.length == 0 || left.length + right.length != bigram.size) continue;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = bigram.left;
    add_bigram(left.prev, bigram.left);
    add_bigram(bigram.left, left.next);
  }

  for (int32_t i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
    const std::string_view piece = s.substr(symbols[i].start, symbols[i].length);
    if (Token t = lookup(piece); t >= 0) {
      out.push_back(t);
      continue;
    }
    // Byte fallback. (A vocabulary without byte tokens makes llama.cpp fail here; <unk> is
    // the least surprising answer.)
    for (char c : piece) {
      const Token b = byte_tokens[static_cast<uint8_t>(c)];
      if (b >= 0) {
        out.push_back(b);
      } else if (unk >= 0) {
        out.push_back(unk);
      }
    }
  }
}

std::vector<Token> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  const Impl& m = *impl_;
  std::vector<Token> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special && m.add_bos && m.bos >= 0) out.push_back(m.bos);

  const std::vector<Fragment> fragments = m.partition(text, parse_special);
  bool previous_special = true;  // SentencePiece: a raw fragment after a special token gets a space prefix
  std::string spm_text;
  for (const Fragment& f : fragments) {
    if (f.token >= 0) {
      out.push_back(f.token);
      previous_special = true;
      continue;
    }
    const std::string_view raw = text.substr(f.offset, f.length);
    if (m.kind == Kind::Bpe) {
      m.encode_bpe(raw, out);
    } else {
      spm_text.clear();
      if (m.add_space_prefix && previous_special) spm_text += ' ';
      spm_text += raw;
      m.encode_spm(spm_text, out);
    }
    previous_special = false;
  }

  if (add_special && m.add_eos && m.eos >= 0) out.push_back(m.eos);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding and queries

std::string Tokenizer::token_to_piece(Token token, bool render_special) const {
  impl_->check_token(token);
  if (!render_special && (impl_->attrs[token] & (kAttrControl | kAttrUnknown))) return {};
  return std::string(impl_->piece(token));
}

std::string Tokenizer::decode(std::span<const Token> tokens, bool render_special) const {
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::string piece = token_to_piece(tokens[i], render_special);
    // SentencePiece files that add a space prefix when encoding drop it from the first token.
    if (i == 0 && impl_->add_space_prefix && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    out += piece;
  }
  return out;
}

int32_t Tokenizer::vocab_size() const { return impl_->n_tokens(); }

std::string_view Tokenizer::token_text(Token token) const {
  impl_->check_token(token);
  return impl_->text(token);
}

TokenType Tokenizer::token_type(Token token) const {
  impl_->check_token(token);
  return impl_->types[token];
}

std::string_view Tokenizer::model() const { return impl_->model; }
std::string_view Tokenizer::pre_tokenizer() const { return impl_->pre; }
Token Tokenizer::bos() const { return impl_->bos; }
Token Tokenizer::eos() const { return impl_->eos; }
Token Tokenizer::eot() const { return impl_->eot; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_eos() const { return impl_->add_eos; }

bool Tokenizer::is_end_of_generation(Token token) const {
  return std::binary_search(impl_->eog.begin(), impl_->eog.end(), token);
}

const std::vector<Token>& Tokenizer::end_of_generation_tokens() const { return impl_->eog; }

Token Tokenizer::find_token(std::string_view text) const { return impl_->lookup(text); }

// ---------------------------------------------------------------------------------------------
// IncrementalDecoder

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool render_special)
    : tokenizer_(&tokenizer), render_special_(render_special) {}

std::string IncrementalDecoder::push(Token token) {
  if (first_) {
    // decode() of one token applies the first-token rule (SentencePiece's leading space).
    pending_ += tokenizer_->decode(std::span<const Token>(&token, 1), render_special_);
    first_ = false;
  } else {
    pending_ += tokenizer_->token_to_piece(token, render_special_);
  }
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    size_t length = 0;
    const auto status = unicode::decode_strict(pending_, pos, length);
    if (status == unicode::Utf8Status::Incomplete) break;  // wait for the bytes that complete it
    if (status == unicode::Utf8Status::Complete) {
      out.append(pending_, pos, length);
    } else {
      unicode::append_utf8(out, unicode::kReplacementChar);
    }
    pos += length;
  }
  pending_.erase(0, pos);
  return out;
}

std::string IncrementalDecoder::flush() {
  std::string out;
  if (!pending_.empty()) unicode::append_utf8(out, unicode::kReplacementChar);  // a truncated character
  pending_.clear();
  return out;
}

}  // namespace hearth::engine
