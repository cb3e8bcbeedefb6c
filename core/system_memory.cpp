#include "core/system_memory.h"

#include <unistd.h>

#include <fstream>
#include <string>

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

}  // namespace hearth
