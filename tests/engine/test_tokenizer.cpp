// Tokenizer vs llama.cpp: every corpus string must encode to the ids llama.cpp gives on the
// same GGUF file (fixtures from scripts/reference/make_tokenizer_fixtures.py), decode back to
// itself, and stream through IncrementalDecoder without a split UTF-8 character. The model
// tests skip when the model file is absent; the synthetic ones always run.
#include "engine/text/tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/format/gguf.h"
#include "tests/support/fixtures.h"
#include "tests/support/gguf_builder.h"

namespace hearth::engine {
namespace {

using nlohmann::json;

// Strict UTF-8 check, written independently of the code under test.
bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    size_t n = 0;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b0 < 0x80) {
      ++i;
      continue;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      n = 1;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      n = 2;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      n = 3;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto b = static_cast<uint8_t>(s[i + k]);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return false;
    }
    i += n + 1;
  }
  return true;
}

std::string escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    const auto b = static_cast<uint8_t>(c);
    if (b < 0x20 || b == 0x7F) {
      out += fmt::format("\\x{:02x}", b);
    } else {
      out += c;
    }
  }
  return out;
}

std::vector<std::string> load_corpus() {
  const json corpus = json::parse(test::read_file_text(test::fixtures_dir() / "tokenizer" / "corpus.json"));
  std::vector<std::string> out;
  for (const auto& s : corpus) out.push_back(s.get<std::string>());
  return out;
}

struct ModelCase {
  const char* name;  // fixture name
  const char* file;  // model file in models_dir()
};

class TokenizerModelTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  void SetUp() override {
    const auto path = test::models_dir() / GetParam().file;
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "model not found: " << path;
    gguf_ = std::make_unique<gguf::GgufFile>(gguf::GgufFile::open(path));
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_gguf(*gguf_));
    corpus_ = load_corpus();
    const auto fixture_path = test::fixtures_dir() / "tokenizer" / (std::string(GetParam().name) + ".json");
    fixture_ = json::parse(test::read_file_text(fixture_path));
    ASSERT_EQ(fixture_["cases"].size(), corpus_.size()) << "fixture and corpus out of step: regenerate the fixture";
  }

  std::unique_ptr<gguf::GgufFile> gguf_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<std::string> corpus_;
  json fixture_;
};

TEST_P(TokenizerModelTest, EncodesLikeLlamaCpp) {
  int matched_special = 0;
  int matched_plain = 0;
  for (size_t i = 0; i < corpus_.size(); ++i) {
    const std::string& text = corpus_[i];
    SCOPED_TRACE(fmt::format("corpus[{}] = \"{}\"", i, escape(text)));
    const auto want_special = fixture_["cases"][i]["special"].get<std::vector<Token>>();
    const auto want_plain = fixture_["cases"][i]["plain"].get<std::vector<Token>>();
    const auto got_special = tokenizer_->encode(text, /*add_special=*/true, /*parse_special=*/true);
    const auto got_plain = tokenizer_->encode(text, /*add_special=*/true, /*parse_special=*/false);
    EXPECT_EQ(got_special, want_special) << "parse_special = true";
    EXPECT_EQ(got_plain, want_plain) << "parse_special = false";
    matched_special += got_special == want_special;
    matched_plain += got_plain == want_plain;
  }
  std::printf("[ %s ] %d/%zu strings match llama.cpp with parse_special, %d/%zu without\n", GetParam().name,
              matched_special, corpus_.size(), matched_plain, corpus_.size());
}

TEST_P(TokenizerModelTest, DecodeInvertsEncode) {
  for (size_t i = 0; i < corpus_.size(); ++i) {
    const std::string& text = corpus_[i];
    SCOPED_TRACE(fmt::format("corpus[{}] = \"{}\"", i, escape(text)));
    const auto tokens = tokenizer_->encode(text, /*add_special=*/false, /*parse_special=*/false);
    EXPECT_EQ(tokenizer_->decode(tokens), text);
  }
}

TEST_P(TokenizerModelTest, RendersSpecialTokensOnlyWhenAsked) {
  const std::string text = GetParam().name == std::string("smollm2") ? "<|im_start|>user\nhi<|im_end|>"
                                                                     : "<start_of_turn>user\nhi<end_of_turn>";
  const auto tokens = tokenizer_->encode(text, /*add_special=*/false, /*parse_special=*/true);
  EXPECT_EQ(tokenizer_->decode(tokens, /*render_special=*/true), text);
  EXPECT_EQ(tokenizer_->decode(tokens, /*render_special=*/false), "user\nhi");
}

