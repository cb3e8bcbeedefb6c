#include "shard/collective_mpi.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/fp16.h"

namespace hearth::shard {
namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw Error(fmt::format("MPI {}: {}", what, std::string(text, static_cast<size_t>(length))));
}

int as_int(size_t n, const char* what) {
  if (n > static_cast<size_t>(INT_MAX)) throw Error(fmt::format("MPI {}: {} values exceed one message", what, n));
  return static_cast<int>(n);
}

}  // namespace

struct MpiCollective::Comm {
  MPI_Comm comm = MPI_COMM_NULL;
  bool owned = false;
  ~Comm() {
    if (owned && comm != MPI_COMM_NULL) {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Comm_free(&comm);
    }
  }
};

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    check(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided), "init");
    finalize_ = true;
    if (provided < MPI_THREAD_SERIALIZED) {
      throw Error("MPI: this MPI library does not allow calls from more than one thread (MPI_THREAD_SERIALIZED)");
    }
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "size");
}

MpiRuntime::~MpiRuntime() {
  if (finalize_) MPI_Finalize();
}

bool MpiRuntime::launched_by_mpirun() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

MpiCollective::MpiCollective(std::unique_ptr<Comm> comm) : comm_(std::move(comm)) {
  for (auto [name, into] : {std::pair{"HEARTH_MPI_SPIN_US", &spin_}, std::pair{"HEARTH_MPI_NAP_US", &nap_}}) {
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') *into = std::chrono::microseconds(std::atoll(v));
  }
  MPI_Comm_set_errhandler(comm_->comm, MPI_ERRORS_RETURN);
  check(MPI_Comm_rank(comm_->comm, &rank_), "rank");
  check(MPI_Comm_size(comm_->comm, &size_), "size");
}

MpiCollective::~MpiCollective() = default;

std::unique_ptr<MpiCollective> MpiCollective::world() {
  auto comm = std::make_unique<Comm>();
  comm->comm = MPI_COMM_WORLD;
  return std::unique_ptr<MpiCollective>(new MpiCollective(std::move(comm)));
}

std::unique_ptr<MpiCollective> MpiCollective::split(int color, int key) const {
  auto comm = std::make_unique<Comm>();
  check(MPI_Comm_split(comm_->comm, color, key, &comm->comm), "split");
  comm->owned = true;
  return std::unique_ptr<MpiCollective>(new MpiCollective(std::move(comm)));
}

bool MpiCollective::one_host() const {
  MPI_Comm shared = MPI_COMM_NULL;
  check(MPI_Comm_split_type(comm_->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &shared), "split by host");
  int shared_size = 0;
  check(MPI_Comm_size(shared, &shared_size), "size");
  check(MPI_Comm_free(&shared), "free");
  // Each rank knows only its own host's group; the groups agree when every one is the whole.
  int mine = shared_size == size_ ? 1 : 0, all = 0;
  check(MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, comm_->comm), "one host");
  return all == 1;
}

void MpiCollective::wait(void* request_ptr, const char* what, bool idle) {
  auto& request = *static_cast<MPI_Request*>(request_ptr);
  const auto start = std::chrono::steady_clock::now();
  auto nap = nap_;
  for (;;) {
    int done = 0;
    check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), what);
    if (done) return;
    if (spin_.count() < 0 || std::chrono::steady_clock::now() - start < spin_) continue;
    std::this_thread::sleep_for(nap);
    if (idle && std::chrono::steady_clock::now() - start > std::chrono::milliseconds(2)) {
      nap = std::min(nap * 2, std::chrono::microseconds(1000));
    }
  }
}

void MpiCollective::send(std::span<const std::byte> data, int dest, int tag) {
  HEARTH_CHECK(dest >= 0 && dest < size_ && dest != rank_, "send to rank {} of {}", dest, size_);
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Isend(data.data(), as_int(data.size(), "send"), MPI_BYTE, dest, tag, comm_->comm, &request), "send");
  wait(&request, "send");
}

