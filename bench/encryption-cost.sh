#!/usr/bin/env bash
# What link encryption costs: one model through S local pipeline stages (worker processes on
# this machine, links over loopback TCP), one sequence at a time, measured with `hearth bench
# serve`, encrypted (the default) against --insecure-plaintext, alternating R rounds in one run.
# Prints output tokens/s and TPOT of each, their ratio, and the bytes each token adds per hop
# (the 16-byte tag of each frame).
#
#   bench/encryption-cost.sh MODEL [--stages S] [--rounds R] [--requests N] [--output-len O] [--threads T]
set -euo pipefail
MODEL="${1:?usage: bench/encryption-cost.sh MODEL [--stages S] [--rounds R] [--requests N] [--output-len O] [--threads T]}"
shift
STAGES=2 ROUNDS=3 REQUESTS=8 OUT=128 THREADS=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stages) STAGES="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --output-len) OUT="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    *) echo "encryption-cost.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
HEARTH="${HEARTH:-build/bin/hearth}"
WORK=$(mktemp -d -t encryption-cost.XXXXXX)
PID=""
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

port_free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# run MODE ROUND: one server, one measurement.
run() {
  local mode=$1 round=$2 port extra=()
  port=$(port_free)
  [[ $mode == plaintext ]] && extra=(--insecure-plaintext)
  "$HEARTH" serve -m "$MODEL" --port "$port" --parallel 1 --local-stages "$STAGES" --threads "$THREADS" "${extra[@]}" \
    >"$WORK/serve-$mode-$round.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" || true) == 200 ]] && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/serve-$mode-$round.log" >&2; exit 1; }
    sleep 0.2
  done
  "$HEARTH" bench serve --url "http://127.0.0.1:$port" --model m -c 1 -n "$REQUESTS" --input-len 32 \
    --output-len "$OUT" --warmup 1 --seed "$round" -o json >"$WORK/$mode-$round.json"
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
}

for round in $(seq 1 "$ROUNDS"); do
  echo "encryption-cost: round $round/$ROUNDS" >&2
  run encrypted "$round"
  run plaintext "$round"
done

python3 - "$WORK" "$ROUNDS" "$MODEL" "$STAGES" "$THREADS" <<'EOF'
import json, os, statistics, sys
work, rounds, model, stages, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def runs(mode):
    return [json.load(open(os.path.join(work, f"{mode}-{r}.json"))) for r in range(1, rounds + 1)]
enc, plain = runs("encrypted"), runs("plaintext")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def m(rs, key, sub=None):
    v = [r[key][sub] if sub else r[key] for r in rs]
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)
te, tp = m(enc, "output_token_throughput"), m(plain, "output_token_throughput")
pe, pp = m(enc, "tpot_ms", "mean"), m(plain, "tpot_ms", "mean")
print(f"{os.path.basename(model)} · {stages} local stages (loopback TCP) · {threads} thread(s) per stage · {cpu} · "
      f"{rounds} rounds alternating\n")
print("| links | output tokens/s | TPOT mean (ms) | failed |")
print("| --- | ---: | ---: | ---: |")
print(f"| encrypted (ChaCha20-Poly1305) | {te[0]:.1f} ± {te[1]:.1f} | {pe[0]:.2f} ± {pe[1]:.2f} | {sum(r['failed'] for r in enc)} |")
print(f"| plaintext (--insecure-plaintext) | {tp[0]:.1f} ± {tp[1]:.1f} | {pp[0]:.2f} ± {pp[1]:.2f} | {sum(r['failed'] for r in plain)} |")
print(f"\nencrypted / plaintext: tokens/s {te[0] / tp[0]:.3f}×, TPOT {pe[0] / pp[0]:.3f}× "
      f"(each frame carries 16 bytes more: the tag)")
EOF
