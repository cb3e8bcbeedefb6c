#include "engine/grammar/json_schema.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <vector>

#include "engine/grammar/grammar.h"

namespace hearth::engine::grammar {
namespace {

using json = nlohmann::ordered_json;

// The rules every compiled schema may use. `ws` is bounded (one space, or one newline and a
// little indentation) so that a model cannot pad forever between two tokens of JSON.
constexpr std::string_view kJsonRules = R"(ws ::= ( " " | "\n" [ \t]{0,16} )?
jchar ::= [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
jstring ::= "\"" jchar* "\""
jinteger ::= "-"? ( "0" | [1-9] [0-9]{0,15} )
jnumber ::= jinteger ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?
jboolean ::= "true" | "false"
jnull ::= "null"
jvalue ::= jobject | jarray | jstring | jnumber | jboolean | jnull
jmember ::= jstring ws ":" ws jvalue ws
jobject ::= "{" ws ( jmember ( "," ws jmember )* )? "}"
jarray ::= "[" ws ( jvalue ws ( "," ws jvalue ws )* )? "]"
jdate ::= [0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] )
jtime ::= ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? ( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )
jdatetime ::= jdate "T" jtime
juuid ::= [0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}
)";

// Keywords that describe and never constrain.
const std::set<std::string, std::less<>> kAnnotations = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
    "writeOnly", "$defs", "definitions", "strict", "format"};

const std::set<std::string, std::less<>> kSupported = {
    "type", "properties", "required", "additionalProperties", "enum", "const", "items", "minItems", "maxItems",
    "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum"};

std::string literal_of(const json& value) { return gbnf_literal(value.dump()); }

// Same-length digit strings lo <= hi: every digit string of that length between them.
std::string digit_range(const std::string& lo, const std::string& hi) {
  if (lo == hi) return gbnf_literal(lo);
  if (lo.size() == 1) return fmt::format("[{}-{}]", lo[0], hi[0]);
  const std::string lo_rest = lo.substr(1), hi_rest = hi.substr(1);
  if (lo[0] == hi[0]) return fmt::format("\"{}\" ( {} )", lo[0], digit_range(lo_rest, hi_rest));
  const size_t n = lo_rest.size();
  if (lo_rest == std::string(n, '0') && hi_rest == std::string(n, '9')) {
    return fmt::format("[{}-{}] [0-9]{{{}}}", lo[0], hi[0], n);
  }
  std::vector<std::string> alts;
  alts.push_back(fmt::format("\"{}\" ( {} )", lo[0], digit_range(lo_rest, std::string(n, '9'))));
  if (hi[0] - lo[0] > 1) alts.push_back(fmt::format("[{}-{}] [0-9]{{{}}}", static_cast<char>(lo[0] + 1), static_cast<char>(hi[0] - 1), n));
  alts.push_back(fmt::format("\"{}\" ( {} )", hi[0], digit_range(std::string(n, '0'), hi_rest)));
  return fmt::format("{}", fmt::join(alts, " | "));
}

constexpr int kMaxDigits = 16;

// Non-negative integers in [lo, hi] (hi absent: unbounded), without leading zeros.
std::string natural_range(int64_t lo, std::optional<int64_t> hi) {
  std::vector<std::string> alts;
  const auto len = [](int64_t v) { return static_cast<int>(std::to_string(v).size()); };
  const int lo_len = len(lo);
  const int hi_len = hi ? len(*hi) : lo_len;
  for (int l = lo_len; l <= hi_len; ++l) {
    int64_t first = l == 1 ? 0 : static_cast<int64_t>(std::pow(10.0, l - 1));
    int64_t last = static_cast<int64_t>(std::pow(10.0, l)) - 1;
    first = std::max(first, lo);
    if (hi) last = std::min(last, *hi);
    if (first > last) continue;
    alts.push_back("( " + digit_range(std::to_string(first), std::to_string(last)) + " )");
  }
  if (!hi && lo_len < kMaxDigits) alts.push_back(fmt::format("[1-9] [0-9]{{{},{}}}", lo_len, kMaxDigits - 1));
  return fmt::format("( {} )", fmt::join(alts, " | "));
}

