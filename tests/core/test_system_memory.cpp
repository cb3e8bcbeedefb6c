// allocate_huge_pages: large blocks start on a 2 MiB boundary, every byte is usable, and the
// kernel is told the range may take transparent huge pages (its smaps entry says THPeligible
// where the system has THP at all); small blocks are plain aligned heap memory.
#include <gtest/gtest.h>

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

bool thp_available() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  return std::getline(in, modes) && modes.find("[never]") == std::string::npos;
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
    if (!thp_available()) continue;
    const int eligible = thp_eligible(p);
    if (eligible < 0) GTEST_SKIP() << "this kernel's smaps has no THPeligible";
    EXPECT_EQ(eligible, 1) << "a block of " << bytes << " bytes is not eligible for transparent huge pages";
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
