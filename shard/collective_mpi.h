// The Open MPI collective (built when CMake finds MPI; HEARTH_HAS_MPI is then defined): the
// ranks of an `mpirun`, on one host or several. Open MPI chooses the transport by itself —
// shared memory between ranks of one host, TCP, or UCX over RDMA where the fabric has it.
//
// The sums are taken as an all-gather followed by a local sum in rank order, so every rank gets
// the same bits (an MPI_Allreduce may round differently on different ranks) and the same bits
// as InProcessCollective; a tensor-parallel all-reduce is a few KiB per token, where the
// all-gather's one round is the cheapest anyway.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "shard/collective.h"

namespace hearth::shard {

// MPI_Init_thread on construction (one per process, before any MpiCollective), MPI_Finalize on
// destruction. Threads: MPI_THREAD_SERIALIZED (one thread at a time makes MPI calls).
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
  int world_rank() const { return rank_; }
  int world_size() const { return size_; }
  // True when this process was started by mpirun / mpiexec (Open MPI or PMIx environment).
  static bool launched_by_mpirun();

 private:
  int rank_ = 0, size_ = 1;
  bool finalize_ = false;
};

class MpiCollective final : public Collective {
 public:
  // Every rank of MPI_COMM_WORLD. Needs a live MpiRuntime.
  static std::unique_ptr<MpiCollective> world();
  ~MpiCollective() override;
  // The ranks of this group that pass the same `color` form a new group, ordered by `key` then
  // by rank here (MPI_Comm_split). Every rank of this group must call it.
  std::unique_ptr<MpiCollective> split(int color, int key) const;
  // True when every rank of this group runs on one host (they share memory:
  // MPI_Comm_split_type with MPI_COMM_TYPE_SHARED gives one group as large as this one). Every
  // rank must call it; all get the same answer.
  bool one_host() const;

  std::string name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(std::span<float> data) override;
  void all_reduce_sum_f16(std::span<uint16_t> data) override;
  void all_gather(std::span<const float> mine, std::span<float> all, std::span<const int64_t> counts) override;
  void broadcast(std::span<std::byte> data, int root) override;
  void barrier() override;
  // MPI_Ibcast polled with MPI_Test: spinning for 2 ms, then sleeping 0.1-1 ms between tests, so
  // an idle follower does not hold a core.
  void broadcast_idle(std::span<std::byte> data, int root) override;

  // How every other operation waits: it starts the non-blocking collective and polls it with
  // MPI_Test, spinning for `spin`, then sleeping `nap` between polls. A blocking MPI call spins
  // for as long as the peer takes; on a machine whose cores are shared (other processes, or
  // more threads than cores) a rank whose peer is descheduled then burns its own time slice
  // waiting, and the two ranks rarely run at once. Default 200 us (the ThreadPool's spin) and
  // 20 us; the environment's HEARTH_MPI_SPIN_US / HEARTH_MPI_NAP_US override them (a negative
  // spin: spin forever, as a blocking call does).
  void set_wait(std::chrono::microseconds spin, std::chrono::microseconds nap) { spin_ = spin, nap_ = nap; }

  // Point to point (pipeline links between stages): `data` to rank `dest` of this group with
  // `tag`; from rank `source` into `data` (the size must be the sender's). `idle`: the receiver
  // may wait long (between requests) and backs off to sleeping up to 1 ms between polls.
  void send(std::span<const std::byte> data, int dest, int tag);
  void recv(std::span<std::byte> data, int source, int tag, bool idle = false);

 private:
  struct Comm;
  explicit MpiCollective(std::unique_ptr<Comm> comm);
  // Polls `request` (an MPI_Request) until it completes, as set_wait says.
  void wait(void* request, const char* what, bool idle = false);
  std::chrono::microseconds spin_{200}, nap_{20};
  std::unique_ptr<Comm> comm_;
  int rank_ = 0, size_ = 1;
  std::vector<float> gathered_;
  std::vector<uint16_t> gathered_f16_;
};

}  // namespace hearth::shard
