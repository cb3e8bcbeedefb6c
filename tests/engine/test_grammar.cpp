// Constrained decoding: the GBNF parser, the JSON Schema compiler, and the token matcher (byte
// strings accepted or refused, token masks against a brute-force oracle, UTF-8 split across
// tokens, end tokens), and the vocabulary read from a GGUF file against the tokenizer.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/batch/batch.h"
#include "engine/format/gguf.h"
#include "engine/grammar/grammar.h"
#include "engine/grammar/json_schema.h"
#include "engine/grammar/matcher.h"
#include "engine/grammar/vocabulary.h"
#include "engine/text/tokenizer.h"
#include "tests/support/fixtures.h"

namespace hearth::engine::grammar {
namespace {

using json = nlohmann::ordered_json;  // as the server reads schemas: properties keep their order

// A vocabulary of every single byte (so any text can be matched byte by byte) plus `extra`.
std::shared_ptr<const Vocabulary> byte_vocabulary(const std::vector<std::string>& extra = {}) {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.emplace_back(1, static_cast<char>(b));
  bytes.insert(bytes.end(), extra.begin(), extra.end());
  return std::make_shared<const Vocabulary>(std::move(bytes));
}

std::shared_ptr<CompiledGrammar> compile(const std::string& gbnf, std::shared_ptr<const Vocabulary> vocab = nullptr,
                                         std::vector<Token> end = {}) {
  if (!vocab) vocab = byte_vocabulary();
  return std::make_shared<CompiledGrammar>(parse_gbnf(gbnf), vocab, std::move(end));
}

// The whole of `text` is a sentence of the grammar.
bool matches(const std::shared_ptr<CompiledGrammar>& g, const std::string& text) {
  GrammarMatcher m(g);
  return m.accept_bytes(text) && m.can_end();
}
bool matches(const std::string& gbnf, const std::string& text) { return matches(compile(gbnf), text); }

// `text` can begin a sentence.
bool is_prefix(const std::string& gbnf, const std::string& text) {
  GrammarMatcher m(compile(gbnf));
  return m.accept_bytes(text);
}

std::string error_of(const std::string& gbnf) {
  try {
    parse_gbnf(gbnf);
  } catch (const GrammarError& e) {
    return e.what();
  }
  return "";
}

TEST(Gbnf, LiteralsAlternativesAndGroups) {
  const std::string g = R"(root ::= "ab" ( "c" | "de" ) tail
tail ::= "!" | "")";
  EXPECT_TRUE(matches(g, "abc"));
  EXPECT_TRUE(matches(g, "abde!"));
  EXPECT_FALSE(matches(g, "abd"));
  EXPECT_FALSE(matches(g, "abcc"));
  EXPECT_FALSE(matches(g, "ab"));
  EXPECT_TRUE(is_prefix(g, "abd"));
}

TEST(Gbnf, Repetitions) {
  EXPECT_TRUE(matches(R"(root ::= "a"*)", ""));
  EXPECT_TRUE(matches(R"(root ::= "a"*)", "aaaa"));
  EXPECT_FALSE(matches(R"(root ::= "a"+)", ""));
  EXPECT_TRUE(matches(R"(root ::= "a"+ "b"?)", "aab"));
  EXPECT_FALSE(matches(R"(root ::= "a"+ "b"?)", "abb"));
  for (int n = 0; n <= 6; ++n) {
    const std::string s(static_cast<size_t>(n), 'x');
    EXPECT_EQ(matches(R"(root ::= "x"{2,4})", s), n >= 2 && n <= 4) << n;
    EXPECT_EQ(matches(R"(root ::= "x"{3})", s), n == 3) << n;
    EXPECT_EQ(matches(R"(root ::= "x"{2,})", s), n >= 2) << n;
  }
  EXPECT_TRUE(matches(R"(root ::= ("ab" | "c"){2})", "abc"));
  EXPECT_FALSE(matches(R"(root ::= ("ab" | "c"){2})", "ab"));
}

TEST(Gbnf, CharacterClassesAndEscapes) {
  const std::string g = R"(root ::= [a-c0-9_] [^a-z] "\x41\u00e9\n\"\\")";
  EXPECT_TRUE(matches(g, "b5Aé\n\"\\"));
  EXPECT_TRUE(matches(g, "_ÿAé\n\"\\"));  // a non-ASCII character is "not a-z"
  EXPECT_FALSE(matches(g, "bzAé\n\"\\"));
  EXPECT_FALSE(matches(g, "d5Aé\n\"\\"));
  EXPECT_TRUE(matches(R"(root ::= .)", "日"));
  EXPECT_FALSE(matches(R"(root ::= .)", "日本"));
  EXPECT_TRUE(matches(R"(root ::= [日-本]+)", "日本"));
  EXPECT_FALSE(matches(R"(root ::= [^"])", "\""));
  EXPECT_TRUE(matches(R"(root ::= [\]\-])", "-"));
}

