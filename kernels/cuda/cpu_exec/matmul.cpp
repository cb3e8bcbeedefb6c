// The CUDA kernels of matmul.cu compiled by g++ for the CPU execution model (test infrastructure).
#include "kernels/cuda/matmul.cu"
