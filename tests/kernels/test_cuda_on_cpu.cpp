// The CUDA execution model on the CPU (kernels/cuda/cpu_exec/cuda_on_cpu.h, test infrastructure):
// small CUDA kernels (cuda_on_cpu_kernels.cuh, valid CUDA) against plain C++ results. Barriers,
// warp shuffles and votes are real rendezvous: a kernel with a missing __syncthreads, a missing
// __syncwarp or a shuffle off by one lane gives a wrong answer here (asserted, and printed),
// and a barrier only some threads reach is reported as a deadlock instead of hanging.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "core/fp16.h"
#include "tests/kernels/cuda_on_cpu_kernels.cuh"

namespace {

namespace cc = hearth::cuda_cpu;
using namespace cuda_test;

// Small integers: every order of summation gives the same float, so sums compare exactly.
std::vector<float> small_integers(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-50, 50);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(d(rng));
  return v;
}

constexpr unsigned kBlockSizes[] = {1, 31, 32, 33, 100, 256, 1000};

TEST(CudaOnCpu, BlockSumThroughSharedMemory) {
  for (unsigned threads : kBlockSizes) {
    for (unsigned os_threads : {1u, 3u}) {
      const unsigned blocks = 7;
      const auto x = small_integers(size_t{blocks} * threads, threads);
      std::vector<float> out(blocks, -1.0f);
      cc::launch({.os_threads = os_threads}, block_sum<true>, blocks, threads, 0, x.data(), out.data());
      for (unsigned b = 0; b < blocks; ++b) {
        float want = 0.0f;
        for (unsigned t = 0; t < threads; ++t) want += x[size_t{b} * threads + t];
        EXPECT_EQ(out[b], want) << threads << " threads, block " << b << ", " << os_threads << " OS threads";
      }
    }
  }
}

// The same kernel without the barrier after the loads reads neighbours' shared memory before
// they wrote it: the fiber schedule makes that happen on every run, the same way.
TEST(CudaOnCpu, MissingSyncthreadsGivesAWrongAnswer) {
  for (unsigned threads : kBlockSizes) {
    if (threads == 1) continue;  // nobody else to wait for: correct without the barrier
    const unsigned blocks = 7;
    const auto x = small_integers(size_t{blocks} * threads, threads + 1000);
    std::vector<float> out(blocks), again(blocks);
    // Each run on a fresh OS thread, whose static __shared__ starts zeroed (on one thread, a
    // launch's first block finds what the previous launch left there).
    std::thread([&] { cc::launch(block_sum<false>, blocks, threads, 0, x.data(), out.data()); }).join();
    std::thread([&] { cc::launch(block_sum<false>, blocks, threads, 0, x.data(), again.data()); }).join();
    int wrong = 0;
    for (unsigned b = 0; b < blocks; ++b) {
      float want = 0.0f;
      for (unsigned t = 0; t < threads; ++t) want += x[size_t{b} * threads + t];
      if (out[b] != want) {
        if (wrong == 0) std::printf("missing __syncthreads, %u threads: block %u sums to %g, the right sum is %g\n", threads, b, out[b], want);
        ++wrong;
      }
    }
    EXPECT_EQ(wrong, static_cast<int>(blocks)) << threads << " threads: every block should be wrong";
    EXPECT_EQ(out, again) << "the schedule is deterministic";
  }
}

template <bool kXor, int kLaneError>
std::vector<float> run_warp_sum(const std::vector<float>& x, unsigned threads) {
  std::vector<float> out(x.size());
  cc::launch(warp_sum<kXor, kLaneError>, static_cast<unsigned>(x.size()) / threads, threads, 0, x.data(), out.data());
  return out;
}

TEST(CudaOnCpu, WarpReductionByShuffles) {
  const unsigned threads = 128, blocks = 3;
  const auto x = small_integers(size_t{blocks} * threads, 7);
  const auto by_xor = run_warp_sum<true, 0>(x, threads);
  const auto by_down = run_warp_sum<false, 0>(x, threads);
  for (size_t w = 0; w < x.size() / 32; ++w) {
    float want = 0.0f;
    for (size_t l = 0; l < 32; ++l) want += x[w * 32 + l];
    for (size_t l = 0; l < 32; ++l) EXPECT_EQ(by_xor[w * 32 + l], want) << "xor butterfly: warp " << w << " lane " << l;
    EXPECT_EQ(by_down[w * 32], want) << "shuffle-down tree: warp " << w;
  }
}

