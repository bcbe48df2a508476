#!/usr/bin/env bash
# What seam's hooks cost a process that is not instrumented, against one that is: nginx (one
# worker, CPU 0) under wrk (CPU 1), CPU of the nginx worker per request, in three phases of one
# run: no seam; seam running with nginx not a target; seam instrumenting nginx.
#   bench/hook-cost.sh [seconds per phase, default 8]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/../scripts/lib.sh"
secs=${1:-8}
seam_require_root
[ -x "$SEAM_BIN_DIR/seam-loader" ] || { seam_install_deps; seam_build; }
seam_setup_host
work=$(mktemp -d)
port=18495
mkdir -p "$work/www"
head -c 612 /dev/zero | tr '\0' x > "$work/www/index.html"
cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:$port; root $work/www; } }
CONF
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" & ng=$!
stack=
cleanup() {
  [ -n "$stack" ] && kill -TERM "$stack" 2>/dev/null && wait "$stack" 2>/dev/null
  kill -TERM "$ng" 2>/dev/null || true
}
trap cleanup EXIT
sleep 0.5
worker=$(pgrep -P "$ng" | head -1)
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
