#!/usr/bin/env bash
# What ctxprop alone costs, resolved finer than bench/ctxprop.sh can: one seam stack instruments
# nginx (CPU 0) and a driver on CPU 1 whose wrk runs (its forked children) send the requests, and
# only ctxprop starts and stops. Short wrk bursts run back to back, every variant's burst between
# two with ctxprop off (off V1 off V2 … off), and each is compared with the mean of its two
# neighbours: a VM that slows for minutes moves both sides of a ratio together, and one whose
# speed drifts steadily over the seconds of three bursts cancels out. A variant is a
# context_propagation mode (headers, tcp, all), NAME=MODE:DIR to run DIR's seam-ctxprop (a stage
# build of bench/floor.sh, say) in that mode, or `wire`: ctxprop off and wrk sending a traceparent
# of its own: what the header's bytes cost the server and seam's correlator, as they would from
# any propagation (an OpenTelemetry SDK's too); the capture reads incoming context only while
# ctxprop runs, so this leaves that out. `wire+V` is variant V with wrk sending that traceparent:
# ctxprop then inserts none, and the capture reads the one wrk sent (wire+pass=headers:DIR with
# a stage build that passes every send: the sockhash and the reading side, without ctxprop's own
# work). Prints for each variant against ctxprop
# off the throughput loss, the CPU time per request added outside seam's daemons (the programs'
# work and all it causes), the daemons' CPU time per request, and the busy time per request of
# nginx's CPU and of the client's (which of the two sides a cost lands on): median, mean with its
# 95 % interval, and per cycle.
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
  [ "$v" = wire ] && continue
  case ${v#wire+} in
    headers | tcp | all) ;;
    *=*:*) [ -x "${v#*:}/seam-ctxprop" ] || { echo "no seam-ctxprop in ${v#*:}" >&2; exit 64; } ;;
    *) echo "a variant is headers, tcp, all, wire, NAME=MODE:DIR or wire+ one of those but wire, not $v" >&2; exit 64 ;;
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
# A `wire` or `wire+…` burst's requests carry a traceparent from wrk (a valid one, the same on each);
# every burst's carry SEAM_BENCH_HEADER when it is set ("Upgrade: h2c" makes ctxprop give each
# connection up after its first request, as it does a database's or a TLS connection).
ctl="$work/ctl"
done_fifo="$work/done"
mkfifo "$ctl" "$done_fifo"
bench_gated taskset -c 1 bash -c '
  while read -r label < "$1"; do
    [ "$label" = stop ] && exit 0
    header=()
    [ -n "$6" ] && header=(-H "$6")
    case $label in wire | wire+*) header+=(-H "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") ;; esac
    wrk -t1 -c32 -d"$2s" --latency "${header[@]}" "$3" > "$4/burst.out" 2>&1
    echo > "$5"
  done' _ "$ctl" "$secs" "http://127.0.0.1:$port/index.html" "$work" "$done_fifo" \
  "${SEAM_BENCH_HEADER:-}"
driver=$gate
bench_with_seam disabled "$driver" "$port" --without ctxprop
echo > "$gate_fifo"