TEST_P(TokenizerModelTest, IncrementalDecoderNeverSplitsACharacter) {
  int held_back = 0;  // tokens whose bytes had to wait for the next token
  for (size_t i = 0; i < corpus_.size(); ++i) {
    const std::string& text = corpus_[i];
    SCOPED_TRACE(fmt::format("corpus[{}] = \"{}\"", i, escape(text)));
    const auto tokens = tokenizer_->encode(text, /*add_special=*/false, /*parse_special=*/false);
    IncrementalDecoder decoder(*tokenizer_);
    std::string streamed;
    for (Token t : tokens) {
      const std::string chunk = decoder.push(t);
      EXPECT_TRUE(is_valid_utf8(chunk)) << "token " << t << " gave \"" << escape(chunk) << "\"";
      held_back += chunk.empty() && !tokenizer_->token_to_piece(t).empty();
      streamed += chunk;
    }
    streamed += decoder.flush();
    EXPECT_EQ(streamed, text);
  }
  // Emoji and CJK are split into byte tokens by both vocabularies: holding back must happen.
  EXPECT_GT(held_back, 0);
}

TEST_P(TokenizerModelTest, EmojiSpanningSeveralByteTokens) {
  const std::string text = "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 \xE4\xBD\xA0\xE5\xA5\xBD";  // 👨‍👩 你好
  const auto tokens = tokenizer_->encode(text, false, false);
  IncrementalDecoder decoder(*tokenizer_);
  std::vector<std::string> chunks;
  for (Token t : tokens) chunks.push_back(decoder.push(t));
  std::string joined;
  for (const auto& c : chunks) {
    EXPECT_TRUE(is_valid_utf8(c));
    joined += c;
  }
  EXPECT_EQ(joined, text);
  EXPECT_EQ(decoder.flush(), "");
}

TEST_P(TokenizerModelTest, SpecialIdsMatchLlamaCpp) {
  EXPECT_EQ(tokenizer_->vocab_size(), fixture_["n_tokens"].get<int32_t>());
  EXPECT_EQ(tokenizer_->bos(), fixture_["bos"].get<Token>());
  EXPECT_EQ(tokenizer_->eos(), fixture_["eos"].get<Token>());
  EXPECT_EQ(tokenizer_->eot(), fixture_["eot"].get<Token>());
  EXPECT_EQ(tokenizer_->add_bos(), fixture_["add_bos"].get<bool>());
  EXPECT_EQ(tokenizer_->add_eos(), fixture_["add_eos"].get<bool>());
  std::vector<Token> eog;
  for (Token t = 0; t < tokenizer_->vocab_size(); ++t) {
    if (tokenizer_->is_end_of_generation(t)) eog.push_back(t);
  }
  EXPECT_EQ(eog, fixture_["eog"].get<std::vector<Token>>());
}

TEST_P(TokenizerModelTest, VocabularyQueries) {
  const Token eot = tokenizer_->eot();
  ASSERT_GE(eot, 0);
  EXPECT_EQ(tokenizer_->token_type(eot), TokenType::Control);
  EXPECT_EQ(tokenizer_->find_token(tokenizer_->token_text(eot)), eot);
  EXPECT_EQ(tokenizer_->find_token("no such token, surely"), -1);
  EXPECT_THROW((void)tokenizer_->token_to_piece(tokenizer_->vocab_size()), Error);
  EXPECT_THROW((void)tokenizer_->token_text(-1), Error);
}

TEST_P(TokenizerModelTest, EncodesAFewKilobytesQuickly) {
  std::string text;
  while (text.size() < 4096) {
    for (size_t i = 0; i < corpus_.size(); i += 3) text += corpus_[i] + " ";
  }
  const auto start = std::chrono::steady_clock::now();
  const auto tokens = tokenizer_->encode(text, true, true);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ %s ] %zu bytes -> %zu tokens in %.2f ms\n", GetParam().name, text.size(), tokens.size(), ms);
  EXPECT_FALSE(tokens.empty());
  EXPECT_LT(ms, 250.0);  // ~1 ms in a release build; the bound only catches a lost hash map
}

