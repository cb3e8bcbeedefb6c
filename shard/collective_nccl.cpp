#include "shard/collective_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <numeric>

#include "core/error.h"

namespace hearth::shard {
namespace {

void check_cuda(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw Error(fmt::format("NCCL collective {}: CUDA: {}", what, cudaGetErrorString(rc)));
}

void check_nccl(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess) throw Error(fmt::format("NCCL {}: {}", what, ncclGetErrorString(rc)));
}

}  // namespace

struct NcclCollective::State {
  int device = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
  ~State() {
    if (scratch != nullptr) cudaFree(scratch);
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (comm != nullptr) ncclCommDestroy(comm);
  }
};

static_assert(sizeof(ncclUniqueId) == sizeof(NcclId::bytes), "ncclUniqueId is 128 bytes");

NcclId new_nccl_id() {
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "unique id");
  NcclId out;
  std::memcpy(out.bytes.data(), &id, sizeof(id));
  return out;
}

NcclCollective::NcclCollective(std::unique_ptr<State> state) : state_(std::move(state)) {
  check_nccl(ncclCommUserRank(state_->comm, &rank_), "rank");
  check_nccl(ncclCommCount(state_->comm, &size_), "size");
  check_cuda(cudaSetDevice(state_->device), "set device");
  check_cuda(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking), "stream");
}

NcclCollective::NcclCollective(int device, int rank, int size, const NcclId& id) : rank_(rank), size_(size) {
  auto state = std::make_unique<State>();
  state->device = device;
  check_cuda(cudaSetDevice(device), "set device");
  ncclUniqueId nid;
  std::memcpy(&nid, id.bytes.data(), sizeof(nid));
  check_nccl(ncclCommInitRank(&state->comm, size, nid, rank), "init");
  state_ = std::move(state);
  check_cuda(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking), "stream");
}

NcclCollective::~NcclCollective() = default;

std::vector<std::unique_ptr<NcclCollective>> NcclCollective::for_devices(const std::vector<int>& devices) {
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  check_nccl(ncclCommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data()), "init all");
  std::vector<std::unique_ptr<NcclCollective>> out;
  for (size_t i = 0; i < devices.size(); ++i) {
    auto state = std::make_unique<State>();
    state->device = devices[i];
    state->comm = comms[i];
    out.push_back(std::unique_ptr<NcclCollective>(new NcclCollective(std::move(state))));
  }
  return out;
}

void* NcclCollective::scratch(size_t bytes) {
  if (bytes > state_->scratch_bytes) {
    if (state_->scratch != nullptr) check_cuda(cudaFree(state_->scratch), "free");
    state_->scratch = nullptr;
    check_cuda(cudaMalloc(&state_->scratch, bytes), "allocate");
    state_->scratch_bytes = bytes;
  }
  return state_->scratch;
}

void NcclCollective::all_reduce_sum(std::span<float> data) {
  check_cuda(cudaSetDevice(state_->device), "set device");
  void* d = scratch(data.size_bytes());
  check_cuda(cudaMemcpyAsync(d, data.data(), data.size_bytes(), cudaMemcpyHostToDevice, state_->stream), "upload");
  check_nccl(ncclAllReduce(d, d, data.size(), ncclFloat32, ncclSum, state_->comm, state_->stream), "all-reduce");
  check_cuda(cudaMemcpyAsync(data.data(), d, data.size_bytes(), cudaMemcpyDeviceToHost, state_->stream), "download");
  check_cuda(cudaStreamSynchronize(state_->stream), "all-reduce");
}

void NcclCollective::all_reduce_sum_f16(std::span<uint16_t> data) {
  check_cuda(cudaSetDevice(state_->device), "set device");
  void* d = scratch(data.size_bytes());
  check_cuda(cudaMemcpyAsync(d, data.data(), data.size_bytes(), cudaMemcpyHostToDevice, state_->stream), "upload");
  check_nccl(ncclAllReduce(d, d, data.size(), ncclFloat16, ncclSum, state_->comm, state_->stream), "all-reduce (f16)");
  check_cuda(cudaMemcpyAsync(data.data(), d, data.size_bytes(), cudaMemcpyDeviceToHost, state_->stream), "download");
  check_cuda(cudaStreamSynchronize(state_->stream), "all-reduce (f16)");
}

void NcclCollective::all_gather(std::span<const float> mine, std::span<float> all, std::span<const int64_t> counts) {
  HEARTH_CHECK(static_cast<int>(counts.size()) == size_, "{} counts for {} ranks", counts.size(), size_);
  HEARTH_CHECK(static_cast<int64_t>(mine.size()) == counts[static_cast<size_t>(rank_)]);
  HEARTH_CHECK(static_cast<int64_t>(all.size()) == std::accumulate(counts.begin(), counts.end(), int64_t{0}));
  check_cuda(cudaSetDevice(state_->device), "set device");
  auto* d = static_cast<float*>(scratch(all.size_bytes()));
  size_t at = 0, mine_at = 0;
  for (int r = 0; r < rank_; ++r) mine_at += static_cast<size_t>(counts[static_cast<size_t>(r)]);
  check_cuda(cudaMemcpyAsync(d + mine_at, mine.data(), mine.size_bytes(), cudaMemcpyHostToDevice, state_->stream),
             "upload");
  // NCCL has no all-gather of unequal parts: one broadcast per rank, in one group.
  check_nccl(ncclGroupStart(), "group");
  for (int r = 0; r < size_; ++r) {
    const auto n = static_cast<size_t>(counts[static_cast<size_t>(r)]);
    check_nccl(ncclBroadcast(d + at, d + at, n, ncclFloat32, r, state_->comm, state_->stream), "all-gather");
    at += n;
  }
  check_nccl(ncclGroupEnd(), "all-gather");
  check_cuda(cudaMemcpyAsync(all.data(), d, all.size_bytes(), cudaMemcpyDeviceToHost, state_->stream), "download");
  check_cuda(cudaStreamSynchronize(state_->stream), "all-gather");
}

void NcclCollective::broadcast(std::span<std::byte> data, int root) {
  HEARTH_CHECK(root >= 0 && root < size_, "broadcast from rank {} of {}", root, size_);
  if (data.empty()) return;
  check_cuda(cudaSetDevice(state_->device), "set device");
  void* d = scratch(data.size());
  if (rank_ == root) {
    check_cuda(cudaMemcpyAsync(d, data.data(), data.size(), cudaMemcpyHostToDevice, state_->stream), "upload");
  }
  check_nccl(ncclBroadcast(d, d, data.size(), ncclUint8, root, state_->comm, state_->stream), "broadcast");
  check_cuda(cudaMemcpyAsync(data.data(), d, data.size(), cudaMemcpyDeviceToHost, state_->stream), "download");
  check_cuda(cudaStreamSynchronize(state_->stream), "broadcast");
}

void NcclCollective::barrier() {
  float one = 1.0f;
  all_reduce_sum(std::span<float>(&one, 1));
}

}  // namespace hearth::shard
