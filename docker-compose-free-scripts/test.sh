#!/usr/bin/env bash
# The whole test suite: set up (packages, nats-server, release build), then every test,
# then formatting and lints. Exits non-zero on any failure.
set -euo pipefail
here="$(dirname "$0")"
source "$here/lib.sh"

"$here/setup.sh"
cd "$BERTH_ROOT"

# Tests run in release so they share the build setup.sh just made (one profile, one
# compile of the dependencies) and find the service binaries in target/release.
log "running the test suite"
cargo test --release --workspace --locked --no-fail-fast -- --test-threads="${BERTH_TEST_THREADS:-2}"

log "checking format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
log "all tests passed"
