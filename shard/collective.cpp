#include "shard/collective.h"

#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/fp16.h"

namespace hearth::shard {

InProcessGroup::InProcessGroup(int size, std::chrono::milliseconds timeout)
    : size_(size), timeout_(timeout), posted_(static_cast<size_t>(size), nullptr) {
  if (size < 1) throw Error(fmt::format("a collective group needs at least one rank, not {}", size));
}

void InProcessGroup::abort(const std::string& reason) {
  {
    std::lock_guard lock(mutex_);
    if (aborted_) return;
    aborted_ = true;
    abort_reason_ = reason;
  }
  cv_.notify_all();
}

void InProcessGroup::arrive_and_wait(const char* what) {
  std::unique_lock lock(mutex_);
  if (aborted_) throw Error(fmt::format("in-process collective {}: the group was aborted: {}", what, abort_reason_));
  const uint64_t generation = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    lock.unlock();
    cv_.notify_all();
    return;
  }
  const bool done = cv_.wait_for(lock, timeout_, [&] { return generation_ != generation || aborted_; });
  if (generation_ != generation) return;
  if (!done) {
    aborted_ = true;
    abort_reason_ = fmt::format("a rank did not reach {} within {} ms", what, timeout_.count());
    lock.unlock();
    cv_.notify_all();
    throw Error(fmt::format("in-process collective {}: {} of {} ranks arrived within {} ms", what, arrived_, size_,
                            timeout_.count()));
  }
  throw Error(fmt::format("in-process collective {}: the group was aborted: {}", what, abort_reason_));
}

InProcessCollective::InProcessCollective(std::shared_ptr<InProcessGroup> group, int rank)
    : group_(std::move(group)), rank_(rank) {
  HEARTH_CHECK(group_ != nullptr && rank >= 0 && rank < group_->size(), "rank {} of a group", rank);
}

void InProcessCollective::all_reduce_sum(std::span<float> data) {
  InProcessGroup& g = *group_;
  g.posted_[static_cast<size_t>(rank_)] = data.data();
  g.arrive_and_wait("all-reduce");
  // Every rank sums in rank order: the same bits everywhere.
  sum_.assign(data.size(), 0.0f);
  for (int r = 0; r < g.size(); ++r) {
    const auto* src = static_cast<const float*>(g.posted_[static_cast<size_t>(r)]);
    for (size_t i = 0; i < data.size(); ++i) sum_[i] += src[i];
  }
  g.arrive_and_wait("all-reduce");  // nobody reads the inputs any more
  std::memcpy(data.data(), sum_.data(), data.size_bytes());
}

void InProcessCollective::all_reduce_sum_f16(std::span<uint16_t> data) {
  InProcessGroup& g = *group_;
  g.posted_[static_cast<size_t>(rank_)] = data.data();
  g.arrive_and_wait("all-reduce (f16)");
  sum_.assign(data.size(), 0.0f);
  for (int r = 0; r < g.size(); ++r) {
    const auto* src = static_cast<const uint16_t*>(g.posted_[static_cast<size_t>(r)]);
    for (size_t i = 0; i < data.size(); ++i) sum_[i] += fp16_to_fp32(src[i]);
  }
  g.arrive_and_wait("all-reduce (f16)");
  for (size_t i = 0; i < data.size(); ++i) data[i] = fp32_to_fp16(sum_[i]);
}

void InProcessCollective::all_gather(std::span<const float> mine, std::span<float> all, std::span<const int64_t> counts) {
  InProcessGroup& g = *group_;
  HEARTH_CHECK(static_cast<int>(counts.size()) == g.size(), "{} counts for {} ranks", counts.size(), g.size());
  HEARTH_CHECK(static_cast<int64_t>(mine.size()) == counts[static_cast<size_t>(rank_)], "rank {} gives {} values, not {}",
               rank_, mine.size(), counts[static_cast<size_t>(rank_)]);
  HEARTH_CHECK(static_cast<int64_t>(all.size()) == std::accumulate(counts.begin(), counts.end(), int64_t{0}));
  g.posted_[static_cast<size_t>(rank_)] = mine.data();
  g.arrive_and_wait("all-gather");
  size_t at = 0;
  for (int r = 0; r < g.size(); ++r) {
    const auto n = static_cast<size_t>(counts[static_cast<size_t>(r)]);
    std::memcpy(all.data() + at, g.posted_[static_cast<size_t>(r)], n * sizeof(float));
    at += n;
  }
  g.arrive_and_wait("all-gather");
}

void InProcessCollective::broadcast(std::span<std::byte> data, int root) {
  InProcessGroup& g = *group_;
  HEARTH_CHECK(root >= 0 && root < g.size(), "broadcast from rank {} of {}", root, g.size());
  g.posted_[static_cast<size_t>(rank_)] = data.data();
  g.arrive_and_wait("broadcast");
  if (rank_ != root) std::memcpy(data.data(), g.posted_[static_cast<size_t>(root)], data.size());
  g.arrive_and_wait("broadcast");
}

void InProcessCollective::barrier() { group_->arrive_and_wait("barrier"); }

std::vector<std::unique_ptr<InProcessCollective>> make_in_process_group(int size, std::chrono::milliseconds timeout) {
  auto group = std::make_shared<InProcessGroup>(size, timeout);
  std::vector<std::unique_ptr<InProcessCollective>> ranks;
  for (int r = 0; r < size; ++r) ranks.push_back(std::make_unique<InProcessCollective>(group, r));
  return ranks;
}

}  // namespace hearth::shard
