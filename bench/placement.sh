#!/usr/bin/env bash
# Placement throughput and latency of berth-scheduler with 1,000 simulated nodes (node
# records in KV, one fake executor acknowledging create/start for all of them): 10,000
# `berth.v1.sched.run` requests with one and with two scheduler instances, each on a
# fresh nats-server. See bench/src/placement.rs.
#
#   bench/placement.sh                 # 10000 placements, 1000 nodes, 256 in flight
#   PLACEMENTS=2000 IN_FLIGHT=64 bench/placement.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q --locked --bins -p berth-image-store -p berth-scheduler -p berth-cli -p berth-bench
export BERTH_BIN_DIR=$CARGO_TARGET_DIR/release
"$CARGO_TARGET_DIR/release/placement" "${PLACEMENTS:-10000}" "${NODES:-1000}" "${IN_FLIGHT:-256}"
