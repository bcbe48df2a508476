#!/usr/bin/env bash
# What ctxprop alone costs, resolved finer than bench/ctxprop.sh can: one seam stack instruments
# nginx (CPU 0) and a driver on CPU 1 whose wrk runs (its forked children) send the requests, and
# only ctxprop starts and stops. Each cycle runs short wrk bursts back to back with ctxprop off and
# with each variant (in reverse order every other cycle), so each cycle's ratios compare bursts
# seconds apart: a VM that slows for minutes moves both sides of a ratio together. A variant is a
# context_propagation mode (headers, tcp, all), or NAME=MODE:DIR to run DIR's seam-ctxprop (a
# stage build of bench/floor.sh, say) in that mode. Prints for each variant against ctxprop off
# the throughput loss and the CPU time per request added outside seam's daemons (the programs'
# work and all it causes): median, mean with its 95 % interval, and per cycle.
#   bench/ctxprop-pairs.sh [seconds per burst, default 3] [cycles, default 20] [VARIANT… default headers tcp]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
secs=${1:-3}
cycles=${2:-20}
shift $(($# < 2 ? $# : 2))
variants=("$@")
[ $# = 0 ] && variants=(headers tcp)
for v in "${variants[@]}"; do
  case $v in
    headers | tcp | all) ;;
    *=*:*) [ -x "${v#*:}/seam-ctxprop" ] || { echo "no seam-ctxprop in ${v#*:}" >&2; exit 64; } ;;
    *) echo "a variant is headers, tcp, all or NAME=MODE:DIR, not $v" >&2; exit 64 ;;
  esac
done
bench_prepare
port=18492
bench_nginx "$port"
stack=
ctxprop=
driver=
cleanup() {
  [ -n "$ctxprop" ] && kill -TERM "$ctxprop" 2>/dev/null && wait "$ctxprop" 2>/dev/null
  [ -n "$driver" ] && kill "$driver" 2>/dev/null
  [ -n "$stack" ] && kill -TERM "$stack" 2>/dev/null && wait "$stack" 2>/dev/null
  bench_stop_nginx
}
trap cleanup EXIT
export SEAM_TRACE_PRINTER=disabled SEAM_RUN_DIR=/run/seam-bench SEAM_PIN_DIR=/sys/fs/bpf/seam-bench

# The driver reads a label per burst from `ctl`, runs one wrk burst into burst.out and answers on
# `done`; "stop" ends it. It is a target before its first burst, so every wrk it forks is one too.
ctl="$work/ctl"
done_fifo="$work/done"
mkfifo "$ctl" "$done_fifo"
bench_gated taskset -c 1 bash -c '
  while read -r label < "$1"; do
    [ "$label" = stop ] && exit 0
    wrk -t1 -c32 -d"$2s" --latency "$3" > "$4/burst.out" 2>&1
    echo > "$5"
  done' _ "$ctl" "$secs" "http://127.0.0.1:$port/index.html" "$work" "$done_fifo"
driver=$gate
bench_with_seam disabled "$driver" "$port" --without ctxprop
echo > "$gate_fifo"

