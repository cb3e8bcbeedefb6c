// The CUDA kernels of elementwise.cu compiled by g++ for the CPU execution model (test infrastructure).
#include "kernels/cuda/elementwise.cu"
