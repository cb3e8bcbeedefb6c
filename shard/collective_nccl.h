// The NCCL collective (built when the CUDA backend is on and nccl.h / libnccl are found;
// HEARTH_HAS_NCCL is then defined): the GPUs of one node, one rank per GPU. The interface takes
// host buffers like the others: each operation copies them to a device buffer of its own, runs
// the NCCL collective on its stream and copies back (a stage that keeps its activations on the
// GPU could hand device buffers straight to NCCL; not built yet). NCCL's ring all-reduce gives
// every rank the same bits.
//
// Compiled in CI; untested where no GPU is present (the build machines have none).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "shard/collective.h"

namespace hearth::shard {

// ncclUniqueId's bytes: made by one rank (new_nccl_id), handed to the others out of band (an
// MPI broadcast, a file), then every rank constructs its NcclCollective with it.
struct NcclId {
  std::array<char, 128> bytes{};
};
NcclId new_nccl_id();

class NcclCollective final : public Collective {
 public:
  // Rank `rank` of `size` on CUDA device `device` (ncclCommInitRank: every rank must call it,
  // concurrently, with the same id).
  NcclCollective(int device, int rank, int size, const NcclId& id);
  ~NcclCollective() override;
  // One collective per device of this process, [i] on devices[i] as rank i (ncclCommInitAll);
  // each must then be driven by its own thread.
  static std::vector<std::unique_ptr<NcclCollective>> for_devices(const std::vector<int>& devices);

  std::string name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(std::span<float> data) override;
  void all_reduce_sum_f16(std::span<uint16_t> data) override;
  void all_gather(std::span<const float> mine, std::span<float> all, std::span<const int64_t> counts) override;
  void broadcast(std::span<std::byte> data, int root) override;
  void barrier() override;

 private:
  struct State;
  explicit NcclCollective(std::unique_ptr<State> state);
  // A device buffer of at least `bytes` (grown as needed).
  void* scratch(size_t bytes);
  std::unique_ptr<State> state_;
  int rank_ = 0, size_ = 1;
};

}  // namespace hearth::shard
