#!/usr/bin/env bash
# Does pipelining work? One model served through S stages (worker processes on this machine, or
# the workers you name), measured with `hearth bench serve`: output tokens/s of one sequence
# alone and of P concurrent sequences, their ratio, the bytes each token costs on every hop, and
# the time a hop adds (one sequence's time per token through S stages minus through one process
# with the threads of one stage, divided by the S hops it crosses — frame encode/decode, the link
# and the wake-ups included), and each stage's busy share (hearth_stage_busy_seconds_total) while
# the P sequences ran: with local stages the cores are shared, so the sum of the shares shows
# whether the machine, not the pipeline, was the limit.
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
  "$HEARTH" serve -m "$MODEL" --port "$port" --parallel "$PARALLEL" "$@" >"/tmp/hearth-pipeline-bench-$port.log" 2>&1 &
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

PER_STAGE_THREADS=$(( THREADS / STAGES > 0 ? THREADS / STAGES : 1 ))
[[ -n "$WORKERS" ]] && PER_STAGE_THREADS="$THREADS"
serve -t "$PER_STAGE_THREADS"
read -r one_tps one_tpot < <(measure 1)
stop_last

CLUSTER=(--local-stages "$STAGES")
[[ -n "$WORKERS" ]] && CLUSTER=(--workers "$WORKERS" --cluster-key "$KEY")
serve -t "$THREADS" "${CLUSTER[@]}" --wire-dtype "$WIRE"
read -r s1_tps s1_tpot < <(measure 1)
busy() { curl -s "$URL/metrics" | awk '/^hearth_stage_busy_seconds_total/ {printf "%s ", $2}'; }
before="$(busy)"; t0="$(date +%s.%N)"
read -r sp_tps sp_tpot < <(measure "$PARALLEL")
t1="$(date +%s.%N)"; after="$(busy)"
stop_last

EMBD="$("$HEARTH" info --json "$MODEL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["hparams"]["embedding_length"])')"
python3 - "$one_tps" "$one_tpot" "$s1_tps" "$s1_tpot" "$sp_tps" "$sp_tpot" "$STAGES" "$PARALLEL" "$WIRE" "$EMBD" \
  "$PER_STAGE_THREADS" "$before" "$after" "$t0" "$t1" <<'PY'
import sys
one_tps, one_tpot, s1_tps, s1_tpot, sp_tps, sp_tpot = map(float, sys.argv[1:7])
stages, parallel, wire, embd = int(sys.argv[7]), int(sys.argv[8]), sys.argv[9], int(sys.argv[10])
per_stage_threads = int(sys.argv[11])
before, after = [float(x) for x in sys.argv[12].split()], [float(x) for x in sys.argv[13].split()]
wall = float(sys.argv[15]) - float(sys.argv[14])
per_value = {"f32": 4, "f16": 2, "q8_0": 34 / 32}[wire]
print(f"| setup | output tokens/s | TPOT ms |\n| --- | ---: | ---: |")
print(f"| one process ({per_stage_threads} threads, as one stage), 1 sequence | {one_tps:.1f} | {one_tpot:.1f} |")
print(f"| {stages} stages, 1 sequence | {s1_tps:.1f} | {s1_tpot:.1f} |")
print(f"| {stages} stages, {parallel} sequences | {sp_tps:.1f} | {sp_tpot:.1f} |")
print()
print(f"pipelining: {parallel} sequences give {sp_tps / s1_tps:.2f}x the tokens/s of one through the same {stages} stages")
print(f"wire: {embd * per_value:.0f} bytes of hidden state per token per hop ({wire}), plus ~16 bytes of token ids and a sampled token")
print(f"per-hop time: ({s1_tpot:.2f} - {one_tpot:.2f}) ms / {stages} hops = {(s1_tpot - one_tpot) / stages:.2f} ms")
if len(before) == len(after) == stages and wall > 0:
    shares = [(a - b) / wall for a, b in zip(after, before)]
    print("stage busy while the " + str(parallel) + " sequences ran: " + ", ".join(f"{x:.0%}" for x in shares) +
          f" (sum {sum(shares):.2f} cores)")
PY
