// allocate_huge_pages: large blocks start on a 2 MiB boundary, every byte is usable, and the
// kernel is told the range may take transparent huge pages (its smaps entry says THPeligible
// wherever a control mapping advised here directly does); small blocks are plain aligned heap
// memory.
#include <gtest/gtest.h>

#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "core/system_memory.h"

namespace hearth {
namespace {

constexpr size_t kHuge = size_t{2} << 20;

// The THPeligible value of the /proc/self/smaps mapping that holds `p`, or -1 when smaps
// does not say.
int thp_eligible(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto addr = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      inside = lo <= addr && addr < hi;
      continue;
    }
    if (inside && line.rfind("THPeligible:", 0) == 0) return std::stoi(line.substr(12));
  }
  return -1;
}

// Whether huge-page advice given here shows in smaps at all: a control mapping advised directly.
// Not where THP is off, nor under qemu-user, which accepts madvise and drops it.
bool advice_shows() {
  constexpr size_t bytes = 2 * kHuge;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  const bool shows = ::madvise(p, bytes, MADV_HUGEPAGE) == 0 && thp_eligible(p) == 1;
  ::munmap(p, bytes);
  return shows;
}

TEST(HugePages, LargeBlocksAreAlignedUsableAndAdvised) {
  for (const size_t bytes : {kHuge, 3 * kHuge + 4096 + 1, 9 * kHuge - 1}) {
    const auto block = allocate_huge_pages(bytes);
    auto* p = static_cast<uint8_t*>(block.get());
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kHuge, 0u) << bytes;
    for (size_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(i * 7 + 1);
    size_t wrong = 0;
    for (size_t i = 0; i < bytes; ++i) wrong += p[i] != static_cast<uint8_t>(i * 7 + 1);
    EXPECT_EQ(wrong, 0u) << bytes;
    if (!advice_shows()) {
      GTEST_SKIP() << "huge-page advice does not show in /proc/self/smaps here (THP off, or qemu-user)";
    }
    EXPECT_EQ(thp_eligible(p), 1) << "a block of " << bytes << " bytes is not eligible for transparent huge pages";
  }
}

TEST(HugePages, SmallBlocksAreHeapMemory) {
  for (const size_t bytes : {size_t{0}, size_t{1}, size_t{4096}, kHuge - 1}) {
    const auto block = allocate_huge_pages(bytes);
    ASSERT_NE(block.get(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(block.get()) % 64, 0u) << bytes;
    std::memset(block.get(), 0x5a, bytes);
  }
}

}  // namespace
}  // namespace hearth
