// A STREAM-style triad (a[i] = b[i] + s * c[i]) over arrays far larger than the caches: the
// memory bandwidth this machine sustains with `threads` threads, the physical limit of decode
// at batch 1 (every weight byte is read once per token).
#pragma once

#include <cstddef>

namespace hearth::kernels {
class Backend;
}

namespace hearth::bench {

struct BandwidthResult {
  double bytes_per_second = 0.0;  // best of the repetitions (counts 3 arrays: 2 read, 1 written)
  size_t array_bytes = 0;
  int threads = 0;
};

BandwidthResult measure_triad_bandwidth(int threads, size_t array_bytes = size_t{256} << 20, int repetitions = 5);

// What decoding reads weights at on `backend`'s device: a Q8_0 matrix of about `weight_bytes`
// times one token (matmul, as a stage's decode step does it), best of the repetitions after one
// warm-up. For a GPU worker this is what the planner weighs its stages by, where a triad over
// host memory would say nothing of the device. (array_bytes: the matrix's bytes; threads: 0.)
// `max_seconds` > 0 ends the repetitions early once that long has passed (after 3 at least).
BandwidthResult measure_matvec_bandwidth(kernels::Backend& backend, size_t weight_bytes = size_t{64} << 20,
                                         int repetitions = 3, double max_seconds = 0);

}  // namespace hearth::bench
