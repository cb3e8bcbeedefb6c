// ThreadPool: every index covered exactly once with valid thread indices, over many sizes,
// chunkings, thread counts and spin budgets (0 µs: every wait goes to sleep, which exercises the
// lost-wake-up paths; 1 µs: waits race between spinning and sleeping); calls from inside a job;
// many tiny jobs back to back; destruction while spinning, sleeping or never used; and an idle
// pool that stops using CPU once its spin budget is over.
#include <gtest/gtest.h>

#include <time.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "core/thread_pool.h"

namespace hearth {
namespace {

using std::chrono::microseconds;

constexpr microseconds kSpins[] = {microseconds{0}, microseconds{1}, ThreadPool::kDefaultSpin};

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

TEST(ThreadPool, CoversEveryIndexOnce) {
  for (const microseconds spin : kSpins) {
    for (const int threads : {1, 2, 3, 4, 7}) {
      ThreadPool pool(threads, spin);
      ASSERT_EQ(pool.size(), threads);
      for (const int64_t n : {0, 1, 2, 3, 5, 16, 17, 100, 1001}) {
        for (const int64_t min_chunk : {1, 3, 16, 1000}) {
          std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
          std::atomic<int> bad_ranges{0}, calls{0};
          pool.parallel_for(
              n,
              [&](int64_t begin, int64_t end, int thread) {
                calls.fetch_add(1);
                if (begin >= end || begin < 0 || end > n || thread < 0 || thread >= threads) bad_ranges.fetch_add(1);
                for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
              },
              min_chunk);
          EXPECT_EQ(bad_ranges.load(), 0) << "n=" << n << " min_chunk=" << min_chunk << " threads=" << threads;
          const int64_t max_calls = std::min<int64_t>(threads, std::max<int64_t>(1, n / min_chunk));
          EXPECT_LE(calls.load(), n == 0 ? 0 : max_calls) << "n=" << n << " min_chunk=" << min_chunk;
          for (int64_t i = 0; i < n; ++i) {
            ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1)
                << "index " << i << " of n=" << n << " min_chunk=" << min_chunk << " threads=" << threads
                << " spin=" << spin.count();
          }
        }
      }
    }
  }
}

// Each chunk runs on its own thread: the thread indices of one call are distinct, so per-thread
// scratch is never shared.
TEST(ThreadPool, ThreadIndicesOfOneCallAreDistinct) {
  ThreadPool pool(4);
  for (int rep = 0; rep < 200; ++rep) {
    std::vector<std::atomic<int>> per_thread(4);
    pool.parallel_for(4, [&](int64_t, int64_t, int thread) { per_thread[static_cast<size_t>(thread)].fetch_add(1); });
    for (int t = 0; t < 4; ++t) ASSERT_EQ(per_thread[static_cast<size_t>(t)].load(), 1) << "rep " << rep;
  }
}

// The caller waits for a worker that is still busy long after the caller's spin budget: it must
// sleep and be woken, not miss the end of the job.
TEST(ThreadPool, CallerWaitsForSlowWorker) {
  for (const microseconds spin : kSpins) {
    ThreadPool pool(2, spin);
    std::atomic<int> done{0};
    for (int rep = 0; rep < 5; ++rep) {
      pool.parallel_for(2, [&](int64_t begin, int64_t, int) {
        if (begin == 1) std::this_thread::sleep_for(std::chrono::milliseconds(3));
        done.fetch_add(1);
      });
      ASSERT_EQ(done.load(), 2 * (rep + 1));
    }
  }
}

// A parallel_for from inside a job runs inline on the thread making it, with that thread's
// index; many successive outer jobs each make such calls.
TEST(ThreadPool, CallsFromInsideAJobRunInline) {
  for (const microseconds spin : kSpins) {
    ThreadPool pool(3, spin);
    for (int job = 0; job < 300; ++job) {
      constexpr int64_t kOuter = 7, kInner = 11;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(kOuter * kInner));
      std::atomic<int> wrong_thread{0};
      pool.parallel_for(kOuter, [&](int64_t o0, int64_t o1, int outer_thread) {
        for (int64_t o = o0; o < o1; ++o) {
          pool.parallel_for(kInner, [&](int64_t i0, int64_t i1, int inner_thread) {
            if (inner_thread != outer_thread || i0 != 0 || i1 != kInner) wrong_thread.fetch_add(1);
            for (int64_t i = i0; i < i1; ++i) hits[static_cast<size_t>(o * kInner + i)].fetch_add(1);
          });
        }
      });
      ASSERT_EQ(wrong_thread.load(), 0) << "job " << job;
      for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i].load(), 1) << "job " << job << " index " << i;
    }
  }
}

// Many tiny jobs back to back: a lost wake-up hangs here, a job run twice or skipped by a
// worker shows in the sum.
TEST(ThreadPool, ManyTinyJobs) {
  for (const microseconds spin : kSpins) {
    const int jobs = spin.count() == 0 ? 20000 : 100000;
    ThreadPool pool(3, spin);
    std::atomic<int64_t> sum{0};
    int64_t expected = 0;
    for (int j = 0; j < jobs; ++j) {
      const int64_t n = 1 + j % 5;  // 1 (inline), 2 (fewer chunks than threads) ... 5
      pool.parallel_for(n, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) sum.fetch_add(i + 1, std::memory_order_relaxed);
      });
      expected += n * (n + 1) / 2;
    }
    EXPECT_EQ(sum.load(), expected) << "spin " << spin.count() << " µs";
  }
}

TEST(ThreadPool, DestroysWhileIdle) {
  for (int rep = 0; rep < 50; ++rep) {
    ThreadPool never_used(3);
  }
  for (const microseconds spin : kSpins) {
    // Right after a job (workers spinning), and after they have gone to sleep.
    for (const int wait_ms : {0, 5}) {
      auto pool = std::make_unique<ThreadPool>(3, spin);
      std::atomic<int> ran{0};
      pool->parallel_for(3, [&](int64_t, int64_t, int) { ran.fetch_add(1); });
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
      pool.reset();
      EXPECT_EQ(ran.load(), 3);
    }
  }
}

// An idle server must not burn CPU: once the spin budget is over, workers sleep. Over 300 ms of
// idleness, three spinning workers would add ~900 ms of CPU time (or whatever the cores allow);
// sleeping ones add next to nothing.
TEST(ThreadPool, IdleWorkersSleep) {
  ThreadPool pool(4);
  std::atomic<int> ran{0};
  pool.parallel_for(4, [&](int64_t, int64_t, int) { ran.fetch_add(1); });
  ASSERT_EQ(ran.load(), 4);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // far beyond the spin budget
  const double before = process_cpu_seconds();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const double used = process_cpu_seconds() - before;
  EXPECT_LT(used, 0.03) << "an idle pool used " << used << " s of CPU in 0.3 s";
  // And it still works after sleeping.
  pool.parallel_for(4, [&](int64_t, int64_t, int) { ran.fetch_add(1); });
  EXPECT_EQ(ran.load(), 8);
}

}  // namespace
}  // namespace hearth
