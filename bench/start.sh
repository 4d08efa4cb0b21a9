#!/usr/bin/env bash
# When the aggregator starts: `after_layers` (the paper's MoA), `early` and
# `staircase` side by side, at concurrency 1 and 8, with time to first token,
# end-to-end latency, generated and prompt tokens per answer and, on vLLM, the
# prefix-cache hit rate (`moa-local bench` reads them from the engines' /metrics).
#   1. fake engines that stream at GPU-like speeds (bench/fake-start.yaml): the
#      mechanism, apart from CPU noise; then a two-layer mixture at concurrency 1;
#   2. with CPU=1, also the real CPU engines (configs/cpu.yaml: the three
#      moa-cpu-select variants), through a gateway on 8080. Starts the engines
#      unless they already answer on 8101/8102, and then stops them. At
#      concurrency 8 it sends 16 requests, two waves; then after_layers and
#      staircase again at concurrency 16 (32 requests), the throughput under
#      batch load. About 30 minutes on 2 cores.
#
#   bench/start.sh [OUT_DIR]        (default bench-out/start; FAKE=0 skips part 1)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out/start}
MOA=${MOA:-.venv/bin/moa-local}
PY=${PY:-.venv/bin/python}
# shellcheck source=bench/lib.sh
source bench/lib.sh
started_engines=0
cleanup() {
  stop_all
  if ((started_engines)); then "$MOA" down --config configs/cpu.yaml || true; fi
}
trap cleanup EXIT
mkdir -p "$out"

if [[ ${FAKE:-1} == 1 ]]; then
fake() {  # NAME PORT TOKEN_DELAY_MS
  start "fake-$1" "$out/fake-$1.log" "$PY" -m moa_local.testing.fake_engine --port "$2" --model "$1" \
    --tokens 256 --latency-ms 100 --token-delay-ms "$3"
  wait_http "http://127.0.0.1:$2/health"
}
fake fast 8291 15
fake slow 8292 30
fake agg 8293 20
start gateway "$out/gateway-fake.log" "$MOA" serve --config bench/fake-start.yaml
wait_http http://127.0.0.1:8290/health
load_note | tee "$out/load-fake.txt"
fake_metrics=(--engine-metrics http://127.0.0.1:8291 --engine-metrics http://127.0.0.1:8292
  --engine-metrics http://127.0.0.1:8293)
for level in 1 8; do
  "$MOA" bench --url http://127.0.0.1:8290 --model start-after-layers --model start-early \
    --model start-staircase --concurrency "$level" --requests $((level * 8)) --max-tokens 256 --warmup 1 \
    "${fake_metrics[@]}" --out "$out/fake-c$level"
done
"$MOA" bench --url http://127.0.0.1:8290 --model start-after-layers-2 --model start-staircase-2 --concurrency 1 \
  --requests 8 --max-tokens 256 --warmup 1 "${fake_metrics[@]}" --out "$out/fake-two-layers-c1"
stop_all
fi

if [[ ${CPU:-0} == 1 ]]; then
  if ! curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8101/health ||
    ! curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8102/health; then
    started_engines=1
    "$MOA" up --config configs/cpu.yaml
  fi
  start gateway "$out/gateway-cpu.log" "$MOA" serve --config configs/cpu.yaml
  wait_http http://127.0.0.1:8080/health
  load_note | tee "$out/load-cpu.txt"
  for level in 1 8; do
    "$MOA" bench --url http://127.0.0.1:8080 --model moa-cpu-select --model moa-cpu-select-early \
      --model moa-cpu-select-staircase --concurrency "$level" --requests $((level == 1 ? 4 : 16)) \
      --max-tokens 256 --temperature 0.3 --dataset mt-bench \
      --engine-metrics http://127.0.0.1:8101 --engine-metrics http://127.0.0.1:8102 --out "$out/cpu-c$level"
  done
  # Batch load: does staircase's extra prefill cost throughput with many requests in flight?
  "$MOA" bench --url http://127.0.0.1:8080 --model moa-cpu-select --model moa-cpu-select-staircase \
    --concurrency 16 --requests 32 --max-tokens 256 --temperature 0.3 --dataset mt-bench \
    --engine-metrics http://127.0.0.1:8101 --engine-metrics http://127.0.0.1:8102 --out "$out/cpu-c16"
fi
