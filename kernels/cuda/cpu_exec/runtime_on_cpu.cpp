// TEST INFRASTRUCTURE: the CUDA backend's runtime (kernels/cuda/runtime.h) on the CPU execution
// model (cuda_on_cpu.h). "Device" memory is host memory, every launch runs to completion when it
// is made, and a capture keeps the launches (with their arguments) to run them again on replay,
// which is what lets the tests check the backend's recorded steps. Not a GPU and never used by
// the hearth binary.
#include <cstdlib>
#include <cstring>
#include <new>

#include <fmt/format.h>

#include "core/error.h"
#include "kernels/cuda/cpu_exec/cuda_on_cpu.h"
#include "kernels/cuda/runtime.h"

namespace hearth::kernels::cuda {
inline namespace HEARTH_CUDA_IMPL {

namespace {

class RecordedGraph final : public Graph {
 public:
  std::vector<std::function<void()>> launches;
};

}  // namespace

struct Runtime::State {
  CUstream_st stream;
  std::vector<std::function<void()>> recording;
  bool capturing = false;
};

DeviceList list_devices() {
  DeviceList out;
  DeviceInfo d;
  d.backend = "cuda";
  d.index = 0;
  d.name = "CUDA execution model on the CPU (test infrastructure, not a GPU)";
  d.properties = {{"execution", "cpu model"}, {"warp_size", "32"}};
  out.devices.push_back(std::move(d));
  return out;
}

Runtime::Runtime(int index) : state_(std::make_unique<State>()) {
  HEARTH_CHECK(index == 0, "the CPU execution model has one device");
}
Runtime::~Runtime() = default;

DeviceInfo Runtime::info() const { return list_devices().devices[0]; }
Stream Runtime::stream() const { return &state_->stream; }

void* Runtime::alloc(size_t bytes) {
  void* p = std::aligned_alloc(256, (std::max<size_t>(bytes, 1) + 255) / 256 * 256);
  if (p == nullptr) throw Error(fmt::format("cuda (cpu model): out of memory allocating {} bytes", bytes));
  return p;
}
void Runtime::free(void* p) noexcept { std::free(p); }

void Runtime::upload(void* dst, const void* src, size_t bytes) {
  HEARTH_CHECK(!state_->capturing, "upload during a capture (inputs are written before a step)");
  std::memcpy(dst, src, bytes);
}
void Runtime::download(void* dst, const void* src, size_t bytes) {
  HEARTH_CHECK(!state_->capturing, "download during a capture");
  std::memcpy(dst, src, bytes);
}
void Runtime::fill(void* dst, int value, size_t bytes) {
  HEARTH_CHECK(!state_->capturing, "fill during a capture");
  std::memset(dst, value, bytes);
}
void Runtime::synchronize() {}
void Runtime::check_launch(std::string_view) {}

void Runtime::begin_capture() {
  HEARTH_CHECK(!state_->capturing, "capture already in progress");
  state_->recording.clear();
  state_->stream.recording = &state_->recording;
  state_->capturing = true;
}

std::unique_ptr<Graph> Runtime::end_capture() {
  HEARTH_CHECK(state_->capturing, "no capture in progress");
  state_->stream.recording = nullptr;
  state_->capturing = false;
  auto graph = std::make_unique<RecordedGraph>();
  graph->launches = std::move(state_->recording);
  state_->recording.clear();
  return graph;
}

void Runtime::replay(Graph& graph) {
  for (const auto& launch : static_cast<RecordedGraph&>(graph).launches) launch();
}

}  // namespace HEARTH_CUDA_IMPL
}  // namespace hearth::kernels::cuda
