#!/usr/bin/env bash
# Pull of a ~100 MB, 4-layer gzip image from a local docker-registry: `berth pull` end to
# end (CLI -> NATS -> image-store -> registry, layers streamed concurrently into the
# JetStream Object Store with digest and size verified, references written last) vs
# `skopeo copy docker://... oci:DIR`. Medians of >= 5 runs each (hyperfine), then the ratio.
#
# The berth stack is the real one, started by docker-compose-free-scripts/up.sh with a
# private BERTH_STATE_DIR and BERTH_NATS_PORT (so it runs beside any other stack) and
# stopped by down.sh. Between berth runs `berth rmi` deletes the image and, being its
# last user, its blobs, so every run fetches all 4 layers. Both sides write to the same
# filesystem (tmpfs /dev/shm when there is one): skopeo its OCI layout, berth the
# JetStream store of its nats-server.
#
# `berth images` is timed too: the fixed cost of any berth CLI call (process start, NATS
# connect, one request), so the pull's own share can be read off.
#
# The image is pushed by an ignored helper test of services/image-store/tests/registry.rs
# (random, so incompressible: the gzip layers really weigh ~25 MB each).
#
#   bench/pull.sh
#   RUNS=10 bench/pull.sh
set -euo pipefail
RUNS=${RUNS:-5}
cd "$(dirname "$0")/.."
for t in docker-registry skopeo hyperfine python3 jq nats-server; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q --locked --bins -p berth-image-store -p berth-cli \
    -p berth-layer-unpacker -p berth-scheduler -p berth-executor
export BERTH_BIN_DIR=$CARGO_TARGET_DIR/release
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export BERTH_STATE_DIR=$work/stack
BERTH_NATS_PORT=$(free_port)
export BERTH_NATS_PORT
export BERTH_NATS_URL=nats://127.0.0.1:$BERTH_NATS_PORT
reg_pid=
cleanup() {
    docker-compose-free-scripts/down.sh >/dev/null 2>&1 || true
    # The registry dies of our SIGTERM (status 143); that is no failure of the bench.
    if [ -n "$reg_pid" ]; then
        kill "$reg_pid" 2>/dev/null || true
        wait "$reg_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
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

ref=127.0.0.1:$port/bench/pull:1
BERTH_BENCH_REF=$ref "$TESTBIN" --ignored --exact registry_bench_push_image --nocapture --quiet | grep -E '^pushed' || true

docker-compose-free-scripts/up.sh
berth="$BERTH_BIN_DIR/berth --timeout 120"

# Sanity: both sides pull the same manifest.
$berth pull -q "$ref" >/dev/null
skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/oci:1"
want=$(skopeo inspect --tls-verify=false --raw "docker://$ref" | sha256sum | cut -d' ' -f1)
got=$($berth image inspect "$ref" --json | jq -r '.[0].digest')
[ "$got" = "sha256:$want" ] || { echo "berth pulled $got, registry has sha256:$want" >&2; exit 1; }
layers=$($berth image inspect "$ref" --json | jq '.[0].layers | length')
size=$($berth image inspect "$ref" --json | jq '.[0].size')
echo "image $ref: $layers layers, $size bytes, $got"

hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$work/result.json" \
    --prepare "$berth rmi $ref" \
    --prepare "rm -rf $work/oci" \
    --prepare true \
    -n berth-pull "$berth pull -q $ref" \
    -n skopeo "skopeo copy -q --src-tls-verify=false docker://$ref oci:$work/oci:1" \
    -n berth-cli-floor "$berth images"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
b, s = r["berth-pull"]["median"], r["skopeo"]["median"]
print(f"median berth pull {b:.3f} s, skopeo copy {s:.3f} s; berth/skopeo = {b / s:.2f} (below 1: berth faster)")
f = r["berth-cli-floor"]["median"]
print(f"berth CLI floor (`berth images`: process start, NATS connect, one request) {f:.3f} s; "
      f"pull minus floor {b - f:.3f} s, vs skopeo = {(b - f) / s:.2f}")
PY