TEST(Gbnf, CommentsAndRulesOverSeveralLines) {
  const std::string g = "# a comment\nroot ::= a\n  | b # another\na ::= \"x\"\nb ::=\n  \"y\" \"z\"\n";
  EXPECT_TRUE(matches(g, "x"));
  EXPECT_TRUE(matches(g, "yz"));
  EXPECT_FALSE(matches(g, "y"));
}

TEST(Gbnf, ErrorsSayWhatAndWhere) {
  EXPECT_NE(error_of("root ::= missing").find("'missing' is used but never defined"), std::string::npos);
  EXPECT_NE(error_of("start ::= \"a\"").find("no rule 'root'"), std::string::npos);
  EXPECT_NE(error_of("root ::= root \"a\" | \"b\"").find("left recursion"), std::string::npos);
  EXPECT_NE(error_of("root ::= x \"a\"\nx ::= \"\" | root").find("left recursion"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"a\"\n  [b").find("line 2 column"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"a\" )").find("unexpected ')'"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"a\"{3,2}").find("n < m"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"a\"\nroot ::= \"b\"").find("defined twice"), std::string::npos);
  EXPECT_NE(error_of("").find("empty"), std::string::npos);
  EXPECT_NE(error_of("root ::= " + std::string(300, '(') + "\"a\"" + std::string(300, ')')).find("nested deeper"),
            std::string::npos);
  // Right recursion is fine.
  EXPECT_EQ(error_of("root ::= \"a\" root | \"\""), "");
}

// Every token the mask allows is one the matcher accepts and vice versa (brute force over copies
// of the matcher), along random walks through the grammar.
void expect_masks_exact(const std::shared_ptr<CompiledGrammar>& g, uint64_t seed, int steps,
                        const std::string& prefix = "") {
  std::mt19937_64 rng(seed);
  GrammarMatcher m(g);
  ASSERT_TRUE(m.accept_bytes(prefix));
  TokenMask mask;
  const auto n = static_cast<Token>(g->vocabulary().size());
  for (int step = 0; step < steps && !m.finished(); ++step) {
    m.fill_mask(mask);
    std::vector<Token> allowed;  // by brute force: a copy of the matcher takes the token
    std::vector<bool> expected(static_cast<size_t>(n), false);
    for (Token t = 0; t < n; ++t) {
      GrammarMatcher copy = m;
      if (!copy.accept_token(t)) continue;
      expected[static_cast<size_t>(t)] = true;
      allowed.push_back(t);
    }
    // Where nothing at all can follow, the mask falls back to the end tokens.
    if (allowed.empty()) {
      for (Token t : g->end_tokens()) expected[static_cast<size_t>(t)] = true;
    }
    for (Token t = 0; t < n; ++t) {
      EXPECT_EQ(mask.test(t), expected[static_cast<size_t>(t)])
          << "step " << step << " token " << t << " '" << g->vocabulary().bytes(t) << "'";
    }
    if (allowed.empty()) break;
    ASSERT_TRUE(m.accept_token(allowed[rng() % allowed.size()]));
  }
}

