#!/usr/bin/env bash
# Comparisons 1-3 on the real CPU engines (vLLM's CPU build, configs/cpu.yaml:
# SmolLM2-135M on core 0, Qwen2.5-Coder-0.5B on core 1), through a gateway
# serving bench/cpu-bench.yaml on port 8180:
#   1. the mixture against each of its endpoints alone, through the gateway;
#   2. gateway pass-through against the engine called directly (alternating
#      runs in ABBA order, so that drift cancels);
#   3. a batch through the gateway's concurrent pipeline, against the
#      engines' saturated throughput (direct load, same calls, no layer
#      dependency) and the reference implementation's one-at-a-time pattern.
# About 60 minutes on 2 cores, most of it waiting for Qwen.
# Starts the engines (bench/cpu-bench.yaml: float32, see there) unless they
# already answer on 8101/8102, and then stops them at the end.
#
#   bench/cpu.sh [OUT_DIR]        (default bench-out/cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out/cpu}
MOA=${MOA:-.venv/bin/moa-local}
PY=${PY:-.venv/bin/python}
ENGINES=${ENGINES:-smollm2 qwen}   # endpoints for the pass-through comparison
# shellcheck source=bench/lib.sh
source bench/lib.sh
mkdir -p "$out"
gw=http://127.0.0.1:8180
declare -A engine_url=([smollm2]=http://127.0.0.1:8101 [qwen]=http://127.0.0.1:8102)
declare -A served=([smollm2]=smollm2-135m-instruct [qwen]=qwen2.5-coder-0.5b-instruct)
declare -A throughput_requests=([smollm2]=96 [qwen]=64)   # pass-through throughput runs of ~40 and ~75 s
metrics=(--engine-metrics http://127.0.0.1:8101 --engine-metrics http://127.0.0.1:8102)

started_engines=0
cleanup() {
  stop_all
  if ((started_engines)); then "$MOA" down --config bench/cpu-bench.yaml || true; fi
}
trap cleanup EXIT
if ! curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8101/health ||
  ! curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8102/health; then
  started_engines=1
  "$MOA" up --config bench/cpu-bench.yaml
fi
start gateway "$out/gateway.log" "$MOA" serve --config bench/cpu-bench.yaml
wait_http "$gw/health"
metrics+=(--cpu-pid "gateway=${BENCH_PIDS[-1]}")   # the gateway's CPU time per request, too
load_note | tee "$out/load-before.txt"

# 1. What MoA costs: the mixture and each endpoint alone, through the gateway.
"$MOA" bench --url "$gw" --model moa-bench --model smollm2 --model qwen --concurrency 1,4,16 --requests 16 \
  --duration-limit 30 --max-tokens 48 --warmup 1 "${metrics[@]}" --out "$out/mixture-vs-endpoints"

# 2. What the gateway costs: pass-through against the engine itself. Time to first token one request at
#    a time (4-token answers) in eight short runs, alternating ABBAABBA (direct, gateway, gateway,
#    direct, ...) so that drift cancels; then throughput at 16 in flight, ABBAABBA too, each run about
#    40 s (SmolLM2) or 75 s (Qwen): runs of 11-35 s spread by +-10% between neighbours.
for name in $ENGINES; do
  direct=(--url "${engine_url[$name]}" --model "${served[$name]}" --no-trace)
  via=(--url "$gw" --model "$name")
  round=0
  for side in direct gateway gateway direct direct gateway gateway direct; do
    round=$((round + 1))
    if [[ $side == direct ]]; then args=("${direct[@]}"); else args=("${via[@]}"); fi
    "$MOA" bench "${args[@]}" --concurrency 1 --requests 12 --duration-limit 15 --max-tokens 4 --warmup 1 \
      "${metrics[@]}" --out "$out/passthrough/$name-$round-$side-ttft" --quiet
  done
  round=0
  for side in direct gateway gateway direct direct gateway gateway direct; do
    round=$((round + 1))
    if [[ $side == direct ]]; then args=("${direct[@]}"); else args=("${via[@]}"); fi
    "$MOA" bench "${args[@]}" --concurrency 16 --requests "${throughput_requests[$name]}" --duration-limit 120 \
      --max-tokens 24 --warmup 1 "${metrics[@]}" --out "$out/passthrough/$name-$round-$side-throughput" --quiet
  done
done

# 3. A batch: every prompt submitted at once, the gateway's concurrent pipeline scheduling them (each
#    endpoint keeps at most its max_concurrency, 16, in flight), against the same batch's calls sent
#    straight to the engines (same prompts, stand-in references, 16 in flight per endpoint, no layer
#    waiting on another), and against the reference implementation's one-at-a-time pattern. For
#    context, each engine's saturated rate with every engine kept busy with its share of the calls
#    (16 in flight each; rate over 120 s after 40 s of warm-up).
"$MOA" bench --url "$gw" --model moa-bench --concurrency 32 --requests 32 --max-tokens 48 --warmup 1 \
  "${metrics[@]}" --out "$out/batch/moa-bench"
"$MOA" bench --url "$gw" --model moa-bench-balanced --concurrency 96 --requests 96 --max-tokens 48 --warmup 1 \
  --timeout 900 "${metrics[@]}" --out "$out/batch/moa-bench-balanced"
for spec in moa-bench:32 moa-bench-balanced:96; do
  mixture=${spec%:*}
  "$PY" bench/saturation.py --config bench/cpu-bench.yaml --mixture "$mixture" --prompts 32 --max-tokens 48 \
    --concurrency 16 --warmup 40 --window 120 --batch "${spec#*:}" --out "$out/saturation-$mixture.json"
done
"$PY" bench/reference_moa.py --config bench/cpu-bench.yaml --mixture moa-bench --prompts 3 --max-tokens 48 \
  --out "$out/reference-moa-bench.json"
load_note | tee "$out/load-after.txt"