// The same kernels with every shuffle distance off by one lane: the tree reads lanes
// 17, 9, 5, 3, 2 further on, the butterfly xors with 15, 7, 3, 1, 0 (the last step adds a lane
// to itself). (A butterfly off by +1, masks 17, 9, 5, 3, 2, is still right: any five independent
// masks reach all 32 lanes once each — the model computes that too.)
TEST(CudaOnCpu, WrongShuffleLaneGivesAWrongAnswer) {
  const unsigned threads = 128, blocks = 3;
  const auto x = small_integers(size_t{blocks} * threads, 8);
  const auto by_xor = run_warp_sum<true, -1>(x, threads);
  const auto by_down = run_warp_sum<false, 1>(x, threads);
  const auto by_xor_plus_one = run_warp_sum<true, 1>(x, threads);
  int wrong_xor = 0, wrong_down = 0;
  for (size_t w = 0; w < x.size() / 32; ++w) {
    float want = 0.0f;
    for (size_t l = 0; l < 32; ++l) want += x[w * 32 + l];
    for (size_t l = 0; l < 32; ++l) EXPECT_EQ(by_xor_plus_one[w * 32 + l], want) << "xor masks 17, 9, 5, 3, 2";
    if (by_xor[w * 32] != want) {
      if (wrong_xor++ == 0) std::printf("xor mask off by one (-1): warp %zu lane 0 holds %g, the right sum is %g\n", w, by_xor[w * 32], want);
    }
    if (by_down[w * 32] != want) {
      if (wrong_down++ == 0) std::printf("down offset off by one (+1): warp %zu lane 0 holds %g, the right sum is %g\n", w, by_down[w * 32], want);
    }
  }
  EXPECT_EQ(wrong_xor, 12);
  EXPECT_EQ(wrong_down, 12);
}

TEST(CudaOnCpu, PartialLastWarpWithItsOwnMask) {
  for (unsigned threads : {1u, 8u, 31u, 32u, 33u, 40u, 100u}) {
    const unsigned blocks = 3, warps = (threads + 31) / 32;
    const auto x = small_integers(size_t{blocks} * threads, threads + 50);
    std::vector<float> guarded(size_t{blocks} * warps), unguarded(size_t{blocks} * warps);
    cc::launch(partial_warp_sum<true>, blocks, threads, 0, x.data(), guarded.data());
    cc::launch(partial_warp_sum<false>, blocks, threads, 0, x.data(), unguarded.data());
    for (unsigned b = 0; b < blocks; ++b) {
      for (unsigned w = 0; w < warps; ++w) {
        const unsigned lanes = std::min(32u, threads - w * 32);
        float want = 0.0f;
        for (unsigned l = 0; l < lanes; ++l) want += x[size_t{b} * threads + w * 32 + l];
        EXPECT_EQ(guarded[b * warps + w], want) << threads << " threads, block " << b << " warp " << w;
        // Without the guard lane 0 adds values shuffled from lanes past the end: the poison.
        if (lanes < 32) {
          EXPECT_TRUE(std::isnan(unguarded[b * warps + w])) << threads << " threads, warp " << w;
        } else {
          EXPECT_EQ(unguarded[b * warps + w], want);
        }
      }
    }
  }
}

TEST(CudaOnCpu, ShuffleWidthSegments) {
  const unsigned threads = 96, blocks = 2;
  std::mt19937 rng(3);
  std::vector<int> x(size_t{blocks} * threads);
  for (auto& v : x) v = static_cast<int>(rng() % 1000) - 500;
  for (int width : {1, 2, 4, 8, 16, 32}) {
    std::vector<int> scan(x.size()), total(x.size());
    cc::launch(segment_scan, blocks, threads, 0, x.data(), scan.data(), total.data(), width);
    for (size_t seg = 0; seg < x.size(); seg += static_cast<size_t>(width)) {
      int sum = 0;
      for (size_t i = seg; i < seg + static_cast<size_t>(width); ++i) {
        sum += x[i];
        EXPECT_EQ(scan[i], sum) << "width " << width << " element " << i;
      }
      for (size_t i = seg; i < seg + static_cast<size_t>(width); ++i) EXPECT_EQ(total[i], sum) << "width " << width;
    }
  }
}

