#!/usr/bin/env bash
# Spans per second the correlator's span engine turns out on one core: a three-hop chain's records
# (keep-alive, 16 requests in flight, every span linked) replayed through the engine and framed
# for the exporter as the consumer thread does, pinned to CPU 1, three runs. No root needed.
#   bench/engine.sh [requests per run, default 200000]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
requests=${1:-200000}
cd "$here/.."
cargo build --release --quiet -p seam-correlator --example engine_throughput
for _ in 1 2 3; do
  taskset -c 1 ./target/release/examples/engine_throughput "$requests"
done
