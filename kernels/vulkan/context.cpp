#include "kernels/vulkan/context.h"

#include <fmt/format.h>

#include <cstring>
#include <map>

#include "core/error.h"

namespace hearth::kernels::vulkan {

const char* result_name(VkResult r) {
  switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    default: return "VkResult error";
  }
}

void check(VkResult r, const char* what) {
  if (r != VK_SUCCESS) throw Error(fmt::format("Vulkan: {} failed: {} ({})", what, result_name(r), static_cast<int>(r)));
}

namespace {

VkInstance create_instance() {
  VkApplicationInfo app{};
  app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO;
  app.pApplicationName = "hearth";
  app.apiVersion = VK_API_VERSION_1_3;
  VkInstanceCreateInfo ci{};
  ci.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
  ci.pApplicationInfo = &app;
  VkInstance instance = VK_NULL_HANDLE;
  check(vkCreateInstance(&ci, nullptr, &instance), "vkCreateInstance");
  return instance;
}

// The process's instance, created on first use and never destroyed (see Context). A failed
// creation is not kept: the next call tries again (a driver installed meanwhile).
std::mutex instance_mutex;
VkInstance process_instance = VK_NULL_HANDLE;
VkInstance make_instance() {
  std::lock_guard lock(instance_mutex);
  if (process_instance == VK_NULL_HANDLE) process_instance = create_instance();
  return process_instance;
}

std::vector<VkPhysicalDevice> physical_devices(VkInstance instance) {
  uint32_t n = 0;
  check(vkEnumeratePhysicalDevices(instance, &n, nullptr), "vkEnumeratePhysicalDevices");
  std::vector<VkPhysicalDevice> out(n);
  check(vkEnumeratePhysicalDevices(instance, &n, out.data()), "vkEnumeratePhysicalDevices");
  out.resize(n);
  return out;
}

struct Features {
  VkPhysicalDeviceVulkan11Features v11{};
  VkPhysicalDeviceVulkan12Features v12{};
  VkPhysicalDeviceVulkan13Features v13{};
  VkPhysicalDeviceFeatures2 f2{};
  Features() {
    v11.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES;
    v12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES;
    v13.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_FEATURES;
    f2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2;
    f2.pNext = &v11;
    v11.pNext = &v12;
    v12.pNext = &v13;
  }
};

bool has_extension(VkPhysicalDevice d, const char* name) {
  uint32_t n = 0;
  vkEnumerateDeviceExtensionProperties(d, nullptr, &n, nullptr);
  std::vector<VkExtensionProperties> ext(n);
  vkEnumerateDeviceExtensionProperties(d, nullptr, &n, ext.data());
  for (const auto& e : ext) {
    if (std::strcmp(e.extensionName, name) == 0) return true;
  }
  return false;
}

int compute_queue_family(VkPhysicalDevice d) {
  uint32_t n = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(d, &n, nullptr);
  std::vector<VkQueueFamilyProperties> families(n);
  vkGetPhysicalDeviceQueueFamilyProperties(d, &n, families.data());
  for (uint32_t i = 0; i < n; ++i) {
    if (families[i].queueFlags & VK_QUEUE_COMPUTE_BIT) return static_cast<int>(i);
  }
  return -1;
}

// What the backend needs that this device lacks ("" when it has everything).
VkPhysicalDeviceSubgroupProperties subgroup_properties(VkPhysicalDevice d) {
  VkPhysicalDeviceSubgroupProperties sub{};
  sub.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES;
  VkPhysicalDeviceProperties2 p2{};
  p2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2;
  p2.pNext = &sub;
  vkGetPhysicalDeviceProperties2(d, &p2);
  return sub;
}

std::string missing(VkPhysicalDevice d, const VkPhysicalDeviceProperties& p, const Features& f) {
  std::string out;
  const auto need = [&](bool ok, const char* what) {
    if (!ok) out += std::string(out.empty() ? "" : ", ") + what;
  };
  need(p.apiVersion >= VK_API_VERSION_1_2, "Vulkan 1.2");
  need(f.v12.bufferDeviceAddress, "bufferDeviceAddress");
  need(f.f2.features.shaderInt64, "shaderInt64");
  need(f.v12.storageBuffer8BitAccess, "storageBuffer8BitAccess");
  need(f.v11.storageBuffer16BitAccess, "storageBuffer16BitAccess");
  need(compute_queue_family(d) >= 0, "a compute queue");
  const VkPhysicalDeviceSubgroupProperties sub = subgroup_properties(d);
  need((sub.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) != 0 &&
           (sub.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) != 0 && sub.subgroupSize >= 4 &&
           sub.subgroupSize <= 128,
       "subgroup arithmetic in compute shaders");
  return out;
}

const char* type_name(VkPhysicalDeviceType t) {
  switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated GPU";
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete GPU";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual GPU";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "CPU (software)";
    default: return "other";
  }
}

