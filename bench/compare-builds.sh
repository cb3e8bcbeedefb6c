#!/usr/bin/env bash
# Two hearth binaries on the same model files, in one run: `hearth bench` pp<P> and tg<N> for each
# model and thread count, the binaries alternating round by round (A B, B A, A B, ...) so that a
# noisy machine disturbs both alike. Prints each side's median tokens/s over the rounds and the
# median of the per-round ratios B / A with their range: what a change costs or gains against the
# main it came from. RAW=FILE keeps every measurement as CSV.
#
#   bench/compare-builds.sh OLD_HEARTH NEW_HEARTH MODEL.gguf [MODEL.gguf ...] [-p 512] [-n 128] [-r 5] [-t "1 2"]
#
# Each round runs `hearth bench -r 1` once per binary (a warm-up is inside hearth bench).
set -euo pipefail
A="${1:?usage: bench/compare-builds.sh OLD_HEARTH NEW_HEARTH MODEL.gguf... [-p 512] [-n 128] [-r 5] [-t \"1 2\"]}"
B="${2:?usage: bench/compare-builds.sh OLD_HEARTH NEW_HEARTH MODEL.gguf...}"
shift 2
MODELS=() P=512 N=128 R=5 THREADS="1 2"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -p) P="$2"; shift 2 ;;
    -n) N="$2"; shift 2 ;;
    -r) R="$2"; shift 2 ;;
    -t) THREADS="$2"; shift 2 ;;
    -*) echo "compare-builds.sh: unknown argument '$1'" >&2; exit 2 ;;
    *) MODELS+=("$1"); shift ;;
  esac
done
[[ ${#MODELS[@]} -gt 0 ]] || { echo "compare-builds.sh: no model given" >&2; exit 2; }
for bin in "$A" "$B"; do [[ -x "$bin" ]] || { echo "compare-builds.sh: $bin is not executable" >&2; exit 2; }; done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "cpu: $cpu; $("$B" info --system | grep -m1 'cpu kernels' | sed 's/  */ /g')" >&2
for model in "${MODELS[@]}"; do
  for t in $THREADS; do
    for round in $(seq 1 "$R"); do
      order="A B"
      (( round % 2 == 0 )) && order="B A"  # who goes first alternates too
      for side in $order; do
        bin="$A"; [[ $side == B ]] && bin="$B"
        echo "$(basename "$model") t=$t round $round/$R: $side" >&2
        "$bin" bench -m "$model" -p "$P" -n "$N" -r 1 -t "$t" -o csv 2>/dev/null |
          awk -F, -v side="$side" -v m="$(basename "$model")" -v t="$t" 'NR > 1 { print m "," t "," side "," $7 "," $8 }' >>"$TMP/results.csv"
      done
    done
  done
done
[[ -n "${RAW:-}" ]] && cp "$TMP/results.csv" "$RAW"
python3 - "$TMP/results.csv" "$R" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
keys, data = [], {}
for model, t, side, test, tps in rows:
    key = (model, int(t), test)
    if key not in data:
        keys.append(key)
        data[key] = {"A": [], "B": []}
    data[key][side].append(float(tps))
# Rounds are paired (A then B, back to back), so the ratio of each round cancels most of the
# machine's drift between rounds; its median is the figure, its range the noise.
print(f"| model | threads | test | A t/s (median of {sys.argv[2]}) | B t/s | B / A (median of paired rounds) | range of B / A |")
print("| --- | ---: | --- | ---: | ---: | ---: | --- |")
for key in keys:
    a, b = data[key]["A"], data[key]["B"]
    ratios = [y / x for x, y in zip(a, b)]
    print(f"| {key[0]} | {key[1]} | {key[2]} | {statistics.median(a):.1f} | {statistics.median(b):.1f} | "
          f"{statistics.median(ratios):.3f} | {min(ratios):.3f} – {max(ratios):.3f} |")
PY
