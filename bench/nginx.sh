#!/usr/bin/env bash
# nginx (one worker on CPU 0, small static file, keep-alive) under wrk (CPU 1), without and with
# seam instrumenting nginx, in one run. Prints throughput ratio, CPU added per request (nginx,
# which includes the BPF programs' kernel time, plus all five daemons), p50/p99 latency, daemon
# RSS, lost events, and spans vs requests at a paced ~10k req/s.
#   bench/nginx.sh [seconds per phase, default 10]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/../scripts/lib.sh"
secs=${1:-10}
seam_require_root
seam_install_deps
[ -x "$SEAM_BIN_DIR/seam-loader" ] || seam_build
seam_setup_host

work=$(mktemp -d)
port=18480
mkdir -p "$work/www"
head -c 612 /dev/zero | tr '\0' 'x' > "$work/www/index.html"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
worker_cpu_affinity 01;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; root $work/www; }
}
CONF
cat > "$work/paced.lua" <<'LUA'
-- each connection waits 1 ms between requests: 13 connections give about 10k requests/s
function delay() return 1 end
LUA
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" 2>/dev/null & nginx_master=$!
stack=
cleanup() {
  [ -n "$stack" ] && kill -TERM "$stack" 2>/dev/null && wait "$stack" 2>/dev/null
  kill -TERM "$nginx_master" 2>/dev/null || true
  wait "$nginx_master" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/index.html" && break; sleep 0.1; done
worker=$(pgrep -P "$nginx_master" | head -1)

cpu_ticks() { # sum of utime+stime of the given pids
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
run_wrk() { # label, extra args…; prints "requests rps p50 p99 ticks"
  local label=$1; shift
  local before after out
  before=$(cpu_ticks "$worker" $daemons)
  out=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" --latency "$@" "http://127.0.0.1:$port/index.html")
  after=$(cpu_ticks "$worker" $daemons)
  echo "$out" > "$work/wrk-$label.txt"
  python3 - "$work/wrk-$label.txt" $((after - before)) <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def lat(p):
    m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % p, text)
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1000, "s": 1e6}[u]
reqs = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print(reqs, rps, lat(50), lat(99), sys.argv[2])
PY
}

daemons=""
read -r req0 rps0 p50_0 p99_0 t0 < <(run_wrk without)

export SEAM_OPEN_PORT=$port SEAM_TRACE_PRINTER=disabled
export SEAM_RUN_DIR=/run/seam-bench SEAM_PIN_DIR=/sys/fs/bpf/seam-bench
"$here/../scripts/run" 2>"$work/daemons.log" & stack=$!
for _ in $(seq 100); do
  [ "$(grep -c 'target added' "$work/daemons.log" 2>/dev/null)" -ge 2 ] && break
  sleep 0.1
done
daemons=$(pgrep -x 'seam-(discover|loader|ctxprop|correlator|exporter)' | tr '\n' ' ')
nginx_before=$(cpu_ticks "$worker"); daemons_before=$(cpu_ticks $daemons)
read -r req1 rps1 p50_1 p99_1 t1 < <(run_wrk with)
nginx_ticks=$(( $(cpu_ticks "$worker") - nginx_before )); daemon_ticks=$(( $(cpu_ticks $daemons) - daemons_before ))
per_daemon=$(for p in $daemons; do echo -n "$(cat /proc/$p/comm)=$(cpu_ticks $p) "; done)
# paced phase: spans must match requests
read -r req2 rps2 _ _ _ < <(taskset -c 1 wrk -t1 -c13 -d"${secs}s" -s "$work/paced.lua" --latency "http://127.0.0.1:$port/index.html" > "$work/wrk-paced.txt"; python3 -c "
import re;t=open('$work/wrk-paced.txt').read()
print(re.search(r'(\d+) requests in',t).group(1), re.search(r'Requests/sec:\s+([\d.]+)',t).group(1), 0, 0, 0)")
rss=$(for d in discover loader ctxprop correlator exporter; do
  p=$(pgrep -x "seam-$d" | head -1); echo -n "$d=$(awk '/VmRSS/{print $2}' "/proc/$p/status")KiB "; done)
sleep 1.5
kill -TERM "$stack"; wait "$stack" 2>/dev/null || true; stack=
spans=$(grep -o 'final counters.*' "$work/daemons.log" | grep -o 'spans=[0-9]*' | head -1 | cut -d= -f2)
events_lost=$(grep -o 'final counters.*' "$work/daemons.log" | grep -o 'lost_events=[0-9]*' | cut -d= -f2)

python3 - <<PY
req0, rps0, p50_0, p99_0, t0 = $req0, $rps0, $p50_0, $p99_0, $t0
req1, rps1, p50_1, p99_1, t1 = $req1, $rps1, $p50_1, $p99_1, $t1
req2, rps2 = $req2, $rps2
tick = 1e6 / 100  # microseconds per clock tick
cpu0, cpu1 = t0 * tick / req0, t1 * tick / req1
print(f"phase seconds            {$secs}")
print(f"throughput without/with  {rps0:.0f} / {rps1:.0f} req/s  ratio {rps1 / rps0:.3f}  (loss {100 * (1 - rps1 / rps0):.1f} %)")
print(f"cpu per request          {cpu0:.2f} / {cpu1:.2f} us  added {cpu1 - cpu0:.2f} us (nginx incl. BPF + daemons)")
print(f"cpu split (with)         nginx {$nginx_ticks * tick / req1:.2f} us/req, daemons {$daemon_ticks * tick / req1:.2f} us/req; daemon ticks so far: $per_daemon")
print(f"latency p50 without/with {p50_0:.0f} / {p50_1:.0f} us")
print(f"latency p99 without/with {p99_0:.0f} / {p99_1:.0f} us")
print(f"daemon rss               $rss")
print(f"lost events (ring full)  {${events_lost:-0}}  (kernel counters, read by the correlator)")
print(f"paced phase              {req2} requests at {rps2:.0f} req/s")
print(f"spans vs requests        {${spans:-0}} spans for {req1 + req2} requests with seam")
PY
