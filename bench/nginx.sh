#!/usr/bin/env bash
# nginx (one worker on CPU 0, small static file, keep-alive) under wrk (CPU 1), without and with
# seam instrumenting nginx, alternating over several rounds of one run (this VM's baseline drifts
# by 20 % and more between phases, so one pair of phases proves little). Prints the median of each
# figure and its range: throughput ratio, CPU added per request (nginx, which includes the BPF
# programs' kernel time, plus all five daemons), p50/p99 latency; then daemon RSS, lost events,
# and spans vs requests at a paced ~10k req/s.
# SEAM_BENCH_OTLP=1 also exports every span and the RED metrics over OTLP/HTTP to a loopback sink.
# SEAM_BENCH_TLS=1 serves HTTPS: seam then reads the plaintext through its OpenSSL uprobes (wrk's
# own SSL calls hit them too, filtered out in the kernel: that cost is part of the figure).
# SEAM_BENCH_SERVER=node measures the Node test service (one process on CPU 0) instead of nginx:
# seam then also reads Node's async ids at each of its socket calls.
# SEAM_BENCH_CLOSE=1 sends `Connection: close`: every request on a new connection, so what seam
# does once per connection (accept, socket set-up, Node's per-connection uprobes) is in the figure.
#   bench/nginx.sh [seconds per phase, default 8] [rounds, default 3]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
secs=${1:-8}
rounds=${2:-3}
bench_prepare
port=18480
bench_server "$port"
cat > "$work/paced.lua" <<'LUA'
-- each connection waits 1 ms between requests: 13 connections give about 10k requests/s
function delay() return 1 end
LUA
stack=
cleanup() {
  [ -n "$stack" ] && kill -TERM "$stack" 2>/dev/null && wait "$stack" 2>/dev/null
  bench_stop_nginx
  bench_stop_sink
}
trap cleanup EXIT

wrk_conn=()
if [ "${SEAM_BENCH_CLOSE:-0}" = 1 ]; then
  wrk_conn=(-H "Connection: close")
fi
run_wrk() { # label, extra args…; prints "requests rps p50 p99 nginx_ticks daemon_ticks"
  local label=$1; shift
  local nb db na da out
  nb=$(bench_proc_ticks "$worker"); db=$(bench_proc_ticks $daemons)
  out=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" --latency "${wrk_conn[@]}" "$@" "$scheme://127.0.0.1:$port/index.html")
  na=$(bench_proc_ticks "$worker"); da=$(bench_proc_ticks $daemons)
  echo "$out" > "$work/wrk-$label.txt"
  echo "$(bench_wrk_figures "$work/wrk-$label.txt") $((na - nb)) $((da - db))"
}

export SEAM_TRACE_PRINTER=disabled
export_mode="none (printer off, no OTLP endpoint)"
if [ "${SEAM_BENCH_OTLP:-0}" = 1 ]; then
  bench_otlp_sink 18481
  export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18481 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
  export_mode="OTLP/HTTP to a loopback sink (spans and metrics)"
fi
export_mode="$export_mode; scheme: $scheme; server: ${SEAM_BENCH_SERVER:-nginx}"
[ "${SEAM_BENCH_CLOSE:-0}" = 1 ] && export_mode="$export_mode; a connection per request"
export SEAM_RUN_DIR=/run/seam-bench SEAM_PIN_DIR=/sys/fs/bpf/seam-bench
start_seam() {
  SEAM_OPEN_PORT=$port "$here/../scripts/run" 2>>"$work/daemons.log" & stack=$!
  for _ in $(seq 100); do
    [ "$(grep -c "target added pid=$worker" "$work/daemons.log" 2>/dev/null)" -ge "$1" ] && break
    sleep 0.1
  done
  daemons=$(bench_daemon_pids)
}
stop_seam() {
  sleep 1.5 # the correlator publishes its totals once a second
  kill -TERM "$stack"; wait "$stack" 2>/dev/null || true; stack=; daemons=""
}
: > "$work/rounds.txt"
daemons=""
for r in $(seq "$rounds"); do
  echo "without $(run_wrk "without-$r")" >> "$work/rounds.txt"
  start_seam "$r"
  echo "with $(run_wrk "with-$r")" >> "$work/rounds.txt"
  if [ "$r" -lt "$rounds" ]; then stop_seam; fi
