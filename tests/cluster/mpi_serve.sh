#!/usr/bin/env bash
# `hearth serve` over MPI pipeline stages answers /v1/chat/completions with the single process's
# greedy text: `mpirun -np 2 ... --tp 1 --pp 2` (2 stages of 1 rank), and with --with-tp also
# `mpirun -np 4 ... --tp 2 --pp 2 --tp-join gather` (2 stages of 2 shards; gathers keep one
# device's bits). Exit 77 (skipped) without mpirun.
#
#   tests/cluster/mpi_serve.sh HEARTH MODEL MPIEXEC [--with-tp]
set -uo pipefail
HEARTH="$1" MODEL="$2" MPIEXEC="$3" WITH_TP="${4:-}"
command -v "$MPIEXEC" >/dev/null || { echo "skipped: no $MPIEXEC"; exit 77; }
[[ -f "$MODEL" ]] || { echo "skipped: no $MODEL"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
LOG="$(mktemp -d)"
SERVER=""
stop_server() {
  [[ -n "$SERVER" ]] || return 0
  kill -TERM "$SERVER" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER" 2>/dev/null
  wait "$SERVER" 2>/dev/null
  SERVER=""
}
trap 'stop_server; rm -rf "$LOG"' EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts "$@" as the server on a free port, asks one greedy question, prints the answer's text.
ask() {
  local name="$1" port; shift
  port="$(free_port)"
  "$@" --port "$port" >"$LOG/$name.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 600); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]] && break
    kill -0 "$SERVER" 2>/dev/null || { echo "FAIL: $name exited before serving" >&2; cat "$LOG/$name.log" >&2; return 1; }
    sleep 0.1
  done
  local body='{"model":"m","messages":[{"role":"user","content":"What is the boiling point of water at sea level?"}],"max_tokens":16,"temperature":0}'
  local answer
  answer="$(curl -s --max-time 120 "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")"
  stop_server
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])["choices"][0]["message"]["content"])' "$answer" ||
    { echo "FAIL: $name answered: $answer" >&2; cat "$LOG/$name.log" >&2; return 1; }
}

SERVE=(serve -m "$MODEL" -t 1)
want="$(ask single "$HEARTH" "${SERVE[@]}")" || exit 1
[[ -n "$want" ]] || { echo "FAIL: the single process answered nothing"; exit 1; }
echo "single process: $want"
got="$(ask pp2 "$MPIEXEC" -np 2 --oversubscribe "$HEARTH" "${SERVE[@]}" --tp 1 --pp 2)" || exit 1
echo "mpirun -np 2 --tp 1 --pp 2: $got"
[[ "$got" == "$want" ]] || { echo "FAIL: 2 MPI stages answered differently"; cat "$LOG/pp2.log"; exit 1; }
grep -q "2 pipeline stages of 1 shard" "$LOG/pp2.log" || { echo "FAIL: not 2 stages"; cat "$LOG/pp2.log"; exit 1; }
if [[ "$WITH_TP" == --with-tp ]]; then
  got="$(ask tp2pp2 "$MPIEXEC" -np 4 --oversubscribe "$HEARTH" "${SERVE[@]}" --tp 2 --pp 2 --tp-join gather)" || exit 1
  echo "mpirun -np 4 --tp 2 --pp 2: $got"
  [[ "$got" == "$want" ]] || { echo "FAIL: 2 MPI stages of 2 shards answered differently"; cat "$LOG/tp2pp2.log"; exit 1; }
  grep -q "2 pipeline stages of 2 shards" "$LOG/tp2pp2.log" || { echo "FAIL: not 2 stages of 2"; cat "$LOG/tp2pp2.log"; exit 1; }
fi
echo "ok"
