#!/usr/bin/env bash
# The main job: start the CPU engines, ask the default mixture one question
# (proposals shown as they arrive, the answer streamed), stop the engines.
set -euo pipefail
config=${1:-configs/cpu.yaml}
prompt=${2:-What are some fun things to do in SF?}
moa=.venv/bin/moa-local

trap '"$moa" down --config "$config" || true' EXIT
"$moa" up --config "$config"
echo
echo "Q: $prompt"
echo
"$moa" ask --config "$config" --show-proposals "$prompt"
