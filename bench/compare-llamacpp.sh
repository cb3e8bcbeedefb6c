#!/usr/bin/env bash
# hearth against llama.cpp on the same model file, the same threads, in one run: llama-bench's
# pp<P> (P prompt tokens in batches of 512) and tg<N> (N tokens one at a time, after a BOS),
# random tokens, one warm-up each, repetitions alternating between the two (hearth, llama.cpp,
# hearth, ...) so that a noisy machine disturbs both alike. Prints the CPU (model, SIMD flags,
# HEARTH_CPU_LEVEL when set), mean ± sd tokens/s, the ratio hearth / llama.cpp per test, and tg
# against the memory-bandwidth limit. -d DEPTH fills the context with DEPTH random tokens
# (untimed) before each test; --kv-type f16|f32|q8_0 picks both sides' KV cache (llama.cpp gets
# type_k = type_v = it, and flash attention for q8_0, without which it has no quantized V cache).
#
#   bench/compare-llamacpp.sh MODEL.gguf [-p 512] [-n 128] [-d 0] [-r 3] [-t THREADS] [--kv-type f16]
#
# The reference is upstream llama.cpp's own `llama-bench` when LLAMA_BENCH names the binary
# (built by hand from a llama.cpp checkout, outside this repository, e.g.
#   cmake -S llama.cpp -B llama.cpp/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF
#   cmake --build llama.cpp/build -j --target llama-bench
# ; GGML_NATIVE=OFF with GGML_AVX2=ON etc. for an AVX2-only build to set beside
# HEARTH_CPU_LEVEL=avx2), run as `llama-bench -m MODEL -p P -n N -t T -r 1 -o json` per
# repetition with its defaults otherwise (its own warm-up, flash attention auto, batch 2048,
# micro-batch 512; LLAMA_BENCH_ARGS adds options). Without LLAMA_BENCH, llama.cpp is taken from llama-cpp-python (its bundled
# libllama, driven from a Python loop; slower than llama-bench on small models): LLAMA_CPP_PYTHON
# names a python that has it (default: python3); `pip install llama-cpp-python` builds it.
#
# HEARTH_BENCH_ARGS adds `hearth bench` options. A GPU backend against llama.cpp's:
#   HEARTH_BENCH_ARGS="--backend vulkan" LLAMA_BENCH=/path/to/vulkan-build/bin/llama-bench \
#     LLAMA_BENCH_ARGS="-ngl 99" bench/compare-llamacpp.sh MODEL.gguf -p 64 -n 16 -r 3
# (llama.cpp built with -DGGML_VULKAN=ON; on lavapipe both run on the CPU through Mesa, and
# llama.cpp takes a CPU-type Vulkan device only when told: GGML_VK_VISIBLE_DEVICES=0; without
# it llama-bench says "ggml_vulkan: No devices found." and runs on its CPU backend).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEARTH="${HEARTH:-$ROOT/build/bin/hearth}"
PY="${LLAMA_CPP_PYTHON:-python3}"
LLAMA_BENCH="${LLAMA_BENCH:-}"
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
if [[ -n "$LLAMA_BENCH" ]]; then
  [[ -x "$LLAMA_BENCH" ]] || { echo "compare-llamacpp.sh: LLAMA_BENCH=$LLAMA_BENCH is not an executable" >&2; exit 1; }
  LLAMA_ARGS=(-m "$MODEL" -t "$T" -r 1 -o json -ctk "$KV" -ctv "$KV")
  # LLAMA_BENCH_ARGS: more llama-bench options, e.g. "--poll 0" (no busy-waiting threads: its
  # default spins, which a machine with other work on every core punishes).
  if [[ -n "${LLAMA_BENCH_ARGS:-}" ]]; then read -r -a EXTRA <<<"$LLAMA_BENCH_ARGS"; LLAMA_ARGS+=("${EXTRA[@]}"); fi
  # llama-bench runs each of -p and -n as its own test; 0 turns one off.
  LLAMA_ARGS+=(-p "$P" -n "$N")
  if [[ "$D" -gt 0 ]]; then LLAMA_ARGS+=(-d "$D"); fi
  if [[ "$KV" == q8_0 ]]; then LLAMA_ARGS+=(-fa on); fi
