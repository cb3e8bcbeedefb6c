#include "kernels/cuda/cuda.h"

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/runtime.h"

namespace hearth::kernels {

CudaDevices cuda_devices() {
  cuda::DeviceList list = cuda::list_devices();
  return {std::move(list.devices), std::move(list.note)};
}

std::unique_ptr<Backend> make_cuda_backend(int index) { return cuda::create_backend(index); }

}  // namespace hearth::kernels
