#include "engine/text/unicode_text.h"

namespace hearth::engine::unicode {

size_t sequence_length_from_lead(uint8_t lead) {
  if (lead < 0xC0) return 1;  // ASCII, or a stray continuation byte taken alone
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

void append_utf8(std::string& out, uint32_t cpt) {
  if (cpt <= 0x7F) {
    out.push_back(static_cast<char>(cpt));
  } else if (cpt <= 0x7FF) {
    out.push_back(static_cast<char>(0xC0 | (cpt >> 6)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else if (cpt <= 0xFFFF) {
    out.push_back(static_cast<char>(0xE0 | (cpt >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | ((cpt >> 18) & 0x07)));
    out.push_back(static_cast<char>(0x80 | ((cpt >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  }
}

uint32_t decode_lenient(std::string_view text, size_t& pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const auto is_cont = [&](size_t i) { return i < text.size() && (byte(i) & 0xC0) == 0x80; };
  const uint8_t lead = byte(pos);
  if (lead < 0x80) {
    pos += 1;
    return lead;
  }
  if ((lead & 0xE0) == 0xC0 && is_cont(pos + 1)) {
    const uint32_t cpt = (uint32_t{lead & 0x1Fu} << 6) | (byte(pos + 1) & 0x3Fu);
    pos += 2;
    return cpt;
  }
  if ((lead & 0xF0) == 0xE0 && is_cont(pos + 1) && is_cont(pos + 2)) {
    const uint32_t cpt =
        (uint32_t{lead & 0x0Fu} << 12) | ((byte(pos + 1) & 0x3Fu) << 6) | (byte(pos + 2) & 0x3Fu);
    pos += 3;
    return cpt;
  }
  if ((lead & 0xF8) == 0xF0 && is_cont(pos + 1) && is_cont(pos + 2) && is_cont(pos + 3)) {
    const uint32_t cpt = (uint32_t{lead & 0x07u} << 18) | ((byte(pos + 1) & 0x3Fu) << 12) |
                         ((byte(pos + 2) & 0x3Fu) << 6) | (byte(pos + 3) & 0x3Fu);
    pos += 4;
    // Above U+10FFFF nothing can encode it again; llama.cpp fails there, we substitute.
    return cpt <= 0x10FFFF ? cpt : kReplacementChar;
  }
  pos += 1;
  return kReplacementChar;
}

Utf8Status decode_strict(std::string_view text, size_t pos, size_t& length) {
  const uint8_t lead = static_cast<uint8_t>(text[pos]);
  length = 1;
  if (lead < 0x80) return Utf8Status::Complete;
  size_t need = 0;
  uint8_t lo = 0x80;  // allowed range of the second byte (Unicode table 3-7)
  uint8_t hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 3;
    if (lead == 0xE0) lo = 0xA0;  // no overlongs
    if (lead == 0xED) hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 4;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return Utf8Status::Invalid;
  }
  for (size_t i = 1; i < need; ++i) {
    if (pos + i >= text.size()) {
      length = i;
      return Utf8Status::Incomplete;
    }
    const uint8_t b = static_cast<uint8_t>(text[pos + i]);
    const uint8_t min = i == 1 ? lo : uint8_t{0x80};
    const uint8_t max = i == 1 ? hi : uint8_t{0xBF};
    if (b < min || b > max) {
      length = i;  // the maximal invalid subpart, replaced by one U+FFFD
      return Utf8Status::Invalid;
    }
  }
  length = need;
  return Utf8Status::Complete;
}

namespace {

// GPT-2's table: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100...
std::array<uint32_t, 256> make_byte_codepoints() {
  std::array<uint32_t, 256> cpts{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    cpts[b] = printable ? b : next++;
  }
  return cpts;
}

const std::array<uint32_t, 256>& byte_codepoints() {
  static const std::array<uint32_t, 256> table = make_byte_codepoints();
  return table;
}

}  // namespace

const std::array<std::string, 256>& byte_to_utf8_table() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    for (size_t b = 0; b < 256; ++b) append_utf8(t[b], byte_codepoints()[b]);
    return t;
  }();
  return table;
}

int byte_from_codepoint(uint32_t cpt) {
  // The mapped range is U+0000..U+0143; a flat table answers in one load.
  static const std::array<int16_t, 0x144> inverse = [] {
    std::array<int16_t, 0x144> t;
    t.fill(-1);
    for (size_t b = 0; b < 256; ++b) t[byte_codepoints()[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cpt < inverse.size() ? inverse[cpt] : -1;
}

}  // namespace hearth::engine::unicode
