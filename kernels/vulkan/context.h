// Vulkan instance and devices for the Vulkan backend: what each device is and can do (for
// `hearth info --system` and the registry), and an opened device with one compute queue.
#pragma once

#include <vulkan/vulkan.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace hearth::kernels::vulkan {

struct DeviceList {
  std::vector<DeviceInfo> devices;
  std::string note;  // why there are none (no loader, no driver, no suitable device)
};
// Every physical device, with its limits and features as DeviceInfo properties. Devices that
// lack what the backend needs are listed with property ("usable", "no: <why>"). Never throws.
DeviceList list_devices();

// One opened device: physical and logical device, a compute queue, on the process's instance.
// Throws hearth::Error naming what is missing.
//
// A process holds one instance and one logical device per physical device, opened on first use
// and kept until it exits (Context::shared), as Vulkan applications do: backends come and go
// (a worker reloading its stage, the op suite making one per case), and NVIDIA's driver failed
// vkCreateInstance with VK_ERROR_INCOMPATIBLE_DRIVER after 36 instances and devices had been
// created and destroyed in turn on an H200. The backends on one device share its queue
// (submissions under queue_mutex); each keeps its own command pools, fences and memory.
class Context {
 public:
  // The process's context of device `index` (a new one after the last was lost).
  static std::shared_ptr<Context> shared(int index);

  explicit Context(int index);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  VkInstance instance = VK_NULL_HANDLE;
  VkPhysicalDevice physical = VK_NULL_HANDLE;
  VkDevice device = VK_NULL_HANDLE;
  VkQueue queue = VK_NULL_HANDLE;
  uint32_t queue_family = 0;
  VkPhysicalDeviceProperties properties{};
  VkPhysicalDeviceMemoryProperties memory{};
  uint32_t subgroup_size = 0;  // the matrix-vector shaders' workgroup width
  bool integer_dot = false;    // Vulkan 1.3 shaderIntegerDotProduct, enabled on the device
  bool float64 = false;        // shaderFloat64, enabled on the device (RoPE's angles in double)
  DeviceInfo info;
  std::mutex queue_mutex;          // vkQueueSubmit on `queue` (shared by the device's backends)
  std::atomic<bool> lost = false;  // VK_ERROR_DEVICE_LOST seen: shared() opens a new one

  // A memory type index allowed by `type_bits` with every flag of `required`, preferring one
  // that also has `preferred`. Throws hearth::Error when there is none.
  uint32_t memory_type(uint32_t type_bits, VkMemoryPropertyFlags required, VkMemoryPropertyFlags preferred) const;
};

// Throws hearth::Error with `what` and the result's name when `r` is not VK_SUCCESS.
void check(VkResult r, const char* what);
const char* result_name(VkResult r);

}  // namespace hearth::kernels::vulkan
