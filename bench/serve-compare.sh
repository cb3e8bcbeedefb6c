#!/usr/bin/env bash
# Serving comparison on one machine, one model file, one load: `hearth serve` against llama.cpp's
# OpenAI server from llama-cpp-python, each driven by `hearth bench serve` with the same settings,
# one after the other (never at the same time: they would share the cores), printed as one
# markdown table with a column per server and the ratio hearth / llama.cpp.
#
#   bench/serve-compare.sh MODEL.gguf [--concurrency C] [--requests N] [--input-len I]
#                          [--output-len O] [--threads T]
#
# Environment:
#   HEARTH            the hearth binary (default: build/bin/hearth)
#   LLAMA_CPP_PYTHON  a python with llama-cpp-python[server] installed (default: python3)
#   HEARTH_PORT, LLAMA_PORT   ports to listen on (default: 18080, 18081)
#   HEARTH_READY_PATH         route that answers 200 once hearth is ready (default: /health)
#   STARTUP_TIMEOUT   seconds to wait for each server (default: 300)
#
# Notes on fairness: llama-cpp-python's server runs one request at a time (later ones wait on
# its lock; started with --interrupt_requests False so a new request does not cancel the running
# one), so above concurrency 1 the table compares hearth's batching with a queue — that is what
# a user of each gets. It ignores `ignore_eos`, so its answers may end before --output-len;
# compare tokens/s and per-token times, and see the mean output tokens row.
set -euo pipefail

usage() {
  sed -n '7,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

[[ $# -ge 1 ]] || usage
MODEL=$1
shift
CONCURRENCY=1
REQUESTS=32
INPUT_LEN=128
OUTPUT_LEN=128
THREADS=$(nproc)
while [[ $# -gt 0 ]]; do
  case $1 in
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --input-len) INPUT_LEN=$2; shift 2 ;;
    --output-len) OUTPUT_LEN=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "serve-compare: unknown argument '$1'" >&2; usage ;;
  esac
done

HEARTH=${HEARTH:-build/bin/hearth}
PY=${LLAMA_CPP_PYTHON:-python3}
HEARTH_PORT=${HEARTH_PORT:-18080}
LLAMA_PORT=${LLAMA_PORT:-18081}
HEARTH_READY_PATH=${HEARTH_READY_PATH:-/health}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-300}
# Room for the prompt, the chat template and the answer.
CTX=$(( INPUT_LEN * 2 + OUTPUT_LEN + 256 ))

[[ -f $MODEL ]] || { echo "serve-compare: no model file '$MODEL'" >&2; exit 1; }
[[ -x $HEARTH ]] || { echo "serve-compare: no hearth binary at '$HEARTH' (build it, or set HEARTH)" >&2; exit 1; }
command -v curl >/dev/null || { echo "serve-compare: needs curl" >&2; exit 1; }
if ! "$PY" -c 'import llama_cpp.server' 2>/dev/null; then
  echo "serve-compare: '$PY' cannot import llama_cpp.server; install the server extras:" >&2
  echo "  $PY -m pip install 'llama-cpp-python[server]'   (or set LLAMA_CPP_PYTHON to a python that has them)" >&2
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
BENCH_ARGS=(--model "$NAME" --concurrency "$CONCURRENCY" --requests "$REQUESTS" --input-len "$INPUT_LEN"
            --output-len "$OUTPUT_LEN" --warmup 2 --seed 1 -o json)

echo "serve-compare: starting hearth serve and llama_cpp.server on $MODEL ($THREADS threads)" >&2
"$HEARTH" serve -m "$MODEL" --port "$HEARTH_PORT" --parallel "$CONCURRENCY" --threads "$THREADS" \
  >"$WORK/hearth.log" 2>&1 &
HEARTH_PID=$!
"$PY" -m llama_cpp.server --model "$MODEL" --model_alias "$NAME" --host 127.0.0.1 --port "$LLAMA_PORT" \
  --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX" --interrupt_requests False \
  >"$WORK/llama.log" 2>&1 &
LLAMA_PID=$!
wait_ready "hearth serve" "$HEARTH_PID" "http://127.0.0.1:$HEARTH_PORT$HEARTH_READY_PATH" "$WORK/hearth.log"
# llama-cpp-python has no /health; its model list answers once the model is loaded.
wait_ready "llama_cpp.server" "$LLAMA_PID" "http://127.0.0.1:$LLAMA_PORT/v1/models" "$WORK/llama.log"

echo "serve-compare: hearth bench serve -> hearth" >&2
"$HEARTH" bench serve --url "http://127.0.0.1:$HEARTH_PORT" "${BENCH_ARGS[@]}" >"$WORK/hearth.json" || true
echo "serve-compare: hearth bench serve -> llama.cpp" >&2
"$HEARTH" bench serve --url "http://127.0.0.1:$LLAMA_PORT" "${BENCH_ARGS[@]}" >"$WORK/llama.json" || true

"$PY" - "$WORK/hearth.json" "$WORK/llama.json" "$MODEL" "$THREADS" <<'EOF'
import json, sys

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

h, l = load(sys.argv[1]), load(sys.argv[2])
model, threads = sys.argv[3], sys.argv[4]
ref = h or l
if ref is None:
    sys.exit("serve-compare: neither run produced a result")

def get(r, path):
    for key in path.split("."):
        if r is None:
            return None
        r = r.get(key)
    return r

def cell(v, digits):
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

def ratio(a, b):
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"

print(f"{model} · {threads} threads · {ref['load']} loop, concurrency {ref.get('concurrency', '—')} · "
      f"{ref['requests']} requests · input ≈{ref['input_len']} words · output {ref['output_len']} tokens\n")
print("| metric | hearth | llama.cpp (llama-cpp-python) | hearth / llama.cpp |")
print("| --- | ---: | ---: | ---: |")
rows = [
    ("completed requests", "completed", 0, False),
    ("failed requests", "failed", 0, False),
    ("duration (s)", "duration_s", 2, False),
    ("requests/s", "request_throughput", 3, False),
    ("mean input tokens", "mean_input_tokens", 1, False),
    ("mean output tokens", "mean_output_tokens", 1, False),
    ("output tokens/s", "output_token_throughput", 1, True),
    ("TTFT mean (ms)", "ttft_ms.mean", 1, True),
    ("TTFT p50 (ms)", "ttft_ms.p50", 1, True),
    ("TTFT p99 (ms)", "ttft_ms.p99", 1, True),
    ("TPOT mean (ms)", "tpot_ms.mean", 2, False),
    ("TPOT p99 (ms)", "tpot_ms.p99", 2, False),
    ("ITL p50 (ms)", "itl_ms.p50", 2, False),
    ("ITL p99 (ms)", "itl_ms.p99", 2, False),
    ("e2e mean (ms)", "e2e_ms.mean", 1, False),
    ("e2e p99 (ms)", "e2e_ms.p99", 1, False),
]
for label, path, digits, with_ratio in rows:
    a, b = get(h, path), get(l, path)
    print(f"| {label} | {cell(a, digits)} | {cell(b, digits)} | {ratio(a, b) if with_ratio else ''} |")
for name, r in (("hearth", h), ("llama.cpp", l)):
    if r is None:
        print(f"\n{name}: no result (see the messages above)")
    elif r["errors"]:
        print(f"\n{name} errors: " + "; ".join(r["errors"]))
    if r is not None and not r["input_tokens_reported"]:
        print(f"\n{name} sent no usage: its input tokens are the requested length, its output tokens the content chunks")
EOF
