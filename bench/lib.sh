# Shared by the bench scripts: start background processes, wait for them, stop them.
# Source it; set MOA (the moa-local command) and PY (the Python with moa_local) first.

BENCH_PIDS=()

# start NAME LOGFILE COMMAND...: run COMMAND in the background, remember its PID.
start() {
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  BENCH_PIDS+=("$!")
  echo "started $name (pid $!, log $log)" >&2
}

# wait_http URL [SECONDS]: poll until URL answers 200, or fail.
wait_http() {
  local url=$1 limit=${2:-60} waited=0
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    sleep 0.2
    waited=$((waited + 1))
    if ((waited > limit * 5)); then
      echo "no answer from $url after ${limit}s" >&2
      return 1
    fi
  done
}

# stop_all: SIGTERM every process started here, newest first, then wait for them.
stop_all() {
  local pid i
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${BENCH_PIDS[i]}
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${BENCH_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

# load_note: one line on what else is using the CPUs right now.
load_note() {
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
}
