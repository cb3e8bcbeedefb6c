#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build hearth, then configures and builds it.
# Idempotent and non-interactive: apt runs only when a package is missing; a second run only
# rebuilds what changed. build/ is configured as scripts/test.sh configures it
# (scripts/build-config.sh), so running one after the other rebuilds nothing.
#
#   scripts/setup.sh [--no-build] [--target T]... [--build-dir DIR] [-- extra cmake args...]
#
#   --target T   build only T (scripts/start.sh: --target hearth); default: everything, tests too
#
# Environment: HEARTH_BUILD_TYPE (default RelWithDebInfo), HEARTH_CMAKE_ARGS (extra configure
# args), HEARTH_CUDA_ARCHITECTURES (see scripts/build-config.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$ROOT/build"
DO_BUILD=1
EXTRA_ARGS=()
TARGETS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) DO_BUILD=0; shift ;;
    --build-dir) BUILD_DIR="$2"; shift 2 ;;
    --target) TARGETS+=(--target "$2"); shift 2 ;;
    --) shift; EXTRA_ARGS+=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

log() { echo "[setup] $*" >&2; }

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates curl
  python3 python3-pip python3-venv
  libfmt-dev libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libssl-dev libpcre2-dev
  libcpp-httplib-dev                      # HTTP server (hearth serve) and client (hearth bench serve)
  libopenmpi-dev openmpi-bin              # the Open MPI collective (tensor parallelism) and mpirun launch
  g++-aarch64-linux-gnu qemu-user         # NEON kernels cross-built and tested under emulation
  libvulkan-dev glslc mesa-vulkan-drivers vulkan-tools  # Vulkan backend; lavapipe runs its shaders on the CPU
  tcpdump                                 # the test that nothing crosses a link in clear
  chromium                                # the dashboard's test in a real (headless) browser
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup.sh: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
  fi
  log "installing: ${missing[*]}"
  "${SUDO[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "all build dependencies present"
fi

[[ $DO_BUILD -eq 1 ]] || exit 0

# shellcheck source=build-config.sh
source "$ROOT/scripts/build-config.sh"
CMAKE_ARGS=(-S "$ROOT" -B "$BUILD_DIR" "${HEARTH_CONFIGURE_ARGS[@]}" "${EXTRA_ARGS[@]}")

log "configuring $BUILD_DIR"
cmake "${CMAKE_ARGS[@]}" >&2
log "building ${TARGETS[*]:-everything} with $(nproc) jobs"
cmake --build "$BUILD_DIR" -j "$(nproc)" "${TARGETS[@]}" >&2
log "built $BUILD_DIR/bin/hearth"
