#include "transport/frame_cipher.h"

#include <openssl/crypto.h>

#include <cstring>
#include <limits>

#include "core/error.h"

namespace hearth::transport {
namespace {

std::array<unsigned char, 12> nonce_of(uint64_t sequence) {
  std::array<unsigned char, 12> n{};
  for (int i = 0; i < 8; ++i) n[4 + static_cast<size_t>(i)] = static_cast<unsigned char>(sequence >> (8 * i));
  return n;
}

const unsigned char* uc(const std::byte* p) { return reinterpret_cast<const unsigned char*>(p); }
unsigned char* uc(std::byte* p) { return reinterpret_cast<unsigned char*>(p); }

}  // namespace

FrameCipher::FrameCipher(const LinkKey& key) : ctx_(EVP_CIPHER_CTX_new()), key_(key) {
  HEARTH_CHECK(ctx_ != nullptr, "EVP_CIPHER_CTX_new failed");
}

FrameCipher::~FrameCipher() {
  EVP_CIPHER_CTX_free(ctx_);
  OPENSSL_cleanse(key_.data(), key_.size());
}

void FrameCipher::seal(const HeaderBytes& header, uint64_t sequence, std::span<const std::span<const std::byte>> segments,
                       std::vector<std::byte>& out) {
  size_t length = 0;
  for (auto s : segments) length += s.size();
  out.resize(length + kFrameTagLength);
  const auto nonce = nonce_of(sequence);
  int n = 0;
  bool ok = EVP_EncryptInit_ex(ctx_, EVP_chacha20_poly1305(), nullptr, uc(key_.data()), nonce.data()) == 1 &&
            EVP_EncryptUpdate(ctx_, nullptr, &n, uc(header.data()), static_cast<int>(header.size())) == 1;
  size_t at = 0;
  for (auto s : segments) {
    // EVP takes int lengths: long segments go in pieces.
    for (size_t done = 0; ok && done < s.size();) {
      const int piece = static_cast<int>(std::min<size_t>(s.size() - done, 1u << 30));
      ok = EVP_EncryptUpdate(ctx_, uc(out.data() + at), &n, uc(s.data() + done), piece) == 1;
      at += static_cast<size_t>(n);
      done += static_cast<size_t>(piece);
    }
  }
  ok = ok && EVP_EncryptFinal_ex(ctx_, uc(out.data() + at), &n) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_AEAD_GET_TAG, static_cast<int>(kFrameTagLength), uc(out.data() + length)) == 1;
  HEARTH_CHECK(ok && at + static_cast<size_t>(n) == length, "ChaCha20-Poly1305 encryption failed");
}

bool FrameCipher::open(const HeaderBytes& header, uint64_t sequence, std::span<std::byte> payload) {
  if (payload.size() < kFrameTagLength) return false;
  const size_t length = payload.size() - kFrameTagLength;
  const auto nonce = nonce_of(sequence);
  int n = 0;
  bool ok = EVP_DecryptInit_ex(ctx_, EVP_chacha20_poly1305(), nullptr, uc(key_.data()), nonce.data()) == 1 &&
            EVP_DecryptUpdate(ctx_, nullptr, &n, uc(header.data()), static_cast<int>(header.size())) == 1;
  size_t at = 0;
  for (size_t done = 0; ok && done < length;) {
    const int piece = static_cast<int>(std::min<size_t>(length - done, 1u << 30));
    ok = EVP_DecryptUpdate(ctx_, uc(payload.data() + at), &n, uc(payload.data() + done), piece) == 1;
    at += static_cast<size_t>(n);
    done += static_cast<size_t>(piece);
  }
  std::array<unsigned char, kFrameTagLength> tag{};
  std::memcpy(tag.data(), payload.data() + length, kFrameTagLength);
  ok = ok && EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_AEAD_SET_TAG, static_cast<int>(kFrameTagLength), tag.data()) == 1;
  return ok && EVP_DecryptFinal_ex(ctx_, uc(payload.data() + at), &n) == 1;
}

}  // namespace hearth::transport