else
  "$PY" -c 'import llama_cpp' 2>/dev/null || {
    echo "compare-llamacpp.sh: set LLAMA_BENCH=/path/to/llama-bench, or $PY cannot import llama_cpp: pip install llama-cpp-python (or set LLAMA_CPP_PYTHON)" >&2
    exit 1
  }
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
for rep in $(seq 1 "$R"); do
  echo "repetition $rep/$R: hearth" >&2
  HEARTH_EXTRA=()
  if [[ -n "${HEARTH_BENCH_ARGS:-}" ]]; then read -r -a HEARTH_EXTRA <<<"$HEARTH_BENCH_ARGS"; fi
  "$HEARTH" bench -m "$MODEL" -p "$P" -n "$N" -d "$D" --kv-type "$KV" -r 1 -t "$T" -o json "${HEARTH_EXTRA[@]}" \
    2>/dev/null >"$TMP/hearth-$rep.json"
  echo "repetition $rep/$R: llama.cpp" >&2
  if [[ -n "$LLAMA_BENCH" ]]; then
    "$LLAMA_BENCH" "${LLAMA_ARGS[@]}" 2>"$TMP/llama-bench-$rep.log" >"$TMP/llama-bench-$rep.json" || {
      echo "compare-llamacpp.sh: llama-bench failed:" >&2; tail -5 "$TMP/llama-bench-$rep.log" >&2; exit 1
    }
    # llama-bench's JSON (one object per test) -> {"pp512": tokens/s, "tg128": tokens/s}
    python3 - "$TMP/llama-bench-$rep.json" >"$TMP/llama-$rep.json" <<'PY'
import json, sys
out = {}
for t in json.load(open(sys.argv[1])):
    name = f"pp{t['n_prompt']}" if t["n_gen"] == 0 else f"tg{t['n_gen']}"
    if t.get("n_depth", 0) > 0:
        name += f" @ d{t['n_depth']}"
    out[name] = t["avg_ts"]
    out["_info"] = {k: t.get(k) for k in ("build_commit", "cpu_info", "backends", "flash_attn", "n_threads")}
print(json.dumps(out))
PY
    continue
  fi
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

# The CPU: its model and the SIMD extensions the kernels of both sides may use.
CPU_MODEL="$(grep -m1 -E '^(model name|Model|Hardware)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
CPU_FLAGS="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | tr ' ' '\n' |
  grep -E '^(avx|avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|avx_vnni|amx_int8|asimd|asimddp|i8mm|sve|sve2)$' |
  tr '\n' ' ' || true)"
python3 - "$TMP" "$R" "$MODEL" "$T" "$KV" "${CPU_MODEL:-unknown CPU}" "${CPU_FLAGS:-}" "${HEARTH_CPU_LEVEL:-}" \
  "${LLAMA_BENCH:-llama-cpp-python}" <<'PY'
import json, statistics, sys, os
tmp, reps, model, threads, kv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
cpu_model, cpu_flags, level, reference = sys.argv[6], sys.argv[7].strip(), sys.argv[8], sys.argv[9]
hearth, llama, info, llama_info = {}, {}, None, None
fractions, bandwidths = {}, []
for rep in range(1, reps + 1):
    h = json.load(open(os.path.join(tmp, f"hearth-{rep}.json")))
    info = h
    bandwidths.append(h["memory_bandwidth_bytes_per_s"])
    for t in h["tests"]:
        hearth.setdefault(t["test"], []).append(t["tokens_per_s_mean"])
        fractions.setdefault(t["test"], []).append(t["fraction_of_limit"])
    for name, v in json.load(open(os.path.join(tmp, f"llama-{rep}.json"))).items():
        if name == "_info":
            llama_info = v
            continue
        llama.setdefault(name, []).append(v)
print(f"CPU: {cpu_model}; SIMD: {cpu_flags or '-'}" + (f"; HEARTH_CPU_LEVEL={level}" if level else ""))
if llama_info:
    extra = os.environ.get("LLAMA_BENCH_ARGS", "")
    print(f"llama.cpp: llama-bench {llama_info['build_commit']} ({reference}{', ' + extra if extra else ''}), "
          f"backends {llama_info['backends']}, flash_attn {llama_info['flash_attn']}")
else:
    print(f"llama.cpp: llama-cpp-python ({reference})")
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
# The limit: hearth bench's (on the CPU, the read bandwidth measured between the decode steps
# of an untimed tg pass after its timed repetitions; hearth's fraction is that pass's decode rate
# against those reads), averaged over the alternating runs. llama.cpp's fraction is its mean
# tokens/s against that mean: not measured over the same seconds, so only a rough figure on a
# machine whose bandwidth switches between states.
bandwidth = statistics.mean(bandwidths)
limit = bandwidth / info["weight_bytes_per_token"]
print()
print(f"bandwidth limit: {bandwidth / 1e9:.1f} GB/s ({info.get('memory_bandwidth_method', 'triad')}; mean of {reps} runs) / "
      f"{info['weight_bytes_per_token'] / 2**20:.1f} MiB per token = {limit:.1f} tokens/s")
for name in hearth:
    if name.startswith("tg"):
        print(f"  {name}: hearth at {statistics.mean(fractions[name]):.0%} of it, llama.cpp at "
              f"{statistics.mean(llama.get(name, [0])) / limit:.0%}")
PY