std::shared_ptr<const Vocabulary> json_vocabulary() {
  return std::make_shared<const Vocabulary>(std::vector<std::string>{
      "", "{", "}", "\"", "\":", "\",", "\"}", "{\"", "a", "ab", "abc", "b", "1", "12", "1,", "0", ",", ":", " ",
      " \"", "\n", "\n  ", "true", "tr", "ue", "false", "null", "nul", "l", "[", "]", "[]", "{}", "\xC3", "\xA9",
      "\xC3\xA9", "é\"", "x", "\\", "\\n", "\\u", "00e9", "-", ".", "5", "e", "name", "age", "\"name", "\"age\":",
      "]]", "]]]]", "1]]]]]]]", "]]]}]]]]", "]]]]]]]]]", "<|end|>"});
}

TEST(GrammarMatcher, MasksEqualBruteForceOnJson) {
  auto vocab = json_vocabulary();
  const Token end = static_cast<Token>(vocab->size() - 1);
  auto any_object = compile(json_object_gbnf(), vocab, {end, 0});
  for (uint64_t seed = 1; seed <= 20; ++seed) expect_masks_exact(any_object, seed, 40);
  const json schema = {{"type", "object"},
                       {"properties",
                        {{"name", {{"type", "string"}, {"maxLength", 3}}},
                         {"age", {{"type", "integer"}, {"minimum", 0}, {"maximum", 120}}}}},
                       {"required", {"name"}}};
  auto typed = compile(json_schema_to_gbnf(schema), vocab, {end});
  for (uint64_t seed = 1; seed <= 20; ++seed) expect_masks_exact(typed, seed, 40);
  // Deep inside nested values, where a token's class depends on frames below the few a class
  // is computed for (the uncertain tokens, checked against the real stack).
  for (uint64_t seed = 1; seed <= 10; ++seed) expect_masks_exact(any_object, seed, 30, R"({"a": [[[{"b": [[[[)");
}

TEST(GrammarMatcher, MasksEqualBruteForceOnGbnf) {
  auto vocab = byte_vocabulary({"ab", "abab", "ba", "b\xC3", "\xA9", "c\xC3\xA9", "<end>"});
  const Token end = static_cast<Token>(vocab->size() - 1);
  auto g = compile(R"(root ::= ( "ab" | "b" [^a-c] )* "c" "é"? x
x ::= "" | [0-9]{1,3})", vocab, {end});
  for (uint64_t seed = 1; seed <= 10; ++seed) expect_masks_exact(g, seed, 12);
}

TEST(GrammarMatcher, Utf8SplitAcrossTokens) {
  auto vocab = std::make_shared<const Vocabulary>(std::vector<std::string>{"\xC3", "\xA9", "\xA8", "e", "<eos>"});
  auto g = compile(R"(root ::= "é")", vocab, {4});
  GrammarMatcher m(g);
  TokenMask mask;
  m.fill_mask(mask);
  EXPECT_TRUE(mask.test(0));   // the first byte of é
  EXPECT_FALSE(mask.test(3));  // e
  EXPECT_FALSE(mask.test(4));  // not complete: no end yet
  ASSERT_TRUE(m.accept_token(0));
  m.fill_mask(mask);
  EXPECT_TRUE(mask.test(1));
  EXPECT_FALSE(mask.test(2));  // è's second byte
  EXPECT_FALSE(m.accept_token(2));
  ASSERT_TRUE(m.accept_token(1));
  m.fill_mask(mask);
  EXPECT_EQ(mask.count(), 1u);
  EXPECT_TRUE(mask.test(4));  // complete: only the end
  EXPECT_TRUE(m.accept_token(4));
  EXPECT_TRUE(m.finished());
}

