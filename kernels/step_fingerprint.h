// A running hash of the ops a step enqueues (op, device addresses, shapes, scalars), for GPU
// backends that record a step once and replay it while its key repeats: a step whose
// fingerprint differs from its recording's is run op by op and recorded afresh, so a broken
// step promise (kernels/backend.h, "Steps") costs a re-recording, never a wrong result.
#pragma once

#include <bit>
#include <cstdint>

#include "kernels/backend.h"

namespace hearth::kernels {

struct StepFingerprint {
  uint64_t h = 0xcbf29ce484222325ull;

  void mix(uint64_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); }
  void mix(float f) { mix(static_cast<uint64_t>(std::bit_cast<uint32_t>(f))); }
  // A tensor at device address `address` (0 for an empty tensor).
  void mix(uint64_t address, const Tensor& t) {
    mix(address);
    if (t.empty()) return;
    mix(static_cast<uint64_t>(t.type));
    for (int64_t n : t.ne) mix(static_cast<uint64_t>(n));
  }
};

}  // namespace hearth::kernels
