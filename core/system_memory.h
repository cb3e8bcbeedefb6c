// This machine's memory, as the planner, workers and `hearth info --system` report it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace hearth {

// Physical memory in bytes (0 when the system does not say).
uint64_t total_memory_bytes();
// Memory available to a new process without swapping: Linux's MemAvailable (free memory plus
// reclaimable caches), else the free pages; 0 when the system does not say.
uint64_t available_memory_bytes();

// Long-lived memory (repacked weights, the bandwidth probe's array) in its own mapping, 2 MiB
// aligned and advised to be backed by transparent huge pages, so that a pass over it walks one
// page-table entry per 2 MiB instead of one per 4 KiB. Not through malloc: the huge-page advice
// must not reach heap memory that per-step buffers reuse (each new touch would zero a whole
// 2 MiB page). Below 2 MiB, plain 64-byte-aligned heap memory. Throws when out of memory.
std::shared_ptr<void> allocate_huge_pages(size_t bytes);

}  // namespace hearth