std::string integer_range(std::optional<int64_t> lo, std::optional<int64_t> hi) {
  std::vector<std::string> alts;
  if (!lo || *lo < 0) {
    // -n for n in [max(1, -hi), -lo]
    const int64_t n_lo = hi && *hi < 0 ? -*hi : 1;
    alts.push_back(fmt::format("\"-\" {}", natural_range(n_lo, lo ? std::optional<int64_t>(-*lo) : std::nullopt)));
  }
  if (!hi || *hi >= 0) alts.push_back(natural_range(lo && *lo > 0 ? *lo : 0, hi));
  return fmt::format("( {} )", fmt::join(alts, " | "));
}

// A code point as a GBNF class member.
std::string class_char(uint32_t cp) {
  if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9')) {
    return std::string(1, static_cast<char>(cp));
  }
  return cp <= 0xFFFF ? fmt::format("\\u{:04X}", cp) : fmt::format("\\U{:08X}", cp);
}

// A regular expression (the subset in json_schema.h) as a GBNF expression over the *JSON text*
// of a string's content: a literal `"` or `\` is written escaped, and classes leave out what
// JSON would have to escape.
class PatternCompiler {
 public:
  explicit PatternCompiler(std::string_view pattern) : p_(pattern) {}

  std::string compile() {
    if (!p_.empty() && p_.front() == '^') p_.remove_prefix(1);
    if (!p_.empty() && p_.back() == '$' && (p_.size() < 2 || p_[p_.size() - 2] != '\\')) p_.remove_suffix(1);
    std::string out = alternation();
    if (pos_ != p_.size()) fail("unbalanced ')'");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw SchemaError(fmt::format("'pattern' {}: {} (supported: literals, ., classes, \\d \\w \\s, groups, |, "
                                  "* + ? {{m,n}}, ^ and $ at the ends)",
                                  json(std::string(p_)).dump(), why),
                      "pattern");
  }
  bool at_end() const { return pos_ >= p_.size(); }
  char peek() const { return at_end() ? '\0' : p_[pos_]; }

  std::string alternation() {
    std::vector<std::string> alts{sequence()};
    while (peek() == '|') {
      ++pos_;
      alts.push_back(sequence());
    }
    return alts.size() == 1 ? alts[0] : fmt::format("( {} )", fmt::join(alts, " | "));
  }

  std::string sequence() {
    std::vector<std::string> items;
    while (!at_end() && peek() != '|' && peek() != ')') {
      std::string atom = this->atom();
      items.push_back(quantified(std::move(atom)));
    }
    return items.empty() ? "\"\"" : fmt::format("( {} )", fmt::join(items, " "));
  }

  std::string quantified(std::string atom) {
    const char c = peek();
    std::string q;
    if (c == '*' || c == '+' || c == '?') {
      ++pos_;
      q = std::string(1, c);
    } else if (c == '{') {
      const size_t close = p_.find('}', pos_);
      if (close == std::string_view::npos) fail("'{' without '}'");
      q = std::string(p_.substr(pos_, close - pos_ + 1));
      for (char d : q.substr(1, q.size() - 2)) {
        if (!(d >= '0' && d <= '9') && d != ',') fail("a malformed {m,n}");
      }
      pos_ = close + 1;
    } else {
      return atom;
    }
    if (peek() == '?' || peek() == '+') ++pos_;  // lazy / possessive: the same language
    return fmt::format("( {} ){}", atom, q);
  }

  uint32_t utf8_char() {
    const auto b0 = static_cast<uint8_t>(p_[pos_]);
    const size_t n = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : 4;
    if (pos_ + n > p_.size()) fail("invalid UTF-8");
    uint32_t cp = n == 1 ? b0 : n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
    for (size_t i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<uint8_t>(p_[pos_ + i]) & 0x3Fu);
    pos_ += n;
    return cp;
  }

  static std::string literal_char(uint32_t cp) {
    std::string utf8;
    if (cp < 0x80) {
      utf8 += static_cast<char>(cp);
    } else if (cp < 0x800) {
      utf8 += static_cast<char>(0xC0 | (cp >> 6));
      utf8 += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      utf8 += static_cast<char>(0xE0 | (cp >> 12));
      utf8 += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      utf8 += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      utf8 += static_cast<char>(0xF0 | (cp >> 18));
      utf8 += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      utf8 += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      utf8 += static_cast<char>(0x80 | (cp & 0x3F));
    }
    // The JSON text of this character inside a string.
    const std::string text = json(utf8).dump();
    return gbnf_literal(text.substr(1, text.size() - 2));
  }