TEST(GrammarMatcher, EndTokensOnlyWhereTheGrammarMayEnd) {
  auto vocab = std::make_shared<const Vocabulary>(std::vector<std::string>{"a", "b", "<eos>", "<eot>", ""});
  auto g = compile(R"(root ::= "a"+)", vocab, {2, 3});
  GrammarMatcher m(g);
  EXPECT_FALSE(m.accept_token(2));
  EXPECT_FALSE(m.accept_token(4));  // no bytes: never text
  ASSERT_TRUE(m.accept_token(0));
  TokenMask mask;
  m.fill_mask(mask);
  EXPECT_TRUE(mask.test(0));
  EXPECT_FALSE(mask.test(1));
  EXPECT_TRUE(mask.test(2));
  EXPECT_TRUE(mask.test(3));
  // An end token's text is never matched as text, even where its bytes would fit.
  auto text = compile(R"(root ::= [<>a-z|]*)", std::make_shared<const Vocabulary>(std::vector<std::string>{"a", "<eos>"}), {1});
  GrammarMatcher t(text);
  t.fill_mask(mask);
  EXPECT_TRUE(mask.test(1));  // as the end (the grammar may end at once), and
  ASSERT_TRUE(t.accept_token(0));
  EXPECT_TRUE(t.accept_token(1));
  EXPECT_TRUE(t.finished());  // not as the text "<eos>"
}

TEST(GrammarMatcher, StateIsAFunctionOfTheTokens) {
  auto vocab = json_vocabulary();
  auto g = compile(json_object_gbnf(), vocab, {0});
  const std::vector<Token> tokens = {7, 8, 4, 18, 22, 16, 19, 9, 4, 12, 2};  // {"a": true, "ab":1}
  GrammarMatcher a(g), b(g);
  TokenMask ma, mb;
  for (Token t : tokens) {
    a.fill_mask(ma);  // masks in between (and their caches) change nothing
    ASSERT_TRUE(a.accept_token(t)) << t;
  }
  for (Token t : tokens) ASSERT_TRUE(b.accept_token(t)) << t;
  a.fill_mask(ma);
  b.fill_mask(mb);
  EXPECT_EQ(ma.words(), mb.words());
  EXPECT_TRUE(a.can_end());
}

TEST(TokenMask, ApplySetsDisallowedLogitsToMinusInfinity) {
  TokenMask mask(70);
  mask.set(3);
  mask.set(69);
  std::vector<float> logits(70, 1.0f);
  mask.apply(logits);
  for (size_t i = 0; i < logits.size(); ++i) EXPECT_EQ(std::isinf(logits[i]), i != 3 && i != 69) << i;
  std::vector<float> padded(80, 1.0f);  // an output head with rows past the vocabulary
  mask.apply(padded);
  for (size_t i = 0; i < padded.size(); ++i) EXPECT_EQ(std::isinf(padded[i]), i != 3 && i != 69) << i;
}

// ---------------------------------------------------------------------------------------------
// SlotSamplers: masking where the sampler runs, and grammar state as a function of the tokens

// Logits that make `favourite` the greedy choice by far; after it, lower ids first.
std::vector<float> favouring(size_t n_vocab, Token favourite) {
  std::vector<float> logits(n_vocab, 0.0f);
  for (size_t i = 0; i < n_vocab; ++i) logits[i] = -0.1f * static_cast<float>(i);
  logits[static_cast<size_t>(favourite)] = 50.0f;
  return logits;
}

