#!/usr/bin/env bash
# hearth against llama.cpp on the same model file, the same threads, in one run: llama-bench's
# pp<P> (P prompt tokens in batches of 512) and tg<N> (N tokens one at a time, after a BOS),
# random tokens, one warm-up each, repetitions alternating between the two (hearth, llama.cpp,
# hearth, ...) so that a noisy machine disturbs both alike. Prints mean ± sd tokens/s, the ratio
# hearth / llama.cpp per test, and tg against the memory-bandwidth limit. -d DEPTH fills the
# context with DEPTH random tokens (untimed) before each test; --kv-type f16|f32|q8_0 picks both
# sides' KV cache (llama.cpp gets type_k = type_v = it, and flash attention for q8_0, without
# which it has no quantized V cache).
#
#   bench/compare-llamacpp.sh MODEL.gguf [-p 512] [-n 128] [-d 0] [-r 3] [-t THREADS] [--kv-type f16]
#
# llama.cpp is taken from llama-cpp-python (its bundled libllama): LLAMA_CPP_PYTHON names a
# python that has it (default: python3); `pip install llama-cpp-python` builds it from source.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEARTH="${HEARTH:-$ROOT/build/bin/hearth}"
PY="${LLAMA_CPP_PYTHON:-python3}"
MODEL="${1:?usage: bench/compare-llamacpp.sh MODEL.gguf [-p 512] [-n 128] [-d 0] [-r 3] [-t THREADS] [--kv-type f16]}"; shift
P=512 N=128 D=0 R=3 T="$(nproc)" KV=f16
while [[ $# -gt 0 ]]; do
  case "$1" in
    -p) P="$2"; shift 2 ;;
    -n) N="$2"; shift 2 ;;
    -d) D="$2"; shift 2 ;;
    --kv-type) KV="$2"; shift 2 ;;
    -r) R="$2"; shift 2 ;;
    -t) T="$2"; shift 2 ;;
    *) echo "compare-llamacpp.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
"$PY" -c 'import llama_cpp' 2>/dev/null || {
  echo "compare-llamacpp.sh: $PY cannot import llama_cpp: pip install llama-cpp-python (or set LLAMA_CPP_PYTHON)" >&2
  exit 1
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
for rep in $(seq 1 "$R"); do
  echo "repetition $rep/$R: hearth" >&2
  "$HEARTH" bench -m "$MODEL" -p "$P" -n "$N" -d "$D" --kv-type "$KV" -r 1 -t "$T" -o json 2>/dev/null \
    >"$TMP/hearth-$rep.json"
  echo "repetition $rep/$R: llama.cpp" >&2
  "$PY" - "$MODEL" "$P" "$N" "$D" "$T" "$KV" >"$TMP/llama-$rep.json" <<'PY'
import json, random, sys, time
import llama_cpp
model, p, n, d, t, kv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
cache = {"f16": {}, "f32": dict(type_k=0, type_v=0), "q8_0": dict(type_k=8, type_v=8, flash_attn=True)}[kv]
llm = llama_cpp.Llama(model, n_ctx=d + max(p, n) + 16, n_batch=512, n_threads=t, n_threads_batch=t, verbose=False,
                      **cache)
rng = random.Random(1)
vocab = llm.n_vocab()
depth = [rng.randrange(vocab) for _ in range(d)]
at = f" @ d{d}" if d > 0 else ""
def pp():
    llm.reset()
    if d > 0:
        llm.eval(depth)
    tokens = [rng.randrange(vocab) for _ in range(p)]
    start = time.perf_counter()
    llm.eval(tokens)
    return p / (time.perf_counter() - start)
def tg():
    llm.reset()
    llm.eval([llm.token_bos()] + depth)
    start = time.perf_counter()
    for _ in range(n):
        llm.eval([rng.randrange(vocab)])
    return n / (time.perf_counter() - start)
out = {}
if p > 0:
    pp()  # warm-up
    out[f"pp{p}{at}"] = pp()
if n > 0:
    tg()
    out[f"tg{n}{at}"] = tg()
print(json.dumps(out))
PY
done

python3 - "$TMP" "$R" "$MODEL" "$T" "$KV" <<'PY'
import json, statistics, sys, os
tmp, reps, model, threads, kv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
hearth, llama, info = {}, {}, None
for rep in range(1, reps + 1):
    h = json.load(open(os.path.join(tmp, f"hearth-{rep}.json")))
    info = h
    for t in h["tests"]:
        hearth.setdefault(t["test"], []).append(t["tokens_per_s_mean"])
    for name, v in json.load(open(os.path.join(tmp, f"llama-{rep}.json"))).items():
        llama.setdefault(name, []).append(v)
def ms(v):
    return f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.1f}"
print(f"model {os.path.basename(model)} ({info['model_type']}, {info['size_bytes'] / 2**20:.1f} MiB), {threads} threads, "
      f"{kv} KV cache, {reps} alternating repetitions; hearth {info['build_commit']} [{info['backend']}]")
print()
print("| test | hearth t/s | llama.cpp t/s | hearth / llama.cpp |")
print("| --- | ---: | ---: | ---: |")
for name in hearth:
    if name in llama:
        print(f"| {name} | {ms(hearth[name])} | {ms(llama[name])} | {statistics.mean(hearth[name]) / statistics.mean(llama[name]):.2f}x |")
limit = info["tg_limit_tokens_per_s"]
print()
print(f"bandwidth limit: {info['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s / {info['weight_bytes_per_token'] / 2**20:.1f} MiB "
      f"per token = {limit:.1f} tokens/s")
for name in hearth:
    if name.startswith("tg"):
        print(f"  {name}: hearth at {statistics.mean(hearth[name]) / limit:.0%} of it, llama.cpp at "
              f"{statistics.mean(llama.get(name, [0])) / limit:.0%}")
PY
