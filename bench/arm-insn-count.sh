#!/usr/bin/env bash
# Instructions per token of the aarch64 matmul kernels, per level, counted under qemu-user.
#
# Wall time under emulation says nothing about an ARM CPU's speed, so this counts guest
# instructions instead: bench/qemu_insn_plugin.c (a TCG plugin built here with the host
# compiler) adds up every instruction the emulated process executes. The workload is
# build-arm/bin/insn_workload (bench/insn_workload.cpp, cross-built kernels-only as
# scripts/test-arm.sh does): the seven matmuls of one transformer layer (q, k, v, o, gate, up,
# down) through CpuBackend::matmul at one thread, activation quantization included. Each figure
# is the difference between two runs that differ only in the number of layer passes, so setup
# (random weights, repacking, process start) cancels out exactly:
#   decode:   n = 1 token,   (count(3 passes) - count(1 pass)) / 2
#   prefill:  n = 32 tokens, (count(2 passes) - count(1 pass)) / 32, per prompt token
# times the model's layer count. So a figure is the instructions of all layers' matmuls for one
# token, and nothing else (no attention, norms, RoPE, embeddings or output head).
#
# Every level runs on `qemu -cpu max` with HEARTH_CPU_LEVEL forcing neon / dotprod / i8mm, for
# weights repacked in 16-row groups (the default wherever the level has a packed kernel; neon
# keeps the k-quants in rows) and kept in native rows (CpuBackend's pack_weights = false). ARM speed is otherwise unmeasured: an
# instruction count is not a cycle count (sdot, smmla and a plain add each count one).
#
#   bench/arm-insn-count.sh [TYPE:SHAPE ...]     default: q4_0:smollm2 q8_0:smollm2 q4_K:llama-1b q6_K:llama-1b
# Shapes: smollm2 (hidden 576, kv 192, ffn 1536, 30 layers), llama-1b (2048, 512, 8192, 16
# layers; the k-quants need rows of whole 256-element blocks, which 576 is not).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SYSROOT=/usr/aarch64-linux-gnu
log() { echo "[arm-insn-count] $*" >&2; }
for tool in aarch64-linux-gnu-g++ qemu-aarch64 cc; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done

CCACHE=()
command -v ccache >/dev/null && CCACHE=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
log "building build-arm/bin/insn_workload (aarch64 cross build, kernels only) and the counting plugin"
cmake -S . -B build-arm -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64.cmake -DCMAKE_BUILD_TYPE=Release \
  -DHEARTH_KERNELS_ONLY=ON -DHEARTH_WERROR=ON --no-warn-unused-cli "${CCACHE[@]}" >/dev/null
cmake --build build-arm -j "$(nproc)" --target insn_workload >/dev/null
PLUGIN=build-arm/qemu_insn_plugin.so
cc -O2 -shared -fPIC -Wall -Wextra -Werror -o "$PLUGIN" bench/qemu_insn_plugin.c

# count LEVEL TYPE N PASSES MODE SHAPE -> instructions of the whole run
count() {
  local out
  out="$(QEMU_CPU=max QEMU_LD_PREFIX="$SYSROOT" HEARTH_CPU_LEVEL="$1" \
         qemu-aarch64 -plugin "$ROOT/$PLUGIN" -d plugin build-arm/bin/insn_workload "$2" "$3" "$4" "$5" "$6" 2>&1)" || {
    echo "$out" >&2
    return 1
  }
  grep -q "level=$1" <<<"$out" || { log "ran at another level than $1: $out"; return 1; }
  awk '/^insns:/ {print $2}' <<<"$out"
}

layers() { case "$1" in smollm2) echo 30 ;; llama-1b) echo 16 ;; *) log "unknown shape $1"; exit 1 ;; esac; }

CASES=("$@")
[[ ${#CASES[@]} -gt 0 ]] || CASES=(q4_0:smollm2 q8_0:smollm2 q4_K:llama-1b q6_K:llama-1b)
PREFILL_N=32

printf '%-8s %-9s %-8s %-7s %16s %18s\n' type shape level weights "decode insn/tok" "prefill insn/tok"
for c in "${CASES[@]}"; do
  type="${c%%:*}" shape="${c##*:}"
  nl="$(layers "$shape")"
  for level in neon dotprod i8mm; do
    modes=(pack native)
    case "$type" in q4_0|q4_1|q5_0|q5_1|q8_0|q4_K|q5_K|q6_K) ;; *) modes=(native) ;; esac  # packed on aarch64
    [[ $level == neon && $type == *_K ]] && modes=(native)  # neon keeps the k-quants in rows (packed.cpp)
    for mode in "${modes[@]}"; do
      d1="$(count "$level" "$type" 1 1 "$mode" "$shape")"
      d3="$(count "$level" "$type" 1 3 "$mode" "$shape")"
      p1="$(count "$level" "$type" "$PREFILL_N" 1 "$mode" "$shape")"
      p2="$(count "$level" "$type" "$PREFILL_N" 2 "$mode" "$shape")"
      decode=$(( (d3 - d1) / 2 * nl ))
      prefill=$(( (p2 - p1) / PREFILL_N * nl ))
      printf '%-8s %-9s %-8s %-7s %16d %18d\n' "$type" "$shape" "$level" "$([[ $mode == pack ]] && echo packed || echo rows)" \
        "$decode" "$prefill"
    done
  done
done
log "instructions of all layers' matmuls per token (activation quantization included; attention, norms and"
log "the output head not); counted under qemu-user, not timed: ARM speed itself is unmeasured"
