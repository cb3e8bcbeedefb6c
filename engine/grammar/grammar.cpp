#include "engine/grammar/grammar.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>

namespace hearth::engine::grammar {
namespace {

constexpr uint32_t kMaxCodepoint = 0x10FFFF;

struct CodepointRange {
  uint32_t lo, hi;
};

size_t utf8_encode(uint32_t cp, uint8_t out[4]) {
  if (cp < 0x80) {
    out[0] = static_cast<uint8_t>(cp);
    return 1;
  }
  if (cp < 0x800) {
    out[0] = static_cast<uint8_t>(0xC0 | (cp >> 6));
    out[1] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = static_cast<uint8_t>(0xE0 | (cp >> 12));
    out[1] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F));
    out[2] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = static_cast<uint8_t>(0xF0 | (cp >> 18));
  out[1] = static_cast<uint8_t>(0x80 | ((cp >> 12) & 0x3F));
  out[2] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F));
  out[3] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
  return 4;
}

// Splits [lo, hi] (no surrogates inside) into sequences of byte ranges whose concatenations are
// exactly the UTF-8 encodings of the code points in it: first at the boundaries where the
// encoded length changes, then wherever a continuation byte would not span its whole range.
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out) {
  if (lo > hi) return;
  for (uint32_t boundary : {0x7Fu, 0x7FFu, 0xFFFFu}) {
    if (lo <= boundary && hi > boundary) {
      utf8_sequences(lo, boundary, out);
      utf8_sequences(boundary + 1, hi, out);
      return;
    }
  }
  uint8_t a[4], b[4];
  const size_t n = utf8_encode(lo, a);
  utf8_encode(hi, b);
  for (size_t i = 1; i < n; ++i) {
    const uint32_t mask = (1u << (6 * i)) - 1;
    if ((lo & ~mask) != (hi & ~mask)) {
      if ((lo & mask) != 0) {
        utf8_sequences(lo, lo | mask, out);
        utf8_sequences((lo | mask) + 1, hi, out);
        return;
      }
      if ((hi & mask) != mask) {
        utf8_sequences(lo, (hi & ~mask) - 1, out);
        utf8_sequences(hi & ~mask, hi, out);
        return;
      }
    }
  }
  std::vector<std::pair<uint8_t, uint8_t>> seq;
  for (size_t i = 0; i < n; ++i) seq.emplace_back(a[i], b[i]);
  out.push_back(std::move(seq));
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Grammar parse() {
    if (text_.size() > kMaxGrammarBytes) {
      throw GrammarError(fmt::format("the grammar has {} bytes (at most {})", text_.size(), kMaxGrammarBytes));
    }
    skip_space();
    if (at_end()) throw GrammarError("the grammar is empty (it needs a rule 'root ::= ...')");
    while (!at_end()) {
      const size_t name_at = pos_;
      const std::string name = parse_name();
      skip_space();
      if (!consume("::=")) fail("expected '::=' after the rule name");
      const uint32_t rule = rule_id(name);
      if (defined_[rule]) fail_at(name_at, fmt::format("rule '{}' is defined twice", name));
      defined_[rule] = true;
      rules_[rule] = parse_alternatives(false);
      skip_space();
    }
    return finish();
  }

 private:
  using Sequence = std::vector<Element>;
  using Alternatives = std::vector<Sequence>;

  [[noreturn]] void fail_at(size_t at, const std::string& what) const {
    size_t line = 1, column = 1;
    for (size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw GrammarError(fmt::format("grammar line {} column {}: {}", line, column, what));
  }
  [[noreturn]] void fail(const std::string& what) const { fail_at(pos_, what); }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek(size_t ahead = 0) const { return pos_ + ahead < text_.size() ? text_[pos_ + ahead] : '\0'; }
  bool consume(std::string_view s) {
    if (text_.substr(pos_, s.size()) != s) return false;
    pos_ += s.size();
    return true;
  }
  static bool is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  }

  void skip_space() {
    while (!at_end()) {
      const char c = peek();
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos_;
      } else if (c == '#') {
        while (!at_end() && peek() != '\n') ++pos_;
      } else {
        break;
      }
    }
  }

  std::string parse_name() {
    const size_t start = pos_;
    while (!at_end() && is_name_char(peek())) ++pos_;
    if (pos_ == start) fail("expected a rule name");
    return std::string(text_.substr(start, pos_ - start));
  }

  // Whether a `name ::=` starts here (the end of the rule before it).
  bool at_rule_start() const {
    size_t p = pos_;
    while (p < text_.size() && is_name_char(text_[p])) ++p;
    if (p == pos_) return false;
    while (p < text_.size() && (text_[p] == ' ' || text_[p] == '\t' || text_[p] == '\n' || text_[p] == '\r')) ++p;
    return text_.substr(p, 3) == "::=";
  }

  uint32_t rule_id(const std::string& name) {
    if (auto it = ids_.find(name); it != ids_.end()) return it->second;
    const auto id = static_cast<uint32_t>(names_.size());
    ids_.emplace(name, id);
    names_.push_back(name);
    rules_.emplace_back();
    defined_.push_back(false);
    first_use_.push_back(pos_);
    return id;
  }

  // A rule made by the parser (a group, a repetition, a character class).
  uint32_t new_rule(const std::string& origin, Alternatives alts) {
    const auto id = static_cast<uint32_t>(names_.size());
    names_.push_back(fmt::format("{}-{}", origin, id));
    rules_.push_back(std::move(alts));
    defined_.push_back(true);
    first_use_.push_back(pos_);
    return id;
  }

  uint32_t byte_set_id(const ByteSet& set) {
    auto [it, inserted] = byte_set_ids_.emplace(set.bits, static_cast<uint32_t>(byte_sets_.size()));
    if (inserted) byte_sets_.push_back(set);
    return it->second;
  }

  Element byte_element(uint8_t lo, uint8_t hi) {
    ByteSet s;
    s.set_range(lo, hi);
    return {Element::kBytes, byte_set_id(s)};
  }

  void count_elements(size_t n) {
    n_elements_ += n;
    if (n_elements_ > kMaxGrammarElements) fail(fmt::format("the grammar grows past {} elements", kMaxGrammarElements));
  }

  Alternatives parse_alternatives(bool nested) {
    Alternatives alts;
    alts.push_back(parse_sequence(nested));
    while (true) {
      skip_space();
      if (!consume("|")) break;
      alts.push_back(parse_sequence(nested));
    }
    return alts;
  }

  Sequence parse_sequence(bool nested) {
    Sequence seq;
    while (true) {
      skip_space();
      if (at_end()) break;
      const char c = peek();
      if (c == '|' || (c == ')' && nested)) break;
      if (at_rule_start()) {
        if (nested) fail("a rule definition inside a group (missing ')'?)");
        break;
      }
      const size_t item_at = pos_;
      Sequence item = parse_primary();
      parse_postfix(item, item_at);
      count_elements(item.size());
      seq.insert(seq.end(), item.begin(), item.end());
    }
    return seq;
  }

  // Code point of an escape after the backslash (already consumed).
  uint32_t parse_escape() {
    if (at_end()) fail("a backslash at the end of the grammar");
    const char c = text_[pos_++];
    switch (c) {
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case '0': return 0;
      case '\\': case '"': case '\'': case '[': case ']': case '-': case '^': case '/': case '.': case '(': case ')':
      case '|': case '*': case '+': case '?': case '{': case '}':
        return static_cast<uint8_t>(c);
      case 'x': return parse_hex(2);
      case 'u': return parse_hex(4);
      case 'U': return parse_hex(8);
      default: fail_at(pos_ - 1, fmt::format("unknown escape '\\{}'", c));
    }
  }

  uint32_t parse_hex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      const char c = peek();
      int d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else fail(fmt::format("expected {} hex digits", digits));
      v = v * 16 + static_cast<uint32_t>(d);
      ++pos_;
    }
    if (v > kMaxCodepoint) fail(fmt::format("code point U+{:X} is beyond U+10FFFF", v));
    return v;
  }

  // One code point of the text (UTF-8), for literals and classes.
  uint32_t parse_char() {
    if (peek() == '\\') {
      ++pos_;
      return parse_escape();
    }
    const auto b0 = static_cast<uint8_t>(text_[pos_]);
    size_t n = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
    if (n == 0 || pos_ + n > text_.size()) fail("invalid UTF-8 in the grammar");
    uint32_t cp = n == 1 ? b0 : n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
    for (size_t i = 1; i < n; ++i) {
      const auto b = static_cast<uint8_t>(text_[pos_ + i]);
      if ((b & 0xC0) != 0x80) fail("invalid UTF-8 in the grammar");
      cp = (cp << 6) | (b & 0x3Fu);
    }
    pos_ += n;
    return cp;
  }

  void append_codepoint(uint32_t cp, Sequence& seq) {
    uint8_t bytes[4];
    const size_t n = utf8_encode(cp, bytes);
    for (size_t i = 0; i < n; ++i) seq.push_back(byte_element(bytes[i], bytes[i]));
  }

  // A set of code points as one element: a byte set when every one is ASCII, else a rule whose
  // alternatives are the UTF-8 byte-range sequences.
  Element class_element(std::vector<CodepointRange> ranges, bool negated) {
    std::sort(ranges.begin(), ranges.end(), [](auto& a, auto& b) { return a.lo < b.lo; });
    std::vector<CodepointRange> merged;
    for (const auto& r : ranges) {
      if (!merged.empty() && r.lo <= merged.back().hi + 1) {
        merged.back().hi = std::max(merged.back().hi, r.hi);
      } else {
        merged.push_back(r);
      }
    }
    if (negated) {
      std::vector<CodepointRange> complement;
      uint32_t next = 0;
      for (const auto& r : merged) {
        if (r.lo > next) complement.push_back({next, r.lo - 1});
        next = r.hi + 1;
      }
      if (next <= kMaxCodepoint) complement.push_back({next, kMaxCodepoint});
      merged = std::move(complement);
    }
    // Surrogates have no UTF-8 encoding.
    std::vector<CodepointRange> valid;
    for (const auto& r : merged) {
      if (r.hi < 0xD800 || r.lo > 0xDFFF) {
        valid.push_back(r);
      } else {
        if (r.lo < 0xD800) valid.push_back({r.lo, 0xD7FF});
        if (r.hi > 0xDFFF) valid.push_back({0xE000, r.hi});
      }
    }
    if (valid.empty()) fail("a character class that matches nothing");
    if (valid.back().hi < 0x80) {
      ByteSet s;
      for (const auto& r : valid) s.set_range(static_cast<uint8_t>(r.lo), static_cast<uint8_t>(r.hi));
      return {Element::kBytes, byte_set_id(s)};
    }
    std::vector<std::vector<std::pair<uint8_t, uint8_t>>> sequences;
    for (const auto& r : valid) utf8_sequences(r.lo, r.hi, sequences);
    // One byte set for all one-byte sequences, then the longer ones.
    Alternatives alts;
    ByteSet ascii;
    bool has_ascii = false;
    for (const auto& seq : sequences) {
      if (seq.size() == 1) {
        ascii.set_range(seq[0].first, seq[0].second);
        has_ascii = true;
      } else {
        Sequence s;
        for (auto [lo, hi] : seq) s.push_back(byte_element(lo, hi));
        alts.push_back(std::move(s));
      }
    }
    if (has_ascii) alts.insert(alts.begin(), Sequence{{Element::kBytes, byte_set_id(ascii)}});
    size_t n = 0;
    for (const auto& a : alts) n += a.size() + 1;
    count_elements(n);
    return {Element::kRule, new_rule("class", std::move(alts))};
  }

  Sequence parse_primary() {
    const char c = peek();
    if (c == '"') {
      ++pos_;
      Sequence seq;
      while (true) {
        if (at_end()) fail("a string literal without its closing '\"'");
        if (peek() == '"') {
          ++pos_;
          break;
        }
        append_codepoint(parse_char(), seq);
      }
      return seq;
    }
    if (c == '[') {
      ++pos_;
      const bool negated = consume("^");
      std::vector<CodepointRange> ranges;
      while (true) {
        if (at_end()) fail("a character class without its closing ']'");
        if (peek() == ']') {
          ++pos_;
          break;
        }
        const uint32_t lo = parse_char();
        uint32_t hi = lo;
        if (peek() == '-' && peek(1) != ']' && pos_ + 1 < text_.size()) {
          ++pos_;
          hi = parse_char();
          if (hi < lo) fail("a character range whose end comes before its start");
        }
        ranges.push_back({lo, hi});
      }
      if (ranges.empty() && !negated) fail("an empty character class");
      return {class_element(std::move(ranges), negated)};
    }
    if (c == '.') {
      ++pos_;
      return {class_element({}, true)};
    }
    if (c == '(') {
      if (++depth_ > kMaxNesting) fail(fmt::format("groups nested deeper than {}", kMaxNesting));
      ++pos_;
      Alternatives alts = parse_alternatives(true);
      skip_space();
      if (!consume(")")) fail("expected ')'");
      --depth_;
      if (alts.size() == 1) return std::move(alts[0]);
      return {{Element::kRule, new_rule("group", std::move(alts))}};
    }
    if (is_name_char(c)) {
      const std::string name = parse_name();
      return {{Element::kRule, rule_id(name)}};
    }
    fail(fmt::format("unexpected '{}'", c));
  }

  uint32_t parse_count() {
    const size_t start = pos_;
    uint64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      v = v * 10 + static_cast<uint64_t>(peek() - '0');
      if (v > kMaxRepetition) fail(fmt::format("a repetition count above {}", kMaxRepetition));
      ++pos_;
    }
    if (pos_ == start) fail("expected a number");
    return static_cast<uint32_t>(v);
  }

  // A rule for item*: R ::= item R | (empty).
  Element star(const Element& item) {
    const auto id = static_cast<uint32_t>(names_.size());
    new_rule("star", {{item, {Element::kRule, id}}, {}});
    return {Element::kRule, id};
  }

  void parse_postfix(Sequence& item, size_t item_at) {
    while (true) {
      const char c = peek();
      if (c != '*' && c != '+' && c != '?' && c != '{') return;
      if (item.empty()) fail_at(item_at, "a repetition of nothing");
      if (item.size() != 1) {
        // Repeat a sequence through a rule of its own.
        const Element e{Element::kRule, new_rule("seq", {item})};
        item = {e};
      }
      const Element x = item[0];
      ++pos_;
      if (c == '*') {
        item = {star(x)};
      } else if (c == '+') {
        item = {x, star(x)};
      } else if (c == '?') {
        item = {{Element::kRule, new_rule("opt", {{x}, {}})}};
      } else {
        skip_space();
        const uint32_t m = parse_count();
        skip_space();
        bool bounded = true;
        uint32_t max = m;
        if (consume(",")) {
          skip_space();
          if (peek() == '}') {
            bounded = false;
          } else {
            max = parse_count();
          }
          skip_space();
        }
        if (!consume("}")) fail("expected '}'");
        if (bounded && max < m) fail("a repetition {m,n} with n < m");
        count_elements(bounded ? max : m + 1);
        Sequence out(m, x);
        if (!bounded) {
          out.push_back(star(x));
        } else if (max > m) {
          // (x (x (x)?)?)? nested from the inside out: at most max - m more.
          Element optional{Element::kRule, new_rule("rep", {{x}, {}})};
          for (uint32_t k = 1; k < max - m; ++k) optional = {Element::kRule, new_rule("rep", {{x, optional}, {}})};
          out.push_back(optional);
        }
        item = std::move(out);
      }
    }
  }

  Grammar finish() {
    for (size_t r = 0; r < names_.size(); ++r) {
      if (!defined_[r]) fail_at(first_use_[r], fmt::format("rule '{}' is used but never defined", names_[r]));
    }
    const auto root = ids_.find("root");
    if (root == ids_.end()) throw GrammarError("the grammar has no rule 'root'");

    Grammar g;
    g.byte_sets = std::move(byte_sets_);
    g.root = root->second;
    g.rule_names = names_;
    g.alternatives.resize(rules_.size());
    for (size_t r = 0; r < rules_.size(); ++r) {
      for (const Sequence& alt : rules_[r]) {
        g.alternatives[r].push_back(static_cast<uint32_t>(g.elements.size()));
        g.elements.insert(g.elements.end(), alt.begin(), alt.end());
        g.elements.push_back({Element::kEnd, static_cast<uint32_t>(r)});
      }
    }
    check_left_recursion();
    return g;
  }

  // A rule that can reach itself before matching a byte would send the matcher's expansion
  // round forever.
  void check_left_recursion() const {
    const size_t n = rules_.size();
    std::vector<bool> nullable(n, false);
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < n; ++r) {
        if (nullable[r]) continue;
        for (const Sequence& alt : rules_[r]) {
          const bool all = std::all_of(alt.begin(), alt.end(),
                                       [&](const Element& e) { return e.kind == Element::kRule && nullable[e.value]; });
          if (all) {
            nullable[r] = true;
            changed = true;
            break;
          }
        }
      }
    }
    std::vector<std::vector<uint32_t>> starts(n);  // rules a rule can begin with
    for (size_t r = 0; r < n; ++r) {
      for (const Sequence& alt : rules_[r]) {
        for (const Element& e : alt) {
          if (e.kind != Element::kRule) break;
          starts[r].push_back(e.value);
          if (!nullable[e.value]) break;
        }
      }
    }
    std::vector<uint8_t> state(n, 0);  // 0 unvisited, 1 on the path, 2 done
    std::vector<std::pair<uint32_t, size_t>> path;
    for (uint32_t start = 0; start < n; ++start) {
      if (state[start] != 0) continue;
      path.push_back({start, 0});
      state[start] = 1;
      while (!path.empty()) {
        auto& [r, next] = path.back();
        if (next == starts[r].size()) {
          state[r] = 2;
          path.pop_back();
          continue;
        }
        const uint32_t to = starts[r][next++];
        if (state[to] == 1) {
          throw GrammarError(fmt::format("left recursion: rule '{}' can reach itself without matching a character",
                                         names_[to]));
        }
        if (state[to] == 0) {
          state[to] = 1;
          path.push_back({to, 0});
        }
      }
    }
  }

  static constexpr int kMaxNesting = 256;  // parentheses: the parser recurses into each

  std::string_view text_;
  size_t pos_ = 0;
  int depth_ = 0;
  size_t n_elements_ = 0;
  std::unordered_map<std::string, uint32_t> ids_;
  std::vector<std::string> names_;
  std::vector<Alternatives> rules_;
  std::vector<bool> defined_;
  std::vector<size_t> first_use_;
  std::vector<ByteSet> byte_sets_;
  std::map<std::array<uint64_t, 4>, uint32_t> byte_set_ids_;
};

}  // namespace

Grammar parse_gbnf(std::string_view text) { return Parser(text).parse(); }

std::string gbnf_literal(std::string_view text) {
  std::string out = "\"";
  for (char ch : text) {
    const auto c = static_cast<uint8_t>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          out += fmt::format("\\x{:02X}", c);
        } else {
          out += ch;  // UTF-8 bytes pass through: the parser reads them as code points
        }
    }
  }
  out += '"';
  return out;
}

}  // namespace hearth::engine::grammar
