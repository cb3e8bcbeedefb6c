#!/usr/bin/env bash
# The CUDA checks for a machine with an NVIDIA GPU, in one run (device time is scarce: prepare,
# then run this once). Everything it prints is also written under OUT (default ./gpu-check-out).
#
#  1. builds hearth for this GPU's architecture (HEARTH_CUDA_ARCHITECTURES=native) with the tests
#  2. the op suite's cases on the real device (cuda_0_*) and the whole tiny models through the
#     CUDA backend on it against the CPU backend (test_gpu_models, HEARTH_TEST_CUDA_DEVICE=0)
#  3. hearth bench --backend cuda (pp512, tg128) on synthetic llama-8b Q4_0 and the two default
#     models, and, when LLAMA_BENCH names llama.cpp's llama-bench built with -DGGML_CUDA=ON (by
#     hand, outside the repository), llama-bench -ngl 99 on the same files, alternating
#
#   bench/gpu-check.sh [OUT]       (LLAMA_BENCH=/path/to/llama-bench optional)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
cd "$ROOT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
log() { echo "[gpu-check] $*"; }

nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv || log "nvidia-smi failed"
log "build (native architecture)"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHEARTH_CUDA=ON \
  -DHEARTH_CUDA_ARCHITECTURES=native >/dev/null || exit 1
cmake --build build-gpu -j "$(nproc)" --target hearth test_backend_ops test_gpu_models || exit 1
./build-gpu/bin/hearth info --system

log "op suite on the GPU"
./build-gpu/bin/test_backend_ops --gtest_filter='*cuda_0_*' --gtest_brief=1
log "tiny models through the CUDA backend on the GPU against the CPU backend"
HEARTH_TEST_CUDA_DEVICE=0 ./build-gpu/bin/test_gpu_models --gtest_filter='*cuda*:*Cuda*'

log "models"
mkdir -p "$OUT/models"
[[ -f "$OUT/models/llama-8b-q4_0.gguf" ]] || ./build-gpu/bin/hearth synth --shape llama-8b --type Q4_0 -o "$OUT/models/llama-8b-q4_0.gguf"
MODELS=("$OUT/models/llama-8b-q4_0.gguf")
for m in models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf; do [[ -f "$m" ]] && MODELS+=("$m"); done

for m in "${MODELS[@]}"; do
  for round in 1 2; do
    log "hearth bench --backend cuda $m (round $round)"
    ./build-gpu/bin/hearth bench -m "$m" --backend cuda -p 512 -n 128 -r 3 -o md
    if [[ -n "${LLAMA_BENCH:-}" ]]; then
      log "llama-bench -ngl 99 $m (round $round)"
      "$LLAMA_BENCH" -m "$m" -ngl 99 -p 512 -n 128 -r 3
    fi
  done
done
log "done; log in $OUT/gpu-check.log"
