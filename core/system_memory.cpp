#include "core/system_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "core/error.h"

namespace hearth {

namespace {
uint64_t pages_to_bytes(long pages) {
  const long page_size = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) : 0;
}
}  // namespace

uint64_t total_memory_bytes() { return pages_to_bytes(::sysconf(_SC_PHYS_PAGES)); }

uint64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return pages_to_bytes(::sysconf(_SC_AVPHYS_PAGES));
}

std::shared_ptr<void> allocate_huge_pages(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  if (bytes < kHuge) {
    const size_t rounded = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    HEARTH_CHECK(p != nullptr, "out of memory allocating {} bytes", bytes);
    return {p, std::free};
  }
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  const size_t span = rounded + kHuge;  // room to align the start
  void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  HEARTH_CHECK(raw != MAP_FAILED, "out of memory mapping {} bytes", bytes);
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (base + kHuge - 1) / kHuge * kHuge;
  if (start > base) ::munmap(raw, start - base);
  if (base + span > start + rounded) ::munmap(reinterpret_cast<void*>(start + rounded), base + span - (start + rounded));
  void* p = reinterpret_cast<void*>(start);
#ifdef MADV_HUGEPAGE
  ::madvise(p, rounded, MADV_HUGEPAGE);  // advice: refused is harmless
#endif
  return {p, [rounded](void* q) { ::munmap(q, rounded); }};
}

}  // namespace hearth