TEST(CudaOnCpu, VotesAndBlockCountWithPartialLastWarp) {
  for (unsigned threads : {32u, 70u, 100u}) {
    const unsigned blocks = 4;
    const size_t n = size_t{blocks} * threads;
    std::mt19937 rng(threads);
    std::vector<int> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = static_cast<int>(rng() % 3) - 1;
    // One warp with every predicate true, one with none, so all/any see both answers.
    for (unsigned l = 0; l < 32 && l < threads; ++l) x[l] = 1;
    for (unsigned l = 0; l < 32 && l < threads; ++l) x[threads + l] = 0;
    std::vector<unsigned> ballot(n), half(n);
    std::vector<int> any(n), all(n), count(n);
    cc::launch(votes, blocks, threads, 0, x.data(), ballot.data(), any.data(), all.data(), half.data(), count.data());
    for (unsigned b = 0; b < blocks; ++b) {
      int block_count = 0;
      for (unsigned t = 0; t < threads; ++t) block_count += x[size_t{b} * threads + t] > 0;
      for (unsigned t = 0; t < threads; ++t) {
        const size_t i = size_t{b} * threads + t;
        const unsigned first = t - t % 32, lanes = std::min(32u, threads - first);
        unsigned want = 0;
        for (unsigned l = 0; l < lanes; ++l) want |= (x[size_t{b} * threads + first + l] > 0 ? 1u : 0u) << l;
        const unsigned exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
        const unsigned parity = t % 2 == 0 ? 0x55555555u : 0xaaaaaaaau;
        EXPECT_EQ(ballot[i], want) << threads << " threads, thread " << t;
        EXPECT_EQ(any[i], want != 0);
        EXPECT_EQ(all[i], want == exists) << threads << " threads, thread " << t;
        EXPECT_EQ(half[i], want & parity);
        EXPECT_EQ(count[i], block_count);
      }
    }
  }
}

TEST(CudaOnCpu, MissingSyncwarpGivesAWrongAnswer) {
  const unsigned threads = 64, blocks = 2;
  const auto x = small_integers(size_t{blocks} * threads, 11);
  std::vector<float> good(x.size()), bad(x.size());
  cc::launch(warp_rotate<true>, blocks, threads, 0, x.data(), good.data());
  cc::launch(warp_rotate<false>, blocks, threads, 0, x.data(), bad.data());
  int wrong = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t next = (i & ~size_t{31}) | ((i + 1) & 31);
    EXPECT_EQ(good[i], x[next]);
    wrong += bad[i] != x[next];
  }
  std::printf("missing __syncwarp: %d of %zu threads read a neighbour's stale value\n", wrong, x.size());
  EXPECT_GT(wrong, 0);
}

TEST(CudaOnCpu, HalfWarpsMeetAloneThenTogether) {
  const unsigned threads = 64, blocks = 2;
  std::mt19937 rng(15);
  std::vector<int> x(size_t{blocks} * threads), y(x.size());
  for (auto& v : x) v = static_cast<int>(rng() % 100);
  cc::launch(half_warps_then_whole, blocks, threads, 0, x.data(), y.data());
  std::vector<int> v = x;
  for (size_t i = 0; i < x.size(); ++i) {  // lower halves pair once, upper halves three times
    const int pair = x[i] + x[i ^ 1];
    v[i] = i % 32 < 16 ? pair : 4 * pair;
  }
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], v[i] + v[i ^ 16]) << i;
}

