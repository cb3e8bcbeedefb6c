// UTF-8 helpers for the tokenizer: the lenient decoding llama.cpp applies before
// pre-tokenization, strict decoding for streamed output, and GPT-2's byte <-> printable
// code point table used by byte-level BPE vocabularies.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace hearth::engine::unicode {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Bytes a UTF-8 sequence starting with `lead` claims by its high nibble alone (1 for ASCII and
// for stray continuation bytes, 2/3/4 otherwise). Used to cut text into "characters" the way
// SentencePiece-style and BPE symbol splitting do, valid or not.
size_t sequence_length_from_lead(uint8_t lead);

// Appends the UTF-8 encoding of `cpt` (any value up to 0x10FFFF, surrogates included).
void append_utf8(std::string& out, uint32_t cpt);

// Decodes one code point at `pos` with llama.cpp's lenient rules: the lead byte decides the
// length, only the continuation bytes' top bits are checked (overlong forms and surrogates
// pass). On an invalid or truncated sequence returns U+FFFD and consumes one byte.
uint32_t decode_lenient(std::string_view text, size_t& pos);

// Result of strict decoding (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF).
enum class Utf8Status { Complete, Incomplete, Invalid };
// Decodes strictly at `pos`. Complete: `length` bytes form one character. Incomplete: the
// bytes up to the end of `text` are a valid prefix of a character. Invalid: `length` bytes
// (at least one) can never start a valid character and should be replaced.
Utf8Status decode_strict(std::string_view text, size_t pos, size_t& length);

// GPT-2's byte-level mapping: every byte to a printable code point, encoded as UTF-8.
const std::array<std::string, 256>& byte_to_utf8_table();
// The inverse: the byte a code point stands for, or -1 when it stands for none.
int byte_from_codepoint(uint32_t cpt);

}  // namespace hearth::engine::unicode
