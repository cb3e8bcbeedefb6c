// The CUDA backend on NVIDIA GPUs (built when HEARTH_CUDA is on): the devices the CUDA runtime
// finds and a backend for one of them. kernels/registry.cpp is the only caller; everything else
// asks the registry ("cuda:N").
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace hearth::kernels {

struct CudaDevices {
  std::vector<DeviceInfo> devices;
  std::string note;  // why there are none (no driver, no GPU), when there are none
};
CudaDevices cuda_devices();
// Throws hearth::Error when the device cannot be opened.
std::unique_ptr<Backend> make_cuda_backend(int index);

}  // namespace hearth::kernels
