# Sourced by scripts/setup.sh (and so scripts/start.sh) and scripts/test.sh: the one configuration
# of build/ they share, so that either run after the other rebuilds nothing that did not change
# (a different build type, -Werror or CUDA architecture changes every compile command).
#
# Sets HEARTH_CONFIGURE_ARGS (an array of cmake arguments, without -S/-B).
#
#   - RelWithDebInfo (the project's default build type): optimized, with symbols for profiling
#     and crash reports; HEARTH_BUILD_TYPE overrides it for both.
#   - warnings are errors (CI's rule; the packages setup.sh installs build warning-free). With a
#     newer compiler that warns: HEARTH_CMAKE_ARGS=-DHEARTH_WERROR=OFF.
#   - CUDA kernels (where nvcc exists) for the GPUs this machine has (nvidia-smi), else for one
#     architecture (89, as CI); HEARTH_CUDA_ARCHITECTURES overrides (e.g. "80;86;89").
#   - ccache when present.
#   - HEARTH_CMAKE_ARGS: more arguments, appended.

hearth_cuda_architectures() {
  if [[ -n "${HEARTH_CUDA_ARCHITECTURES:-}" ]]; then
    echo "$HEARTH_CUDA_ARCHITECTURES"
    return
  fi
  local caps=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    caps="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | grep -E '^[0-9]+$' | sort -u | paste -sd';' || true)"
  fi
  echo "${caps:-89}"
}

HEARTH_CONFIGURE_ARGS=(-G Ninja -DCMAKE_BUILD_TYPE="${HEARTH_BUILD_TYPE:-RelWithDebInfo}" -DHEARTH_WERROR=ON)
if command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  HEARTH_CONFIGURE_ARGS+=("-DHEARTH_CUDA_ARCHITECTURES=$(hearth_cuda_architectures)")
fi
if command -v ccache >/dev/null 2>&1; then
  HEARTH_CONFIGURE_ARGS+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
# shellcheck disable=SC2206
[[ -n "${HEARTH_CMAKE_ARGS:-}" ]] && HEARTH_CONFIGURE_ARGS+=(${HEARTH_CMAKE_ARGS})
true