DeviceInfo describe(VkPhysicalDevice d, int index) {
  const VkPhysicalDeviceSubgroupProperties sub = subgroup_properties(d);
  VkPhysicalDeviceProperties p{};
  vkGetPhysicalDeviceProperties(d, &p);
  Features f;
  vkGetPhysicalDeviceFeatures2(d, &f.f2);
  VkPhysicalDeviceMemoryProperties mem{};
  vkGetPhysicalDeviceMemoryProperties(d, &mem);
  DeviceInfo info;
  info.backend = "vulkan";
  info.index = index;
  info.name = p.deviceName;
  uint64_t device_local = 0;
  std::string heaps;
  for (uint32_t i = 0; i < mem.memoryHeapCount; ++i) {
    const bool local = mem.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT;
    if (local) device_local += mem.memoryHeaps[i].size;
    heaps += fmt::format("{}{} MiB{}", heaps.empty() ? "" : " + ", mem.memoryHeaps[i].size >> 20, local ? " local" : "");
  }
  info.memory_total = device_local;
  info.memory_free = device_local;  // (VK_EXT_memory_budget would say more; not asked here)
  const std::string why = missing(d, p, f);
  const auto yes = [](bool b) { return std::string(b ? "yes" : "no"); };
  info.properties = {
      {"type", type_name(p.deviceType)},
      {"api", fmt::format("{}.{}.{}", VK_API_VERSION_MAJOR(p.apiVersion), VK_API_VERSION_MINOR(p.apiVersion),
                          VK_API_VERSION_PATCH(p.apiVersion))},
      {"subgroup_size", std::to_string(sub.subgroupSize)},
      {"fp16_arithmetic", yes(f.v12.shaderFloat16)},
      {"storage_16bit", yes(f.v11.storageBuffer16BitAccess)},
      {"storage_8bit", yes(f.v12.storageBuffer8BitAccess)},
      {"integer_dot_product", yes(f.v13.shaderIntegerDotProduct)},
      {"float64", yes(f.f2.features.shaderFloat64)},
      {"cooperative_matrix", yes(has_extension(d, "VK_KHR_cooperative_matrix"))},
      {"shared_memory", std::to_string(p.limits.maxComputeSharedMemorySize)},
      {"heaps", heaps},
      {"usable", why.empty() ? "yes" : "no: lacks " + why},
  };
  return info;
}

}  // namespace

DeviceList list_devices() {
  DeviceList out;
  try {
    VkInstance instance = make_instance();
    int index = 0;
    for (VkPhysicalDevice d : physical_devices(instance)) out.devices.push_back(describe(d, index++));
    if (out.devices.empty()) out.note = "the Vulkan loader found no device (no driver installed?)";
  } catch (const Error& e) {
    out.note = e.what();
  }
  return out;
}