# ctxprop_start VARIANT: ctxprop alone, as scripts/run would start it, until it is ready.
ctxprop_start() {
  local mode=$1 dir=$SEAM_BIN_DIR
  case $1 in *=*:*) mode=${1#*=} mode=${mode%%:*} dir=${1#*:} ;; esac
  : > "$work/ctxprop.log"
  SEAM_BIN_DIR=$dir SEAM_CONTEXT_PROPAGATION=$mode "$SEAM_ROOT/scripts/launch" ctxprop \
    2>"$work/ctxprop.log" & ctxprop=$!
  bench_wait_log "$work/ctxprop.log" "ready role=ctxprop"
}
ctxprop_stop() {
  kill -TERM "$ctxprop"
  wait "$ctxprop" || true
  ctxprop=
  grep -o "propagation counters.*" "$work/ctxprop.log" | sed "s/^/$1: /" >> "$work/counters.txt" || true
}
# burst LABEL: one wrk burst; appends "LABEL rps p50 p99 steal% requests busy-ticks", busy ticks
# being CPUs 0-1's outside seam's daemons.
burst() {
  local before steal daemons busy
  read -ra daemons < <(bench_daemon_pids)
  before=$(bench_cpu_ticks)
  busy=$(bench_busy_ticks "${daemons[@]}")
  echo "$1" > "$ctl"
  read -r _ < "$done_fifo"
  busy=$(($(bench_busy_ticks "${daemons[@]}") - busy))
  steal=$(bench_steal_share "$before" "$(bench_cpu_ticks)")
  local figures
  figures=$(bench_wrk_figures "$work/burst.out")
  read -r requests rps p50 p99 <<< "$figures"
  echo "$1 $rps $p50 $p99 $steal $requests $busy" >> "$work/bursts.txt"
}
: > "$work/bursts.txt"
: > "$work/counters.txt"
for c in $(seq "$cycles"); do
  echo "cycle $c/$cycles" >&2
  order=(off "${variants[@]}")
  if [ $((c % 2)) = 0 ]; then
    order=()
    for v in off "${variants[@]}"; do order=("$v" "${order[@]}"); done
  fi
  for v in "${order[@]}"; do
    if [ "$v" = off ]; then
      burst off
    else
      ctxprop_start "$v"
      burst "${v%%:*}"
      ctxprop_stop "${v%%:*}"
    fi
  done
done
echo stop > "$ctl"
wait "$driver" || true
driver=

python3 - "$work/bursts.txt" "$secs" "$cycles" "${variants[@]%%:*}" <<'PY'
import statistics, sys
variants = sys.argv[4:]
by = {}
for line in open(sys.argv[1]):
    label, rps, p50, p99, steal, requests, busy = line.split()
    # CPU time per request outside seam's daemons, in microseconds (a tick is 10 ms)
    cpu = int(busy) * 10000 / int(requests)
    by.setdefault(label, []).append((float(rps), float(p50), float(p99), float(steal), cpu))
print(f"nginx + wrk (wrk instrumented), one seam stack, ctxprop started and stopped; "
      f"{sys.argv[2]} s bursts, {sys.argv[3]} cycles")
for label in ["off"] + variants:
    v = by[label]
    print(f"  {label:14s} throughput {statistics.median(x[0] for x in v):8.0f} req/s  "
          f"p50 {statistics.median(x[1] for x in v):6.0f} us  p99 {statistics.median(x[2] for x in v):6.0f} us"
          f"  CPU {statistics.median(x[4] for x in v):5.2f} us/request  steal % max {max(x[3] for x in v):.1f}")
for label in variants:
    loss = [100 * (1 - h[0] / o[0]) for h, o in zip(by[label], by["off"])]
    mean = statistics.mean(loss)
    half = 1.96 * statistics.stdev(loss) / len(loss) ** 0.5 if len(loss) > 1 else float("nan")
    print(f"  ctxprop loss ({label} vs off): median {statistics.median(loss):.1f} %  "
          f"mean {mean:.1f} % ± {half:.1f}  per cycle " + " ".join(f"{x:.1f}" for x in loss))
    more = [100 * (h[4] / o[4] - 1) for h, o in zip(by[label], by["off"])]
    half = 1.96 * statistics.stdev(more) / len(more) ** 0.5 if len(more) > 1 else float("nan")
    print(f"  CPU per request ({label} vs off): median +{statistics.median(more):.1f} %  "
          f"mean +{statistics.mean(more):.1f} % ± {half:.1f}  per cycle " + " ".join(f"{x:.1f}" for x in more))
PY
for v in "${variants[@]%%:*}"; do
  grep -F "$v: " "$work/counters.txt" | tail -1 | sed -E "s/^([^:]+): .*(counters=)/  last cycle, \1: \2/"
done
