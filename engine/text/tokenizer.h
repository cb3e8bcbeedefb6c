// Tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata, matching llama.cpp token for
// token:
//  - `gpt2`: byte-level BPE (Llama 3, Qwen 2/3, SmolLM, DeepSeek, GPT-2): the text is split by
//    the pre-tokenizer regexes named by `tokenizer.ggml.pre` (Unicode-aware, PCRE2), each piece
//    mapped byte -> printable code point (GPT-2's byte-to-unicode table), then merged by rank.
//  - `llama`: SentencePiece-style BPE by scores (Llama 2, Mistral, TinyLlama, Gemma): spaces
//    become U+2581, bigrams merge by highest score, unknown pieces fall back to <0xXX> bytes.
// Special (control) and user-defined tokens are matched in the raw text before
// pre-tokenization: user-defined ones always, control ones when `parse_special` is set.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/token.h"

namespace hearth::engine {

// `tokenizer.ggml.token_type` values.
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

class Tokenizer {
 public:
  // Throws hearth::Error naming the key when the metadata is missing or unsupported (an
  // unknown `tokenizer.ggml.model` or `tokenizer.ggml.pre` is named in the message).
  static Tokenizer from_gguf(const gguf::GgufFile& file);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // `add_special`: add BOS / EOS as the model's metadata says (tokenizer.ggml.add_bos_token…).
  // `parse_special`: recognize control tokens such as <|im_start|> written in the text.
  std::vector<Token> encode(std::string_view text, bool add_special, bool parse_special) const;

  // Bytes of one token. Control tokens render as their text only when `render_special`.
  std::string token_to_piece(Token token, bool render_special = false) const;
  // Concatenated pieces (with SentencePiece's leading-space rule where the model has it).
  std::string decode(std::span<const Token> tokens, bool render_special = false) const;

  int32_t vocab_size() const;
  std::string_view token_text(Token token) const;  // as stored in the vocabulary
  TokenType token_type(Token token) const;
  std::string_view model() const;          // "gpt2" or "llama"
  std::string_view pre_tokenizer() const;  // e.g. "smollm", "llama-bpe", "default"

  Token bos() const;  // -1 when the model has none
  Token eos() const;
  Token eot() const;  // end of turn (<|im_end|>, <|eot_id|>, <end_of_turn>…), -1 when none
  bool add_bos() const;
  bool add_eos() const;
  // End of generation: EOS, EOT and the other tokens that end a turn for this model.
  bool is_end_of_generation(Token token) const;
  // Every token is_end_of_generation() is true for, ascending.
  const std::vector<Token>& end_of_generation_tokens() const;
  // The id of a token whose stored text is exactly `text`, or -1.
  Token find_token(std::string_view text) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of tokens into text that never contains half a UTF-8 character: bytes of an
// incomplete character are held back until the token that completes it arrives.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool render_special = false);
  // Text that became complete with this token (possibly empty).
  std::string push(Token token);
  // Whatever is still held back at the end of the stream (invalid bytes as U+FFFD).
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  bool render_special_;
  bool first_ = true;
  std::string pending_;
};

}  // namespace hearth::engine
