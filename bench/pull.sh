#!/usr/bin/env bash
# Pull of a ~100 MB, 4-layer gzip image from a local docker-registry: berth's registry
# client (services/image-store/src/registry) vs `skopeo copy docker://… oci:DIR`.
# Medians of >= 5 runs each (hyperfine), then the ratio.
#
# Until the image-store's pull verb exists, the berth side is the registry client alone
# (resolve, then every blob streamed, digest-verified, into a sink), run through an
# ignored test of services/image-store/tests/registry.rs. skopeo writes its OCI layout to
# tmpfs (/dev/shm) so that disk speed weighs on neither side much; it still writes and
# berth does not, so read the ratio as "client vs client", not "store vs store".
#
#   bench/pull.sh
#   RUNS=10 bench/pull.sh
set -euo pipefail
RUNS=${RUNS:-5}
cd "$(dirname "$0")/.."
for t in docker-registry skopeo hyperfine python3; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# The test binary's path is only printed by cargo; take it from the JSON messages.
TESTBIN=$(cargo test --release -q --locked -p berth-image-store --test registry --no-run --message-format=json \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "registry":
        print(m["executable"])')
[ -x "$TESTBIN" ] || { echo "could not build the registry test binary" >&2; exit 1; }

tmpbase=/tmp
[ -d /dev/shm ] && tmpbase=/dev/shm
work=$(mktemp -d "$tmpbase/berth-bench-pull.XXXXXX")
reg_pid=
cleanup() {
    # The registry dies of our SIGTERM (status 143); that is no failure of the bench.
    if [ -n "$reg_pid" ]; then
        kill "$reg_pid" 2>/dev/null || true
        wait "$reg_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/storage"
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
  secret: berth-bench
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

export BERTH_BENCH_REF=127.0.0.1:$port/bench/pull:1
"$TESTBIN" --ignored --exact registry_bench_push_image --nocapture --quiet | grep -E '^pushed' || true

# Sanity: both sides pull the image once.
"$TESTBIN" --ignored --exact registry_bench_pull --nocapture --quiet | grep BENCH
skopeo copy -q --src-tls-verify=false "docker://$BERTH_BENCH_REF" "oci:$work/oci:1"

hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$work/result.json" \
    --prepare "rm -rf $work/oci" \
    -n berth-client "$TESTBIN --ignored --exact registry_bench_pull --quiet" \
    -n skopeo "skopeo copy -q --src-tls-verify=false docker://$BERTH_BENCH_REF oci:$work/oci:1"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
b, s = r["berth-client"]["median"], r["skopeo"]["median"]
print(f"median berth-client {b:.3f} s, skopeo {s:.3f} s; berth/skopeo = {b / s:.2f} (below 1: berth faster)")
PY
