// This machine's memory, as the planner, workers and `hearth info --system` report it.
#pragma once

#include <cstdint>

namespace hearth {

// Physical memory in bytes (0 when the system does not say).
uint64_t total_memory_bytes();
// Memory available to a new process without swapping: Linux's MemAvailable (free memory plus
// reclaimable caches), else the free pages; 0 when the system does not say.
uint64_t available_memory_bytes();

}  // namespace hearth
