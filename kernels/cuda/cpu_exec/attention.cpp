// The CUDA kernels of attention.cu compiled by g++ for the CPU execution model (test infrastructure).
#include "kernels/cuda/attention.cu"
