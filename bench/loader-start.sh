#!/usr/bin/env bash
# How long the loader takes to start: from dropping privileges to "capture attached" (loading and
# verifying the capture object, the uprobe programs, attaching), from its own log, over N runs.
# Capture is not blind meanwhile (a predecessor's links stay until the new programs are verified),
# but a restart waits this long.
#   bench/loader-start.sh [runs, default 5]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
runs=${1:-5}
bench_prepare
pins=/sys/fs/bpf/seam-bench-start
log=$(mktemp)
trap 'rm -rf "$pins" "$log"' EXIT
for _ in $(seq "$runs"); do
  rm -rf "$pins"
  mkdir -p "$pins" /run/seam
  "$SEAM_BIN_DIR/seam-loader" --pin-dir "$pins" > "$log" 2>&1 & loader=$!
  for _ in $(seq 300); do
    grep -q "capture attached" "$log" && break
    sleep 0.1
  done
  kill -TERM "$loader" 2>/dev/null || true
  wait "$loader" 2>/dev/null || true
  python3 - "$log" <<'PY'
import datetime, re, sys
text = open(sys.argv[1]).read()
def at(what):
    return datetime.datetime.fromisoformat(re.search(r"(\S+)Z\s+\S+\s+" + what, text).group(1))
print(f"{(at('capture attached') - at('dropped to least privilege')).total_seconds():.3f} s")
PY
done