Context::Context(int index) {
  instance = make_instance();
  try {
    const std::vector<VkPhysicalDevice> all = physical_devices(instance);
    if (index < 0 || index >= static_cast<int>(all.size())) {
      throw Error(fmt::format("vulkan:{}: no such device ({} found)", index, all.size()));
    }
    physical = all[static_cast<size_t>(index)];
    vkGetPhysicalDeviceProperties(physical, &properties);
    vkGetPhysicalDeviceMemoryProperties(physical, &memory);
    Features f;
    vkGetPhysicalDeviceFeatures2(physical, &f.f2);
    if (const std::string why = missing(physical, properties, f); !why.empty()) {
      throw Error(fmt::format("vulkan:{} ({}) lacks what the backend needs: {}", index, properties.deviceName, why));
    }
    info = describe(physical, index);
    subgroup_size = subgroup_properties(physical).subgroupSize;
    queue_family = static_cast<uint32_t>(compute_queue_family(physical));
    const float priority = 1.0f;
    VkDeviceQueueCreateInfo q{};
    q.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO;
    q.queueFamilyIndex = queue_family;
    q.queueCount = 1;
    q.pQueuePriorities = &priority;
    Features want;
    want.f2.features.shaderInt64 = VK_TRUE;
    float64 = f.f2.features.shaderFloat64 == VK_TRUE;
    want.f2.features.shaderFloat64 = float64 ? VK_TRUE : VK_FALSE;
    want.v11.storageBuffer16BitAccess = VK_TRUE;
    want.v12.storageBuffer8BitAccess = VK_TRUE;
    want.v12.bufferDeviceAddress = VK_TRUE;
    // 1.3: integer dot products, where the device has them (the matrix-vector shaders' packed
    // 8-bit path); otherwise no 1.3 feature is asked for.
    integer_dot = properties.apiVersion >= VK_API_VERSION_1_3 && f.v13.shaderIntegerDotProduct;
    want.v13.shaderIntegerDotProduct = integer_dot ? VK_TRUE : VK_FALSE;
    if (!integer_dot) want.v12.pNext = nullptr;
    VkDeviceCreateInfo ci{};
    ci.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO;
    ci.pNext = &want.f2;
    ci.queueCreateInfoCount = 1;
    ci.pQueueCreateInfos = &q;
    check(vkCreateDevice(physical, &ci, nullptr, &device), "vkCreateDevice");
    vkGetDeviceQueue(device, queue_family, 0, &queue);
  } catch (...) {
    if (device != VK_NULL_HANDLE) vkDestroyDevice(device, nullptr);
    throw;
  }
}

Context::~Context() {
  if (device != VK_NULL_HANDLE) {
    vkDeviceWaitIdle(device);
    vkDestroyDevice(device, nullptr);
  }
}

std::shared_ptr<Context> Context::shared(int index) {
  // Never destroyed: contexts live until the process exits (a lost one stays with the backends
  // that still hold it, and is replaced here).
  static std::mutex mu;
  static auto* contexts = new std::map<int, std::shared_ptr<Context>>();
  std::lock_guard lock(mu);
  std::shared_ptr<Context>& c = (*contexts)[index];
  if (c == nullptr || c->lost) c = std::make_shared<Context>(index);
  return c;
}

uint32_t Context::memory_type(uint32_t type_bits, VkMemoryPropertyFlags required, VkMemoryPropertyFlags preferred) const {
  int fallback = -1;
  for (uint32_t i = 0; i < memory.memoryTypeCount; ++i) {
    if (!(type_bits & (1u << i))) continue;
    const VkMemoryPropertyFlags flags = memory.memoryTypes[i].propertyFlags;
    if ((flags & required) != required) continue;
    if ((flags & preferred) == preferred) return i;
    if (fallback < 0) fallback = static_cast<int>(i);
  }
  if (fallback < 0) throw Error(fmt::format("Vulkan: {} has no memory type with flags {:#x}", properties.deviceName, required));
  return static_cast<uint32_t>(fallback);
}

}  // namespace hearth::kernels::vulkan
