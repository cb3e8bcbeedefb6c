// A STREAM-style triad (a[i] = b[i] + s * c[i]) over arrays far larger than the caches: the
// memory bandwidth this machine sustains with `threads` threads, the physical limit of decode
// at batch 1 (every weight byte is read once per token).
#pragma once

#include <cstddef>
#include <memory>

namespace hearth::kernels {
class Backend;
}

namespace hearth::bench {

struct BandwidthResult {
  double bytes_per_second = 0.0;  // best of the repetitions (counts 3 arrays: 2 read, 1 written)
  size_t array_bytes = 0;
  int threads = 0;
};

// One timed read: `bytes` in `seconds`.
struct ReadSample {
  size_t bytes = 0;
  double seconds = 0.0;
};

BandwidthResult measure_triad_bandwidth(int threads, size_t array_bytes = size_t{256} << 20, int repetitions = 5);

// The rate `threads` threads read memory at, and nothing else: decode's own limit (it reads
// each weight byte once and writes almost nothing). Each thread sums its share of one array far
// larger than the caches (on 2 MiB pages, as the repacked weights) with independent vector
// accumulators, in each way this CPU has:
// 16-byte vectors with and without software prefetches into L2, and the widest vectors (AVX2,
// AVX-512, the latter also with L2 prefetches); the best way over the repetitions is the result
// (the triad, which also writes, reads less). The array is allocated and first touched, and the
// threads started, once: `hearth bench` reads it between the decode steps of a tg pass.
class ReadBandwidthProbe {
 public:
  ReadBandwidthProbe(int threads, size_t array_bytes = size_t{256} << 20);
  ~ReadBandwidthProbe();
  ReadBandwidthProbe(const ReadBandwidthProbe&) = delete;
  ReadBandwidthProbe& operator=(const ReadBandwidthProbe&) = delete;
  // The best rate over every way and repetition; the fastest way is kept for read_once().
  BandwidthResult measure(int repetitions = 1);
  // One read of the whole array in the fastest way (measure(3) picks it first if measure has not
  // run): its bytes and seconds. Not a best-of: a mean over many of these is what the memory
  // gave over the time they were spread across.
  ReadSample read_once();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The memory bandwidth of `backend`'s device itself (a GPU's memory, not the host's): y = a + b
// over three f32 arrays of `array_bytes` each on the device, through the backend's own add,
// counting 2 arrays read and 1 written, best of the repetitions after one warm-up. The limit
// line of `hearth bench` on a GPU backend (a host triad would say nothing of the device).
BandwidthResult measure_device_add_bandwidth(kernels::Backend& backend, size_t array_bytes = size_t{512} << 20,
                                             int repetitions = 10);

// What decoding reads weights at on `backend`'s device: a Q8_0 matrix of about `weight_bytes`
// times one token (matmul, as a stage's decode step does it), best of the repetitions after one
// warm-up. For a GPU worker this is what the planner weighs its stages by, where a triad over
// host memory would say nothing of the device. (array_bytes: the matrix's bytes; threads: 0.)
// `max_seconds` > 0 ends the repetitions early once that long has passed (after 3 at least).
BandwidthResult measure_matvec_bandwidth(kernels::Backend& backend, size_t weight_bytes = size_t{64} << 20,
                                         int repetitions = 3, double max_seconds = 0);

}  // namespace hearth::bench
