// A STREAM-style triad (a[i] = b[i] + s * c[i]) over arrays far larger than the caches: the
// memory bandwidth this machine sustains with `threads` threads, the physical limit of decode
// at batch 1 (every weight byte is read once per token).
#pragma once

#include <cstddef>

namespace hearth::bench {

struct BandwidthResult {
  double bytes_per_second = 0.0;  // best of the repetitions (counts 3 arrays: 2 read, 1 written)
  size_t array_bytes = 0;
  int threads = 0;
};

BandwidthResult measure_triad_bandwidth(int threads, size_t array_bytes = size_t{256} << 20, int repetitions = 5);

}  // namespace hearth::bench