TEST(SlotSamplersGrammar, MasksBeforeSamplingAndReplaysFromTokens) {
  // Tokens: 0 <eos>, 1 'a', 2 'b', 3 'c', 4 'x', 5 'ab', 6 prompt-only text 'P'.
  auto vocab = std::make_shared<const Vocabulary>(std::vector<std::string>{"", "a", "b", "c", "x", "ab", "P"});
  const size_t n = vocab->size();
  SamplingParams params;
  params.temperature = 0;
  params.grammar = R"(root ::= "a" "b"+ "c")";
  params.grammar_prompt_tokens = 2;
  params.grammar_end_tokens = {0};
  SlotSamplers samplers(2, vocab);
  const std::vector<Token> prompt = {1, 6};  // 'aP': not fed to the grammar (an 'a' there would be taken)
  std::vector<Token> generated;
  BatchEntry first{1, 0, prompt, true, &params};
  generated.push_back(samplers.sample({&first, 1}, favouring(n, 4), n)[0].token);  // 'x' favoured, 'a' forced
  EXPECT_EQ(generated.back(), 1);
  for (Token favourite : {4, 3}) {  // 'x' then 'c' favoured: 'b' (the best allowed), then 'c'
    BatchEntry next{1, static_cast<int32_t>(prompt.size() + generated.size() - 1), {&generated.back(), 1}, true, nullptr};
    generated.push_back(samplers.sample({&next, 1}, favouring(n, favourite), n)[0].token);
  }
  EXPECT_EQ(generated, (std::vector<Token>{1, 2, 3}));
  BatchEntry last{1, 4, {&generated.back(), 1}, true, nullptr};
  EXPECT_EQ(samplers.sample({&last, 1}, favouring(n, 2), n)[0].token, 0);  // complete: only the end

  // A replay onto fresh samplers (recovery): prompt + generated in one begin entry, same
  // parameters — the same state, so the same next token.
  SlotSamplers fresh(2, vocab);
  std::vector<Token> replay = prompt;
  replay.insert(replay.end(), generated.begin(), generated.end() - 1);  // 'aP' 'a' 'b'
  BatchEntry again{0, 0, replay, true, &params};
  EXPECT_EQ(fresh.sample({&again, 1}, favouring(n, 4), n)[0].token, 2);  // 'b' or 'c' allowed; 'x' refused
  BatchEntry again_c{0, 0, replay, true, &params};
  EXPECT_EQ(fresh.sample({&again_c, 1}, favouring(n, 3), n)[0].token, 3);

  // Without a vocabulary a grammar cannot be used; a grammar that does not parse is an Error.
  SlotSamplers none(1);
  BatchEntry e{0, 0, prompt, true, &params};
  EXPECT_THROW(none.sample({&e, 1}, favouring(n, 1), n), Error);
  SamplingParams broken = params;
  broken.grammar = "root ::= (";
  BatchEntry b{0, 0, prompt, true, &broken};
  EXPECT_THROW(fresh.sample({&b, 1}, favouring(n, 1), n), Error);
}

// ---------------------------------------------------------------------------------------------
// JSON Schema

bool schema_matches(const json& schema, const std::string& text) {
  return matches(compile(json_schema_to_gbnf(schema)), text);
}

std::string schema_error_keyword(const json& schema) {
  try {
    parse_gbnf(json_schema_to_gbnf(schema));
  } catch (const SchemaError& e) {
    return e.keyword;
  }
  return "";
}

TEST(JsonSchema, ObjectsRequiredOptionalAndAdditional) {
  const json s = {{"type", "object"},
                  {"properties", {{"a", {{"type", "integer"}}}, {"b", {{"type", "string"}}}, {"c", {{"type", "boolean"}}}}},
                  {"required", {"b"}}};
  EXPECT_TRUE(schema_matches(s, R"({"b":"x"})"));
  EXPECT_TRUE(schema_matches(s, R"({"a": 1, "b": "x", "c": true})"));  // in the order `properties` lists them
  EXPECT_FALSE(schema_matches(s, R"({"b": "x", "a": 1, "c": true})"));
  EXPECT_TRUE(schema_matches(s, "{\n  \"a\": -3,\n  \"b\": \"\"\n}"));
  // Declared order, not by name; required names that `properties` does not declare come last.
  const json z = {{"type", "object"}, {"properties", {{"zeta", {{"type", "integer"}}}, {"alpha", {{"type", "integer"}}}}},
                  {"required", {"alpha", "omega"}}};
  EXPECT_TRUE(schema_matches(z, R"({"zeta": 1, "alpha": 2, "omega": null})"));
  EXPECT_TRUE(schema_matches(z, R"({"alpha": 2, "omega": [1]})"));
  EXPECT_FALSE(schema_matches(z, R"({"alpha": 2, "zeta": 1, "omega": 0})"));
  EXPECT_TRUE(schema_matches(s, R"({"b":"x","c":false})"));
  EXPECT_FALSE(schema_matches(s, R"({"a":1})"));            // b is required
  EXPECT_FALSE(schema_matches(s, R"({"b":"x","d":1})"));    // no additional properties
  EXPECT_FALSE(schema_matches(s, R"({"b":1})"));            // b is a string
  EXPECT_FALSE(schema_matches(s, R"({"b":"x",})"));
  json extra = s;
  extra["additionalProperties"] = {{"type", "number"}};
  EXPECT_TRUE(schema_matches(extra, R"({"b":"x","d":1.5})"));
  EXPECT_FALSE(schema_matches(extra, R"({"b":"x","d":"no"})"));
  EXPECT_TRUE(schema_matches({{"type", "object"}}, R"({"any":[1,{"x":null}]})"));
}