void MpiCollective::recv(std::span<std::byte> data, int source, int tag, bool idle) {
  HEARTH_CHECK(source >= 0 && source < size_ && source != rank_, "receive from rank {} of {}", source, size_);
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Irecv(data.data(), as_int(data.size(), "receive"), MPI_BYTE, source, tag, comm_->comm, &request), "receive");
  wait(&request, "receive", idle);
}

void MpiCollective::all_reduce_sum(std::span<float> data) {
  const int n = as_int(data.size(), "all-reduce");
  gathered_.resize(data.size() * static_cast<size_t>(size_));
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Iallgather(data.data(), n, MPI_FLOAT, gathered_.data(), n, MPI_FLOAT, comm_->comm, &request), "all-reduce");
  wait(&request, "all-reduce");
  // In rank order, as InProcessCollective: the same bits on every rank.
  for (size_t i = 0; i < data.size(); ++i) {
    float sum = 0.0f;
    for (int r = 0; r < size_; ++r) sum += gathered_[static_cast<size_t>(r) * data.size() + i];
    data[i] = sum;
  }
}

void MpiCollective::all_reduce_sum_f16(std::span<uint16_t> data) {
  const int n = as_int(data.size(), "all-reduce (f16)");
  gathered_f16_.resize(data.size() * static_cast<size_t>(size_));
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Iallgather(data.data(), n, MPI_UINT16_T, gathered_f16_.data(), n, MPI_UINT16_T, comm_->comm, &request),
        "all-reduce (f16)");
  wait(&request, "all-reduce (f16)");
  for (size_t i = 0; i < data.size(); ++i) {
    float sum = 0.0f;
    for (int r = 0; r < size_; ++r) sum += fp16_to_fp32(gathered_f16_[static_cast<size_t>(r) * data.size() + i]);
    data[i] = fp32_to_fp16(sum);
  }
}

void MpiCollective::all_gather(std::span<const float> mine, std::span<float> all, std::span<const int64_t> counts) {
  HEARTH_CHECK(static_cast<int>(counts.size()) == size_, "{} counts for {} ranks", counts.size(), size_);
  HEARTH_CHECK(static_cast<int64_t>(mine.size()) == counts[static_cast<size_t>(rank_)]);
  HEARTH_CHECK(static_cast<int64_t>(all.size()) == std::accumulate(counts.begin(), counts.end(), int64_t{0}));
  std::vector<int> n(counts.size()), at(counts.size());
  size_t offset = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    n[r] = as_int(static_cast<size_t>(counts[r]), "all-gather");
    at[r] = as_int(offset, "all-gather");
    offset += static_cast<size_t>(counts[r]);
  }
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Iallgatherv(mine.data(), n[static_cast<size_t>(rank_)], MPI_FLOAT, all.data(), n.data(), at.data(),
                        MPI_FLOAT, comm_->comm, &request),
        "all-gather");
  wait(&request, "all-gather");
}

void MpiCollective::broadcast(std::span<std::byte> data, int root) {
  HEARTH_CHECK(root >= 0 && root < size_, "broadcast from rank {} of {}", root, size_);
  for (size_t at = 0; at < data.size() || (at == 0 && data.empty()); at += static_cast<size_t>(INT_MAX)) {
    const size_t n = std::min(data.size() - at, static_cast<size_t>(INT_MAX));
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Ibcast(data.data() + at, static_cast<int>(n), MPI_BYTE, root, comm_->comm, &request), "broadcast");
    wait(&request, "broadcast");
    if (data.empty()) break;
  }
}

void MpiCollective::barrier() {
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Ibarrier(comm_->comm, &request), "barrier");
  wait(&request, "barrier");
}

void MpiCollective::broadcast_idle(std::span<std::byte> data, int root) {
  HEARTH_CHECK(root >= 0 && root < size_, "broadcast from rank {} of {}", root, size_);
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Ibcast(data.data(), as_int(data.size(), "broadcast"), MPI_BYTE, root, comm_->comm, &request), "broadcast");
  const auto start = std::chrono::steady_clock::now();
  auto nap = std::chrono::microseconds(100);
  for (;;) {
    int done = 0;
    check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "broadcast");
    if (done) return;
    if (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(2)) continue;
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::microseconds(1000));
  }
}

}  // namespace hearth::shard