  // Ranges of a class escape (\d \w \s); `negated` for the capital forms.
  static bool class_escape(char c, std::vector<std::pair<uint32_t, uint32_t>>& ranges, bool& negated) {
    switch (c) {
      case 'd': case 'D': ranges.push_back({'0', '9'}); break;
      case 'w': case 'W':
        ranges.push_back({'a', 'z'});
        ranges.push_back({'A', 'Z'});
        ranges.push_back({'0', '9'});
        ranges.push_back({'_', '_'});
        break;
      case 's': case 'S': ranges.push_back({' ', ' '}); break;
      default: return false;
    }
    negated = c >= 'A' && c <= 'Z';
    return true;
  }

  uint32_t escaped_char(char c) {
    switch (c) {
      case 'n': return '\n';
      case 't': return '\t';
      case 'r': return '\r';
      case 'f': return '\f';
      case 'v': return '\v';
      case '0': return 0;
      case 'u': {
        if (pos_ + 4 > p_.size()) fail("a short \\u escape");
        const uint32_t v = static_cast<uint32_t>(std::stoul(std::string(p_.substr(pos_, 4)), nullptr, 16));
        pos_ += 4;
        return v;
      }
      default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
          fail(fmt::format("the escape '\\{}' is not supported", c));
        }
        return static_cast<uint8_t>(c);
    }
  }

  // A class of code points as GBNF: positive classes leave out what JSON escapes, negated ones
  // exclude it too.
  static std::string class_of(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated) {
    std::string out = negated ? "[^\\\"\\\\\\x00-\\x1F" : "[";
    bool any = negated;
    for (auto [lo, hi] : ranges) {
      if (!negated) {
        // Drop control characters, '"' and '\'.
        std::vector<std::pair<uint32_t, uint32_t>> parts;
        uint32_t a = std::max<uint32_t>(lo, 0x20);
        for (uint32_t cut : {uint32_t{'"'}, uint32_t{'\\'}}) {
          if (a <= cut && cut <= hi) {
            if (a < cut) parts.push_back({a, cut - 1});
            a = cut + 1;
          }
        }
        if (a <= hi) parts.push_back({a, hi});
        for (auto [x, y] : parts) {
          out += class_char(x);
          if (y != x) out += "-" + class_char(y);
          any = true;
        }
      } else {
        out += class_char(lo);
        if (hi != lo) out += "-" + class_char(hi);
      }
    }
    out += "]";
    if (!any) return "";
    return out;
  }

  std::string atom() {
    const char c = peek();
    if (c == '(') {
      if (++depth_ > 256) fail("groups nested deeper than 256");
      ++pos_;
      if (peek() == '?') {
        if (p_.substr(pos_, 2) != "?:") fail("lookaround and named groups are not supported");
        pos_ += 2;
      }
      std::string inner = alternation();
      if (peek() != ')') fail("'(' without ')'");
      ++pos_;
      --depth_;
      return inner;
    }
    if (c == '[') {
      ++pos_;
      bool negated = false;
      if (peek() == '^') {
        negated = true;
        ++pos_;
      }
      std::vector<std::pair<uint32_t, uint32_t>> ranges;
      bool first = true;
      while (true) {
        if (at_end()) fail("'[' without ']'");
        if (peek() == ']' && !first) {
          ++pos_;
          break;
        }
        first = false;
        uint32_t lo;
        if (peek() == '\\') {
          ++pos_;
          if (at_end()) fail("a trailing backslash");
          const char e = p_[pos_++];
          bool esc_negated = false;
          std::vector<std::pair<uint32_t, uint32_t>> esc;
          if (class_escape(e, esc, esc_negated)) {
            if (esc_negated) fail(fmt::format("'\\{}' inside a class is not supported", e));
            ranges.insert(ranges.end(), esc.begin(), esc.end());
            continue;
          }
          lo = escaped_char(e);
        } else {
          lo = utf8_char();
        }
        uint32_t hi = lo;
        if (peek() == '-' && pos_ + 1 < p_.size() && p_[pos_ + 1] != ']') {
          ++pos_;
          if (peek() == '\\') {
            ++pos_;
            if (at_end()) fail("a trailing backslash");
            hi = escaped_char(p_[pos_++]);
          } else {
            hi = utf8_char();
          }
          if (hi < lo) fail("a class range out of order");
        }
        ranges.push_back({lo, hi});
      }
      std::string cls = class_of(std::move(ranges), negated);
      if (cls.empty()) fail("a class with no character a JSON string can hold unescaped");
      return cls;
    }
    if (c == '.') {
      ++pos_;
      return "[^\"\\\\\\x00-\\x1F]";
    }
    if (c == '\\') {
      ++pos_;
      if (at_end()) fail("a trailing backslash");
      const char e = p_[pos_++];
      std::vector<std::pair<uint32_t, uint32_t>> ranges;
      bool negated = false;
      if (class_escape(e, ranges, negated)) return class_of(std::move(ranges), negated);
      if (e >= '1' && e <= '9') fail("backreferences are not supported");
      if (e == 'b' || e == 'B') fail("word boundaries are not supported");
      return literal_char(escaped_char(e));
    }
    if (c == '*' || c == '+' || c == '?' || c == '{') fail(fmt::format("'{}' with nothing to repeat", c));
    if (c == '^' || c == '$') fail("'^' and '$' are only supported at the ends");
    return literal_char(utf8_char());
  }

  std::string_view p_;
  size_t pos_ = 0;
  int depth_ = 0;
};