TEST(JsonSchema, ArraysEnumsConstAnyOf) {
  const json arr = {{"type", "array"}, {"items", {{"enum", {"red", "green", 3}}}}, {"minItems", 1}, {"maxItems", 3}};
  EXPECT_FALSE(schema_matches(arr, "[]"));
  EXPECT_TRUE(schema_matches(arr, R"(["red"])"));
  EXPECT_TRUE(schema_matches(arr, R"(["red", 3, "green"])"));
  EXPECT_FALSE(schema_matches(arr, R"(["red", 3, "green", 3])"));
  EXPECT_FALSE(schema_matches(arr, R"(["blue"])"));
  EXPECT_TRUE(schema_matches({{"const", {{"k", 1}}}}, R"({"k":1})"));
  EXPECT_FALSE(schema_matches({{"const", "x"}}, R"("y")"));
  const json any = {{"anyOf", {{{"type", "null"}}, {{"type", "string"}, {"maxLength", 2}}}}};
  EXPECT_TRUE(schema_matches(any, "null"));
  EXPECT_TRUE(schema_matches(any, R"("ab")"));
  EXPECT_FALSE(schema_matches(any, R"("abc")"));
  EXPECT_TRUE(schema_matches({{"type", {"integer", "null"}}}, "null"));
  EXPECT_TRUE(schema_matches({{"type", {"integer", "null"}}}, "-12"));
}

TEST(JsonSchema, IntegerBoundsAreExact) {
  const json s = {{"type", "integer"}, {"minimum", -15}, {"maximum", 123}};
  auto g = compile(json_schema_to_gbnf(s));
  for (int v = -300; v <= 300; ++v) EXPECT_EQ(matches(g, std::to_string(v)), v >= -15 && v <= 123) << v;
  EXPECT_FALSE(matches(g, "007"));
  const json open = {{"type", "integer"}, {"exclusiveMinimum", 99}};
  auto h = compile(json_schema_to_gbnf(open));
  for (int v = 0; v <= 1200; v += 3) EXPECT_EQ(matches(h, std::to_string(v)), v > 99) << v;
  const json number = {{"type", "number"}, {"minimum", 0.5}, {"maximum", 3.5}};
  EXPECT_TRUE(schema_matches(number, "3"));
  EXPECT_FALSE(schema_matches(number, "0"));
  EXPECT_FALSE(schema_matches(number, "4"));
  EXPECT_EQ(schema_error_keyword({{"type", "integer"}, {"minimum", 5}, {"maximum", 4}}), "minimum");
}

