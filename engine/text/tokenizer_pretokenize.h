// Pre-tokenizers of byte-level BPE vocabularies: the regex lists llama.cpp applies for each
// `tokenizer.ggml.pre` value, run through PCRE2 (UTF + Unicode properties).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hearth::engine {

struct PreTokenizerSpec {
  std::vector<std::string> regexes;  // applied one after the other, see RegexSplitter
  bool ignore_merges = false;        // a piece that is itself a token is not merged from bytes
  std::optional<bool> add_bos;       // default for add_bos before the metadata key overrides it
};

// The spec for a `tokenizer.ggml.pre` value; nullopt when hearth does not know it.
std::optional<PreTokenizerSpec> find_pre_tokenizer(std::string_view name);

// Splits text with a list of regexes the way llama.cpp's unicode_regex_split does: the first
// regex cuts the whole text into pieces (every match is a piece and so is every stretch
// between matches), each following regex cuts each piece again, seeing only that piece
// (lookaheads and `$` stop at the piece's end).
//
// `\s` and `\S` are rewritten to the White_Space set llama.cpp uses, so that splitting does
// not depend on how a PCRE2 version defines \s; `$` matches only at the very end.
class RegexSplitter {
 public:
  // Throws hearth::Error when a regex does not compile (it names the regex and the offset).
  explicit RegexSplitter(const std::vector<std::string>& regexes);
  RegexSplitter(RegexSplitter&&) noexcept;
  RegexSplitter& operator=(RegexSplitter&&) noexcept;
  ~RegexSplitter();

  // Byte ranges [begin, end) of the pieces of `text`; they cover the text in order, without
  // gaps. `text` is UTF-8 as llama.cpp re-encodes it (surrogate code points may occur).
  // As in llama.cpp, the regexes see non-ASCII whitespace as U+000B. Thread-safe.
  std::vector<std::pair<size_t, size_t>> split(std::string_view text) const;

 private:
  // split() on text that is valid UTF-8 for PCRE2 and already in llama.cpp's view.
  std::vector<std::pair<size_t, size_t>> split_view(std::string_view text) const;

  struct Compiled;
  std::vector<std::unique_ptr<Compiled>> compiled_;
};

}  // namespace hearth::engine