# ctxprop_start VARIANT: ctxprop alone, as scripts/run would start it, until it is ready.
ctxprop_start() {
  local variant=${1#wire+}
  local mode=$variant dir=$SEAM_BIN_DIR
  case $variant in *=*:*) mode=${variant#*=} mode=${mode%%:*} dir=${variant#*:} ;; esac
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
# burst LABEL: one wrk burst; appends "LABEL rps p50 p99 steal% requests busy-ticks
# daemon-ticks cpu0-ticks cpu1-ticks", busy ticks being CPUs 0-1's outside seam's daemons and
# the last two each CPU's busy ticks, daemons included.
burst() {
  local before steal daemons busy own cpu0 cpu1 after0 after1
  read -ra daemons < <(bench_daemon_pids)
  before=$(bench_cpu_ticks)
  busy=$(bench_busy_ticks "${daemons[@]}")
  own=$(bench_proc_ticks "${daemons[@]}")
  read -r cpu0 cpu1 < <(bench_cpu_busy)
  echo "$1" > "$ctl"
  read -r _ < "$done_fifo"
  read -r after0 after1 < <(bench_cpu_busy)
  busy=$(($(bench_busy_ticks "${daemons[@]}") - busy))
  own=$(($(bench_proc_ticks "${daemons[@]}") - own))
  steal=$(bench_steal_share "$before" "$(bench_cpu_ticks)")
  local figures
  figures=$(bench_wrk_figures "$work/burst.out")
  read -r requests rps p50 p99 <<< "$figures"
  echo "$1 $rps $p50 $p99 $steal $requests $busy $own $((after0 - cpu0)) $((after1 - cpu1))" >> "$work/bursts.txt"
}
: > "$work/bursts.txt"
: > "$work/counters.txt"
for c in $(seq "$cycles"); do
  echo "cycle $c/$cycles" >&2
  for v in "${variants[@]}"; do
    burst off
    if [ "$v" = wire ]; then
      burst wire
    else
      ctxprop_start "$v"
      burst "${v%%:*}"
      ctxprop_stop "${v%%:*}"
    fi
  done
done
burst off
echo stop > "$ctl"
wait "$driver" || true
driver=

python3 - "$work/bursts.txt" "$secs" "$cycles" "${variants[@]%%:*}" <<'PY'
import statistics, sys
variants = sys.argv[4:]
secs = float(sys.argv[2])
by = {}
bursts = []
for line in open(sys.argv[1]):
    label, rps, p50, p99, steal, requests, busy, own, cpu0, cpu1 = line.split()
    # CPU time per request outside seam's daemons and in them, then on nginx's CPU and on the
    # client's, in microseconds (a tick is 10 ms)
    per_request = lambda ticks: int(ticks) * 10000 / int(requests)
    figures = (float(rps), float(p50), float(p99), float(steal), per_request(busy),
               per_request(own), per_request(cpu0), per_request(cpu1),
               100 * int(cpu0) / (100 * secs), 100 * int(cpu1) / (100 * secs))
    by.setdefault(label, []).append(figures)
    bursts.append((label, figures))
# each variant burst against the mean of the off bursts either side of it
against = {}
for i, (label, figures) in enumerate(bursts):
    if label != "off":
        off = [(a + b) / 2 for a, b in zip(bursts[i - 1][1], bursts[i + 1][1])]
        against.setdefault(label, []).append((figures, off))
print(f"nginx + wrk (wrk instrumented), one seam stack, ctxprop started and stopped; "
      f"{sys.argv[2]} s bursts, {sys.argv[3]} cycles")
for label in ["off"] + variants:
    v = by[label]
    print(f"  {label:14s} throughput {statistics.median(x[0] for x in v):8.0f} req/s  "
          f"p50 {statistics.median(x[1] for x in v):6.0f} us  p99 {statistics.median(x[2] for x in v):6.0f} us"
          f"  CPU {statistics.median(x[4] for x in v):5.2f} + daemons {statistics.median(x[5] for x in v):5.2f} us/request"
          f"  steal % max {max(x[3] for x in v):.1f}")
    print(f"  {'':14s} nginx's CPU 0 {statistics.median(x[6] for x in v):5.2f} us/request, "
          f"{statistics.median(x[8] for x in v):3.0f} % busy;  client's CPU 1 "
          f"{statistics.median(x[7] for x in v):5.2f} us/request, {statistics.median(x[9] for x in v):3.0f} % busy")
def summary(what, per_cycle, unit):
    half = 1.96 * statistics.stdev(per_cycle) / len(per_cycle) ** 0.5 if len(per_cycle) > 1 else float("nan")
    print(f"  {what}: median {statistics.median(per_cycle):+.2f} {unit}  mean {statistics.mean(per_cycle):+.2f} {unit}"
          f" ± {half:.2f}  per cycle " + " ".join(f"{x:.1f}" for x in per_cycle))
for label in variants:
    pairs = against[label]
    summary(f"ctxprop loss ({label} vs off)", [100 * (1 - h[0] / o[0]) for h, o in pairs], "%")
    summary(f"CPU per request ({label} vs off)", [100 * (h[4] / o[4] - 1) for h, o in pairs], "%")
    summary(f"daemons' CPU per request ({label} vs off)", [h[5] - o[5] for h, o in pairs], "us")
    summary(f"CPU 0 (nginx) per request ({label} vs off)", [h[6] - o[6] for h, o in pairs], "us")
    summary(f"CPU 1 (client) per request ({label} vs off)", [h[7] - o[7] for h, o in pairs], "us")
PY
for v in "${variants[@]%%:*}"; do
  [ "$v" = wire ] && continue # ctxprop did not run
  grep -F "$v: " "$work/counters.txt" | tail -1 | sed -E "s/^([^:]+): .*(counters=)/  last cycle, \1: \2/"
done
