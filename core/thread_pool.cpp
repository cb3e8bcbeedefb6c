#include "core/thread_pool.h"

#include <algorithm>

namespace hearth {

namespace {

// One step of a spin-wait: tells the core this is a busy loop (frees the pipeline for the
// sibling hyper-thread, saves power, avoids the memory-order flush when the loop exits).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

// Spins until done() or `budget` has passed; returns done()'s last value. Every 64 relax steps
// (a few microseconds) it reads the clock and yields the core: when there are more runnable
// threads than cores (more pool threads than cores, or a busy machine), the thread being
// waited for may need this core to make progress at all.
template <typename Done>
bool spin_until(Done done, std::chrono::microseconds budget) {
  if (budget.count() <= 0) return done();
  const auto deadline = std::chrono::steady_clock::now() + budget;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
    std::this_thread::yield();
  }
}

// The pool whose job this thread is running, and its index there: a parallel_for from inside
// a job runs inline instead of overwriting the job the pool is running.
thread_local const ThreadPool* tl_running_pool = nullptr;
thread_local int tl_running_index = 0;

struct RunningScope {
  const ThreadPool* saved_pool;
  int saved_index;
  RunningScope(const ThreadPool* pool, int index) : saved_pool(tl_running_pool), saved_index(tl_running_index) {
    tl_running_pool = pool;
    tl_running_index = index;
  }
  ~RunningScope() {
    tl_running_pool = saved_pool;
    tl_running_index = saved_index;
  }
  RunningScope(const RunningScope&) = delete;
  RunningScope& operator=(const RunningScope&) = delete;
};

// Chunk c of `chunks` over [0, n): contiguous, sizes differ by at most one.
std::pair<int64_t, int64_t> chunk_range(int64_t n, int chunks, int c) {
  const int64_t base = n / chunks, extra = n % chunks;
  const int64_t begin = c * base + std::min<int64_t>(c, extra);
  return {begin, begin + base + (c < extra ? 1 : 0)};
}

}  // namespace

ThreadPool::ThreadPool(int n_threads, std::chrono::microseconds spin) : n_threads_(std::max(1, n_threads)), spin_(spin) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  stopping_.store(true, std::memory_order_seq_cst);
  { std::lock_guard<std::mutex> lock(mutex_); }  // a worker between its check and its wait gets the notify
  work_ready_.notify_all();
  for (std::thread& t : workers_) t.join();
}

int ThreadPool::hardware_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

void ThreadPool::parallel_for(int64_t n, const Job& fn, int64_t min_chunk) {
  if (n <= 0) return;
  if (tl_running_pool == this) {
    fn(0, n, tl_running_index);
    return;
  }
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  const int chunks = static_cast<int>(std::min<int64_t>(n_threads_, max_chunks));
  if (chunks == 1) {
    RunningScope running(this, 0);
    fn(0, n, 0);
    return;
  }
  // Seqlock writer: an odd generation while the job is written (a worker with no chunk in the
  // previous job may be reading it right now, and must not take a half-written job for the old
  // one), the next even one publishes it.
  const uint64_t gen = generation_.load(std::memory_order_relaxed);
  generation_.store(gen + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  job_.store(&fn, std::memory_order_relaxed);
  job_n_.store(n, std::memory_order_relaxed);
  job_chunks_.store(chunks, std::memory_order_relaxed);
  pending_.store(chunks - 1, std::memory_order_relaxed);
  generation_.store(gen + 2, std::memory_order_seq_cst);  // publishes the stores above
  std::atomic_thread_fence(std::memory_order_seq_cst);    // store above before the load below
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lock(mutex_); }
    work_ready_.notify_all();
  }
  {
    RunningScope running(this, 0);
    const auto [begin, end] = chunk_range(n, chunks, 0);
    fn(begin, end, 0);
  }
  wait_for_workers();
}

void ThreadPool::wait_for_workers() {
  const auto done = [this] { return pending_.load(std::memory_order_acquire) == 0; };
  if (spin_until(done, spin_)) return;
  std::unique_lock<std::mutex> lock(mutex_);
  caller_sleeping_.store(true, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // store above before the pending_ loads
  work_done_.wait(lock, [this] { return pending_.load(std::memory_order_seq_cst) == 0; });
  caller_sleeping_.store(false, std::memory_order_relaxed);
}

uint64_t ThreadPool::wait_for_job(uint64_t seen) {
  uint64_t gen = seen;
  // Odd: a job is being written; wait for the even generation that publishes it.
  const auto arrived = [&] {
    gen = generation_.load(std::memory_order_acquire);
    return (gen != seen && gen % 2 == 0) || stopping_.load(std::memory_order_relaxed);
  };
  if (spin_until(arrived, spin_)) return gen;
  std::unique_lock<std::mutex> lock(mutex_);
  sleepers_.fetch_add(1, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // before the generation_ loads
  work_ready_.wait(lock, [&] {
    gen = generation_.load(std::memory_order_seq_cst);
    return (gen != seen && gen % 2 == 0) || stopping_.load(std::memory_order_seq_cst);
  });
  sleepers_.fetch_sub(1, std::memory_order_relaxed);
  return gen;
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = wait_for_job(seen);
    if (stopping_.load(std::memory_order_acquire)) return;
    // Seqlock read of the job: consistent when the (even) generation did not move meanwhile.
    // A job this worker has a chunk of cannot move (its caller waits for the chunk).
    const Job* job;
    int64_t n;
    int chunks;
    for (;;) {
      job = job_.load(std::memory_order_relaxed);
      n = job_n_.load(std::memory_order_relaxed);
      chunks = job_chunks_.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (generation_.load(std::memory_order_relaxed) == gen) break;
      gen = wait_for_job(seen);  // a newer job is being written or was published: read that one
      if (stopping_.load(std::memory_order_acquire)) return;
    }
    seen = gen;
    if (index >= chunks) continue;
    {
      RunningScope running(this, index);
      const auto [begin, end] = chunk_range(n, chunks, index);
      (*job)(begin, end, index);
    }
    const bool last = pending_.fetch_sub(1, std::memory_order_seq_cst) == 1;
    std::atomic_thread_fence(std::memory_order_seq_cst);  // before the caller_sleeping_ load
    if (last && caller_sleeping_.load(std::memory_order_seq_cst)) {
      { std::lock_guard<std::mutex> lock(mutex_); }
      work_done_.notify_one();
    }
  }
}

}  // namespace hearth
