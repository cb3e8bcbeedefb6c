#!/usr/bin/env bash
# Does tensor parallelism pay on this machine? Decode speed (tg, tokens/s after the first token
# of `hearth run --temp 0 --ignore-eos`) of one model:
#   1. one process, 1 thread                       (the per-core baseline)
#   2. one process, 2 threads                      (what the same two cores give without TP)
#   3. TP-2 as threads of one process, 1 thread per shard (in-process collective)
#   4. mpirun -np 2 TP-2, 1 thread per rank        (Open MPI collective, shared memory)
#   5. mpirun -np 2 TP-2 with rank 1 slowed to the scalar kernels (HEARTH_CPU_LEVEL=scalar):
#      even shares against 2:1 shares and against the default shares (each rank times its own
#      matvec at start and the shares follow the speeds; the chosen shares are printed)
# plus what shard 0 reports: all-reduces per token, their mean latency (host copies included)
# and the bytes it hands to the collectives per token. Each case runs REPEATS times; the best
# tg is kept (these machines are shared and noisy). Goals (issue 17): 4 >= 1.6x of 1, >= 0.85x of 2.
#
#   bench/tp-bench.sh [MODEL] [--tokens N] [--repeats R]
# Without MODEL, a synthetic llama-1b Q4_0 is written to /tmp (hearth synth) once.
# Open MPI refuses to run as root unless told: this script sets OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)
# for its own mpirun calls (CI containers run as root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEARTH="${HEARTH:-$ROOT/build/bin/hearth}"
MODEL="" TOKENS=64 REPEATS=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tokens) TOKENS="$2"; shift 2 ;;
    --repeats) REPEATS="$2"; shift 2 ;;
    -*) echo "tp-bench.sh: unknown argument '$1'" >&2; exit 2 ;;
    *) MODEL="$1"; shift ;;
  esac
done
if [[ -z "$MODEL" ]]; then
  MODEL=/tmp/hearth-tp-bench-llama-1b-q4_0.gguf
  [[ -f "$MODEL" ]] || "$HEARTH" synth --shape llama-1b --type Q4_0 -o "$MODEL" >&2
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
RUN=(run -m "$MODEL" -p "Once upon a time" --temp 0 --ignore-eos -n "$TOKENS" --seed 1)

# Best tg over REPEATS runs of "$@"; the last run's TP line goes to $LINE_FILE (read by tp_line),
# the shares it chose to $SHARES_FILE (read by tp_shares).
LINE_FILE="$(mktemp)" SHARES_FILE="$(mktemp)"
trap 'rm -f "$LINE_FILE" "$SHARES_FILE"' EXIT
tp_line() { sed 's/^hearth: //' "$LINE_FILE"; }
tp_shares() { cat "$SHARES_FILE"; }
best_tg() {
  local best=0 out tg
  for ((i = 0; i < REPEATS; i++)); do
    out="$("$@" 2>&1 >/dev/null)" || { echo "tp-bench.sh: failed: $*" >&2; echo "$out" >&2; exit 1; }
    tg="$(grep -o 'after the first ([0-9.]* tokens/s)' <<<"$out" | grep -o '[0-9.]*' | head -1)"
    best="$(awk -v a="$best" -v b="$tg" 'BEGIN { print (b > a) ? b : a }')"
    grep 'tensor parallel (shard 0)' <<<"$out" >"$LINE_FILE" || true
    grep -o 'shares [^;]*;' <<<"$out" | head -1 | sed 's/^shares //; s/;$//' >"$SHARES_FILE" || true
  done
  echo "$best"
}

echo "model: $MODEL; $TOKENS tokens; best of $REPEATS; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
one1="$(best_tg "$HEARTH" "${RUN[@]}" -t 1)"
echo "1 process, 1 thread:              tg $one1 tokens/s"
one2="$(best_tg "$HEARTH" "${RUN[@]}" -t 2)"
echo "1 process, 2 threads:             tg $one2 tokens/s"
inproc="$(best_tg "$HEARTH" "${RUN[@]}" -t 2 --tp 2)"
echo "TP-2 in-process, 1 thread each:   tg $inproc tokens/s   $(tp_line)"
mpi="$(best_tg mpirun -np 2 --oversubscribe "$HEARTH" "${RUN[@]}" -t 1 --tp 2)"
echo "TP-2 mpirun -np 2, 1 thread each: tg $mpi tokens/s   $(tp_line)"
awk -v a="$mpi" -v b="$one1" -v c="$one2" 'BEGIN { printf "mpirun TP-2 / 1 thread: %.2fx (goal 1.6x); / 2 threads: %.2fx (goal 0.85x)\n", a / b, a / c }'
mpig="$(best_tg mpirun -np 2 --oversubscribe "$HEARTH" "${RUN[@]}" -t 1 --tp 2 --tp-join sum)"
echo "TP-2 mpirun -np 2, joined by sums: tg $mpig tokens/s   $(tp_line)"
# The collective alone: all-reduces of 2048 floats back to back (no compute between them).
LATENCY_TEST="${LATENCY_TEST:-$(dirname "$HEARTH")/test_collective_mpi}"
if [[ -x "$LATENCY_TEST" ]]; then
  HEARTH_MPI_LATENCY_ROUNDS=2000 mpirun -np 2 --oversubscribe "$LATENCY_TEST" --gtest_filter='*Latency*' 2>&1 |
    grep -o 'all-reduce of 2048 floats.*' | sed 's/^/mpirun -np 2 /'
fi

# One rank slowed: rank 1 on the scalar kernels; "$@": the shares options (none: the default).
BEST_LEVEL="$(HEARTH_CPU_LEVEL= "$HEARTH" info --system 2>/dev/null | grep -o 'cpu kernels *[a-z0-9]*' | awk '{print $3}')"
slow() {
  mpirun -np 1 --oversubscribe -x HEARTH_CPU_LEVEL="$BEST_LEVEL" "$HEARTH" "${RUN[@]}" -t 1 --tp 2 "$@" \
    : -np 1 -x HEARTH_CPU_LEVEL=scalar "$HEARTH" "${RUN[@]}" -t 1 --tp 2 "$@"
}
scalar1="$(HEARTH_CPU_LEVEL=scalar best_tg "$HEARTH" "${RUN[@]}" -t 1)"
echo "1 process, 1 thread, scalar:      tg $scalar1 tokens/s"
even="$(best_tg slow --tp-shares=even)"
echo "rank 1 scalar, even shares:       tg $even tokens/s"
uneven="$(best_tg slow --tp-shares=2,1)"
echo "rank 1 scalar, 2:1 shares:        tg $uneven tokens/s"
# The default: shares proportional to each rank's measured matvec speed.
measured="$(best_tg slow)"
echo "rank 1 scalar, default shares:    tg $measured tokens/s   shares $(tp_shares)"
