#!/usr/bin/env bash
# The main job: start the CPU engines, ask the default mixture one question
# (proposals shown as they arrive, the answer streamed), stop the engines.
#
# Ctrl-C or SIGTERM at any point stops them too. Each step runs in the
# background while the script waits for it, so a signal to the script alone
# is acted on at once (bash defers traps while a foreground command runs):
# the step gets SIGTERM (`moa-local up` then stops what it started), and only
# after it has exited does `moa-local down` run (it needs the run folder's
# lock, which `up` holds).
set -euo pipefail
config=${1:-configs/cpu.yaml}
prompt=${2:-What are some fun things to do in SF?}
moa=.venv/bin/moa-local
step=

stop_engines() {
  trap - EXIT INT TERM
  if [ -n "$step" ]; then
    kill -TERM "$step" 2>/dev/null || true
    wait "$step" || true
  fi
  "$moa" down --config "$config" || true
}
run() {
  local status=0
  "$@" &
  step=$!
  wait "$step" || status=$?
  step=
  return "$status"
}
trap stop_engines EXIT
trap 'stop_engines; exit 130' INT
trap 'stop_engines; exit 143' TERM
run "$moa" up --config "$config"
echo
echo "Q: $prompt"
echo
run "$moa" ask --config "$config" --show-proposals "$prompt"
