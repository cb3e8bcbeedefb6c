#!/usr/bin/env bash
# Sets up, builds and runs every test of hearth — what CI runs (.ci/run calls this).
#
#   1. installs missing Debian packages (scripts/setup.sh)
#   2. fetches the default models the model tests compare against (scripts/get-model.sh)
#   3. builds build/ with warnings as errors and runs the whole suite with CTest, then the OpenAI
#      API suite (pytest + the official openai client, in a virtualenv .venv-api) against a real
#      `hearth serve`
#   4. cross-builds the CPU kernels and their tests for aarch64 and runs them under qemu-user on
#      a CPU with and one without the ARMv8.2 dot products (scripts/test-arm.sh)
#   5. builds build-san/ with AddressSanitizer + UBSan and runs the hardening suites there
#      (GGUF reader, malformed files, fuzzing, quant kernels, the CUDA-on-CPU execution model and
#      the CUDA kernels on it,
#      tokenizer, chat templates, sampler,
#      model loading, planner, transport framing, handshake, fuzzing and heartbeats)
#
# HEARTH_OFFLINE=1 skips the model download (the model tests then report themselves skipped).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOBS="$(nproc)"
log() { echo "[test] $*" >&2; }

scripts/setup.sh --no-build

if [[ "${HEARTH_OFFLINE:-0}" != "1" ]]; then
  log "fetching the default models"
  scripts/get-model.sh smollm2 >/dev/null
  scripts/get-model.sh gemma3-270m >/dev/null
fi

CCACHE=()
command -v ccache >/dev/null && CCACHE=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)

# build/ is configured exactly as scripts/setup.sh (scripts/start.sh) configures it
# (scripts/build-config.sh: warnings are errors; the CUDA backend, where nvcc exists, for this
# machine's GPUs or one architecture, to keep CI's time down; a release build compiles them all,
# kernels/cuda/CMakeLists.txt), so that start.sh after test.sh, or the reverse, rebuilds nothing.
# shellcheck source=build-config.sh
source scripts/build-config.sh
log "building build/ (warnings are errors)"
cmake -S . -B build "${HEARTH_CONFIGURE_ARGS[@]}" >/dev/null
cmake --build build -j "$JOBS"
log "running the test suite"
(cd build && ctest --output-on-failure -j "$JOBS" --timeout 900)

log "OpenAI API tests: the official openai client against a real hearth serve (tests/api, pytest)"
if [[ ! -x .venv-api/bin/python ]]; then python3 -m venv .venv-api; fi
# The clients agents and apps use: the openai and anthropic SDKs, LangChain, the OpenAI Agents SDK.
.venv-api/bin/pip install -q --disable-pip-version-check openai==3.54.0 httpx==0.28.1 pytest==9.2.0 jsonschema==4.25.1 \
  anthropic==2.16.0 langchain-openai==1.8.1 openai-agents==0.24.0 websocket-client==1.9.2
HEARTH_BIN="$ROOT/build/bin/hearth" .venv-api/bin/python -m pytest -q -p no:cacheprovider tests/api

log "aarch64 NEON kernels: cross build, tests under qemu (scripts/test-arm.sh)"
scripts/test-arm.sh

# (The GPU backends stay out of build-san: nvcc's objects are not instrumented, and lavapipe's
# LLVM would be LeakSanitizer's subject, not hearth; the CUDA kernels run here through the CPU
# execution model all the same.)
log "building build-san/ (AddressSanitizer + UndefinedBehaviorSanitizer)"
cmake -S . -B build-san -G Ninja -DCMAKE_BUILD_TYPE=Debug -DHEARTH_WERROR=ON -DHEARTH_CUDA=OFF -DHEARTH_VULKAN=OFF \
  "-DHEARTH_SANITIZE=address;undefined" "${CCACHE[@]}" >/dev/null
cmake --build build-san -j "$JOBS" --target test_core test_quants test_backend_ops test_attention test_ops_simd test_dot_simd test_cuda_on_cpu test_gpu_models test_gguf test_gguf_writer test_tensor_map test_tokenizer \
  test_chat_template test_sampler test_model test_stage_steps test_plan test_wire test_serve_bench test_model_bench test_transport
log "running the hardening suites under sanitizers"
(cd build-san && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j "$JOBS" -L sanitize --timeout 900)
log "all tests passed"
