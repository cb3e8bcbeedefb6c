// A context-free grammar over bytes, parsed from GBNF (the grammar notation of llama.cpp's
// `grammar` field): the form the matcher (engine/grammar/matcher.h) runs.
//
// GBNF accepted here:
//   rule-name ::= alternative | alternative ...     (a rule runs until the next `name ::=`)
//   "literal" with \n \r \t \\ \" \' \[ \] \- \xHH \uHHHH \UHHHHHHHH escapes
//   [a-z0-9_] [^"\\] character classes (ranges, negation, the same escapes); . any character
//   ( group ), rule references, postfix * + ? {m} {m,} {m,n}; # comments to the end of a line
// Characters are Unicode code points; they are lowered to their UTF-8 bytes here (a class
// becomes alternatives of byte-range sequences), so the matcher only ever sees bytes and a
// token that ends inside a character is handled like any other prefix.
//
// The rule `root` is where matching starts. Left recursion (a rule that can reach itself
// without consuming a byte) is refused: the matcher would loop.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace hearth::engine::grammar {

// A grammar text that cannot be used (syntax, an undefined rule, left recursion, a limit), with
// the line and column where that was found. A user error: the server answers it with a 400.
class GrammarError : public Error {
 public:
  using Error::Error;
};

// Limits a grammar from a request must stay within.
inline constexpr size_t kMaxGrammarBytes = 256 * 1024;   // GBNF text
inline constexpr size_t kMaxGrammarElements = 1 << 20;  // elements after lowering and repetition
inline constexpr uint32_t kMaxRepetition = 10000;        // m and n of {m,n}

// One element of an alternative.
struct Element {
  enum Kind : uint8_t {
    kBytes,  // one byte from byte_sets[value]
    kRule,   // rule `value`
    kEnd,    // end of an alternative of rule `value`
  };
  Kind kind;
  uint32_t value;
};

// 256 bits: which bytes a kBytes element accepts.
struct ByteSet {
  std::array<uint64_t, 4> bits{};
  bool test(uint8_t b) const { return (bits[b >> 6] >> (b & 63)) & 1; }
  void set(uint8_t b) { bits[b >> 6] |= uint64_t{1} << (b & 63); }
  void set_range(uint8_t lo, uint8_t hi) {
    for (unsigned b = lo; b <= hi; ++b) set(static_cast<uint8_t>(b));
  }
  friend bool operator==(const ByteSet&, const ByteSet&) = default;
};

// Every alternative of every rule, as runs of `elements` each ended by a kEnd. A *position* is an
// index into `elements`: the next thing to match.
struct Grammar {
  std::vector<Element> elements;
  std::vector<ByteSet> byte_sets;
  std::vector<std::vector<uint32_t>> alternatives;  // per rule: the position each alternative starts at
  std::vector<std::string> rule_names;              // generated rules are named after their origin
  uint32_t root = 0;

  size_t n_rules() const { return alternatives.size(); }
};

// Parses and lowers GBNF text. Throws GrammarError (with line:column) for a syntax error, a
// reference to an undefined rule, a missing `root`, left recursion, or a limit exceeded.
Grammar parse_gbnf(std::string_view text);

// `text` as a GBNF string literal (quoted, with escapes): for code that writes grammars.
std::string gbnf_literal(std::string_view text);

}  // namespace hearth::engine::grammar
