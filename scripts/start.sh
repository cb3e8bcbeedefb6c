#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what is missing, build hearth, fetch the
# default model (SmolLM2-135M-Instruct Q4_1) and describe it with `hearth info`.
#
#   scripts/start.sh [MODEL]      MODEL: smollm2 (default), gemma3-270m, a URL or a path
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
MODEL_PATH="$("$ROOT/scripts/get-model.sh" "${1:-smollm2}")"
exec "$ROOT/build/bin/hearth" info "$MODEL_PATH"
