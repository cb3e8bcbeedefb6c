// libFuzzer harness for the GGUF reader: any input must be accepted (and then be fully
// readable in bounds) or refused with a GgufError. Build and run with scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/format/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto file = hearth::gguf::GgufFile::from_bytes(std::vector<uint8_t>(data, data + size), "fuzz");
    uint64_t sum = 0;
    for (const auto& kv : file.metadata()) sum += kv.value.to_display_string().size();
    for (const auto& t : file.tensors()) {
      for (uint8_t b : file.tensor_data(t)) sum += b;
    }
    volatile uint64_t sink = sum;
    (void)sink;
  } catch (const hearth::gguf::GgufError&) {
  }
  return 0;
}