INSTANTIATE_TEST_SUITE_P(Models, TokenizerModelTest,
                         ::testing::Values(ModelCase{"smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"},
                                           ModelCase{"gemma3-270m", "gemma-3-270m-q4_k_m.gguf"}),
                         [](const auto& param_info) {
                           std::string name = param_info.param.name;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

test::KvSpec kv_i32_array(std::string key, std::vector<int32_t> values) {
  return test::kv_raw(std::move(key), [values](test::GgufBytes& b) {
    b.u32(test::kArray).u32(test::kI32).u64(values.size());
    for (int32_t v : values) b.put(v);
  });
}

// ---------------------------------------------------------------------------------------------
// The other BPE pre-tokenizers, on SmolLM2's vocabulary with only tokenizer.ggml.pre changed
// (the fixture script gives llama.cpp a GGUF with the same tokenizer metadata).

class PreTokenizerVariantTest : public ::testing::TestWithParam<const char*> {};

TEST_P(PreTokenizerVariantTest, EncodesLikeLlamaCpp) {
  const auto path = test::models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "model not found: " << path;
  const std::string pre = GetParam();
  const auto source = gguf::GgufFile::open(path);
  test::GgufSpec spec;
  for (const auto& kv : source.metadata()) {
    const std::string key(kv.key);
    if (key != "general.name" && (!key.starts_with("tokenizer.ggml.") || key == "tokenizer.chat_template")) continue;
    const gguf::Value& v = kv.value;
    if (key == "tokenizer.ggml.pre") {
      spec.kvs.push_back(test::kv_str(key, pre));
    } else if (const auto* str = v.get_if<std::string_view>()) {
      spec.kvs.push_back(test::kv_str(key, std::string(*str)));
    } else if (const auto* flag = v.get_if<bool>()) {
      spec.kvs.push_back(test::kv_bool(key, *flag));
    } else if (const auto* u = v.get_if<uint32_t>()) {
      spec.kvs.push_back(test::kv_u32(key, *u));
    } else if (const auto* array = v.get_if<gguf::ArrayValue>(); array && array->elem_type == gguf::ValueType::STRING) {
      spec.kvs.push_back(test::kv_str_array(key, std::vector<std::string>(array->strings.begin(), array->strings.end())));
    } else if (array && array->elem_type == gguf::ValueType::INT32) {
      spec.kvs.push_back(kv_i32_array(key, array->to_vector<int32_t>()));
    } else {
      FAIL() << "unexpected metadata type for " << key;
    }
  }
  const auto file = gguf::GgufFile::from_bytes(test::build_gguf(spec), "smollm2-pre-" + pre + ".gguf");
  const Tokenizer tokenizer = Tokenizer::from_gguf(file);
  EXPECT_EQ(tokenizer.pre_tokenizer(), pre);

  const auto corpus = load_corpus();
  const json fixture =
      json::parse(test::read_file_text(test::fixtures_dir() / "tokenizer" / ("smollm2-pre-" + pre + ".json")));
  ASSERT_EQ(fixture["cases"].size(), corpus.size()) << "fixture and corpus out of step: regenerate the fixture";
  EXPECT_EQ(tokenizer.add_bos(), fixture["add_bos"].get<bool>());
  EXPECT_EQ(tokenizer.eot(), fixture["eot"].get<Token>());
  int matched = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    SCOPED_TRACE(fmt::format("corpus[{}] = \"{}\"", i, escape(corpus[i])));
    const auto want_special = fixture["cases"][i]["special"].get<std::vector<Token>>();
    const auto want_plain = fixture["cases"][i]["plain"].get<std::vector<Token>>();
    const auto got_special = tokenizer.encode(corpus[i], true, true);
    const auto got_plain = tokenizer.encode(corpus[i], true, false);
    EXPECT_EQ(got_special, want_special) << "parse_special = true";
    EXPECT_EQ(got_plain, want_plain) << "parse_special = false";
    matched += got_special == want_special && got_plain == want_plain;
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(corpus[i], false, false)), corpus[i]);
  }
  std::printf("[ pre = %s ] %d/%zu strings match llama.cpp (both special settings)\n", pre.c_str(), matched,
              corpus.size());
}

