// Internal to kernels/cuda: the CUDA backend built on one runtime (see cuda_backend.cpp). The
// public ways to one are kernels/cuda/cuda.h (a GPU, through the registry) and, for tests,
// kernels/cuda/cpu_exec/backend_on_cpu.h (the same kernels on the CPU execution model).
#pragma once

#include <memory>

#include "kernels/backend.h"
#include "kernels/cuda/runtime.h"

namespace hearth::kernels::cuda {
inline namespace HEARTH_CUDA_IMPL {

// Throws hearth::Error when device `index` cannot be opened.
std::unique_ptr<Backend> create_backend(int index);

}  // namespace HEARTH_CUDA_IMPL
}  // namespace hearth::kernels::cuda