TEST(CudaOnCpu, ExitedLanesAreNotWaitedFor) {
  const unsigned n = 45;  // the second warp has 13 live lanes; lane 12's partner has exited
  const auto x = small_integers(64, 12);
  std::vector<float> y(64, 0.0f);
  cc::launch(early_exit_pairs, 1, 64, 0, x.data(), y.data(), n);
  for (unsigned i = 0; i < n; ++i) {
    if ((i ^ 1) < n) {
      EXPECT_EQ(y[i], x[i] + x[i ^ 1]) << i;
    } else {
      EXPECT_TRUE(std::isnan(y[i])) << "lane " << i << " read an exited lane: the poison";
    }
  }
  for (unsigned i = n; i < 64; ++i) EXPECT_EQ(y[i], 0.0f);
}

TEST(CudaOnCpu, ThreadAndBlockCoordinates) {
  const dim3 grid(3, 2, 2), block(5, 4, 3);  // 60 threads: a partial second warp
  const unsigned per_block = 60, total = per_block * 12;
  std::vector<unsigned> out(size_t{total} * 8, 0xdeadu);
  cc::launch({.os_threads = 2}, coordinates, grid, block, 0, out.data());
  unsigned row = 0;
  for (unsigned bz = 0; bz < 2; ++bz) {
    for (unsigned by = 0; by < 2; ++by) {
      for (unsigned bx = 0; bx < 3; ++bx) {
        for (unsigned tz = 0; tz < 3; ++tz) {
          for (unsigned ty = 0; ty < 4; ++ty) {
            for (unsigned tx = 0; tx < 5; ++tx, ++row) {
              const unsigned* o = &out[size_t{row} * 8];
              const unsigned t = tx + 5 * (ty + 4 * tz);
              EXPECT_EQ(o[0], tx);
              EXPECT_EQ(o[1], ty);
              EXPECT_EQ(o[2], tz);
              EXPECT_EQ(o[3], bx);
              EXPECT_EQ(o[4], by);
              EXPECT_EQ(o[5], bz);
              EXPECT_EQ(o[6], t - t % 32) << "warps are 32 consecutive linear indices";
              EXPECT_EQ(o[7], total);
            }
          }
        }
      }
    }
  }
}

int scalar_dp4a(int a, int b, int c) {
  int64_t sum = c;
  for (int i = 0; i < 4; ++i) {
    sum += static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i)) * static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
  }
  return static_cast<int>(static_cast<uint32_t>(sum));
}
unsigned scalar_udp4a(unsigned a, unsigned b, unsigned c) {
  uint64_t sum = c;
  for (int i = 0; i < 4; ++i) sum += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
  return static_cast<unsigned>(sum);
}

TEST(CudaOnCpu, Dp4aBothSignednesses) {
  const int n = 5000;
  std::mt19937 rng(4);
  std::vector<int> a(n), b(n), c(n);
  for (int i = 0; i < n; ++i) {
    a[i] = static_cast<int>(rng());
    b[i] = static_cast<int>(rng());
    c[i] = static_cast<int>(rng());
  }
  // The extremes: every byte -128 or 255, and c at the edges so the sum wraps.
  a[0] = b[0] = static_cast<int>(0x80808080u);
  c[0] = std::numeric_limits<int>::max();
  a[1] = b[1] = -1;
  c[1] = std::numeric_limits<int>::min();
  a[2] = b[2] = 0x7f7f7f7f;
  c[2] = -1;
  std::vector<int> out_s(n);
  std::vector<unsigned> out_u(n);
  cc::launch(dp4a, (n + 127) / 128, 128, 0, a.data(), b.data(), c.data(), out_s.data(), out_u.data(), n);
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(out_s[i], scalar_dp4a(a[i], b[i], c[i])) << i;
    EXPECT_EQ(out_u[i], scalar_udp4a(static_cast<unsigned>(a[i]), static_cast<unsigned>(b[i]), static_cast<unsigned>(c[i]))) << i;
  }
  EXPECT_EQ(out_s[0], std::numeric_limits<int>::min() + 4 * 16384 - 1);  // wrapped past INT_MAX
  EXPECT_EQ(out_u[1], 4u * 255u * 255u + 0x80000000u);
  // The char4 / uchar4 overloads are the same products.
  EXPECT_EQ(__dp4a(make_char4(-128, 127, -1, 3), make_char4(-128, -128, 5, 7), 10), 16384 - 16256 - 5 + 21 + 10);
  EXPECT_EQ(__dp4a(make_uchar4(255, 1, 2, 3), make_uchar4(255, 4, 5, 6), 1u), 65025u + 4u + 10u + 18u + 1u);
}

