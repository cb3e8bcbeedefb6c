#!/usr/bin/env bash
# The CUDA checks for a machine with an NVIDIA GPU, in one run (device time is scarce: prepare,
# then run this once). Everything it prints is also written to OUT/gpu-check.log.
#
#  1. hearth for this GPU: built here (HEARTH_CUDA_ARCHITECTURES=native), or, with BIN=DIR,
#     binaries built elsewhere for the GPU's architecture (hearth, test_backend_ops,
#     test_gpu_models; LD_LIBRARY_PATH may name a folder with the shared libraries they need)
#  2. per backend of BACKENDS (default: cuda vulkan; each where the binary has it and sees the GPU
#     through it): the op suite's cases on the real device (cuda_0*, vulkan_0*) and whole tiny
#     models through the backend on it against the CPU backend (test_gpu_models,
#     HEARTH_TEST_CUDA_DEVICE=0)
#  3. hearth bench --backend B (pp512, tg128) on synthetic models written here by
#     `hearth synth` (MODELS: shape:type words, default below) plus the two default models where
#     models/ has them, and, when LLAMA_BENCH names llama.cpp's llama-bench built with
#     -DGGML_CUDA=ON (by hand, outside the repository), llama-bench -ngl 99 on the same files,
#     alternating, ROUNDS rounds (default 2)
#
#   [BIN=DIR] [LLAMA_BENCH=PATH] [MODELS="llama-8b:Q4_0 ..."] bench/gpu-check.sh [OUT]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/gpu-check-out}"
MODELS="${MODELS:-smollm2-135m:Q4_0 llama-1b:Q4_0 llama-1b:Q4_K_M llama-8b:Q4_0 llama-8b:Q4_K_M}"
ROUNDS="${ROUNDS:-2}"
MODEL_DIR="${MODEL_DIR:-$OUT/models}"
mkdir -p "$OUT" "$MODEL_DIR"
cd "$ROOT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
log() { echo "[gpu-check $(date +%T)] $*"; }

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.memory,driver_version --format=csv ||
  log "nvidia-smi failed"
if [[ -n "${BIN:-}" ]]; then
  log "prebuilt binaries in $BIN"
else
  log "build (native architecture)"
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DHEARTH_CUDA=ON \
    -DHEARTH_CUDA_ARCHITECTURES=native >/dev/null || exit 1
  cmake --build build-gpu -j "$(nproc)" --target hearth test_backend_ops test_gpu_models || exit 1
  BIN=build-gpu/bin
fi
H="$BIN/hearth"
"$H" --version && "$H" info --system || { log "hearth does not start here"; ldd "$H"; exit 1; }

# The backends to check: CUDA, and Vulkan where this binary has it and finds the GPU through it
# (the NVIDIA Vulkan driver; VK_DRIVER_FILES may name its ICD file).
BACKENDS="${BACKENDS:-cuda vulkan}"
info="$("$H" info --system 2>&1)"
CHECKED=""
for b in $BACKENDS; do
  if ! grep -q "^backend $b .*${b}:0" <<<"$info"; then log "$b: no device through this binary, skipped"; continue; fi
  CHECKED+=" $b"
  log "$b: op suite on the GPU"
  timeout 300 "$BIN/test_backend_ops" --gtest_filter="*${b}_0*" --gtest_brief=1
  log "$b: op suite on the GPU: rc=$?"
  log "$b: tiny models through the $b backend on the GPU against the CPU backend"
  HEARTH_TEST_CUDA_DEVICE=0 timeout 300 "$BIN/test_gpu_models" --gtest_filter="*${b}*"
  log "$b: tiny models: rc=$?"
done

log "models"
FILES=()
for spec in $MODELS; do
  f="$MODEL_DIR/${spec%%:*}-${spec##*:}.gguf"
  [[ -f "$f" ]] || "$H" synth --shape "${spec%%:*}" --type "${spec##*:}" -o "$f" || continue
  FILES+=("$f")
done
for m in models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf; do [[ -f "$m" ]] && FILES+=("$m"); done

for m in "${FILES[@]}"; do
  for ((round = 1; round <= ROUNDS; ++round)); do
    for b in $CHECKED; do
      log "hearth bench --backend $b $m (round $round)"
      timeout 300 "$H" bench -m "$m" --backend "$b" -p 512 -n 128 -r 3 -o md
    done
    if [[ -n "${LLAMA_BENCH:-}" ]]; then
      log "llama-bench -ngl 99 $m (round $round)"
      timeout 300 "$LLAMA_BENCH" -m "$m" -ngl 99 -p 512 -n 128 -r 3
    fi
  done
done
log "done; log in $OUT/gpu-check.log"
