// The Vulkan backend (built when HEARTH_VULKAN is on): AMD, Intel and NVIDIA GPUs, integrated
// GPUs, and lavapipe (Mesa's Vulkan on the CPU, which CI runs every shader on). The registry
// (kernels/registry.cpp) lists the devices and builds "vulkan:N"; tests read the counters.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace hearth::kernels {

struct VulkanDevices {
  std::vector<DeviceInfo> devices;
  std::string note;  // why there are none, when there are none
};
VulkanDevices vulkan_devices();

struct VulkanOptions {
  // Matmul over more than 8 tokens: the tiled kernel (GPUs), or matrix-vector over chunks of 8
  // tokens (software devices, where barriers are dear); Auto picks by device type. The op suite
  // runs both on every device.
  enum class Prefill { Auto, Tiled, Chunked } prefill = Prefill::Auto;
  // Matrix-vector integer dot products: the device's packed 8-bit dot product instruction
  // (Vulkan 1.3 shaderIntegerDotProduct) where it has one, or plain integer multiplies; Auto
  // uses the instruction where the device reports it. Both give the same bits; the op suite
  // runs both on every device that has the instruction.
  enum class IntegerDot { Auto, Off } integer_dot = IntegerDot::Auto;
  // RoPE's angles: sin / cos in double where the device has shaderFloat64 (the CPU's sinf /
  // cosf to the bit), or in float (within 1.4e-7; devices without doubles); Auto uses double
  // where it can. The op suite runs both on every device with doubles.
  enum class Float64 { Auto, Off } float64 = Float64::Auto;
};
// Throws hearth::Error when the device cannot be opened or lacks what the backend needs.
std::unique_ptr<Backend> make_vulkan_backend(int index, const VulkanOptions& options = {});

// What a Vulkan backend has done so far (for tests and benchmarks): a recorded step replays with
// one submission and no creations.
struct VulkanCounters {
  uint64_t submissions = 0;        // vkQueueSubmit calls
  uint64_t pipelines_created = 0;  // vkCreateComputePipelines calls (descriptor sets: none, ever)
  uint64_t dispatches = 0;         // vkCmdDispatch calls recorded
  uint64_t barriers = 0;           // pipeline barriers recorded
  uint64_t memory_allocations = 0; // vkAllocateMemory calls (slabs and large blocks)
};
VulkanCounters vulkan_counters(const Backend& backend);  // zeros for another backend

}  // namespace hearth::kernels
