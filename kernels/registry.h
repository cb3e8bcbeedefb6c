// The one place backends are built. A spec names a backend kind and one of its devices:
// "cpu" (= "cpu:0"), "cuda:N" and "vulkan:N", or a device by part of its name ("vulkan:radeon",
// case-insensitive; refused when several match). Every kind hearth knows is listed, with
// whether this binary has it compiled in and the devices it finds, so a user can see why a
// GPU is not used.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/backend.h"

namespace hearth::kernels {

struct BackendOptions {
  int n_threads = 0;  // CPU threads; 0: every hardware thread
};

struct BackendReport {
  std::string kind;                  // "cpu", "cuda", "vulkan"
  bool compiled = false;             // built into this binary
  std::vector<DeviceInfo> devices;   // what it found (empty when not compiled or none found)
  std::string note;                  // why there is no device, when there is none
};

// Every backend kind hearth knows, in a fixed order (cpu, cuda, vulkan).
std::vector<BackendReport> list_backends(const BackendOptions& options = {});

// The backend for `spec`. Throws hearth::Error naming what exists when the kind is unknown, not
// compiled in, or has no such device.
std::unique_ptr<Backend> make_backend(std::string_view spec, const BackendOptions& options = {});

// `--backend KIND` plus `--device N` as one spec ("cuda" + 1 -> "cuda:1"); a KIND that already
// names a device with a different --device is refused. device < 0: not given.
std::string backend_spec(std::string_view kind, int device);

}  // namespace hearth::kernels