class SchemaCompiler {
 public:
  explicit SchemaCompiler(const json& root) : root_(root) {}

  std::string compile() {
    const std::string value = visit(root_, "value");
    std::string out = fmt::format("root ::= {}\n", value);
    for (const auto& [name, body] : rules_) out += fmt::format("{} ::= {}\n", name, body);
    out += kJsonRules;
    return out;
  }

 private:
  [[noreturn]] static void fail(const std::string& keyword, const std::string& why) {
    throw SchemaError(fmt::format("JSON schema: '{}' {}", keyword, why), keyword);
  }

  std::string add_rule(const std::string& hint, const std::string& body) {
    std::string name = fmt::format("s{}-{}", rules_.size(), hint);
    rules_.emplace_back(name, body);
    return name;
  }

  static std::string safe_hint(const std::string& s) {
    std::string out;
    for (char c : s) {
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) out += c;
      if (out.size() >= 24) break;
    }
    return out.empty() ? "x" : out;
  }

  const json& resolve(const std::string& ref) const {
    if (ref.empty() || ref[0] != '#') fail("$ref", fmt::format("'{}': only local references ('#/...') are supported", ref));
    try {
      const std::string pointer = ref.substr(1);
      const json& target = root_.at(json::json_pointer(pointer));
      return target;
    } catch (const json::exception&) {
      fail("$ref", fmt::format("'{}' points at nothing in the schema", ref));
    }
  }

  static std::optional<double> number_of(const json& s, const char* key) {
    const auto it = s.find(key);
    if (it == s.end()) return std::nullopt;
    if (!it->is_number()) fail(key, "must be a number");
    return it->get<double>();
  }

  static std::optional<uint32_t> count_of(const json& s, const char* key) {
    const auto it = s.find(key);
    if (it == s.end()) return std::nullopt;
    if (!it->is_number_integer() || it->get<int64_t>() < 0) fail(key, "must be a non-negative integer");
    if (it->get<int64_t>() > static_cast<int64_t>(kMaxRepetition)) fail(key, fmt::format("above {} is not supported", kMaxRepetition));
    return static_cast<uint32_t>(it->get<int64_t>());
  }

  std::string visit(const json& s, const std::string& hint) {
    if (++depth_ > 64) fail("$ref", "nests deeper than 64 schemas");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    if (s.is_boolean()) {
      if (!s.get<bool>()) fail("false", "(a schema that accepts nothing) cannot be generated");
      return "jvalue";
    }
    if (!s.is_object()) fail("schema", "must be an object or a boolean");
    for (const auto& [key, value] : s.items()) {
      if (!kSupported.contains(key) && !kAnnotations.contains(key)) {
        fail(key, "is not a supported JSON Schema keyword here");
      }
    }
    if (const auto it = s.find("$ref"); it != s.end()) {
      if (!it->is_string()) fail("$ref", "must be a string");
      const std::string ref = it->get<std::string>();
      if (auto r = refs_.find(ref); r != refs_.end()) return r->second;
      // Named before it is visited, so that a recursive schema refers to itself.
      const std::string name = fmt::format("s{}-ref-{}", rules_.size(), safe_hint(ref.substr(ref.rfind('/') + 1)));
      refs_.emplace(ref, name);
      const size_t slot = rules_.size();
      rules_.emplace_back(name, "");
      const std::string body = visit(resolve(ref), "ref");
      rules_[slot].second = body;
      return name;
    }
    if (const auto it = s.find("const"); it != s.end()) return literal_of(*it);
    if (const auto it = s.find("enum"); it != s.end()) {
      if (!it->is_array() || it->empty()) fail("enum", "must be a non-empty array");
      std::vector<std::string> alts;
      for (const json& v : *it) alts.push_back(literal_of(v));
      return add_rule(hint + "-enum", fmt::format("{}", fmt::join(alts, " | ")));
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (const auto it = s.find(key); it != s.end()) {
        if (!it->is_array() || it->empty()) fail(key, "must be a non-empty array");
        std::vector<std::string> alts;
        for (const json& branch : *it) alts.push_back(visit(merged_with_siblings(s, branch, key), hint));
        return add_rule(hint + "-any", fmt::format("{}", fmt::join(alts, " | ")));
      }
    }
    if (const auto it = s.find("allOf"); it != s.end()) {
      if (!it->is_array() || it->size() != 1) fail("allOf", "is only supported with exactly one schema");
      return visit(merged_with_siblings(s, (*it)[0], "allOf"), hint);
    }
    if (const auto it = s.find("type"); it != s.end()) {
      if (it->is_array()) {
        if (it->empty()) fail("type", "must not be an empty list");
        std::vector<std::string> alts;
        for (const json& t : *it) {
          if (!t.is_string()) fail("type", "must be a string or a list of strings");
          alts.push_back(typed(s, t.get<std::string>(), hint));
        }
        return add_rule(hint + "-types", fmt::format("{}", fmt::join(alts, " | ")));
      }
      if (!it->is_string()) fail("type", "must be a string or a list of strings");
      return typed(s, it->get<std::string>(), hint);
    }
    // No type: what the other keywords imply, else any value.
    if (s.contains("properties") || s.contains("additionalProperties") || s.contains("required")) return typed(s, "object", hint);
    if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) return typed(s, "array", hint);
    if (s.contains("minLength") || s.contains("maxLength") || s.contains("pattern")) return typed(s, "string", hint);
    if (s.contains("minimum") || s.contains("maximum") || s.contains("exclusiveMinimum") || s.contains("exclusiveMaximum")) {
      return typed(s, "number", hint);
    }
    return "jvalue";
  }

  // A branch of anyOf / oneOf / allOf with the other keywords of its parent (a parent's `type`
  // with branches that only add constraints is common).
  static json merged_with_siblings(const json& parent, const json& branch, const char* combinator) {
    if (!branch.is_object()) return branch;
    json merged = branch;
    for (const auto& [key, value] : parent.items()) {
      if (key == combinator || kAnnotations.contains(key)) continue;
      if (!merged.contains(key)) merged[key] = value;
    }
    return merged;
  }

  std::string typed(const json& s, const std::string& type, const std::string& hint) {
    if (type == "object") return object(s, hint);
    if (type == "array") return array(s, hint);
    if (type == "string") return string(s, hint);
    if (type == "integer") return integer(s, hint, false);
    if (type == "number") return integer(s, hint, true);
    if (type == "boolean") return "jboolean";
    if (type == "null") return "jnull";
    fail("type", fmt::format("'{}' is not a JSON Schema type", type));
  }

  std::string object(const json& s, const std::string& hint) {
    std::vector<std::pair<std::string, std::string>> props;  // (key, value expression)
    std::set<std::string> required;
    std::vector<std::string> required_order;
    if (const auto it = s.find("required"); it != s.end()) {
      if (!it->is_array()) fail("required", "must be an array of strings");
      for (const json& r : *it) {
        if (!r.is_string()) fail("required", "must be an array of strings");
        if (required.insert(r.get<std::string>()).second) required_order.push_back(r.get<std::string>());
      }
    }
    // In the order `properties` lists them (as OpenAI's strict output writes them), then the
    // required names it does not declare (any value).
    const auto props_it = s.find("properties");
    if (props_it != s.end() && !props_it->is_object()) fail("properties", "must be an object");
    if (props_it != s.end()) {
      for (const auto& [key, sub] : props_it->items()) props.emplace_back(key, visit(sub, safe_hint(key)));
    }
    for (const std::string& r : required_order) {
      if (props_it == s.end() || !props_it->contains(r)) props.emplace_back(r, "jvalue");
    }
    std::string extra;  // the value expression of additional properties, empty: none
    if (const auto it = s.find("additionalProperties"); it != s.end()) {
      if (it->is_boolean()) {
        extra = it->get<bool>() ? "jvalue" : "";
      } else {
        extra = visit(*it, hint + "-extra");
      }
    } else if (props_it == s.end()) {
      extra = "jvalue";
    }
    const size_t n = props.size();
    if (n == 0 && extra == "jvalue") return "jobject";
    std::vector<std::string> kv(n);
    for (size_t i = 0; i < n; ++i) {
      kv[i] = add_rule(hint + "-kv", fmt::format("{} ws \":\" ws {} ws", gbnf_literal(json(props[i].first).dump()), props[i].second));
    }
    const std::string extra_kv = extra.empty() ? "" : add_rule(hint + "-extra-kv", fmt::format("jstring ws \":\" ws {} ws", extra));
    // b[i]: members i.. after at least one was written (each with its comma); a[i]: none yet.
    std::vector<std::string> a(n + 1), b(n + 1);
    b[n] = add_rule(hint + "-rest", extra.empty() ? "\"\"" : fmt::format("( \",\" ws {} )*", extra_kv));
    a[n] = add_rule(hint + "-first", extra.empty() ? "\"\"" : fmt::format("( {} {} )?", extra_kv, b[n]));
    for (size_t k = n; k-- > 0;) {
      const bool req = required.contains(props[k].first);
      b[k] = add_rule(hint + "-rest", req ? fmt::format("\",\" ws {} {}", kv[k], b[k + 1])
                                          : fmt::format("( \",\" ws {} )? {}", kv[k], b[k + 1]));
      a[k] = add_rule(hint + "-first", req ? fmt::format("{} {}", kv[k], b[k + 1])
                                           : fmt::format("{} {} | {}", kv[k], b[k + 1], a[k + 1]));
    }
    return add_rule(hint + "-object", fmt::format("\"{{\" ws {} \"}}\"", a[0]));
  }

  std::string array(const json& s, const std::string& hint) {
    std::string item = "jvalue";
    if (const auto it = s.find("items"); it != s.end()) {
      if (it->is_array()) fail("items", "as a list (tuple validation) is not supported; use one schema");
      item = visit(*it, hint + "-item");
    }
    const uint32_t min = count_of(s, "minItems").value_or(0);
    const std::optional<uint32_t> max = count_of(s, "maxItems");
    if (max && *max < min) fail("maxItems", "is below minItems");
    const std::string more = fmt::format("\",\" ws {} ws", item);
    std::string body;
    if (max && *max == 0) {
      body = "\"[\" ws \"]\"";
    } else if (min == 0) {
      const std::string rep = max ? fmt::format("{{0,{}}}", *max - 1) : "*";
      body = fmt::format("\"[\" ws ( {} ws ( {} ){} )? \"]\"", item, more, rep);
    } else {
      const std::string rep = max ? fmt::format("{{{},{}}}", min - 1, *max - 1) : fmt::format("{{{},}}", min - 1);
      body = fmt::format("\"[\" ws {} ws ( {} ){} \"]\"", item, more, rep);
    }
    return add_rule(hint + "-array", body);
  }

  std::string string(const json& s, const std::string& hint) {
    const std::optional<uint32_t> min = count_of(s, "minLength");
    const std::optional<uint32_t> max = count_of(s, "maxLength");
    if (const auto it = s.find("pattern"); it != s.end()) {
      if (!it->is_string()) fail("pattern", "must be a string");
      if (min || max) fail(min ? "minLength" : "maxLength", "together with 'pattern' is not supported");
      return add_rule(hint + "-pattern", fmt::format("\"\\\"\" {} \"\\\"\"", PatternCompiler(it->get<std::string>()).compile()));
    }
    if (const auto it = s.find("format"); it != s.end() && it->is_string()) {
      static const std::map<std::string, std::string, std::less<>> kFormats = {
          {"date", "jdate"}, {"time", "jtime"}, {"date-time", "jdatetime"}, {"uuid", "juuid"}};
      if (const auto f = kFormats.find(it->get<std::string>()); f != kFormats.end()) {
        if (min || max) fail(min ? "minLength" : "maxLength", "together with 'format' is not supported");
        return add_rule(hint + "-format", fmt::format("\"\\\"\" {} \"\\\"\"", f->second));
      }
      // Any other format is an annotation: a plain string.
    }
    if (!min && !max) return "jstring";
    if (max && *max < min.value_or(0)) fail("maxLength", "is below minLength");
    const std::string rep = max ? fmt::format("{{{},{}}}", min.value_or(0), *max) : fmt::format("{{{},}}", *min);
    return add_rule(hint + "-string", fmt::format("\"\\\"\" jchar{} \"\\\"\"", rep));
  }

  // Integers, and numbers with bounds (written as integers in range: valid, and exact).
  std::string integer(const json& s, const std::string& hint, bool is_number) {
    std::optional<double> lo = number_of(s, "minimum");
    std::optional<double> hi = number_of(s, "maximum");
    const auto xlo_it = s.find("exclusiveMinimum");
    const auto xhi_it = s.find("exclusiveMaximum");
    if ((xlo_it != s.end() && xlo_it->is_boolean()) || (xhi_it != s.end() && xhi_it->is_boolean())) {
      fail(xlo_it != s.end() && xlo_it->is_boolean() ? "exclusiveMinimum" : "exclusiveMaximum",
           "as a boolean (draft 4) is not supported; give the bound as a number");
    }
    const std::optional<double> xlo = number_of(s, "exclusiveMinimum");
    const std::optional<double> xhi = number_of(s, "exclusiveMaximum");
    if (!lo && !hi && !xlo && !xhi) return is_number ? "jnumber" : "jinteger";
    constexpr double kLimit = 1e15;
    std::optional<int64_t> ilo, ihi;
    if (lo) ilo = static_cast<int64_t>(std::ceil(std::max(*lo, -kLimit)));
    if (xlo) ilo = std::max(ilo.value_or(INT64_MIN), static_cast<int64_t>(std::floor(std::max(*xlo, -kLimit))) + 1);
    if (hi) ihi = static_cast<int64_t>(std::floor(std::min(*hi, kLimit)));
    if (xhi) ihi = std::min(ihi.value_or(INT64_MAX), static_cast<int64_t>(std::ceil(std::min(*xhi, kLimit))) - 1);
    if (ilo && ihi && *ilo > *ihi) {
      fail(lo || xlo ? (lo ? "minimum" : "exclusiveMinimum") : "maximum", "leaves no integer in range");
    }
    return add_rule(hint + (is_number ? "-number" : "-integer"), integer_range(ilo, ihi));
  }

  const json& root_;
  std::vector<std::pair<std::string, std::string>> rules_;
  std::map<std::string, std::string> refs_;
  int depth_ = 0;
};

}  // namespace

std::string json_schema_to_gbnf(const json& schema) { return SchemaCompiler(schema).compile(); }

std::string json_schema_to_gbnf(const nlohmann::json& schema) {
  return json_schema_to_gbnf(json::parse(schema.dump()));
}

std::string json_object_gbnf() { return fmt::format("root ::= jobject\n{}", kJsonRules); }

}  // namespace hearth::engine::grammar
