#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what is missing, build hearth, fetch the
# default model (SmolLM2-135M-Instruct Q4_1), describe it with `hearth info`, then answer a
# question with it. (Serving over the OpenAI API replaces the last step once `serve` lands.)
#
#   scripts/start.sh [MODEL] [PROMPT]    MODEL: smollm2 (default), gemma3-270m, a URL or a path
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
MODEL_PATH="$("$ROOT/scripts/get-model.sh" "${1:-smollm2}")"
"$ROOT/build/bin/hearth" info "$MODEL_PATH"
echo
PROMPT="${2:-In two sentences, why is the sky blue?}"
echo "> $PROMPT"
exec "$ROOT/build/bin/hearth" run -m "$MODEL_PATH" --chat --temp 0 -n 128 -p "$PROMPT"
