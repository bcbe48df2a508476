# Shared set-up of seam's benchmarks: preparation and an nginx to measure. Sourced, not run.
# shellcheck shell=bash
# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../scripts/lib.sh"

# Root, dependencies, a release build if there is none, host set-up.
bench_prepare() {
  seam_require_root
  seam_install_deps
  [ -x "$SEAM_BIN_DIR/seam-loader" ] || seam_build
  seam_setup_host
}

# bench_nginx PORT: nginx with one worker pinned to CPU 0, serving a 612-byte file on
# 127.0.0.1:PORT with keep-alive and no access log (over HTTPS when SEAM_BENCH_TLS=1). Sets
# `work` (a scratch directory the caller may use too), `scheme`, `nginx_master` and `worker` (the
# worker's pid); bench_stop_nginx stops it.
bench_nginx() {
  local port=$1 listen="127.0.0.1:$1" tls="" served=0
  work=$(mktemp -d)
  # nginx's worker runs as nobody: a directory only root may enter would make every request a
  # 403 and an error-log line
  chmod 0755 "$work"
  mkdir -p "$work/www"
  head -c 612 /dev/zero | tr '\0' x > "$work/www/index.html"
  scheme=http
  if [ "${SEAM_BENCH_TLS:-0}" = 1 ]; then
    # HTTPS with a certificate made here; keep-alive, so the handshake cost is spread thin
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
      -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
    listen="$listen ssl"
    tls="ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;"
    scheme=https
  fi
  cat > "$work/nginx.conf" <<CONF
worker_processes 1; worker_cpu_affinity 01; daemon off; pid $work/nginx.pid; error_log $work/error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; server { listen $listen; $tls root $work/www; } }
CONF
  taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" 2>/dev/null & nginx_master=$!
  for _ in $(seq 50); do
    curl -fsk -o /dev/null "$scheme://127.0.0.1:$port/index.html" && { served=1; break; }
    sleep 0.1
  done
  [ "$served" = 1 ] || seam_die "nginx does not serve $scheme://127.0.0.1:$port/index.html (see $work/error.log)"
  worker=$(pgrep -P "$nginx_master" | head -1)
}

# bench_node PORT: the Node test service (tests/fixtures/nodeserver.js: keep-alive, 200 for any
# path) pinned to CPU 0 on 127.0.0.1:PORT, in place of nginx: sets the same variables (`worker`
# is the Node process) and bench_stop_nginx stops it too.
bench_node() {
  work=$(mktemp -d)
  scheme=http
  taskset -c 0 node "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../tests/fixtures/nodeserver.js" "$1" \
    >/dev/null 2>&1 & nginx_master=$!
  bench_wait_port "$1"
  worker=$nginx_master
}

# bench_server PORT: the server a benchmark measures: nginx, or with SEAM_BENCH_SERVER=node the
# Node test service.
bench_server() {
  if [ "${SEAM_BENCH_SERVER:-nginx}" = node ]; then
    bench_node "$1"
  else
    bench_nginx "$1"
  fi
}

bench_stop_nginx() {
  kill -TERM "$nginx_master" 2>/dev/null || true
  wait "$nginx_master" 2>/dev/null || true
}

# bench_gated CMD…: a shell that waits on a fifo, then execs CMD (same pid, so it can be a target
# before its first connection); its output goes to $work/gated.out. Sets `gate` (the pid) and
# `gate_fifo`: `echo > "$gate_fifo"` lets it run.
bench_gated() {
  gate_fifo="$work/go.$RANDOM"
  mkfifo "$gate_fifo"
  sh -c 'read x < "$0"; exec "$@"' "$gate_fifo" "$@" > "$work/gated.out" & gate=$!
}

# bench_with_seam MODE PID PORT [scripts/run ARGS…]: the daemons (from $SEAM_BIN_DIR) instrumenting
# the server on PORT and PID with context_propagation=MODE, once the loader has PID as a target and
# ctxprop (unless ARGS leave it out) is ready (15 s at most); their log goes to $work/daemons.log.
# Sets `stack`; bench_stop_seam stops them.
bench_with_seam() {
  local mode=$1 pid=$2 port=$3
  shift 3
  : > "$work/daemons.log"
  SEAM_CONTEXT_PROPAGATION=$mode SEAM_OPEN_PORT=$port SEAM_TARGET_PID=$pid \
    "$SEAM_ROOT/scripts/run" "$@" 2>>"$work/daemons.log" & stack=$!
  local ready="ready role=ctxprop"
  case " $* " in *" --without ctxprop "*) ready="ready role=loader" ;; esac
  bench_wait_log "$work/daemons.log" "target added pid=$pid" "$ready"
}

