#!/usr/bin/env bash
# Serving comparison on one machine, one model file: `hearth serve` against upstream llama.cpp's
# `llama-server` (LLAMA_SERVER=PATH, built by hand outside this repository), each with the same
# number of slots, driven by `hearth bench serve` with the same settings. For each concurrency
# level the two are measured one after the other (hearth, then llama.cpp, then the next level:
# never at the same time, they would share the cores), and one markdown table prints output
# tokens/s, TTFT p50/p99 and failures per level, with the ratios hearth / llama.cpp.
#
#   LLAMA_SERVER=/path/to/llama-server bench/serve-compare.sh MODEL.gguf [--levels "1 4 8 16"]
#       [--requests N] [--input-len I] [--output-len O] [--threads T] [--rounds R]
#
# Environment:
#   LLAMA_SERVER      upstream llama-server; without it, llama-cpp-python's server is the
#                     fallback (LLAMA_CPP_PYTHON: a python with llama-cpp-python[server]), which
#                     serves one request at a time
#   HEARTH            the hearth binary (default: build/bin/hearth)
#   HEARTH_PORT, LLAMA_PORT   ports to listen on (default: 18080, 18081)
#   STARTUP_TIMEOUT   seconds to wait for each server (default: 300)
#
# --rounds R repeats the whole sweep R times (alternating again) and reports the mean of each
# figure; failures are summed. Requests send "ignore_eos" (both servers honour it) so that every
# answer is --output-len tokens long.
set -euo pipefail

usage() {
  sed -n '9,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

[[ $# -ge 1 ]] || usage
MODEL=$1
shift
LEVELS="1 4 8 16"
REQUESTS=32
INPUT_LEN=128
OUTPUT_LEN=64
THREADS=$(nproc)
ROUNDS=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --levels) LEVELS=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --input-len) INPUT_LEN=$2; shift 2 ;;
    --output-len) OUTPUT_LEN=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "serve-compare: unknown argument '$1'" >&2; usage ;;
  esac
done

HEARTH=${HEARTH:-build/bin/hearth}
PY=${LLAMA_CPP_PYTHON:-python3}
HEARTH_PORT=${HEARTH_PORT:-18080}
LLAMA_PORT=${LLAMA_PORT:-18081}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-300}
SLOTS=0
for c in $LEVELS; do (( c > SLOTS )) && SLOTS=$c; done
# Room per sequence for the prompt, the chat template and the answer.
CTX=$(( INPUT_LEN * 2 + OUTPUT_LEN + 256 ))

[[ -f $MODEL ]] || { echo "serve-compare: no model file '$MODEL'" >&2; exit 1; }
[[ -x $HEARTH ]] || { echo "serve-compare: no hearth binary at '$HEARTH' (build it, or set HEARTH)" >&2; exit 1; }
command -v curl >/dev/null || { echo "serve-compare: needs curl" >&2; exit 1; }
if [[ -n ${LLAMA_SERVER:-} ]]; then
  [[ -x $LLAMA_SERVER ]] || { echo "serve-compare: LLAMA_SERVER=$LLAMA_SERVER is not an executable" >&2; exit 1; }
  PEER="llama-server ($("$LLAMA_SERVER" --version 2>&1 | grep -m1 -o 'version: .*' || echo 'version unknown'))"
elif "$PY" -c 'import llama_cpp.server' 2>/dev/null; then
  PEER="llama-cpp-python's server (one request at a time)"
else
  echo "serve-compare: set LLAMA_SERVER to an upstream llama-server binary (or install llama-cpp-python[server])" >&2
  exit 1
fi

WORK=$(mktemp -d -t serve-compare.XXXXXX)
HEARTH_PID=""
LLAMA_PID=""
cleanup() {
  for pid in $HEARTH_PID $LLAMA_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $HEARTH_PID $LLAMA_PID; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_ready NAME PID URL LOG: until URL answers 200, the process dies, or the timeout passes.
wait_ready() {
  local name=$1 pid=$2 url=$3 log=$4 waited=0
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "$url" || true) == 200 ]]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "serve-compare: $name exited before it was ready; its log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    if (( waited >= STARTUP_TIMEOUT )); then
      echo "serve-compare: $name not ready at $url after ${STARTUP_TIMEOUT}s; its log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    sleep 1
    waited=$(( waited + 1 ))
  done
  echo "serve-compare: $name ready after ${waited}s" >&2
}

NAME=$(basename "$MODEL" .gguf)
echo "serve-compare: hearth serve and $PEER on $MODEL, $SLOTS slots each, $THREADS threads" >&2
"$HEARTH" serve -m "$MODEL" --alias "$NAME" --port "$HEARTH_PORT" --parallel "$SLOTS" --ctx-size "$CTX" \
  --threads "$THREADS" >"$WORK/hearth.log" 2>&1 &
