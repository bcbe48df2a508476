#!/usr/bin/env bash
# Average run time of ctxprop's sk_msg program and the capture's socket programs, per build, from
# the kernel's own accounting (kernel.bpf_stats_enabled): nginx (CPU 0) under wrk (CPU 1), with
# wrk instrumented so that every request it sends goes through the sk_msg program. The builds
# run one after another, ROUNDS times over; each line is one run, then the mean per build.
# SEAM_CONTEXT_PROPAGATION=tcp measures the TCP-option carrier instead of the header.
#   bench/msg-cost.sh [seconds, default 5] [rounds, default 3] [DIR...]
# DIR: a directory of seam binaries (default: this checkout's release build).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
secs=${1:-5}
rounds=${2:-3}
shift $(($# < 2 ? $# : 2))
bench_prepare >/dev/null
builds=("$@")
[ ${#builds[@]} -eq 0 ] && builds=("$SEAM_BIN_DIR")
port=18493
bench_nginx "$port"
export SEAM_TRACE_PRINTER=disabled SEAM_RUN_DIR=/run/seam-msgcost SEAM_PIN_DIR=/sys/fs/bpf/seam-msgcost
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
stack=
cleanup() {
  sysctl -qw kernel.bpf_stats_enabled="$stats_before"
  [ -n "$stack" ] && kill -TERM "$stack" 2>/dev/null && wait "$stack" 2>/dev/null
  bench_stop_nginx
}
trap cleanup EXIT
results="$work/msg-cost.txt"
: > "$results"
for _ in $(seq "$rounds"); do
  for dir in "${builds[@]}"; do
    bench_gated taskset -c 1 wrk -t1 -c32 -d"${secs}s" "http://127.0.0.1:$port/index.html"
    SEAM_BIN_DIR=$dir bench_with_seam "${SEAM_CONTEXT_PROPAGATION:-headers}" "$gate" "$port"
    sysctl -qw kernel.bpf_stats_enabled=1
    echo > "$gate_fifo"
    wait "$gate"
    rm -f "$gate_fifo"
    programs=$(bpftool -j prog show | python3 -c '
import json, sys
out = []
for p in json.load(sys.stdin):
    name = p.get("name") or p["type"]
    if p.get("run_cnt", 0) > 1000 and (p.get("type") == "sk_msg" or name in ("on_send", "on_recv")):
        out.append("%s=%.0f" % ("sk_msg" if p.get("type") == "sk_msg" else name, p["run_time_ns"] / p["run_cnt"]))
print(" ".join(sorted(out)))')
    sysctl -qw kernel.bpf_stats_enabled=0
    bench_stop_seam
    line="$dir requests=$(awk '/requests in/ {print $1}' "$work/gated.out") $programs"
    echo "$line" | tee -a "$results"
  done
done
echo "mean ns per run:"
python3 - "$results" <<'PY'
import sys, collections
runs = collections.defaultdict(lambda: collections.defaultdict(list))
order = []
for line in open(sys.argv[1]):
    fields = line.split()
    if fields[0] not in order:
        order.append(fields[0])
    for f in fields[1:]:
        k, v = f.split("=")
        runs[fields[0]][k].append(float(v))
for d in order:
    print(d, " ".join("%s %.0f" % (k, sum(v) / len(v)) for k, v in sorted(runs[d].items())))
PY
