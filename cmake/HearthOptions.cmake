# Options whose defaults follow what this machine has. Each can be forced with -D.
include(CheckLanguage)

# Kernels-only builds (cross builds, e.g. cmake/toolchain-aarch64.cmake): core, kernels and the
# kernel tests, nothing that needs a prebuilt library for the target (cmake/KernelsOnly.cmake).
# The GPU backends and RDMA are off there: their detection would find the host's SDKs.
option(HEARTH_KERNELS_ONLY "Build only core, kernels and the kernel tests (cross builds)" OFF)

# CUDA: on when a CUDA compiler is found (PATH, CUDACXX or the standard /usr/local/cuda).
if(HEARTH_KERNELS_ONLY)
  set(_hearth_has_cuda OFF)
  set(_hearth_has_vulkan OFF)
  set(_hearth_has_ucx OFF)
else()
if(NOT DEFINED CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc CACHE FILEPATH "CUDA compiler")
endif()
check_language(CUDA)
set(_hearth_has_cuda OFF)
if(CMAKE_CUDA_COMPILER)
  set(_hearth_has_cuda ON)
endif()
option(HEARTH_CUDA "Build the CUDA backend" ${_hearth_has_cuda})

# Vulkan: on when the loader, headers and glslc are present.
find_package(Vulkan QUIET COMPONENTS glslc)
set(_hearth_has_vulkan OFF)
if(Vulkan_FOUND AND Vulkan_GLSLC_EXECUTABLE)
  set(_hearth_has_vulkan ON)
endif()
option(HEARTH_VULKAN "Build the Vulkan backend" ${_hearth_has_vulkan})

# RDMA through UCX: on when ucx is found by pkg-config.
find_package(PkgConfig QUIET)
set(_hearth_has_ucx OFF)
if(PkgConfig_FOUND)
  pkg_check_modules(UCX QUIET ucx)
  if(UCX_FOUND)
    set(_hearth_has_ucx ON)
  endif()
endif()
endif()  # HEARTH_KERNELS_ONLY
option(HEARTH_RDMA "Build the RDMA (UCX) transport" ${_hearth_has_ucx})

option(HEARTH_BUILD_TESTS "Build the tests" ON)
option(HEARTH_WERROR "Treat compiler warnings as errors (on in CI)" OFF)
set(HEARTH_SANITIZE "" CACHE STRING "Sanitizers, ';'-separated: address;undefined or thread")

if(HEARTH_KERNELS_ONLY AND (HEARTH_CUDA OR HEARTH_VULKAN OR HEARTH_RDMA))
  message(FATAL_ERROR "HEARTH_KERNELS_ONLY=ON builds the CPU kernels only: leave HEARTH_CUDA/VULKAN/RDMA off")
endif()
if(HEARTH_CUDA)
  enable_language(CUDA)
  # CMake 3.25 does not know nvcc's C++20 dialect flag (nvcc has had it since CUDA 12.0).
  if(CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA" AND NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
endif()
if(HEARTH_VULKAN AND NOT (Vulkan_FOUND AND Vulkan_GLSLC_EXECUTABLE))
  message(FATAL_ERROR "HEARTH_VULKAN=ON but the Vulkan SDK (libvulkan-dev, glslc) was not found")
endif()
if(NOT HEARTH_VULKAN AND NOT HEARTH_KERNELS_ONLY)
  message(STATUS "hearth: the Vulkan backend is left out (HEARTH_VULKAN=OFF, or libvulkan-dev / glslc not found: "
                 "scripts/setup.sh installs them)")
endif()
if(HEARTH_RDMA AND NOT UCX_FOUND)
  message(FATAL_ERROR "HEARTH_RDMA=ON but UCX (libucx-dev) was not found")
endif()

# Flags every hearth target gets (through the hearth_flags interface library).
add_library(hearth_flags INTERFACE)
target_compile_options(hearth_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion
                            -Wnon-virtual-dtor -Wimplicit-fallthrough>
  # The scalar reference kernels must round exactly like the independent references:
  # never fuse a*b+c into an FMA behind our back (explicit FMA intrinsics are unaffected).
  $<$<COMPILE_LANGUAGE:CXX>:-ffp-contract=off>)
if(HEARTH_WERROR)
  target_compile_options(hearth_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()
target_include_directories(hearth_flags INTERFACE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/generated)
if(HEARTH_SANITIZE)
  string(REPLACE ";" "," _hearth_san "${HEARTH_SANITIZE}")
  target_compile_options(hearth_flags INTERFACE -fsanitize=${_hearth_san} -fno-sanitize-recover=all
                                                -fno-omit-frame-pointer)
  target_link_options(hearth_flags INTERFACE -fsanitize=${_hearth_san})
endif()
