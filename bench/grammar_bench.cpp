// Grammar mask cost per token on a real vocabulary: a JSON schema (and any JSON object) compiled
// for a GGUF model's tokens, then a JSON document the schema accepts fed token by token (as the
// model's tokenizer splits it) while the mask for every step is computed and applied to a
// vocabulary of logits, as the sampler does. Reported in µs per token: the first document on a
// fresh compiled grammar (token classes computed as contexts are first reached: what the first
// request with a schema pays), a second, different document on the same compiled grammar (some
// contexts new), and the first document again (every context known: the steady state).
//
//   grammar_bench MODEL.gguf [REPEATS]
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/grammar/grammar.h"
#include "engine/grammar/json_schema.h"
#include "engine/grammar/matcher.h"
#include "engine/grammar/vocabulary.h"
#include "engine/text/tokenizer.h"

namespace {

using namespace hearth::engine;
using Clock = std::chrono::steady_clock;

struct Pass {
  double mask_us = 0;  // fill_mask + apply, per token
  double advance_us = 0;
  size_t tokens = 0;
};

Pass run_document(const std::shared_ptr<grammar::CompiledGrammar>& g, const std::vector<Token>& tokens,
                  std::vector<float>& logits) {
  grammar::GrammarMatcher m(g);
  grammar::TokenMask mask;
  Pass p;
  for (Token t : tokens) {
    const auto t0 = Clock::now();
    m.fill_mask(mask);
    mask.apply(logits);
    const auto t1 = Clock::now();
    if (!mask.test(t) || !m.accept_token(t)) {
      std::fprintf(stderr, "token %d refused by the grammar\n", t);
      std::exit(1);
    }
    const auto t2 = Clock::now();
    p.mask_us += std::chrono::duration<double, std::micro>(t1 - t0).count();
    p.advance_us += std::chrono::duration<double, std::micro>(t2 - t1).count();
    ++p.tokens;
  }
  p.mask_us /= static_cast<double>(p.tokens);
  p.advance_us /= static_cast<double>(p.tokens);
  return p;
}

void bench(const char* name, const std::string& gbnf, const std::string& document, const std::string& other,
           const Tokenizer& tok, std::shared_ptr<const grammar::Vocabulary> vocab, int repeats) {
  std::vector<Token> end;
  for (Token t = 0; t < tok.vocab_size(); ++t) {
    if (tok.is_end_of_generation(t)) end.push_back(t);
  }
  std::vector<Token> tokens = tok.encode(document, false, false);
  tokens.push_back(end.front());
  std::vector<Token> other_tokens = tok.encode(other, false, false);
  other_tokens.push_back(end.front());
  std::vector<float> logits(vocab->size(), 0.0f);
  const auto c0 = Clock::now();
  auto g = std::make_shared<grammar::CompiledGrammar>(grammar::parse_gbnf(gbnf), vocab, end);
  const double compile_ms = std::chrono::duration<double, std::milli>(Clock::now() - c0).count();
  const Pass cold = run_document(g, tokens, logits);
  const Pass second = run_document(g, other_tokens, logits);  // other values: some contexts are new
  Pass warm;
  for (int r = 0; r < repeats; ++r) {
    const Pass p = run_document(g, tokens, logits);
    warm.mask_us += p.mask_us / repeats;
    warm.advance_us += p.advance_us / repeats;
  }
  std::printf("%-12s %4zu tokens  parse %.2f ms  mask per token: first document %.1f us, a second one %.1f us, "
              "the first again %.1f us (advance %.1f us)  (%zu contexts classified in %.0f ms)\n",
              name, tokens.size(), compile_ms, cold.mask_us, second.mask_us, warm.mask_us, warm.advance_us,
              g->classified_contexts(), g->classify_seconds() * 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: grammar_bench MODEL.gguf [REPEATS]\n");
    return 2;
  }
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 20;
  const auto file = hearth::gguf::GgufFile::open(argv[1]);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const auto vocab = grammar::vocabulary_from_gguf(file);
  const nlohmann::json schema = nlohmann::json::parse(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string", "maxLength": 40},
      "age": {"type": "integer", "minimum": 0, "maximum": 150},
      "email": {"type": "string", "format": "email"},
      "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
      "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                  "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["street", "city"]},
      "status": {"enum": ["active", "inactive", "pending"]},
      "score": {"type": "number"}
    },
    "required": ["name", "age", "status"]
  })");
  // In the order the compiled grammar writes properties: the required ones in `required` order,
  // then the others by name.
  const std::string document =
      R"({"name": "Homer Simpson", "age": 39, "status": "active", )"
      R"("address": {"street": "742 Evergreen Terrace", "city": "Springfield", "zip": "49007"}, )"
      R"("email": "homer@example.com", "score": 7.25, "tags": ["safety", "donuts", "bowling"]})";
  const std::string other =
      R"({"name": "Ana", "age": 7, "status": "pending", "address": {"street": "1 Rue de Rivoli", "city": "Paris"}, )"
      R"("tags": []})";
  std::printf("vocabulary: %zu tokens\n", vocab->size());
  bench("json_schema", grammar::json_schema_to_gbnf(schema), document, other, tok, vocab, repeats);
  bench("json_object", grammar::json_object_gbnf(), document, other, tok, vocab, repeats);
  return 0;
}