INSTANTIATE_TEST_SUITE_P(SmolLM2Vocabulary, PreTokenizerVariantTest,
                         ::testing::Values("llama-bpe", "qwen2", "deepseek-llm", "default", "gpt-2"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

// ---------------------------------------------------------------------------------------------
// Synthetic vocabularies (always run)

// A byte-level BPE vocabulary: the 256 mapped bytes, a few merges, two control tokens.
gguf::GgufFile tiny_bpe(std::string pre, std::string model = "gpt2") {
  // GPT-2's byte table, written out independently: printable Latin-1 stays, the rest -> U+0100...
  std::vector<std::string> tokens;
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cpt = printable ? b : next++;
    std::string s;
    if (cpt < 0x80) {
      s += static_cast<char>(cpt);
    } else {
      s += static_cast<char>(0xC0 | (cpt >> 6));
      s += static_cast<char>(0x80 | (cpt & 0x3F));
    }
    tokens.push_back(s);
  }
  const std::vector<std::string> merged = {"he", "ll", "hell", "hello", "\xC4\xA0w", "\xC4\xA0wo"};
  tokens.insert(tokens.end(), merged.begin(), merged.end());
  tokens.push_back("<|end|>");
  tokens.push_back("<|start|>x");
  std::vector<int32_t> types(tokens.size(), 1);
  types[types.size() - 2] = 3;
  types[types.size() - 1] = 3;
  test::GgufSpec spec;
  spec.kvs = {test::kv_str("tokenizer.ggml.model", model), test::kv_str("tokenizer.ggml.pre", pre),
              test::kv_str_array("tokenizer.ggml.tokens", tokens), kv_i32_array("tokenizer.ggml.token_type", types),
              test::kv_str_array("tokenizer.ggml.merges", {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w", "\xC4\xA0w o"}),
              test::kv_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tokens.size() - 2))};
  return gguf::GgufFile::from_bytes(test::build_gguf(spec), "tiny-bpe.gguf");
}

TEST(TokenizerSynthetic, BpeMergesByRank) {
  // The file is a temporary: the tokenizer must own everything it needs.
  const Tokenizer tok = Tokenizer::from_gguf(tiny_bpe("gpt-2"));
  EXPECT_EQ(tok.model(), "gpt2");
  EXPECT_EQ(tok.pre_tokenizer(), "gpt-2");
  const Token hello = tok.find_token("hello");
  const Token space_wo = tok.find_token("\xC4\xA0wo");
  ASSERT_GE(hello, 0);
  ASSERT_GE(space_wo, 0);
  // "hello wor": "hello" merges fully; " wor" -> "Ġwo" + "r".
  EXPECT_EQ(tok.encode("hello wor", false, false), (std::vector<Token>{hello, space_wo, tok.find_token("r")}));
  EXPECT_EQ(tok.decode(tok.encode("hello wor", false, false)), "hello wor");
}

TEST(TokenizerSynthetic, ControlTokensOnlyWithParseSpecial) {
  const auto file = tiny_bpe("default");
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const Token end = tok.find_token("<|end|>");
  const auto with = tok.encode("hello<|end|>", false, true);
  ASSERT_EQ(with.size(), 2u);
  EXPECT_EQ(with[1], end);
  const auto without = tok.encode("hello<|end|>", false, false);
  EXPECT_EQ(std::count(without.begin(), without.end(), end), 0);
  EXPECT_EQ(tok.decode(without), "hello<|end|>");
  EXPECT_TRUE(tok.is_end_of_generation(end));  // by its text and as the EOS
  EXPECT_EQ(tok.eos(), end);
  EXPECT_EQ(tok.eot(), end);  // "<|end|>" is one of llama.cpp's end-of-turn texts
  EXPECT_EQ(tok.token_to_piece(end), "");
  EXPECT_EQ(tok.token_to_piece(end, true), "<|end|>");
}

TEST(TokenizerSynthetic, LongerSpecialTokensAreMatchedFirst) {
  // "<|start|>x" (longer) wins over "<|end|>"-free text, and is found inside other text.
  const auto file = tiny_bpe("default");
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const Token start = tok.find_token("<|start|>x");
  const auto ids = tok.encode("he<|start|>x<|end|>", false, true);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[0], tok.find_token("he"));
  EXPECT_EQ(ids[1], start);
  EXPECT_EQ(ids[2], tok.find_token("<|end|>"));
}

