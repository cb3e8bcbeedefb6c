// Random mutations of valid files: the reader must either accept the file (and then every
// tensor span and metadata value must be readable in bounds) or refuse it with a GgufError.
// Any other exception, crash or sanitizer report is a bug. Deterministic seeds; the libFuzzer
// harness in tests/fuzz/ explores further.
#include <gtest/gtest.h>

#include <random>

#include "engine/format/gguf.h"
#include "tests/support/gguf_builder.h"

namespace hearth::gguf {
namespace {

using namespace hearth::test;

// Touches everything a consumer could read, so sanitizers see any bad span.
uint64_t walk(const GgufFile& f) {
  uint64_t checksum = 0;
  for (const KeyValue& kv : f.metadata()) checksum += kv.key.size() + kv.value.to_display_string().size();
  for (const TensorInfo& t : f.tensors()) {
    for (uint8_t b : f.tensor_data(t)) checksum += b;
  }
  return checksum;
}

void mutate(std::vector<uint8_t>& bytes, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> kind(0, 5);
  if (bytes.empty()) return;
  std::uniform_int_distribution<size_t> pos(0, bytes.size() - 1);
  switch (kind(rng)) {
    case 0:  // flip a bit
      bytes[pos(rng)] ^= static_cast<uint8_t>(1u << (rng() % 8));
      break;
    case 1:  // random byte
      bytes[pos(rng)] = static_cast<uint8_t>(rng());
      break;
    case 2: {  // overwrite 8 bytes with an interesting 64-bit value (lengths and counts live there)
      const uint64_t values[] = {0, 1, 0xFF, 0xFFFFFFFFull, 1ull << 32, 1ull << 63, ~0ull, bytes.size(), rng()};
      const uint64_t v = values[rng() % std::size(values)];
      const size_t at = pos(rng);
      for (size_t i = 0; i < 8 && at + i < bytes.size(); ++i) bytes[at + i] = static_cast<uint8_t>(v >> (8 * i));
      break;
    }
    case 3:  // truncate
      bytes.resize(pos(rng));
      break;
    case 4: {  // duplicate a chunk
      const size_t at = pos(rng);
      const size_t len = std::min<size_t>(rng() % 64, bytes.size() - at);
      std::vector<uint8_t> chunk(bytes.begin() + static_cast<std::ptrdiff_t>(at),
                                 bytes.begin() + static_cast<std::ptrdiff_t>(at + len));
      bytes.insert(bytes.begin() + static_cast<std::ptrdiff_t>(pos(rng)), chunk.begin(), chunk.end());
      break;
    }
    default: {  // small integer in a 4-byte field (types, n_dims, versions)
      const size_t at = pos(rng);
      const uint32_t v = static_cast<uint32_t>(rng() % 48);
      for (size_t i = 0; i < 4 && at + i < bytes.size(); ++i) bytes[at + i] = static_cast<uint8_t>(v >> (8 * i));
      break;
    }
  }
}

TEST(GgufFuzz, RandomMutationsAreAcceptedOrRefusedCleanly) {
  GgufSpec rich = small_model_spec();
  rich.kvs.push_back(kv_raw("nested", [](GgufBytes& b) {
    b.u32(kArray).u32(kArray).u64(2);
    b.u32(kI16).u64(2).put<int16_t>(1).put<int16_t>(2);
    b.u32(kString).u64(1).str("x");
  }));
  const std::vector<std::vector<uint8_t>> seeds = {build_gguf(small_model_spec()), build_gguf(rich)};
  std::mt19937_64 rng(20261124);
  int accepted = 0, refused = 0;
  for (int iter = 0; iter < 6000; ++iter) {
    std::vector<uint8_t> bytes = seeds[iter % seeds.size()];
    const int n_mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < n_mutations; ++m) mutate(bytes, rng);
    try {
      const GgufFile f = GgufFile::from_bytes(std::move(bytes));
      (void)walk(f);
      ++accepted;
    } catch (const GgufError&) {
      ++refused;
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iter << ": unexpected exception type: " << e.what();
    }
  }
  // Both outcomes must occur, or the mutations are not exercising the reader.
  EXPECT_GT(accepted, 100);
  EXPECT_GT(refused, 1000);
}

}  // namespace
}  // namespace hearth::gguf
