#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md, start to finish: the instant-engine
# runs (bench/fake.sh), the real CPU engine runs (bench/cpu.sh), then the
# targets table (bench/targets.py). Starts what it needs and stops it again.
# About 65 minutes on a 2-core machine, most of it on the CPU engines.
#
#   bench/run_all.sh [OUT_DIR]     (default bench-out/<date-time>)
#   PROFILE=1 bench/run_all.sh     also profile the gateway under the fake loads (py-spy)
#   PUBLISH=1 bench/run_all.sh     also copy plots and summaries to docs/bench/
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out/$(date +%Y%m%d-%H%M%S)}
PY=${PY:-.venv/bin/python}
mkdir -p "$out"
bench/fake.sh "$out/fake"
bench/cpu.sh "$out/cpu"
"$PY" bench/targets.py "$out" | tee "$out/targets.md"
if [[ ${PUBLISH:-0} == 1 ]]; then
  "$PY" bench/publish.py "$out" docs/bench
fi
echo "results in $out"