TEST(TokenizerSynthetic, UnknownModelIsNamed) {
  auto spec = test::small_model_spec();
  for (auto& kv : spec.kvs) {
    if (kv.key == "tokenizer.ggml.model") kv = test::kv_str("tokenizer.ggml.model", "unknown-model");
  }
  const auto file = gguf::GgufFile::from_bytes(test::build_gguf(spec), "unknown.gguf");
  try {
    (void)Tokenizer::from_gguf(file);
    FAIL() << "expected hearth::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("tokenizer.ggml.model"), std::string::npos) << what;
    EXPECT_NE(what.find("unknown-model"), std::string::npos) << what;
    EXPECT_NE(what.find("unknown.gguf"), std::string::npos) << what;
  }
}

TEST(TokenizerSynthetic, UnknownPreTokenizerIsNamed) {
  const auto file = tiny_bpe("no-such-pre");
  try {
    (void)Tokenizer::from_gguf(file);
    FAIL() << "expected hearth::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("tokenizer.ggml.pre"), std::string::npos) << what;
    EXPECT_NE(what.find("no-such-pre"), std::string::npos) << what;
  }
}

TEST(TokenizerSynthetic, MissingMetadataIsNamed) {
  test::GgufSpec spec;
  spec.kvs = {test::kv_str("tokenizer.ggml.model", "llama")};
  const auto no_tokens = gguf::GgufFile::from_bytes(test::build_gguf(spec), "no-tokens.gguf");
  EXPECT_THROW(
      {
        try {
          (void)Tokenizer::from_gguf(no_tokens);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.tokens"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);

  spec.kvs = {test::kv_str("tokenizer.ggml.model", "gpt2"), test::kv_str_array("tokenizer.ggml.tokens", {"a", "b"})};
  const auto no_merges = gguf::GgufFile::from_bytes(test::build_gguf(spec), "no-merges.gguf");
  EXPECT_THROW(
      {
        try {
          (void)Tokenizer::from_gguf(no_merges);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.merges"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);

  spec.kvs = {test::kv_str("tokenizer.ggml.model", "llama"), test::kv_str_array("tokenizer.ggml.tokens", {"a", "b"}),
              kv_i32_array("tokenizer.ggml.token_type", {1})};
  const auto short_types = gguf::GgufFile::from_bytes(test::build_gguf(spec), "short-types.gguf");
  EXPECT_THROW((void)Tokenizer::from_gguf(short_types), Error);
}

TEST(TokenizerSynthetic, SentencePieceMergesByScoreWithByteFallback) {
  // ▁ + letters, two merges with scores, byte tokens for the rest.
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "ab", "\xE2\x96\x81" "ab"};
  std::vector<float> scores = {0, 0, 0, -1, -1, -1, -2, -3};
  std::vector<int32_t> types = {2, 3, 3, 1, 1, 1, 1, 1};
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(fmt::format("<0x{:02X}>", b));
    scores.push_back(0);
    types.push_back(6);
  }
  test::GgufSpec spec;
  spec.kvs = {test::kv_str("tokenizer.ggml.model", "llama"), test::kv_str_array("tokenizer.ggml.tokens", tokens),
              test::kv_raw("tokenizer.ggml.scores",
                           [scores](test::GgufBytes& b) {
                             b.u32(test::kArray).u32(test::kF32).u64(scores.size());
                             for (float v : scores) b.put(v);
                           }),
              kv_i32_array("tokenizer.ggml.token_type", types)};
  const auto file = gguf::GgufFile::from_bytes(test::build_gguf(spec), "tiny-spm.gguf");
  const Tokenizer tok = Tokenizer::from_gguf(file);
  EXPECT_EQ(tok.model(), "llama");
  EXPECT_TRUE(tok.add_bos());
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 2);
  // Space prefix (default for SentencePiece files): " ab" -> "▁ab"; "c" is byte fallback.
  const auto ids = tok.encode("ab c", true, false);
  const Token byte_c = tok.find_token("<0x63>");
  EXPECT_EQ(ids, (std::vector<Token>{1, 7, 3, byte_c}));
  EXPECT_EQ(tok.decode(tok.encode("ab c", false, false)), "ab c");
  EXPECT_EQ(tok.token_to_piece(byte_c), "c");
}

}  // namespace
}  // namespace hearth::engine
