// TEST INFRASTRUCTURE: hearth's CUDA backend — the same kernel sources, launchers and backend
// code as on a GPU — running on the CPU execution model (cuda_on_cpu.h), so that the op suite
// and the model tests run every CUDA kernel in CI. It is not a GPU, says nothing about speed,
// and is not reachable from the hearth binary (only tests link hearth_cuda_on_cpu).
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace hearth::kernels {

std::unique_ptr<Backend> make_cuda_backend_on_cpu();

}  // namespace hearth::kernels
