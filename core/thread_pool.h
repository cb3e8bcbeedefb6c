// A fixed pool of worker threads for data-parallel loops. Workers are created once and wait
// for work; `parallel_for` splits [0, n) into contiguous chunks, runs them on the workers and
// the calling thread, and returns when all are done. No thread is created per call.
//
// Waiting is spin-then-sleep: a decode step issues hundreds of short parallel_for calls, and
// a condition-variable hand-off per call (futex wake + wait on both sides) costs as much as
// the work. So idle workers first spin on an atomic job generation, and the caller spins on
// an atomic count of unfinished chunks, each for a bounded time (the spin budget); only then
// do they sleep on a condition variable. An idle pool therefore stops using CPU one spin
// budget after its last job.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hearth {

class ThreadPool {
 public:
  // How long a waiting thread spins before it sleeps (both the workers waiting for a job and
  // the caller waiting for the workers).
  static constexpr std::chrono::microseconds kDefaultSpin{200};

  // n_threads counts the calling thread: ThreadPool(1) runs everything inline.
  explicit ThreadPool(int n_threads, std::chrono::microseconds spin = kDefaultSpin);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end, thread_index) over disjoint chunks covering [0, n); thread_index is
  // in [0, size()) and identifies per-thread scratch space. `min_chunk` keeps tiny loops on
  // fewer threads. One caller at a time (the pool is not shared between calling threads). A
  // call made from inside fn (on any thread of this pool) runs inline: fn2(0, n, index of the
  // thread making it), so per-thread scratch stays private to that thread.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t min_chunk = 1);

  // The number of hardware threads (at least 1).
  static int hardware_threads();

 private:
  using Job = std::function<void(int64_t, int64_t, int)>;

  void worker_loop(int index);
  // Spins, then sleeps, until generation_ is even and differs from `seen`, or the pool stops;
  // returns the generation seen (meaningless once stopping_).
  uint64_t wait_for_job(uint64_t seen);
  void wait_for_workers();

  int n_threads_;
  std::chrono::microseconds spin_;
  std::vector<std::thread> workers_;

  // The job of generation_, under a seqlock: the caller makes generation_ odd, writes the job,
  // makes it even again; workers read the job between two equal even generations, since a
  // worker with no chunk in a job is not waited for and may still be reading it when the next
  // job is written.
  std::atomic<const Job*> job_{nullptr};
  std::atomic<int64_t> job_n_{0};
  std::atomic<int> job_chunks_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // chunks of the current job not finished by workers
  std::atomic<bool> stopping_{false};

  // Sleeping side. sleepers_ / caller_sleeping_ say whether a notify is needed at all, so the
  // fast path takes no lock. Each side stores, then a seq_cst fence, then loads the other's
  // variable (Dekker), so either the sleeper sees the new state before it sleeps or the waker
  // sees the sleeper and notifies after taking the mutex. Without the explicit fences (seq_cst
  // store, then seq_cst load) test_thread_pool hung now and then under qemu-user emulating an
  // aarch64 CPU without LSE atomics; with them it does not.
  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_sleeping_{false};
};

}  // namespace hearth