# bench_wait_log FILE PATTERN…: until FILE has a line with each PATTERN (15 s at most).
bench_wait_log() {
  local file=$1 p missing
  shift
  for _ in $(seq 150); do
    missing=0
    for p in "$@"; do
      grep -q "$p" "$file" 2>/dev/null || { missing=1; break; }
    done
    [ "$missing" = 0 ] && return
    sleep 0.1
  done
}

bench_stop_seam() {
  kill -TERM "$stack"; wait "$stack" 2>/dev/null || true; stack=
}

# bench_otlp_sink PORT: a loopback OTLP/HTTP endpoint that accepts every export and keeps
# nothing, so a run can include what exporting costs seam. Sets `sink`; bench_stop_sink stops it.
bench_otlp_sink() {
  taskset -c 1 python3 - "$1" <<'PY' & sink=$!
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
  bench_wait_port "$1"
}

# bench_wait_port PORT: until something accepts connections on 127.0.0.1:PORT (5 s at most).
bench_wait_port() {
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
}

# bench_cpu_ticks: "steal total" summed over CPUs 0 and 1 (the ones the benchmarks pin to), in
# clock ticks since boot, from /proc/stat. Two readings bracket a phase; bench_steal_share turns
# them into the share of those CPUs' time the hypervisor took, which slows a phase for reasons
# that have nothing to do with seam.
bench_cpu_ticks() {
  awk '/^cpu[01] / { steal += $9; total += $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }
       END { print steal, total }' /proc/stat
}

# bench_steal_share "BEFORE" "AFTER": stolen time as a percentage of the interval, one decimal.
bench_steal_share() {
  echo "$1 $2" | awk '{ t = $4 - $2; printf "%.1f\n", (t > 0 ? 100 * ($3 - $1) / t : 0) }'
}

# bench_cpu_busy: "busy0 busy1", the clock ticks CPU 0 and CPU 1 each spent busy since boot, whoever
# ran there. With nginx on CPU 0 and the client on CPU 1, two readings show on which side of the
# connection a cost falls.
bench_cpu_busy() {
  awk '/^cpu0 / { a = $2 + $3 + $4 + $7 + $8 } /^cpu1 / { b = $2 + $3 + $4 + $7 + $8 }
       END { print a, b }' /proc/stat
}

# bench_wrk_figures FILE: "requests req/s p50_us p99_us" from the output of wrk --latency.
bench_wrk_figures() {
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
# a server answering errors measures the wrong thing
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if bad:
    sys.exit(f"{sys.argv[1]}: {bad.group(1)} responses were not 2xx or 3xx")
def lat(p):
    m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % p, text)
    return float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1e6}[m.group(2)]
reqs = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print(reqs, rps, lat(50), lat(99))
PY
}

bench_stop_sink() {
  [ -n "${sink:-}" ] && kill "$sink" 2>/dev/null || true
}

# bench_daemon_pids: the running seam daemons' pids, space-separated.
bench_daemon_pids() {
  pgrep -d ' ' -x 'seam-(discover|loader|ctxprop|correlator|exporter)' || true
}

# bench_proc_ticks PID…: clock ticks the processes PID… (all their threads) spent on CPU, user and
# system, since they started; a process that is gone counts nothing.
bench_proc_ticks() {
  local ticks=0 p t
  for p in "$@"; do
    t=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null) || t=0
    ticks=$((ticks + ${t:-0}))
  done
  echo "$ticks"
}

# bench_busy_ticks PID…: clock ticks CPUs 0 and 1 spent busy (user, nice, system, irq, softirq)
# since boot, less what the processes PID… spent. Two readings bracket a phase; with seam's
# daemons as PIDs, what is left is the work done in the measured processes' context (their eBPF
# programs included) and the network's softirqs, whatever share of the CPUs the daemons
# happened to take from them.
bench_busy_ticks() {
  awk -v own="$(bench_proc_ticks "$@")" \
    '/^cpu[01] / { busy += $2 + $3 + $4 + $7 + $8 } END { print busy - own }' /proc/stat
}
