// The Open MPI collective, run by ctest under `mpiexec -np 2` and `-np 3` (the test sets Open
// MPI's allow-run-as-root variables itself, for CI containers that run as root): every
// operation against its definition, the same bits as the in-process collective's rank-order
// sum, and a split into sub-groups.
#include <gtest/gtest.h>

#include <numeric>

#include "core/fp16.h"
#include "shard/collective_mpi.h"

namespace hearth::shard {
namespace {

float value(int rank, size_t i) { return static_cast<float>(rank + 1) * 0.37f + static_cast<float>(i % 97) * 1e-3f; }

std::unique_ptr<MpiCollective>& world() {
  static std::unique_ptr<MpiCollective> w = MpiCollective::world();
  return w;
}

TEST(Mpi, AllReduceSumsInRankOrder) {
  Collective& c = *world();
  for (size_t size : {size_t{1}, size_t{576}, size_t{4099}}) {
    std::vector<float> data(size);
    for (size_t i = 0; i < size; ++i) data[i] = value(c.rank(), i);
    c.all_reduce_sum(data);
    for (size_t i = 0; i < size; ++i) {
      float expected = 0.0f;
      for (int r = 0; r < c.size(); ++r) expected += value(r, i);
      ASSERT_EQ(data[i], expected) << i;
    }
  }
}

TEST(Mpi, AllReduceF16) {
  Collective& c = *world();
  std::vector<uint16_t> data(300);
  for (size_t i = 0; i < data.size(); ++i) data[i] = fp32_to_fp16(value(c.rank(), i));
  c.all_reduce_sum_f16(data);
  for (size_t i = 0; i < data.size(); ++i) {
    float expected = 0.0f;
    for (int r = 0; r < c.size(); ++r) expected += fp16_to_fp32(fp32_to_fp16(value(r, i)));
    ASSERT_EQ(data[i], fp32_to_fp16(expected)) << i;
  }
}

TEST(Mpi, AllGatherOfUnequalParts) {
  Collective& c = *world();
  std::vector<int64_t> counts;
  for (int r = 0; r < c.size(); ++r) counts.push_back(3 + 5 * r);
  std::vector<float> mine(static_cast<size_t>(counts[static_cast<size_t>(c.rank())]));
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = value(c.rank(), i);
  std::vector<float> all(static_cast<size_t>(std::accumulate(counts.begin(), counts.end(), int64_t{0})));
  c.all_gather(mine, all, counts);
  size_t at = 0;
  for (int r = 0; r < c.size(); ++r) {
    for (int64_t i = 0; i < counts[static_cast<size_t>(r)]; ++i) ASSERT_EQ(all[at++], value(r, static_cast<size_t>(i)));
  }
}

TEST(Mpi, BroadcastAndBarrier) {
  Collective& c = *world();
  for (int root = 0; root < c.size(); ++root) {
    std::vector<std::byte> data(37, std::byte{static_cast<unsigned char>(c.rank())});
    c.broadcast(data, root);
    for (std::byte b : data) ASSERT_EQ(b, std::byte{static_cast<unsigned char>(root)});
    c.barrier();
  }
}

TEST(Mpi, SplitFormsSubGroups) {
  MpiCollective& w = *world();
  // Even and odd ranks: two groups (one, when there is a single rank).
  const auto group = w.split(w.rank() % 2, w.rank());
  EXPECT_EQ(group->size(), (w.size() + 1 - w.rank() % 2) / 2);
  EXPECT_EQ(group->rank(), w.rank() / 2);
  std::vector<float> one = {1.0f};
  group->all_reduce_sum(one);
  EXPECT_EQ(one[0], static_cast<float>(group->size()));
}

}  // namespace
}  // namespace hearth::shard

int main(int argc, char** argv) {
  hearth::shard::MpiRuntime mpi(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  // Only rank 0 prints; every rank runs every test.
  if (mpi.world_rank() != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  hearth::shard::world().reset();
  return rc;
}
