// Collectives of a tensor-parallel group: all-reduce (sum, f32 and f16), all-gather, broadcast
// and barrier among the `size()` ranks of one group. Implementations:
//  - InProcessCollective (below): N ranks as threads of one process meeting at a rendezvous; what
//    the tests use to compare a tensor-parallel stage with one device.
//  - MpiCollective (collective_mpi.h, when Open MPI is found): ranks of an `mpirun`, on one host
//    or several; Open MPI picks the fabric (shared memory, TCP, UCX over RDMA).
//  - NcclCollective (collective_nccl.h, when CUDA and NCCL are found): the GPUs of one node.
//
// Contract. Every rank of a group calls the same operations in the same order with the same
// sizes (collective semantics); a rank's object is driven by one thread at a time. Results are
// bit-identical on every rank (a sum is taken in rank order, the same for all), so the ranks of
// a tensor-parallel stage keep identical hidden states. Buffers are host memory. Failures — a
// peer that never arrives (timeout), a group aborted by another rank, a transport error —
// throw hearth::Error naming the operation; after one, the group is unusable.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "engine/model/tensor_parallel.h"

namespace hearth::shard {

class Collective : public engine::TensorParallelComm {
 public:
  // What the implementation is ("in-process", "mpi", "nccl"), for logs and errors.
  virtual std::string name() const = 0;
  // f16 values (IEEE half bits): summed in f32 in rank order, rounded to f16 once.
  virtual void all_reduce_sum_f16(std::span<uint16_t> data) = 0;
  // Rank `root`'s bytes copied to every rank's `data` (same size everywhere).
  virtual void broadcast(std::span<std::byte> data, int root) = 0;
  // Returns once every rank has entered it.
  virtual void barrier() = 0;
  // broadcast() for a receiver that may wait long (a follower between requests): an
  // implementation that busy-polls (MPI) backs off to sleeping, at some latency. Every rank of
  // one broadcast must use the same call (broadcast or broadcast_idle): MPI matches a
  // non-blocking broadcast only with another.
  virtual void broadcast_idle(std::span<std::byte> data, int root) { broadcast(data, root); }
  using engine::TensorParallelComm::all_gather;
  using engine::TensorParallelComm::all_reduce_sum;
};

// The meeting point of N in-process ranks. Create one, then one InProcessCollective per rank,
// each used by its own thread.
class InProcessGroup {
 public:
  // `timeout`: how long a rank waits for the others at one operation before it throws.
  explicit InProcessGroup(int size, std::chrono::milliseconds timeout = std::chrono::seconds(60));
  int size() const { return size_; }
  // Makes every rank waiting now or later throw hearth::Error with `reason` (a rank that failed
  // calls it so that its peers do not wait for it until the timeout).
  void abort(const std::string& reason);

 private:
  friend class InProcessCollective;
  // Blocks until all ranks arrived at this generation of the barrier; throws when aborted or
  // timed out. `what` names the operation for the error.
  void arrive_and_wait(const char* what);

  int size_;
  std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
  std::string abort_reason_;
  // Each rank's buffer of the current operation, posted before the first barrier.
  std::vector<const void*> posted_;
};

class InProcessCollective final : public Collective {
 public:
  InProcessCollective(std::shared_ptr<InProcessGroup> group, int rank);
  std::string name() const override { return "in-process"; }
  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  void all_reduce_sum(std::span<float> data) override;
  void all_reduce_sum_f16(std::span<uint16_t> data) override;
  void all_gather(std::span<const float> mine, std::span<float> all, std::span<const int64_t> counts) override;
  void broadcast(std::span<std::byte> data, int root) override;
  void barrier() override;
  // The group's abort: a rank that failed wakes its peers with `reason`.
  void abort(const std::string& reason) { group_->abort(reason); }

 private:
  std::shared_ptr<InProcessGroup> group_;
  int rank_;
  std::vector<float> sum_;
};

// Rank collectives of an in-process group of `size` ranks, [r] for rank r.
std::vector<std::unique_ptr<InProcessCollective>> make_in_process_group(
    int size, std::chrono::milliseconds timeout = std::chrono::seconds(60));

}  // namespace hearth::shard
