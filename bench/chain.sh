#!/usr/bin/env bash
# Three-hop chain under load and the correlator's cost and memory (issue 3's benchmark).
# Part 1: front → middle → back (Python stdlib, thread per request, keep-alive between hops) under
# wrk at rising concurrency; wrk is not a target, so each request makes 5 spans. Per step: req/s,
# correlator CPU per span and the spans/s one core sustains at that cost, its RSS; at the end,
# spans vs requests and lost events for the whole run.
# Part 2: requests that are never answered (a target that reads and never replies, connections
# held open) in waves, with a short open-response timeout: the correlator's RSS per wave, after
# the state expired, after the connections closed, and for a later wave as large as both.
#   bench/chain.sh [seconds per step, default 8]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
secs=${1:-8}
bench_prepare
work=$(mktemp -d)
hop="$SEAM_ROOT/tests/fixtures/hop.py"
ports=(18581 18582 18583 18584) # front middle back sink
apps=()
stack=
cleanup() {
  [ -n "$stack" ] && kill -TERM "$stack" 2>/dev/null && wait "$stack" 2>/dev/null
  for p in "${apps[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

python3 "$hop" "${ports[2]}" - thread /dev/null 2>/dev/null & apps+=($!)
python3 "$hop" "${ports[1]}" "http://127.0.0.1:${ports[2]}" thread /dev/null 2>/dev/null & apps+=($!)
python3 "$hop" "${ports[0]}" "http://127.0.0.1:${ports[1]}" thread /dev/null 2>/dev/null & apps+=($!)
# The sink reads requests and never answers, holding every connection open.
(ulimit -n "$(ulimit -Hn)"; exec python3 - "${ports[3]}" <<'PY'
import asyncio, sys
async def hold(reader, writer):
    while await reader.read(4096):
        pass
async def main():
    server = await asyncio.start_server(hold, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
PY
) & apps+=($!)
for p in "${ports[@]}"; do bench_wait_port "$p"; done

export SEAM_TRACE_PRINTER=disabled SEAM_OPEN_RESPONSE_TIMEOUT=5
export SEAM_RUN_DIR=/run/seam-bench SEAM_PIN_DIR=/sys/fs/bpf/seam-bench
SEAM_OPEN_PORT=$(IFS=,; echo "${ports[*]}") "$here/../scripts/run" 2>>"$work/daemons.log" & stack=$!
for _ in $(seq 100); do
  [ "$(grep -c "target added" "$work/daemons.log" 2>/dev/null)" -ge 4 ] && break
  sleep 0.1
done
correlator=$(pgrep -x seam-correlator | head -1)
ticks() { awk '{print $14 + $15}' "/proc/$correlator/stat"; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$correlator/status"; }
rss_mib() { awk '/VmRSS/{print $2 / 1024}' "/proc/$correlator/status"; }

echo "part 1: chain under wrk ($secs s per step)"
printf '%-12s %10s %12s %14s %16s %10s\n' connections "req/s" "spans/s" "cpu us/span" "spans/s per core" "rss MiB"
requests=0
for c in 4 16 64; do
  before=$(ticks)
  out=$(taskset -c 1 wrk -t1 -c"$c" -d"${secs}s" "http://127.0.0.1:${ports[0]}/r/x")
  after=$(ticks)
  n=$(echo "$out" | grep -o '[0-9]* requests in' | cut -d' ' -f1)
  requests=$((requests + n))
  python3 - "$c" "$n" "$secs" $((after - before)) "$(rss_kib)" <<'PY'
import sys
c, n, secs, ticks, rss = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
spans = 5 * n
us = ticks * 1e4 / spans if spans else 0
print(f"{c:<12} {n / secs:10.0f} {spans / secs:12.0f} {us:14.2f} {1e6 / us if us else 0:16.0f} {rss / 1024:10.1f}")
PY
done

echo "part 2: requests never answered (open-response timeout 5 s)"
abandon() { # wave size; holds the connections until killed
  (ulimit -n "$(ulimit -Hn)"; exec python3 - "${ports[3]}" "$1" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /never/%d HTTP/1.1\r\nHost: sink\r\n\r\n" % i)
    held.append(s)
print("ready", flush=True)
time.sleep(3600)
PY
  ) > "$work/abandon-$1-$2.out" & waves+=($!)
  for _ in $(seq 600); do grep -q ready "$work/abandon-$1-$2.out" 2>/dev/null && break; sleep 0.1; done
}
waves=()
printf '%-44s %10s\n' state "rss MiB"
printf '%-44s %10.1f\n' "before" "$(rss_mib)"
# One process holds every connection of the sink, so the waves stay under the open-file limit.
total=0
for k in 3000 6000; do
  abandon "$k" a
  total=$((total + k))
  sleep 1
  printf '%-44s %10.1f\n' "$total requests in flight, connections open" "$(rss_mib)"
done
sleep 7
printf '%-44s %10.1f\n' "after the timeout (connections still open)" "$(rss_mib)"
for p in "${waves[@]}"; do kill "$p" 2>/dev/null || true; done
waves=()
sleep 3
printf '%-44s %10.1f\n' "those connections closed" "$(rss_mib)"
abandon 9000 b
sleep 1
printf '%-44s %10.1f\n' "a later wave of 9000" "$(rss_mib)"
sleep 7
printf '%-44s %10.1f\n' "after its timeout" "$(rss_mib)"
for p in "${waves[@]}"; do kill "$p" 2>/dev/null || true; done
sleep 3
printf '%-44s %10.1f\n' "all connections closed" "$(rss_mib)"

sleep 1.5 # the correlator publishes its totals once a second
kill -TERM "$stack"; wait "$stack" 2>/dev/null || true; stack=
total() { grep -o 'final counters.*' "$work/daemons.log" | grep -o " $1=[0-9]*" | cut -d= -f2 | head -1; }
echo "whole run: $(total spans) spans for $((5 * requests)) expected from $requests chain requests; lost events $(total lost_events); dropped spans $(total dropped_spans)"
