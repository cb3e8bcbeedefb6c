// The few runtime services the CUDA backend needs, with two implementations:
//  - runtime_gpu.cpp: the CUDA runtime (cudaMalloc, a non-blocking stream, stream capture into
//    CUDA graphs, errors from cudaGetLastError and stream synchronization);
//  - cpu_exec/runtime_on_cpu.cpp: TEST INFRASTRUCTURE, host memory and the CPU execution model
//    (launches run at once; a capture keeps the launches and a replay runs them again).
// The backend (cuda_backend.cpp) is written once against this and compiled with each.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/ops.h"

namespace hearth::kernels::cuda {
inline namespace HEARTH_CUDA_IMPL {

struct DeviceList {
  std::vector<DeviceInfo> devices;
  std::string note;  // why there are none, when there are none
};
// The devices this runtime sees (never throws: a missing driver is a note).
DeviceList list_devices();

// A recorded step: replayed as one launch.
class Graph {
 public:
  virtual ~Graph() = default;
};

class Runtime {
 public:
  // Opens device `index`; throws hearth::Error when it cannot.
  explicit Runtime(int index);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  DeviceInfo info() const;
  Stream stream() const;

  // Device memory; throws hearth::Error (naming the size and what is free) when it cannot.
  void* alloc(size_t bytes);
  void free(void* p) noexcept;
  // Host -> device, ordered on the stream; the host bytes are consumed before it returns.
  void upload(void* dst, const void* src, size_t bytes);
  // Device -> host after everything enqueued before it.
  void download(void* dst, const void* src, size_t bytes);
  // Fills device bytes with `value`, ordered on the stream.
  void fill(void* dst, int value, size_t bytes);
  void synchronize();
  // After an op's launches: a launch error becomes a hearth::Error naming `op`.
  void check_launch(std::string_view op);

  // Stream capture: the launches between begin_capture and end_capture are recorded, not run.
  void begin_capture();
  std::unique_ptr<Graph> end_capture();
  void replay(Graph& graph);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace HEARTH_CUDA_IMPL
}  // namespace hearth::kernels::cuda
