#include "engine/grammar/vocabulary.h"

#include <fmt/format.h>

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace hearth::engine::grammar {
namespace {

// GPT-2's byte-level BPE writes byte b as a printable code point: itself for the printable
// Latin-1 bytes, 256 + k (in byte order) for the others. The inverse, over U+0000..U+0143.
const std::array<int16_t, 0x144>& byte_of_codepoint() {
  static const std::array<int16_t, 0x144> table = [] {
    std::array<int16_t, 0x144> t;
    t.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[static_cast<size_t>(printable ? b : next++)] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return table;
}

// Decodes one UTF-8 code point at s[i] (advancing i); invalid bytes decode as themselves.
uint32_t next_codepoint(std::string_view s, size_t& i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  const size_t n = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 1;
  if (n == 1 || i + n > s.size()) {
    ++i;
    return b0;
  }
  uint32_t cp = n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3Fu);
  i += n;
  return cp;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::shared_ptr<const Vocabulary> vocabulary_from_gguf(const gguf::GgufFile& file) {
  const std::string_view model = file.get_or<std::string_view>("tokenizer.ggml.model", "gpt2");
  const bool byte_level = model != "llama";
  const gguf::ArrayValue tokens = file.get<gguf::ArrayValue>("tokenizer.ggml.tokens");
  if (tokens.elem_type != gguf::ValueType::STRING) {
    throw gguf::MetadataError(fmt::format("{}: 'tokenizer.ggml.tokens' must be an array of strings", file.path()));
  }
  const size_t n = tokens.strings.size();
  std::vector<int32_t> types(n, 1);
  if (file.contains("tokenizer.ggml.token_type")) {
    const gguf::ArrayValue t = file.get<gguf::ArrayValue>("tokenizer.ggml.token_type");
    if (t.elem_type != gguf::ValueType::INT32 || t.count < n) {
      throw gguf::MetadataError(fmt::format("{}: 'tokenizer.ggml.token_type' must hold an int32 per token", file.path()));
    }
    for (size_t i = 0; i < n; ++i) types[i] = t.at<int32_t>(i);
  }
  const auto& inverse = byte_of_codepoint();
  std::vector<std::string> bytes(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string_view text = tokens.strings[i];
    std::string& out = bytes[i];
    switch (types[i]) {
      case 1: {  // normal
        if (byte_level) {
          for (size_t k = 0; k < text.size();) {
            const size_t start = k;
            const uint32_t cp = next_codepoint(text, k);
            const int b = cp < inverse.size() ? inverse[cp] : -1;
            if (b >= 0) {
              out += static_cast<char>(b);
            } else {
              out += text.substr(start, k - start);
            }
          }
        } else {
          constexpr std::string_view kSpace = "\xE2\x96\x81";
          for (size_t k = 0; k < text.size();) {
            if (text.substr(k, kSpace.size()) == kSpace) {
              out += ' ';
              k += kSpace.size();
            } else {
              out += text[k++];
            }
          }
        }
        break;
      }
      case 4:  // user-defined: its text
        out = std::string(text);
        break;
      case 6:  // byte: <0xXX>
        if (text.size() == 6 && text.substr(0, 3) == "<0x" && text[5] == '>' && hex_digit(text[3]) >= 0 &&
            hex_digit(text[4]) >= 0) {
          out += static_cast<char>(hex_digit(text[3]) * 16 + hex_digit(text[4]));
        }
        break;
      default:  // control, unknown, unused, undefined: never text
        break;
    }
  }
  return std::make_shared<const Vocabulary>(std::move(bytes));
}

}  // namespace hearth::engine::grammar
