#!/usr/bin/env bash
# Benchmarks: berth next to its peers, same run, ratios printed. Needs setup.sh first.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"
cargo build --release --locked -p berth-bench
log "bus round trip (shared/bus vs raw async-nats)"
"${CARGO_TARGET_DIR:-$BERTH_ROOT/target}/release/bus-roundtrip" "${BERTH_BENCH_REQUESTS:-5000}"
for extra in "$BERTH_ROOT"/bench/*.sh; do
  [ -e "$extra" ] || continue
  log "$(basename "$extra")"
  bash "$extra"
done
