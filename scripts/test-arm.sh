#!/usr/bin/env bash
# Cross-builds the CPU kernels and their tests for aarch64 (cmake/toolchain-aarch64.cmake, a
# kernels-only build in build-arm/) and runs them under qemu-user on three emulated CPUs, so
# every aarch64 kernel level is the detected one once:
#   -cpu max          has the ARMv8.6 int8 matrix multiply: detection must choose `i8mm`
#   -cpu neoverse-n1  ARMv8.2 dot products, no i8mm:        detection must choose `dotprod`
#   -cpu cortex-a57   armv8.0 without either:               detection must choose `neon`
# (the kernel tests also run every level below the chosen one, scalar included, so under
# -cpu max they cover all of them; the other two CPUs check detection and that no instruction
# of a higher level leaks into the code their level runs. test_attention is left out on
# neoverse-n1: every aarch64 level runs the neon ops, which cortex-a57 runs too, and it is the
# slowest suite under emulation.)
# scripts/test.sh calls this after the main suite; it can be run alone. Any failure fails it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOBS="$(nproc)"
SYSROOT=/usr/aarch64-linux-gnu
log() { echo "[test-arm] $*" >&2; }

for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" >/dev/null || { log "missing $tool (scripts/setup.sh installs it)"; exit 1; }
done

CCACHE=()
command -v ccache >/dev/null && CCACHE=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

TESTS=(test_core test_quants test_attention test_ops_simd test_dot_simd test_packed test_backend_ops test_cuda_on_cpu)
log "building build-arm/ (aarch64 cross build, kernels only, warnings are errors)"
cmake -S . -B build-arm -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64.cmake -DCMAKE_BUILD_TYPE=Release \
  -DHEARTH_KERNELS_ONLY=ON -DHEARTH_WERROR=ON --no-warn-unused-cli "${CCACHE[@]}" >/dev/null
cmake --build build-arm -j "$JOBS" --target "${TESTS[@]}"

# dot_dotprod.cpp, packed_dotprod.cpp and packed_i8mm.cpp are compiled with +dotprod (+i8mm):
# an inline function one of them emits as a weak symbol could be the copy the linker keeps for
# baseline callers too, and fault on a CPU without sdot (smmla).
for src in dot_dotprod packed_dotprod packed_i8mm; do
  obj="build-arm/kernels/CMakeFiles/hearth_kernels.dir/cpu/arm/$src.cpp.o"
  weak="$(aarch64-linux-gnu-nm -C "$obj" | awk '$2 ~ /^[WVu]$/')"
  if [[ -n "$weak" ]]; then
    log "$src.cpp exports weak symbols built with its extra instructions (keep its helpers inside it):"
    echo "$weak"
    exit 1
  fi
done

# cpu model -> the level detection must pick on it
CPUS=("max:i8mm" "neoverse-n1:dotprod" "cortex-a57:neon")
failed=0
for entry in "${CPUS[@]}"; do
  cpu="${entry%%:*}" want="${entry##*:}"
  for t in "${TESTS[@]}"; do
    [[ $cpu == neoverse-n1 && $t == test_attention ]] && continue
    start=$SECONDS
    if out="$(QEMU_CPU="$cpu" QEMU_LD_PREFIX="$SYSROOT" HEARTH_EXPECT_CPU_LEVEL="$want" \
              qemu-aarch64 "build-arm/bin/$t" --gtest_brief=1 2>&1)"; then
      status=ok
    else
      status=FAILED
      failed=1
      echo "$out"
    fi
    level="$(grep -o 'kernels at .*' <<<"$out" | head -1 || true)"
    passed="$(grep -o 'PASSED.*' <<<"$out" | tail -1 || true)"
    log "qemu -cpu $cpu: $t $status ($passed${level:+; $level}) in $((SECONDS - start))s"
  done
done
if [[ $failed -ne 0 ]]; then
  log "aarch64 kernel tests FAILED"
  exit 1
fi
log "aarch64 kernel tests passed on ${#CPUS[@]} emulated CPUs"
