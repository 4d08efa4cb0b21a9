#!/usr/bin/env bash
# Batch jobs on the real CPU engines (bench/cpu-bench.yaml: SmolLM2-135M on
# core 0, port 8101; Qwen2.5-Coder-0.5B on core 1, port 8102):
#   1. throughput: a batch of 96 prompts of moa-bench-balanced (aggregator
#      max_tokens 48, as cpu.sh's balanced batch) through `moa-local batch`,
#      no server, against the same prompts' calls sent straight to the
#      engines (bench/saturation.py --window 0 --batch 96: all at once, each
#      endpoint at most its max_concurrency in flight, no layer waiting on
#      another). Target: >= 95% of the direct batch's generated tokens/s.
#      Runs in ORDER, direct then moa-local batch by default; each side
#      takes about 8 minutes here. ORDER="direct cli cli direct" runs ABBA
#      (the mean of each side's runs is judged).
#   2. interactive TTFT under a batch: a gateway serving the same config
#      (port 8180, its batch data in OUT_DIR/gateway-cache); 8 single
#      moa-bench requests (max_tokens 16) over idle engines, then the same
#      while the 96-line batch runs on the gateway (submitted through
#      /v1/files and /v1/batches), which is then cancelled. Target: TTFT
#      p50 <= 1.5x idle. Our admission queue and the engines' own are
#      sampled meanwhile (bench/batch_ttft.py).
#   3. OUT_DIR/summary.json and summary.md (bench/batch_summary.py), the two
#      target rows printed and kept in OUT_DIR/targets.md.
# About 25 minutes on 2 cores (40 with ORDER="direct cli cli direct"), plus
# the engines' start. Starts the engines unless they already answer on
# 8101/8102, and then stops them at the end; Ctrl-C or SIGTERM stops the
# running step cleanly (a cancelled `moa-local batch` keeps complete lines).
#
#   bench/batch.sh [OUT_DIR]                          (default bench-out/batch)
#   BATCH_PROMPTS=6 INTERACTIVE_REQUESTS=2 bench/batch.sh bench-out/batch-try   (a quick check)
#   PARTS=ttft bench/batch.sh                         (only part 2; PARTS="throughput ttft" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out/batch}
MOA=${MOA:-.venv/bin/moa-local}
PY=${PY:-.venv/bin/python}
BATCH_PROMPTS=${BATCH_PROMPTS:-96}
INTERACTIVE_REQUESTS=${INTERACTIVE_REQUESTS:-8}
ORDER=${ORDER:-direct cli}
PARTS=${PARTS:-throughput ttft}
# shellcheck source=bench/lib.sh
source bench/lib.sh
config=bench/cpu-bench.yaml
mixture=moa-bench-balanced
gw=http://127.0.0.1:8180
declare -A engine_url=([smollm2]=http://127.0.0.1:8101 [qwen]=http://127.0.0.1:8102)
declare -A served=([smollm2]=smollm2-135m-instruct [qwen]=qwen2.5-coder-0.5b-instruct)
for side in $ORDER; do
  [[ $side == direct || $side == cli ]] || { echo "ORDER: '$side' is not direct or cli" >&2; exit 2; }
done
for part in $PARTS; do
  [[ $part == throughput || $part == ttft ]] || { echo "PARTS: '$part' is not throughput or ttft" >&2; exit 2; }
done

started_engines=0
step_pid=
cleanup() {
  stop_all
  if ((started_engines)); then "$MOA" down --config "$config" || true; fi
}
# A signal stops the running step first: SIGINT to its process group, on which each step stops cleanly.
interrupted() {
  trap - INT TERM
  if [[ -n $step_pid ]]; then
    kill -INT -- "-$step_pid" 2>/dev/null || true
    wait "$step_pid" 2>/dev/null || true
  fi
  exit 130
}
trap cleanup EXIT
trap interrupted INT TERM

# step COMMAND...: run COMMAND in its own process group and wait for it, so that a signal to this
# script is handled at once (bash runs a trap only after a foreground command ends) and passed on.
step() {
  set -m
  "$@" &
  step_pid=$!
  set +m
  local rc=0
  wait "$step_pid" || rc=$?
  step_pid=
  return "$rc"
}

# warm: one short answer from each engine, so that no measured run pays for a cold start.
warm() {
  local name
  for name in "${!engine_url[@]}"; do
    curl -fsS -o /dev/null --max-time 300 "${engine_url[$name]}/v1/chat/completions" \
      -H 'Content-Type: application/json' \
      -d "{\"model\": \"${served[$name]}\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 4}"
  done
}

mkdir -p "$out"
if ! curl -fsS -o /dev/null --max-time 2 "${engine_url[smollm2]}/health" ||
  ! curl -fsS -o /dev/null --max-time 2 "${engine_url[qwen]}/health"; then
  started_engines=1
  "$MOA" up --config "$config"
fi
warm
load_note | tee "$out/load-before.txt"
input=$out/input.jsonl
"$PY" bench/batch_input.py --model "$mixture" --prompts "$BATCH_PROMPTS" --max-tokens 48 --out "$input"

# 1. Throughput: moa-local batch against the same calls sent straight to the engines, back to back.
if [[ " $PARTS " == *" throughput "* ]]; then
  rm -rf "$out"/direct-*.json "$out"/cli-*   # an earlier run's files would join the means
  run=0
  for side in $ORDER; do
    run=$((run + 1))
    if [[ $side == direct ]]; then
      step "$PY" bench/saturation.py --config "$config" --mixture "$mixture" --max-tokens 48 --window 0 \
        --batch "$BATCH_PROMPTS" --out "$out/direct-$run.json"
    else
      step "$PY" bench/batch_cli.py --moa "$MOA" --config "$config" --input "$input" \
        --output "$out/cli-$run/answers.jsonl" --out "$out/cli-$run.json"
    fi
  done
fi

# 2. Interactive TTFT through the gateway, idle and under a batch submitted to it.
if [[ " $PARTS " == *" ttft "* ]]; then
  rm -rf "$out/gateway-cache" "$out/ttft"   # a fresh batch store: nothing of an earlier run resumes
  mkdir -p "$out/gateway-cache"
  start gateway "$out/gateway.log" env MOA_LOCAL_CACHE="$(cd "$out/gateway-cache" && pwd)" \
    "$MOA" serve --config "$config"
  wait_http "$gw/health"
  step "$PY" bench/batch_ttft.py --moa "$MOA" --config "$config" --gateway "$gw" --input "$input" \
    --model moa-bench --requests "$INTERACTIVE_REQUESTS" --max-tokens 16 --out "$out/ttft"
  stop_all
fi
load_note | tee "$out/load-after.txt"

# 3. The summary and the two target rows.
"$PY" bench/batch_summary.py "$out" | tee "$out/targets.md"
echo "results in $out"
