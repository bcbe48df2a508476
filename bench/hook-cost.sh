#!/usr/bin/env bash
# What seam's hooks cost a process that is not instrumented, against one that is: nginx (one
# worker, CPU 0) under wrk (CPU 1), CPU of the nginx worker per request, in three phases of one
# run: no seam; seam running with nginx not a target; seam instrumenting nginx.
#   bench/hook-cost.sh [seconds per phase, default 8]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
secs=${1:-8}
bench_prepare
port=18495
bench_nginx "$port"
stack=
cleanup() {
  [ -n "$stack" ] && kill -TERM "$stack" 2>/dev/null && wait "$stack" 2>/dev/null
  bench_stop_nginx
}
trap cleanup EXIT
ticks() { awk '{print $14 + $15}' "/proc/$worker/stat"; }
measure() {
  local before after out n
  before=$(ticks)
  out=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" "http://127.0.0.1:$port/index.html")
  after=$(ticks)
  n=$(echo "$out" | grep -o '[0-9]* requests in' | cut -d' ' -f1)
  printf '%-22s %8.0f req/s  nginx %.2f us/request\n' "$1" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" "$(python3 -c "print(($after - $before) * 1e4 / $n)")"
}
run_seam() {
  SEAM_OPEN_PORT=$1 SEAM_TRACE_PRINTER=disabled SEAM_RUN_DIR=/run/seam-hook SEAM_PIN_DIR=/sys/fs/bpf/seam-hook \
    "$here/../scripts/run" 2>/dev/null & stack=$!
  sleep 3
}
measure "no seam"
run_seam 1
measure "seam, not a target"
kill -TERM "$stack"; wait "$stack" 2>/dev/null || true; stack=
run_seam "$port"
measure "seam, nginx a target"
