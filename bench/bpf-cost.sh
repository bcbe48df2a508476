#!/usr/bin/env bash
# Run time of each seam BPF program under nginx + wrk load with nginx instrumented, from the
# kernel's own accounting (kernel.bpf_stats_enabled, which adds ~50 ns per run while on).
# Averages are over every call, wrk's (not a target) included. SEAM_BENCH_TLS=1 serves HTTPS
# (the TLS uprobe programs then run too, for wrk's SSL calls as well as nginx's).
# SEAM_BENCH_SERVER=node measures the Node test service instead (its Node uprobes are listed too).
# SEAM_BENCH_CLOSE=1 sends `Connection: close`, so the programs that run once per connection count.
# SEAM_CONTEXT_PROPAGATION=headers (or tcp) runs ctxprop too: a Node target's writes are then probed.
#   bench/bpf-cost.sh [seconds, default 8]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
secs=${1:-8}
bench_prepare
port=18497
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
bench_server "$port"
SEAM_OPEN_PORT=$port SEAM_TRACE_PRINTER=disabled SEAM_RUN_DIR=/run/seam-bpfcost SEAM_PIN_DIR=/sys/fs/bpf/seam-bpfcost \
  "$here/../scripts/run" 2>/dev/null & stack=$!
cleanup() {
  sysctl -qw kernel.bpf_stats_enabled="$stats_before"
  kill -TERM "$stack" 2>/dev/null; wait "$stack" 2>/dev/null
  bench_stop_nginx
}
trap cleanup EXIT
sleep 3
sysctl -qw kernel.bpf_stats_enabled=1
wrk_conn=()
[ "${SEAM_BENCH_CLOSE:-0}" = 1 ] && wrk_conn=(-H "Connection: close")
taskset -c 1 wrk -t1 -c32 -d"${secs}s" "${wrk_conn[@]}" "$scheme://127.0.0.1:$port/index.html" | awk '/requests in/ {print "requests", $1}'
bpftool -j prog show | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    if p.get("run_cnt", 0) > 1000 and p["name"] in ("on_send", "on_recv", "on_send_begin", "on_xmit", "tls_enter", "tls_return", "node_learn", "node_accept_enter", "node_accept_return", "node_socket_new", "node_send_enter"):
        name, runs, avg = p["name"], p["run_cnt"], p["run_time_ns"] / p["run_cnt"]
        print(f"{name:10} runs {runs:>9}  average {avg:6.0f} ns")
'