TEST(JsonSchema, StringsLengthPatternFormat) {
  const json len = {{"type", "string"}, {"minLength", 2}, {"maxLength", 3}};
  EXPECT_FALSE(schema_matches(len, R"("a")"));
  EXPECT_TRUE(schema_matches(len, R"("ab")"));
  EXPECT_TRUE(schema_matches(len, R"("a\"b")"));  // an escape is one character
  EXPECT_FALSE(schema_matches(len, R"("abcd")"));
  const json pat = {{"type", "string"}, {"pattern", "^[A-Z]{2}-\\d{3}(x|yz)?$"}};
  EXPECT_TRUE(schema_matches(pat, R"("AB-123")"));
  EXPECT_TRUE(schema_matches(pat, R"("AB-123yz")"));
  EXPECT_FALSE(schema_matches(pat, R"("AB-12")"));
  EXPECT_FALSE(schema_matches(pat, R"("ab-123")"));
  EXPECT_TRUE(schema_matches({{"type", "string"}, {"pattern", "a\\.b"}}, R"("a.b")"));
  EXPECT_FALSE(schema_matches({{"type", "string"}, {"pattern", "a\\.b"}}, R"("axb")"));
  EXPECT_TRUE(schema_matches({{"type", "string"}, {"format", "date"}}, R"("2024-02-29")"));
  EXPECT_FALSE(schema_matches({{"type", "string"}, {"format", "date"}}, R"("2024-13-01")"));
  EXPECT_TRUE(schema_matches({{"type", "string"}, {"format", "uuid"}}, R"("123e4567-e89b-12d3-a456-426614174000")"));
  EXPECT_TRUE(schema_matches({{"type", "string"}, {"format", "date-time"}}, R"("2024-01-02T03:04:05Z")"));
}

TEST(JsonSchema, LocalReferencesAndRecursion) {
  const json tree = {{"$defs",
                      {{"node",
                        {{"type", "object"},
                         {"properties", {{"v", {{"type", "integer"}}}, {"kids", {{"type", "array"}, {"items", {{"$ref", "#/$defs/node"}}}}}}},
                         {"required", {"v"}}}}}},
                     {"$ref", "#/$defs/node"}};
  EXPECT_TRUE(schema_matches(tree, R"({"v":1,"kids":[{"v":2},{"v":3,"kids":[]}]})"));
  EXPECT_FALSE(schema_matches(tree, R"({"v":1,"kids":[{}]})"));
  const json defs = {{"definitions", {{"c", {{"enum", {"x", "y"}}}}}},
                     {"type", "array"},
                     {"items", {{"$ref", "#/definitions/c"}}}};
  EXPECT_TRUE(schema_matches(defs, R"(["x","y"])"));
  EXPECT_FALSE(schema_matches(defs, R"(["z"])"));
  EXPECT_EQ(schema_error_keyword({{"$ref", "http://example.com/s.json"}}), "$ref");
  EXPECT_EQ(schema_error_keyword({{"$ref", "#/$defs/missing"}}), "$ref");
}

TEST(JsonSchema, UnsupportedKeywordsAreNamed) {
  EXPECT_EQ(schema_error_keyword({{"not", {{"type", "string"}}}}), "not");
  EXPECT_EQ(schema_error_keyword({{"type", "array"}, {"uniqueItems", true}}), "uniqueItems");
  EXPECT_EQ(schema_error_keyword({{"type", "object"}, {"patternProperties", json::object()}}), "patternProperties");
  EXPECT_EQ(schema_error_keyword({{"type", "number"}, {"multipleOf", 2}}), "multipleOf");
  EXPECT_EQ(schema_error_keyword({{"type", "string"}, {"pattern", "(?=a)b"}}), "pattern");
  EXPECT_EQ(schema_error_keyword({{"type", "string"}, {"pattern", "(a)\\1"}}), "pattern");
  EXPECT_EQ(schema_error_keyword({{"type", "string"}, {"pattern", std::string(300, '(') + std::string(300, ')')}}), "pattern");
  EXPECT_EQ(schema_error_keyword({{"type", "frobnicate"}}), "type");
  EXPECT_EQ(schema_error_keyword({{"allOf", {json::object(), json::object()}}}), "allOf");
  EXPECT_EQ(schema_error_keyword({{"type", "string"}, {"title", "t"}, {"description", "d"}}), "");
}

// ---------------------------------------------------------------------------------------------
// Vocabulary from a GGUF file

TEST(GrammarVocabulary, MatchesTheTokenizerOnSmolLM2) {
  const auto path = test::models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "model not fetched: " << path;
  const auto file = gguf::GgufFile::open(path);
  const auto vocab = vocabulary_from_gguf(file);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  ASSERT_EQ(vocab->size(), static_cast<size_t>(tok.vocab_size()));
  size_t with_bytes = 0;
  for (Token t = 0; t < tok.vocab_size(); ++t) {
    const bool control = tok.token_type(t) == TokenType::Control;
    EXPECT_EQ(vocab->bytes(t), control ? std::string() : tok.token_to_piece(t)) << t;
    with_bytes += vocab->bytes(t).empty() ? 0 : 1;
  }
  EXPECT_GT(with_bytes, 49000u);
}

}  // namespace
}  // namespace hearth::engine::grammar
