#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what is missing, build hearth, fetch the
# default model (SmolLM2-135M-Instruct Q4_1), describe it with `hearth info`, answer one question
# with it, then serve it through the OpenAI-compatible API until Ctrl-C — as a local cluster:
# the model cut into 2 pipeline stages run by worker processes (the same code path as a cluster
# of machines; HEARTH_STAGES=1 serves from one process).
#
#   scripts/start.sh [MODEL] [PORT]    MODEL: smollm2 (default), gemma3-270m, a URL or a path
#
# Environment: HEARTH_HOST (default 127.0.0.1), HEARTH_PARALLEL (default 4), HEARTH_API_KEY (none),
# HEARTH_STAGES (default 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The hearth binary alone: the tests are scripts/test.sh's (same build/, same configuration).
"$ROOT/scripts/setup.sh" --target hearth
MODEL_PATH="$("$ROOT/scripts/get-model.sh" "${1:-smollm2}")"
PORT="${2:-8080}"
HOST="${HEARTH_HOST:-127.0.0.1}"
"$ROOT/build/bin/hearth" info "$MODEL_PATH"
echo
echo "> In one sentence, why is the sky blue?"
"$ROOT/build/bin/hearth" run -m "$MODEL_PATH" --chat --temp 0 -n 64 -p "In one sentence, why is the sky blue?" 2>/dev/null
echo
ARGS=(serve -m "$MODEL_PATH" --host "$HOST" --port "$PORT" --parallel "${HEARTH_PARALLEL:-4}")
STAGES="${HEARTH_STAGES:-2}"
[[ "$STAGES" -gt 1 ]] && ARGS+=(--local-stages "$STAGES")
[[ -n "${HEARTH_API_KEY:-}" ]] && ARGS+=(--api-key "$HEARTH_API_KEY")
cat >&2 <<MSG
Serving the OpenAI API on http://$HOST:$PORT/v1 (Ctrl-C stops). Try:
  curl http://$HOST:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"messages": [{"role": "user", "content": "Hello!"}]}'
MSG
exec "$ROOT/build/bin/hearth" "${ARGS[@]}"
