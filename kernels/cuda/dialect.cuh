// The one include of hearth's CUDA kernel sources. Under nvcc it is the real CUDA (runtime,
// cuda_fp16, cuda_bf16); under g++ it is the CPU execution model of cuda_on_cpu.h (test
// infrastructure: the same kernel text runs on the CPU in CI). Two spellings differ between
// the two and are macros here:
//   HEARTH_EXTERN_SHARED(type, name)   extern __shared__ type name[]   (dynamic shared memory)
//   HEARTH_LAUNCH(kernel, grid, block, shared_bytes, stream, args...)
//                                      kernel<<<grid, block, shared_bytes, stream>>>(args...)
//                                      (on the CPU: synchronous, or kept by a recording stream;
//                                      `kernel` must be one macro argument, so no unparenthesised
//                                      commas: name a template instance through a `constexpr auto`)
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define HEARTH_EXTERN_SHARED(type, name) extern __shared__ type name[]
#define HEARTH_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__)
#else
#include "kernels/cuda/cpu_exec/cuda_on_cpu.h"
#endif