HEARTH_PID=$!
if [[ -n ${LLAMA_SERVER:-} ]]; then
  # -c is the context of all slots together; -np splits it.
  "$LLAMA_SERVER" -m "$MODEL" --alias "$NAME" --host 127.0.0.1 --port "$LLAMA_PORT" -np "$SLOTS" \
    -c $(( CTX * SLOTS )) -t "$THREADS" -tb "$THREADS" >"$WORK/llama.log" 2>&1 &
  LLAMA_PID=$!
  wait_ready "llama-server" "$LLAMA_PID" "http://127.0.0.1:$LLAMA_PORT/health" "$WORK/llama.log"
else
  "$PY" -m llama_cpp.server --model "$MODEL" --model_alias "$NAME" --host 127.0.0.1 --port "$LLAMA_PORT" \
    --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX" --interrupt_requests False \
    >"$WORK/llama.log" 2>&1 &
  LLAMA_PID=$!
  wait_ready "llama_cpp.server" "$LLAMA_PID" "http://127.0.0.1:$LLAMA_PORT/v1/models" "$WORK/llama.log"
fi
wait_ready "hearth serve" "$HEARTH_PID" "http://127.0.0.1:$HEARTH_PORT/health" "$WORK/hearth.log"

for round in $(seq 1 "$ROUNDS"); do
  for c in $LEVELS; do
    # New prompts for every level and round (the same for both servers): a server that keeps
    # earlier prompts' KV (llama-server's prompt cache does, across slots) must not answer a
    # level from the previous level's prompts.
    args=(--model "$NAME" --concurrency "$c" --requests "$REQUESTS" --input-len "$INPUT_LEN"
          --output-len "$OUTPUT_LEN" --warmup 2 --seed "$((round * 1000 + c))" --ignore-eos -o json)
    echo "serve-compare: round $round, concurrency $c: hearth" >&2
    "$HEARTH" bench serve --url "http://127.0.0.1:$HEARTH_PORT" "${args[@]}" >"$WORK/hearth-$round-$c.json" || true
    echo "serve-compare: round $round, concurrency $c: llama.cpp" >&2
    "$HEARTH" bench serve --url "http://127.0.0.1:$LLAMA_PORT" "${args[@]}" >"$WORK/llama-$round-$c.json" || true
  done
done

python3 - "$WORK" "$MODEL" "$THREADS" "$ROUNDS" "$PEER" "$REQUESTS" "$INPUT_LEN" "$OUTPUT_LEN" $LEVELS <<'EOF'
import json, os, statistics, sys

work, model, threads, rounds, peer, requests, input_len, output_len = sys.argv[1:9]
levels = [int(x) for x in sys.argv[9:]]
rounds = int(rounds)

def load(name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def get(r, path):
    for key in path.split("."):
        if r is None:
            return None
        r = r.get(key)
    return r

def mean(runs, path):
    values = [get(r, path) for r in runs if r is not None and get(r, path) is not None]
    return statistics.mean(values) if values else None

def cell(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"

def ratio(a, b):
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
simd = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags) or "no AVX2"
print(f"{os.path.basename(model)} · {cpu} ({simd}), {os.cpu_count()} cores · {threads} threads · "
      f"{requests} requests per level · input ≈{input_len} words · output {output_len} tokens · "
      f"{rounds} round(s), alternating · peer: {peer}\n")
print("| concurrency | tok/s hearth | tok/s llama.cpp | ratio | TTFT p50 hearth (ms) | TTFT p50 llama.cpp (ms) | "
      "ratio | TTFT p99 hearth (ms) | TTFT p99 llama.cpp (ms) | failed hearth | failed llama.cpp |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
notes = []
for c in levels:
    h = [load(f"hearth-{r}-{c}.json") for r in range(1, rounds + 1)]
    l = [load(f"llama-{r}-{c}.json") for r in range(1, rounds + 1)]
    fh = sum(get(r, "failed") or 0 for r in h if r) + sum(1 for r in h if r is None) * int(requests)
    fl = sum(get(r, "failed") or 0 for r in l if r) + sum(1 for r in l if r is None) * int(requests)
    th, tl = mean(h, "output_token_throughput"), mean(l, "output_token_throughput")
    p50h, p50l = mean(h, "ttft_ms.p50"), mean(l, "ttft_ms.p50")
    p99h, p99l = mean(h, "ttft_ms.p99"), mean(l, "ttft_ms.p99")
    print(f"| {c} | {cell(th)} | {cell(tl)} | {ratio(th, tl)} | {cell(p50h)} | {cell(p50l)} | {ratio(p50h, p50l)} | "
          f"{cell(p99h)} | {cell(p99l)} | {fh} | {fl} |")
    for name, runs in (("hearth", h), ("llama.cpp", l)):
        for r in runs:
            if r is not None and r.get("errors"):
                notes.append(f"{name} at concurrency {c}: " + "; ".join(r["errors"][:3]))
print("\nTTFT ratio below 1 means hearth answers first; tok/s ratio above 1 means hearth is faster.")
for n in notes:
    print("\n" + n)
EOF
