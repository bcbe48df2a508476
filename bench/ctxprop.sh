#!/usr/bin/env bash
# What context propagation costs, in one run: nginx (CPU 0) under wrk (CPU 1), with wrk itself
# instrumented so every request it sends goes through ctxprop's sk_msg program. Each round runs
# four phases (in reverse order every other round): no seam; seam instrumenting nginx and wrk with
# context_propagation=disabled; the same with context_propagation=headers; and with
# context_propagation=tcp. Then bulk upload throughput (1 GiB HTTP POSTs to a sink,
# shutdown, blocking recv) from an instrumented client with and without the sockhash.
# Prints medians and per-round figures, with the share of each phase the hypervisor stole.
#   bench/ctxprop.sh [seconds per phase, default 8] [rounds, default 3]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
secs=${1:-8}
rounds=${2:-3}
bench_prepare
port=18490
upload_port=18491
bench_nginx "$port"
stack=
sinkpid=
cleanup() {
  [ -n "$stack" ] && kill -TERM "$stack" 2>/dev/null && wait "$stack" 2>/dev/null
  [ -n "$sinkpid" ] && kill "$sinkpid" 2>/dev/null
  bench_stop_nginx
}
trap cleanup EXIT
export SEAM_TRACE_PRINTER=disabled SEAM_RUN_DIR=/run/seam-bench SEAM_PIN_DIR=/sys/fs/bpf/seam-bench

# wrk_phase LABEL MODE: MODE "none" runs without seam. Appends "LABEL rps p50 p99 steal%".
wrk_phase() {
  bench_gated taskset -c 1 wrk -t1 -c32 -d"${secs}s" --latency "http://127.0.0.1:$port/index.html"
  [ "$2" = none ] || bench_with_seam "$2" "$gate" "$port"
  local before
  before=$(bench_cpu_ticks)
  echo > "$gate_fifo"
  wait "$gate"
  local steal
  steal=$(bench_steal_share "$before" "$(bench_cpu_ticks)")
  if [ "$2" != none ]; then
    bench_stop_seam # ctxprop logs its counters as it stops
    grep -o "propagation counters.*" "$work/daemons.log" | sed "s/^/$1: /" >> "$work/counters.txt" || true
  fi
  local figures
  figures=$(bench_wrk_figures "$work/gated.out")
  read -r _ rps p50 p99 <<< "$figures"
  echo "$1 $rps $p50 $p99 $steal" >> "$work/rounds.txt"
  rm -f "$gate_fifo"
}
: > "$work/rounds.txt"
: > "$work/counters.txt"
# Every other round runs the phases in reverse, so a VM that drifts during a round, or a phase
# that pays for the one before it (a stack still exiting), does not favour one phase throughout.
for r in $(seq "$rounds"); do
  echo "round $r/$rounds" >&2
  phases=(none disabled headers tcp)
  [ $((r % 2)) = 0 ] && phases=(tcp headers disabled none)
  for phase in "${phases[@]}"; do
    wrk_phase "$phase" "$phase"
  done
done

python3 "$here/../tests/fixtures/sink.py" "$upload_port" & sinkpid=$!
bench_wait_port "$upload_port"
upload_phase() { # MODE: five 1 GiB uploads from an instrumented client
  bench_gated python3 "$here/../tests/fixtures/upload.py" "$upload_port" $((1 << 30)) 5
  bench_with_seam "$1" "$gate" "$port"
  echo > "$gate_fifo"
  wait "$gate"
  bench_stop_seam
  echo "upload-$1 $(cat "$work/gated.out")" >> "$work/uploads.txt"
  rm -f "$gate_fifo"
}
: > "$work/uploads.txt"
for r in $(seq "$rounds"); do
  upload_phase disabled
  upload_phase headers
done

python3 - "$work/rounds.txt" "$work/uploads.txt" "$secs" "$rounds" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for label, rps, p50, p99, steal in rows:
    by.setdefault(label, []).append((float(rps), float(p50), float(p99), float(steal)))
print(f"nginx + wrk (wrk instrumented), {sys.argv[3]} s phases, {sys.argv[4]} rounds")
for label in ("none", "disabled", "headers", "tcp"):
    v = by[label]
    print(f"  {label:9s} throughput {statistics.median(x[0] for x in v):8.0f} req/s  "
          f"p50 {statistics.median(x[1] for x in v):6.0f} us  p99 {statistics.median(x[2] for x in v):6.0f} us"
          f"  rounds {' '.join(f'{x[0]:.0f}' for x in v)}"
          f"  steal % {' '.join(f'{x[3]:.1f}' for x in v)}")
n = len(by["none"])
loss = [1 - by["headers"][i][0] / by["disabled"][i][0] for i in range(n)]
seam = [1 - by["disabled"][i][0] / by["none"][i][0] for i in range(n)]
print(f"  ctxprop loss (headers vs disabled): median {100 * statistics.median(loss):.1f} %  per round "
      + " ".join(f"{100 * x:.1f}" for x in loss))
tloss = [1 - by["tcp"][i][0] / by["disabled"][i][0] for i in range(n)]
print(f"  ctxprop loss (tcp vs disabled):     median {100 * statistics.median(tloss):.1f} %  per round "
      + " ".join(f"{100 * x:.1f}" for x in tloss))
print(f"  seam loss (disabled vs none):       median {100 * statistics.median(seam):.1f} %")
ups = {}
for line in open(sys.argv[2]):
    label = line.split()[0]
    secs = float(re.search(r"seconds=([\d.]+)", line).group(1))
    eag = re.search(r"eagain=(\d+)", line).group(1)
    ups.setdefault(label, []).append((5 / secs, eag))
for label, v in ups.items():
    print(f"  {label:16s} {statistics.median(x[0] for x in v):.2f} GiB/s  rounds "
          + " ".join(f"{x[0]:.2f}" for x in v) + f"  eagain {' '.join(x[1] for x in v)}")
PY
grep -E "^(headers|tcp): " "$work/counters.txt" | tail -2 | sed -E "s/^([a-z]+): .*(counters=)/  last round, \1: \2/"
