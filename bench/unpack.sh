#!/usr/bin/env bash
# Layer unpack: berth's snapshot store `prepare` of a ~110 MB 4-layer image (gzip and
# zstd) on a cold node vs `umoci unpack` vs `tar -xzf` of each layer in sequence, same
# run, medians; every run extracts into fresh directories (no rm -rf in between, see
# the ext4 note in issue 4). Prints the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked -p berth-layer-unpacker --test snapshot_bench -- \
  --ignored --nocapture bench_prepare_vs_tar_vs_umoci 2>&1 | grep -v '^running\|^test result\|^$'
