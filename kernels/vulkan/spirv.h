// The compute shaders of the Vulkan backend, compiled by glslc at build time (kernels/vulkan/
// shaders/*.comp) and embedded in the binary (cmake/EmbedSpirv.cmake writes spirv.cpp).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace hearth::kernels::vulkan {

struct SpirvModule {
  std::string_view name;  // the shader's file name without .comp: "matvec", "attn_stats", ...
  std::span<const uint32_t> words;
};

const std::vector<SpirvModule>& spirv_modules();

}  // namespace hearth::kernels::vulkan
