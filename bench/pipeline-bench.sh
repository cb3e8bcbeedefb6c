#!/usr/bin/env bash
# Does pipelining work? One model served through S stages (worker processes on this machine, or
# the workers you name), measured with `hearth bench serve`: output tokens/s of one sequence
# alone and of P concurrent sequences, their ratio, the bytes each token costs on every hop, and
# the time a hop adds (one sequence's time per token through S stages minus through one process,
# divided by the S hops it crosses — frame encode/decode, the link and the wake-ups included).
#
#   bench/pipeline-bench.sh MODEL [--stages S] [--parallel P] [--requests-per-client N]
#                           [--output-len O] [--input-len I] [--threads T] [--wire-dtype f32|f16|q8_0]
#                           [--workers H:P,... --cluster-key FILE]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEARTH="${HEARTH:-$ROOT/build/bin/hearth}"
MODEL="${1:?usage: bench/pipeline-bench.sh MODEL [--stages S] [--parallel P] ...}"; shift
STAGES=3 PARALLEL=6 PER_CLIENT=3 OUT=64 IN=32 THREADS="$(nproc)" WIRE=f32 WORKERS="" KEY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stages) STAGES="$2"; shift 2 ;;
    --parallel) PARALLEL="$2"; shift 2 ;;
    --requests-per-client) PER_CLIENT="$2"; shift 2 ;;
    --output-len) OUT="$2"; shift 2 ;;
    --input-len) IN="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --wire-dtype) WIRE="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --cluster-key) KEY="$2"; shift 2 ;;
    *) echo "pipeline-bench.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
serve() {  # serve ARGS... -> sets URL, appends the pid
  local port; port="$(free_port)"
  "$HEARTH" serve -m "$MODEL" --port "$port" --parallel "$PARALLEL" -t "$THREADS" "$@" >"/tmp/hearth-pipeline-bench-$port.log" 2>&1 &
  PIDS+=($!)
  URL="http://127.0.0.1:$port"
  for _ in $(seq 1 300); do
    curl -sf "$URL/health" >/dev/null 2>&1 && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "/tmp/hearth-pipeline-bench-$port.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "server did not become healthy" >&2; exit 1
}
stop_last() { kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'; }
measure() {  # measure CLIENTS -> "tokens_per_s tpot_ms"
  "$HEARTH" bench serve --url "$URL" --model m -c "$1" -n $(( $1 * PER_CLIENT )) --input-len "$IN" --output-len "$OUT" \
    --warmup 1 -o json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["output_token_throughput"], r["tpot_ms"]["mean"])'
}

serve
read -r one_tps one_tpot < <(measure 1)
stop_last

CLUSTER=(--local-stages "$STAGES")
[[ -n "$WORKERS" ]] && CLUSTER=(--workers "$WORKERS" --cluster-key "$KEY")
serve "${CLUSTER[@]}" --wire-dtype "$WIRE"
read -r s1_tps s1_tpot < <(measure 1)
read -r sp_tps sp_tpot < <(measure "$PARALLEL")
stop_last

EMBD="$("$HEARTH" info --json "$MODEL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["hparams"]["embedding_length"])')"
python3 - "$one_tps" "$one_tpot" "$s1_tps" "$s1_tpot" "$sp_tps" "$sp_tpot" "$STAGES" "$PARALLEL" "$WIRE" "$EMBD" <<'PY'
import sys
one_tps, one_tpot, s1_tps, s1_tpot, sp_tps, sp_tpot = map(float, sys.argv[1:7])
stages, parallel, wire, embd = int(sys.argv[7]), int(sys.argv[8]), sys.argv[9], int(sys.argv[10])
per_value = {"f32": 4, "f16": 2, "q8_0": 34 / 32}[wire]
print(f"| setup | output tokens/s | TPOT ms |\n| --- | ---: | ---: |")
print(f"| one process, 1 sequence | {one_tps:.1f} | {one_tpot:.1f} |")
print(f"| {stages} stages, 1 sequence | {s1_tps:.1f} | {s1_tpot:.1f} |")
print(f"| {stages} stages, {parallel} sequences | {sp_tps:.1f} | {sp_tpot:.1f} |")
print()
print(f"pipelining: {parallel} sequences give {sp_tps / s1_tps:.2f}x the tokens/s of one through the same {stages} stages")
print(f"wire: {embd * per_value:.0f} bytes of hidden state per token per hop ({wire}), plus ~16 bytes of token ids and a sampled token")
print(f"per-hop time: ({s1_tpot:.2f} - {one_tpot:.2f}) ms / {stages} hops = {(s1_tpot - one_tpot) / stages:.2f} ms")
PY
