// The in-process collective: every operation against its definition on 1, 2, 3 and 4 ranks
// (threads), identical bits on every rank, and errors (a rank that never arrives, an aborted
// group) reaching every waiting rank as hearth::Error.
#include <gtest/gtest.h>

#include <functional>
#include <numeric>
#include <thread>

#include "core/error.h"
#include "core/fp16.h"
#include "shard/collective.h"

namespace hearth::shard {
namespace {

// Runs fn(rank collective) on one thread per rank; rethrows the first failure.
void run_ranks(std::vector<std::unique_ptr<InProcessCollective>>& ranks, const std::function<void(Collective&)>& fn) {
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(ranks.size());
  for (size_t r = 0; r < ranks.size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(*ranks[r]);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

float value(int rank, size_t i) { return static_cast<float>(rank + 1) * 0.37f + static_cast<float>(i % 97) * 1e-3f; }

class InProcess : public testing::TestWithParam<int> {};

TEST_P(InProcess, AllReduceSumsInRankOrderAndAgreesEverywhere) {
  const int n = GetParam();
  auto ranks = make_in_process_group(n);
  std::vector<std::vector<float>> out(static_cast<size_t>(n));
  run_ranks(ranks, [&](Collective& c) {
    for (size_t size : {size_t{1}, size_t{576}, size_t{4099}}) {  // several calls in a row on one group
      std::vector<float> data(size);
      for (size_t i = 0; i < size; ++i) data[i] = value(c.rank(), i);
      c.all_reduce_sum(data);
      out[static_cast<size_t>(c.rank())] = data;
    }
  });
  for (size_t i = 0; i < out[0].size(); ++i) {
    float expected = 0.0f;
    for (int r = 0; r < n; ++r) expected += value(r, i);
    ASSERT_EQ(out[0][i], expected) << i;
    for (int r = 1; r < n; ++r) ASSERT_EQ(out[static_cast<size_t>(r)][i], out[0][i]);
  }
}

TEST_P(InProcess, AllReduceF16) {
  const int n = GetParam();
  auto ranks = make_in_process_group(n);
  run_ranks(ranks, [&](Collective& c) {
    std::vector<uint16_t> data(300);
    for (size_t i = 0; i < data.size(); ++i) data[i] = fp32_to_fp16(value(c.rank(), i));
    c.all_reduce_sum_f16(data);
    for (size_t i = 0; i < data.size(); ++i) {
      float expected = 0.0f;
      for (int r = 0; r < n; ++r) expected += fp16_to_fp32(fp32_to_fp16(value(r, i)));
      ASSERT_EQ(data[i], fp32_to_fp16(expected)) << i;
    }
  });
}

TEST_P(InProcess, AllGatherOfUnequalPartsInRankOrder) {
  const int n = GetParam();
  auto ranks = make_in_process_group(n);
  std::vector<int64_t> counts;
  for (int r = 0; r < n; ++r) counts.push_back(3 + 5 * r);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  run_ranks(ranks, [&](Collective& c) {
    std::vector<float> mine(static_cast<size_t>(counts[static_cast<size_t>(c.rank())]));
    for (size_t i = 0; i < mine.size(); ++i) mine[i] = value(c.rank(), i);
    std::vector<float> all(static_cast<size_t>(total));
    c.all_gather(mine, all, counts);
    size_t at = 0;
    for (int r = 0; r < n; ++r) {
      for (int64_t i = 0; i < counts[static_cast<size_t>(r)]; ++i) ASSERT_EQ(all[at++], value(r, static_cast<size_t>(i)));
    }
  });
}

TEST_P(InProcess, BroadcastAndBarrier) {
  const int n = GetParam();
  auto ranks = make_in_process_group(n);
  run_ranks(ranks, [&](Collective& c) {
    for (int root = 0; root < n; ++root) {
      std::vector<std::byte> data(37, std::byte{static_cast<unsigned char>(c.rank())});
      c.broadcast(data, root);
      for (std::byte b : data) ASSERT_EQ(b, std::byte{static_cast<unsigned char>(root)});
      c.barrier();
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, InProcess, testing::Values(1, 2, 3, 4));

TEST(InProcessErrors, ARankThatNeverArrivesTimesOutEveryWaiter) {
  auto group = std::make_shared<InProcessGroup>(3, std::chrono::milliseconds(200));
  InProcessCollective a(group, 0), b(group, 1);
  std::vector<float> x(4, 1.0f), y(4, 1.0f);
  std::string error_a, error_b;
  std::thread ta([&] {
    try {
      a.all_reduce_sum(x);
    } catch (const Error& e) {
      error_a = e.what();
    }
  });
  std::thread tb([&] {
    try {
      b.all_reduce_sum(y);
    } catch (const Error& e) {
      error_b = e.what();
    }
  });
  ta.join();
  tb.join();
  EXPECT_NE(error_a.find("all-reduce"), std::string::npos) << error_a;
  EXPECT_NE(error_b.find("all-reduce"), std::string::npos) << error_b;
  // The group stays unusable afterwards.
  EXPECT_THROW(a.barrier(), Error);
}

TEST(InProcessErrors, AbortWakesEveryWaiterWithTheReason) {
  auto group = std::make_shared<InProcessGroup>(2);
  InProcessCollective a(group, 0);
  std::string error;
  std::thread t([&] {
    try {
      a.barrier();
    } catch (const Error& e) {
      error = e.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  group->abort("rank 1 failed to load its weights");
  t.join();
  EXPECT_NE(error.find("rank 1 failed to load its weights"), std::string::npos) << error;
}

TEST(InProcessErrors, AGroupNeedsARank) { EXPECT_THROW(InProcessGroup(0), Error); }

}  // namespace
}  // namespace hearth::shard
