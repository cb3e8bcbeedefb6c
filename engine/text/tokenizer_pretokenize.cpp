#include "engine/text/tokenizer_pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <fmt/format.h>

#include "core/error.h"
#include "engine/text/unicode_text.h"

namespace hearth::engine {
namespace {

// The regexes, as llama.cpp's llama-vocab.cpp lists them per pre-tokenizer type. Where the
// tokenizer.json original uses (?i:...) llama.cpp writes the contractions out case by case;
// the same is done here. Non-ASCII characters are written as \x{...}.
constexpr std::string_view kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr std::string_view kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kDeepseekLetters =
    R"(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF})"
    R"(\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1})"
    R"(\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5})"
    R"(\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A})"
    R"(\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B})"
    R"(\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC})"
    R"(\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107})"
    R"(\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134})"
    R"(\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4})"
    R"(\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787})"
    R"(\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A})"
    R"(\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2})"
    R"(\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)";
constexpr std::string_view kDeepseekPunct =
    R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)";
constexpr std::string_view kDeepseekCjk = R"([\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";

PreTokenizerSpec spec(std::initializer_list<std::string_view> regexes, bool ignore_merges = false,
                      std::optional<bool> add_bos = std::nullopt) {
  PreTokenizerSpec s;
  for (std::string_view r : regexes) s.regexes.emplace_back(r);
  s.ignore_merges = ignore_merges;
  s.add_bos = add_bos;
  return s;
}

bool any_of(std::string_view name, std::initializer_list<std::string_view> names) {
  for (std::string_view n : names) {
    if (name == n) return true;
  }
  return false;
}

// llama.cpp's White_Space set (unicode_set_whitespace), as the body of a character class.
constexpr std::string_view kWhitespaceClassBody =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Replaces \s and \S by explicit classes of kWhitespaceClassBody (inside a class, \s becomes
// the class body itself; \S inside a class is not used by any pre-tokenizer and refused).
std::string rewrite_whitespace_escapes(std::string_view regex) {
  std::string out;
  out.reserve(regex.size() + 64);
  bool in_class = false;
  size_t class_start = 0;  // index in `regex` just after '[' or '[^'
  for (size_t i = 0; i < regex.size(); ++i) {
    const char c = regex[i];
    if (c == '\\' && i + 1 < regex.size()) {
      const char e = regex[i + 1];
      ++i;
      if (e == 's') {
        out += in_class ? std::string(kWhitespaceClassBody) : fmt::format("[{}]", kWhitespaceClassBody);
      } else if (e == 'S') {
        if (in_class) throw Error(fmt::format("pre-tokenizer regex '{}': \\S inside a class is not supported", regex));
        out += fmt::format("[^{}]", kWhitespaceClassBody);
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      class_start = i + 1;
      if (class_start < regex.size() && regex[class_start] == '^') ++class_start;
    } else if (in_class && c == ']' && i != class_start) {  // a ']' first in a class is literal
      in_class = false;
    }
    out += c;
  }
  return out;
}

}  // namespace

std::optional<PreTokenizerSpec> find_pre_tokenizer(std::string_view name) {
  if (name == "default") {
    return spec({R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"});
  }
  if (any_of(name, {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"})) {
    return spec({kLlama3}, /*ignore_merges=*/true, /*add_bos=*/true);
  }
  if (any_of(name, {"dbrx", "smaug-bpe"})) return spec({kLlama3});
  if (name == "deepseek-llm") {
    return spec({"[\\r\\n]", kDeepseekLetters, kDeepseekPunct, R"(\s+$)", kDeepseekCjk, R"(\p{N}+)"});
  }
  if (any_of(name, {"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan"})) return spec({kQwen2});
  if (any_of(name, {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"})) {
    return spec({R"(\p{N})", kGpt2});
  }
  // "gpt2" is not a name llama.cpp writes (it writes "gpt-2"); accepted as the obvious alias.
  if (any_of(name, {"gpt-2", "gpt2", "phi-2", "gigachat", "mpt", "olmo", "jais", "trillion", "granite-docling",
                    "exaone4", "a.x-4.0", "mellum"})) {
    return spec({kGpt2});
  }
  return std::nullopt;
}

struct RegexSplitter::Compiled {
  std::string source;
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

RegexSplitter::RegexSplitter(const std::vector<std::string>& regexes) {
  for (const std::string& regex : regexes) {
    auto c = std::make_unique<Compiled>();
    c->source = regex;
    const std::string pattern = rewrite_whitespace_escapes(regex);
    int error = 0;
    PCRE2_SIZE offset = 0;
    c->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                            PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &error, &offset, nullptr);
    if (c->code == nullptr) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      throw Error(fmt::format("pre-tokenizer regex '{}' does not compile at offset {}: {}", regex, offset,
                              reinterpret_cast<const char*>(message.data())));
    }
    // JIT is an optimization only: without it (or where it fails) the interpreter runs.
    (void)pcre2_jit_compile(c->code, PCRE2_JIT_COMPLETE);
    compiled_.push_back(std::move(c));
  }
}

RegexSplitter::RegexSplitter(RegexSplitter&&) noexcept = default;
RegexSplitter& RegexSplitter::operator=(RegexSplitter&&) noexcept = default;
RegexSplitter::~RegexSplitter() = default;

namespace {

// llama.cpp's White_Space code points above ASCII.
bool is_non_ascii_whitespace(uint32_t cpt) {
  return cpt == 0x85 || cpt == 0xA0 || cpt == 0x1680 || (cpt >= 0x2000 && cpt <= 0x200A) || cpt == 0x2028 ||
         cpt == 0x2029 || cpt == 0x202F || cpt == 0x205F || cpt == 0x3000;
}

}  // namespace

std::vector<std::pair<size_t, size_t>> RegexSplitter::split(std::string_view text) const {
  // What llama.cpp's regexes see: std::regex cannot match non-ASCII whitespace, so llama.cpp
  // replaces it by U+000B first (a literal range such as deepseek-llm's U+3000-U+3002 then
  // does not match U+3000). Surrogates, which llama.cpp's lenient decoding lets through and
  // PCRE2 refuses, are shown as U+E000, another "other" character. The pieces found in that
  // view are mapped back to offsets in `text`.
  const auto substituted = [](uint32_t cpt) {
    return is_non_ascii_whitespace(cpt) || (cpt >= 0xD800 && cpt <= 0xDFFF);
  };
  bool any = false;
  for (size_t pos = 0; pos < text.size() && !any;) any = substituted(unicode::decode_lenient(text, pos));
  if (!any) return split_view(text);

  std::string view;
  std::vector<size_t> view_to_text;  // per byte of `view`: where its character starts in `text`
  view.reserve(text.size());
  view_to_text.reserve(text.size() + 1);
  for (size_t pos = 0; pos < text.size();) {
    const size_t start = pos;
    const uint32_t cpt = unicode::decode_lenient(text, pos);
    if (is_non_ascii_whitespace(cpt)) {
      view += '\v';
    } else if (substituted(cpt)) {
      unicode::append_utf8(view, 0xE000);
    } else {
      view.append(text.substr(start, pos - start));
    }
    view_to_text.resize(view.size(), start);
  }
  view_to_text.push_back(text.size());
  auto pieces = split_view(view);
  for (auto& [begin, end] : pieces) {
    begin = view_to_text[begin];
    end = view_to_text[end];
  }
  return pieces;
}

std::vector<std::pair<size_t, size_t>> RegexSplitter::split_view(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> pieces;
  if (text.empty()) return pieces;
  pieces.emplace_back(0, text.size());
  std::vector<std::pair<size_t, size_t>> next;
  for (const auto& compiled : compiled_) {
    using MatchData = std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)>;
    MatchData md(pcre2_match_data_create_from_pattern(compiled->code, nullptr), &pcre2_match_data_free);
    if (md == nullptr) throw Error("pre-tokenizer: out of memory for PCRE2 match data");
    next.clear();
    next.reserve(pieces.size() * 2);
    for (const auto& [begin, end] : pieces) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + begin);
      const size_t length = end - begin;
      size_t last = 0;   // end of what has been emitted, relative to the piece
      size_t start = 0;  // where the next search starts
      while (start <= length) {
        int rc = pcre2_match(compiled->code, subject, length, start, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
          // Long runs can exhaust the JIT's small stack; the interpreter keeps its own on the heap.
          rc = pcre2_match(compiled->code, subject, length, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.get(),
                           nullptr);
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          std::array<PCRE2_UCHAR, 256> message{};
          pcre2_get_error_message(rc, message.data(), message.size());
          throw Error(fmt::format("pre-tokenizer regex '{}' failed on a {}-byte piece: {}", compiled->source, length,
                                  reinterpret_cast<const char*>(message.data())));
        }
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md.get());
        const size_t match_begin = ovector[0];
        const size_t match_end = ovector[1];
        if (match_begin > last) next.emplace_back(begin + last, begin + match_begin);
        last = match_begin;
        if (match_end == match_begin) {
          // An empty match makes no piece; step over one character and search again.
          if (match_begin >= length) break;
          start = match_begin + unicode::sequence_length_from_lead(static_cast<uint8_t>(subject[match_begin]));
          continue;
        }
        next.emplace_back(begin + match_begin, begin + match_end);
        last = start = match_end;
      }
      if (last < length) next.emplace_back(begin + last, end);
    }
    pieces.swap(next);
  }
  return pieces;
}

}  // namespace hearth::engine
