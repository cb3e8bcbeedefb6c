// The CUDA backend's runtime on a real GPU (kernels/cuda/runtime.h), through the CUDA runtime
// API. The library links the static runtime (cudart_static), which loads the driver when it is
// first used: a binary built with CUDA starts on machines without a driver or a GPU and reports
// "no device" with the runtime's reason.
#include <cuda_runtime.h>

#include <fmt/format.h>

#include "core/error.h"
#include "kernels/cuda/runtime.h"

namespace hearth::kernels::cuda {
inline namespace HEARTH_CUDA_IMPL {

namespace {

[[noreturn]] void fail(cudaError_t e, std::string_view what) {
  throw Error(fmt::format("CUDA error in {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}
void check(cudaError_t e, std::string_view what) {
  if (e != cudaSuccess) fail(e, what);
}

class CudaGraph final : public Graph {
 public:
  explicit CudaGraph(cudaGraphExec_t exec) : exec_(exec) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  cudaGraphExec_t exec() const { return exec_; }

 private:
  cudaGraphExec_t exec_;
};

DeviceInfo describe(int index) {
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, index), "cudaGetDeviceProperties");
  DeviceInfo d;
  d.backend = "cuda";
  d.index = index;
  d.name = p.name;
  d.memory_total = p.totalGlobalMem;
  int current = 0;
  if (cudaGetDevice(&current) == cudaSuccess && cudaSetDevice(index) == cudaSuccess) {
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) == cudaSuccess) d.memory_free = free_bytes;
    cudaSetDevice(current);
  }
  d.properties = {{"compute_capability", fmt::format("{}.{}", p.major, p.minor)},
                  {"multiprocessors", std::to_string(p.multiProcessorCount)},
                  {"memory_bus_bits", std::to_string(p.memoryBusWidth)},
                  {"l2_bytes", std::to_string(p.l2CacheSize)},
                  {"warp_size", std::to_string(p.warpSize)}};
  return d;
}

}  // namespace

struct Runtime::State {
  int index = 0;
  cudaStream_t stream = nullptr;
};

DeviceList list_devices() {
  DeviceList out;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    out.note = fmt::format("the CUDA runtime says: {} ({})", cudaGetErrorString(e), cudaGetErrorName(e));
    cudaGetLastError();  // clear it
    return out;
  }
  for (int i = 0; i < count; ++i) {
    try {
      out.devices.push_back(describe(i));
    } catch (const Error& err) {
      out.note += std::string(out.note.empty() ? "" : "; ") + err.what();
    }
  }
  if (out.devices.empty() && out.note.empty()) out.note = "the CUDA runtime found no GPU";
  return out;
}

Runtime::Runtime(int index) : state_(std::make_unique<State>()) {
  state_->index = index;
  check(cudaSetDevice(index), fmt::format("cudaSetDevice({})", index));
  check(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
}

Runtime::~Runtime() {
  if (state_->stream != nullptr) {
    cudaStreamSynchronize(state_->stream);
    cudaStreamDestroy(state_->stream);
  }
}

DeviceInfo Runtime::info() const { return describe(state_->index); }
Stream Runtime::stream() const { return state_->stream; }

void* Runtime::alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    throw Error(fmt::format("cuda:{}: cannot allocate {} MiB ({} MiB free of {} MiB): {}", state_->index,
                            bytes >> 20, free_bytes >> 20, total >> 20, cudaGetErrorString(e)));
  }
  return p;
}

void Runtime::free(void* p) noexcept { cudaFree(p); }

void Runtime::upload(void* dst, const void* src, size_t bytes) {
  // From pageable host memory the copy is staged before the call returns, so the caller may
  // reuse its bytes at once; it is ordered on the stream like a kernel.
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, state_->stream), "write");
}

void Runtime::download(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, state_->stream), "read");
  check(cudaStreamSynchronize(state_->stream), "read (the work enqueued before it)");
}

void Runtime::fill(void* dst, int value, size_t bytes) {
  check(cudaMemsetAsync(dst, value, bytes, state_->stream), "fill");
}

void Runtime::synchronize() { check(cudaStreamSynchronize(state_->stream), "synchronize (the work enqueued before it)"); }

void Runtime::check_launch(std::string_view op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail(e, fmt::format("op {} (launch)", op));
}

void Runtime::begin_capture() {
  check(cudaStreamBeginCapture(state_->stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
}

std::unique_ptr<Graph> Runtime::end_capture() {
  cudaGraph_t graph = nullptr;
  check(cudaStreamEndCapture(state_->stream, &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check(e, "cudaGraphInstantiate");
  return std::make_unique<CudaGraph>(exec);
}

void Runtime::replay(Graph& graph) {
  check(cudaGraphLaunch(static_cast<CudaGraph&>(graph).exec(), state_->stream), "cudaGraphLaunch");
}

}  // namespace HEARTH_CUDA_IMPL
}  // namespace hearth::kernels::cuda