TEST(CudaOnCpu, HalfAndBfloat16ConversionsMatchCoreFp16) {
  const int n_bits = 65536;
  std::vector<unsigned short> bits(n_bits);
  for (int i = 0; i < n_bits; ++i) bits[i] = static_cast<unsigned short>(i);
  // Every half's value, every midpoint between neighbouring finite halves (ties to even), the
  // same for bf16, and random floats of every exponent.
  std::vector<float> f;
  for (int i = 0; i < n_bits; ++i) {
    const float h = hearth::fp16_to_fp32(static_cast<uint16_t>(i));
    f.push_back(h);
    if ((i & 0x7c00) != 0x7c00 && (i & 0x7fff) != 0x7bff) {
      const float next = hearth::fp16_to_fp32(static_cast<uint16_t>(i + 1));
      f.push_back(static_cast<float>((static_cast<double>(h) + next) / 2));
    }
    const float bh = hearth::bf16_to_fp32(static_cast<uint16_t>(i));
    f.push_back(std::bit_cast<float>(std::bit_cast<uint32_t>(bh) | 0x8000u));  // a bf16 tie
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 20000; ++i) f.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  const int n_floats = static_cast<int>(f.size());
  std::vector<float> h2f(n_bits), b2f(n_bits), lo(n_bits), hi(n_bits);
  std::vector<unsigned short> f2h(f.size()), f2b(f.size());
  const int n = std::max(n_bits, n_floats);
  cc::launch(conversions, (n + 255) / 256, 256, 0, bits.data(), f.data(), h2f.data(), f2h.data(), b2f.data(), f2b.data(),
             lo.data(), hi.data(), n_bits, n_floats);
  for (int i = 0; i < n_bits; ++i) {
    const auto u = static_cast<uint16_t>(i);
    ASSERT_EQ(std::bit_cast<uint32_t>(h2f[i]), std::bit_cast<uint32_t>(hearth::fp16_to_fp32(u))) << i;
    ASSERT_EQ(std::bit_cast<uint32_t>(b2f[i]), std::bit_cast<uint32_t>(hearth::bf16_to_fp32(u))) << i;
    ASSERT_EQ(std::bit_cast<uint32_t>(lo[i]), std::bit_cast<uint32_t>(hearth::fp16_to_fp32(u))) << i;
    ASSERT_EQ(std::bit_cast<uint32_t>(hi[i]), std::bit_cast<uint32_t>(hearth::fp16_to_fp32(static_cast<uint16_t>(n_bits - 1 - i))));
  }
  for (int i = 0; i < n_floats; ++i) {
    ASSERT_EQ(f2h[i], hearth::fp32_to_fp16(f[i])) << std::bit_cast<uint32_t>(f[i]);
    ASSERT_EQ(f2b[i], hearth::fp32_to_bf16(f[i])) << std::bit_cast<uint32_t>(f[i]);
  }
  // Half arithmetic rounds once.
  const __half a = __float2half(1.0f), b = __float2half(0.00048828125f);  // 1 + 2^-11: a tie
  EXPECT_EQ(__half_as_ushort(a + b), hearth::fp32_to_fp16(1.0f + 0.00048828125f));
  EXPECT_EQ(__half2float(__hmul(__float2half(3.0f), __float2half(-0.5f))), -1.5f);
}

