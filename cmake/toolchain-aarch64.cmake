# Cross build for 64-bit ARM Linux with Debian's aarch64-linux-gnu GCC, run under qemu-user:
#   cmake -S . -B build-arm -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64.cmake -DHEARTH_KERNELS_ONLY=ON
# There are no aarch64 builds of the engine's libraries here, so only kernels-only builds work
# (scripts/test-arm.sh). Tests run through CMAKE_CROSSCOMPILING_EMULATOR (ctest, gtest
# discovery); QEMU_CPU in the environment picks the emulated CPU (e.g. max, cortex-a57).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

set(HEARTH_AARCH64_SYSROOT /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH ${HEARTH_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L ${HEARTH_AARCH64_SYSROOT})
