#!/usr/bin/env bash
# Comparison 4: the gateway's pure orchestration cost and its capacity, on
# instant fake engines in separate processes (4 proposers + an aggregator,
# bench/fake.yaml). Starts two fake engines and the gateway, runs the loads,
# stops everything. PROFILE=1 then also samples the gateway with py-spy under
# loads at concurrency 1 and 32 (needs py-spy, which no extra installs: .venv/bin/pip install py-spy).
#
#   bench/fake.sh [OUT_DIR]        (default bench-out/fake)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out/fake}
MOA=${MOA:-.venv/bin/moa-local}
PY=${PY:-.venv/bin/python}
PYSPY=${PYSPY:-.venv/bin/py-spy}
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap stop_all EXIT
mkdir -p "$out"
gw=http://127.0.0.1:8280

start fake-a "$out/fake-a.log" "$PY" -m moa_local.testing.fake_engine --port 8281 --model p1 --model p2 --model agg --tokens 16
start fake-b "$out/fake-b.log" "$PY" -m moa_local.testing.fake_engine --port 8282 --model p3 --model p4 --tokens 16
wait_http http://127.0.0.1:8281/health
wait_http http://127.0.0.1:8282/health
start gateway "$out/gateway.log" "$MOA" serve --config bench/fake.yaml
wait_http "$gw/health"
gateway_pid=${BENCH_PIDS[-1]}
engines=(--engine-metrics http://127.0.0.1:8281 --engine-metrics http://127.0.0.1:8282
  --cpu-pid "gateway=$gateway_pid" --cpu-pid "fake engine a=${BENCH_PIDS[0]}" --cpu-pid "fake engine b=${BENCH_PIDS[1]}")

load_note | tee "$out/load-before.txt"
# Orchestration overhead, one request at a time; an endpoint alone (pass-through) for reference.
"$MOA" bench --url "$gw" --model moa-fake --model p1 --concurrency 1 --requests 1000 --duration-limit 20 \
  --max-tokens 16 --warmup 20 "${engines[@]}" --out "$out/overhead"
# Capacity: closed loop at rising concurrency, then open loop (Poisson arrivals) at fixed rates.
"$MOA" bench --url "$gw" --model moa-fake --concurrency 8,32,64 --requests 3000 --duration-limit 15 \
  --max-tokens 16 --warmup 20 "${engines[@]}" --out "$out/capacity"
"$MOA" bench --url "$gw" --model moa-fake --rate 50,100,200 --requests 3000 --duration-limit 15 --max-tokens 16 \
  "${engines[@]}" --out "$out/capacity-open"
load_note | tee "$out/load-after.txt"

# Where the gateway's time goes: the same loads again (shorter), sampled by py-spy. Kept apart from the
# measured runs above because sampling costs the gateway some CPU.
if [[ ${PROFILE:-0} == 1 ]]; then
  for level in 1 32; do
    "$PYSPY" record -p "$gateway_pid" -d 12 -r 200 -f raw -o "$out/profile-c$level.txt" --nonblocking \
      >"$out/profile-c$level.log" 2>&1 &
    spy=$!
    "$MOA" bench --url "$gw" --model moa-fake --concurrency "$level" --requests 100000 --duration-limit 11 \
      --max-tokens 16 "${engines[@]}" --out "$out/profile-c$level-run" --quiet
    wait "$spy" || true
    "$PY" bench/profile_summary.py "$out/profile-c$level.txt" >"$out/profile-c$level.md"
  done
fi