TEST(CudaOnCpu, AtomicsFromEveryThread) {
  const unsigned blocks = 50, threads = 96;
  const int n = static_cast<int>(blocks * threads);
  for (unsigned os_threads : {1u, 4u}) {
    int isum = 0, imax = std::numeric_limits<int>::min(), imin = std::numeric_limits<int>::max();
    unsigned usum = 0;
    float fsum = 0.0f;
    unsigned long long cas = 0;
    cc::launch({.os_threads = os_threads}, atomics, blocks, threads, 0, &isum, &usum, &fsum, &imax, &imin, &cas);
    int want_isum = 0, want_max = std::numeric_limits<int>::min();
    for (int i = 0; i < n; ++i) {
      want_isum += i % 7 - 3;
      want_max = std::max(want_max, i * 37 % 1001);
    }
    EXPECT_EQ(isum, want_isum);
    EXPECT_EQ(usum, static_cast<unsigned>(n));
    EXPECT_EQ(fsum, 0.5f * static_cast<float>(n));
    EXPECT_EQ(imax, want_max);
    EXPECT_EQ(imin, -want_max);
    EXPECT_EQ(cas, static_cast<unsigned long long>(n) * static_cast<unsigned long long>(n - 1) / 2);
  }
}

TEST(CudaOnCpu, DynamicSharedMemory) {
  const unsigned blocks = 6, threads = 200;
  std::mt19937 rng(6);
  std::vector<int> x(size_t{blocks} * threads);
  for (auto& v : x) v = static_cast<int>(rng() % 100000);
  for (int n_bins : {1, 7, 300}) {
    std::vector<int> hist(static_cast<size_t>(n_bins), 0), want(static_cast<size_t>(n_bins), 0);
    for (int v : x) ++want[static_cast<size_t>(v % n_bins)];
    cc::launch({.os_threads = 2}, shared_histogram, blocks, threads, static_cast<size_t>(n_bins) * sizeof(int), x.data(),
               hist.data(), n_bins);
    EXPECT_EQ(hist, want) << n_bins << " bins";
  }
  const auto f = small_integers(size_t{blocks} * threads, 13);
  std::vector<float> y(f.size()), uninit(f.size());
  cc::launch(reverse_block<true>, blocks, threads, threads * sizeof(float), f.data(), y.data());
  for (size_t i = 0; i < f.size(); ++i) {
    const size_t base = i / threads * threads;
    EXPECT_EQ(y[i], f[base + threads - 1 - (i - base)]);
  }
  // Shared memory no thread wrote holds the model's fill (0xFF bytes: a NaN), not old values.
  cc::launch(reverse_block<false>, blocks, threads, threads * sizeof(float), f.data(), uninit.data());
  for (float v : uninit) EXPECT_EQ(std::bit_cast<uint32_t>(v), 0xffffffffu);
}

TEST(CudaOnCpuDeathTest, BarrierOnlySomeThreadsReachIsADeadlock) {
  // gtest's default "fast" style (fork, no exec) also works under qemu-user; no threads are
  // running when it forks (a launch joins its helper threads).
  std::vector<float> y(64);
  EXPECT_DEATH(cc::launch(barrier_in_branch, 2, 32, 0, y.data()),
               "block \\(0,0,0\\).*deadlock.*16 thread\\(s\\) wait at __syncthreads.*16 thread\\(s\\) have exited");
  EXPECT_DEATH(cc::launch({.os_threads = 2}, barrier_in_branch, 4, 64, 0, y.data()), "deadlock");
  EXPECT_DEATH(cc::launch(shuffle_against_barrier, 1, 32, 0, y.data()),
               "deadlock.*16 thread\\(s\\) wait at __syncthreads.*16 thread\\(s\\) wait at warp intrinsics");
  EXPECT_DEATH(cc::launch(mismatched_intrinsics, 1, 32, 0, y.data()), "different intrinsics or masks");
}

// Under AddressSanitizer (scripts/test.sh's build-san) kernels run instrumented on their fiber
// stacks: a block that writes past its dynamic shared memory is caught like any heap overflow.
#if defined(__SANITIZE_ADDRESS__)
TEST(CudaOnCpuDeathTest, AddressSanitizerSeesKernelsOverrunSharedMemory) {
  const unsigned threads = 64;
  const auto x = small_integers(threads, 14);
  std::vector<float> y(threads);
  EXPECT_DEATH(cc::launch(reverse_block<true>, 1, threads, (threads - 1) * sizeof(float), x.data(), y.data()),
               "heap-buffer-overflow");
}
#endif

}  // namespace