done
# paced phase: spans must match requests (seam still running from the last round)
read -r req2 rps2 < <(taskset -c 1 wrk -t1 -c13 -d"${secs}s" -s "$work/paced.lua" "${wrk_conn[@]}" "$scheme://127.0.0.1:$port/index.html" > "$work/wrk-paced.txt"; python3 -c "
import re;t=open('$work/wrk-paced.txt').read()
print(re.search(r'(\d+) requests in',t).group(1), re.search(r'Requests/sec:\s+([\d.]+)',t).group(1))")
rss=$(for d in discover loader ctxprop correlator exporter; do
  p=$(pgrep -x "seam-$d" | head -1); echo -n "$d=$(awk '/VmRSS/{print $2}' "/proc/$p/status")KiB "; done)
sleep 1.5
kill -TERM "$stack"; wait "$stack" 2>/dev/null || true; stack=
# every stack logged its own totals when it stopped
total() { grep -o 'final counters.*' "$work/daemons.log" | grep -o " $1=[0-9]*" | cut -d= -f2 | python3 -c 'import sys; print(sum(int(x) for x in sys.stdin.read().split()))'; }
spans=$(total spans)
events_lost=$(total lost_events)

python3 - "$work/rounds.txt" "$secs" "$rounds" "$req2" "$rps2" "${spans:-0}" "${events_lost:-0}" "$rss" "$export_mode" "${SEAM_BENCH_SERVER:-nginx}" <<'PY'
import statistics, sys
path, secs, rounds, req2, rps2, spans, lost, rss, export, server = sys.argv[1:11]
tick = 1e6 / 100  # microseconds per clock tick
rows = {"without": [], "with": []}
for line in open(path):
    kind, reqs, rps, p50, p99, nginx, daemons = line.split()
    n = int(reqs)
    rows[kind].append((n, float(rps), float(p50), float(p99),
                       (int(nginx) + int(daemons)) * tick / n, int(nginx) * tick / n, int(daemons) * tick / n))
def med(kind, i):
    return statistics.median(r[i] for r in rows[kind])
def rng(kind, i):
    v = [r[i] for r in rows[kind]]
    return f"{min(v):.2f}-{max(v):.2f}"
ratios = [w[1] / wo[1] for w, wo in zip(rows["with"], rows["without"])]
added = [w[4] - wo[4] for w, wo in zip(rows["with"], rows["without"])]
with_reqs = sum(r[0] for r in rows["with"])
print(f"rounds x phase seconds   {rounds} x {secs}; export: {export}")
print(f"throughput without/with  {med('without',1):.0f} / {med('with',1):.0f} req/s (medians)")
print(f"throughput ratio         median {statistics.median(ratios):.3f}  per round {' '.join(f'{x:.3f}' for x in ratios)}")
print(f"cpu per request          without {med('without',4):.2f} us ({rng('without',4)}), with {med('with',4):.2f} us ({rng('with',4)})")
print(f"cpu added per request    median {statistics.median(added):.2f} us  per round {' '.join(f'{x:.2f}' for x in added)}")
print(f"of which (with)          {server} incl. BPF {med('with',5):.2f} us (without {med('without',5):.2f}), daemons {med('with',6):.2f} us")
print(f"latency p50 without/with {med('without',2):.0f} / {med('with',2):.0f} us")
print(f"latency p99 without/with {med('without',3):.0f} / {med('with',3):.0f} us")
print(f"daemon rss (end)         {rss}")
print(f"lost events (ring full)  {lost}  (kernel counters, read by the correlator, whole run)")
print(f"paced phase              {req2} requests at {float(rps2):.0f} req/s")
print(f"spans vs requests        {spans} spans for {with_reqs + int(req2)} requests while seam ran")
PY
