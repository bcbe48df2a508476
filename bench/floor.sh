#!/usr/bin/env bash
# What each step of seam's in-kernel work costs, and so how low its overhead can go on this
# machine. bench/nginx.sh runs on four builds whose capture socket programs stop at a different
# step (SEAM_BENCH_CAPTURE_STAGE, compiled in by ebpf/abi/build.rs):
#   hooks   the programs are attached and return at once (the kernel's cost of calling them);
#   lookup  they stop after the target check and the connection lookup;
#   copy    they copy the bytes and parse as usual but write no ring record (the daemons idle);
#   full    the normal build (this checkout's release binaries).
# Then bench/ctxprop.sh runs on a build whose sk_msg program passes every send at once
# (SEAM_BENCH_PROP_STAGE=pass: what a socket in the sockhash costs before any header is looked
# at or inserted), and on the normal build.
# `msg` times ctxprop's sk_msg program itself (bench/msg-cost.sh, header carrier) on builds that
# stop it after each step (SEAM_BENCH_PROP_STAGE): pass (at once), copy (the head copied), scan
# (framed), choose (context chosen and reported, no header), and the normal build.
# The stage builds go to target/bench-floor (the first takes minutes, later ones only rebuild the
# eBPF objects and their users); the normal build is never touched.
#   bench/floor.sh [seconds per phase, default 8] [rounds, default 3] [capture|ctxprop|msg|all, default all]
set -euo pipefail
shopt -s inherit_errexit # a failed build inside $(stage_build …) fails the script
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
secs=${1:-8}
rounds=${2:-3}
part=${3:-all}
case $part in capture | ctxprop | msg | all) ;; *) echo "part is capture, ctxprop, msg or all, not $part" >&2; exit 64 ;; esac
bench_prepare
stage_target="$root/target/bench-floor"
dirs=()
# stage_build NAME VAR=VALUE: the release binaries built with VAR=VALUE, copied to a directory
# of their own, whose path it prints.
stage_build() {
  (cd "$root" && env "$2" CARGO_TARGET_DIR="$stage_target" cargo build --release --workspace --bins --quiet)
  mkdir -p "$stage_target/$1"
  find "$stage_target/release" -maxdepth 1 -type f -name 'seam-*' -perm -u+x \
    -exec cp {} "$stage_target/$1/" \;
  echo "$stage_target/$1"
}
# Every build is made before any run, each by a plain assignment, so a failed build stops here
# (not a run on stale binaries).
if [ "$part" = capture ] || [ "$part" = all ]; then
  for stage in hooks lookup copy; do
    dir=$(stage_build "$stage" "SEAM_BENCH_CAPTURE_STAGE=$stage")
    dirs+=("$stage=$dir")
  done
  dirs+=("full=$SEAM_BIN_DIR")
fi
if [ "$part" = ctxprop ] || [ "$part" = all ]; then
  pass_dir=$(stage_build msg-pass SEAM_BENCH_PROP_STAGE=pass)
fi
msg_dirs=()
if [ "$part" = msg ]; then
  for stage in pass copy scan choose; do
    dir=$(stage_build "msg-$stage" "SEAM_BENCH_PROP_STAGE=$stage")
    msg_dirs+=("$dir")
  done
  msg_dirs+=("$SEAM_BIN_DIR")
fi
for entry in "${dirs[@]}"; do
  echo "== capture: $entry"
  SEAM_BIN_DIR=${entry#*=} "$here/nginx.sh" "$secs" "$rounds" \
    | grep -E '^(throughput ratio|cpu added per request|of which)'
done
if [ "$part" = ctxprop ] || [ "$part" = all ]; then
  for entry in "msg-pass=$pass_dir" "full=$SEAM_BIN_DIR"; do
    echo "== ctxprop: $entry"
    SEAM_BIN_DIR=${entry#*=} "$here/ctxprop.sh" "$secs" "$rounds" 2>/dev/null | grep -E 'loss|headers |tcp '
  done
fi
if [ "$part" = msg ]; then
  "$here/msg-cost.sh" "$secs" "$rounds" "${msg_dirs[@]}"
fi
