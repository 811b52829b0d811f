#!/usr/bin/env bash
# Container networking, same run:
#  1. start latency: `berth run --rm busybox true` with --network bridge vs --network none,
#     and podman's default network (`podman run --rm` of the same rootfs), medians of
#     hyperfine runs;
#  2. TCP throughput with iperf3 (Debian's; the containers run the host's binary from a
#     read-only bind of /usr), medians of $ROUNDS runs of $SECONDS_EACH s:
#     container -> container over the bridge, host -> published port (loopback DNAT),
#     and host loopback as the ceiling; ratios printed.
# Traffic stays on this host: loopback and the bench's own bridge. Run as root.
#
#   bench/network.sh            # builds the release binaries first
#   RUNS=40 ROUNDS=5 bench/network.sh
set -euo pipefail
RUNS=${RUNS:-30}
ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-3}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/network.sh needs root" >&2; exit 1; }
for t in hyperfine nats-server busybox python3 tar nft ip iperf3; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done

if [ -z "${BERTH_BIN_DIR:-}" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
    cargo build --release -q --bins -p berth-executor -p berth-cli -p berth-image-store -p berth-layer-unpacker -p berth-scheduler
    BERTH_BIN_DIR=$CARGO_TARGET_DIR/release
fi
B=$BERTH_BIN_DIR

work=$(mktemp -d /tmp/berth-bench-net.XXXXXX)
pids=()
# The bench's own bridge, subnets and table, apart from any other berth on the host.
export BERTH_BRIDGE=berth-bench BERTH_BRIDGE_SUBNET=10.199.0.0/24 BERTH_NETWORK_POOL=10.199.16.0/20
export BERTH_NFT_TABLE=berth_bench BERTH_IP_FORWARD=false
cleanup() {
    ids=$("$B/berth" ps -a -q 2>/dev/null || true)
    [ -z "$ids" ] || "$B/berth" rm -f $ids >/dev/null 2>&1 || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip link del berth-bench 2>/dev/null || true
    nft delete table ip berth_bench 2>/dev/null || true
    podman rmi -f localhost/busybox:bench-net >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export BERTH_NATS_URL=nats://127.0.0.1:$port BERTH_DATA_DIR=$work/data BERTH_NODE_ID=bench-net RUST_LOG=warn
nats-server -a 127.0.0.1 -p "$port" -js -sd "$work/js" >"$work/nats.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for s in image-store layer-unpacker executor scheduler; do
    "$B/berth-$s" >"$work/$s.log" 2>&1 & pids+=($!)
done
for _ in $(seq 100); do "$B/berth" ps >/dev/null 2>&1 && break; sleep 0.1; done
# berth run goes through the scheduler: wait until it answers too.
for _ in $(seq 100); do "$B/berth" node ls >/dev/null 2>&1 && break; sleep 0.1; done

rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
cp "$(command -v busybox)" "$rootfs/bin/busybox"
for a in $("$rootfs/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
# The host's /usr is bound read-only into the iperf3 containers; its libraries are
# found through the merged-/usr links.
mkdir -p "$rootfs/usr"
ln -s usr/lib "$rootfs/lib"
ln -s usr/lib64 "$rootfs/lib64"
tar -C "$rootfs" --numeric-owner -cf "$work/busybox.tar" .
"$B/berth" import "$work/busybox.tar" busybox:bench --change 'ENV PATH=/bin' >/dev/null
"$B/berth" run --rm --network none busybox:bench true   # warm: unpacked from now on

echo "== start latency (hyperfine, $RUNS runs each, same run)"
cmds=("$B/berth run --rm --network bridge busybox:bench true"
      "$B/berth run --rm --network none busybox:bench true")
podman_ok=0
# runc: crun refuses this host's hybrid cgroups. Explicit nofile/nproc: podman's
# defaults are above what this host lets a container set.
pm="podman --runtime runc"
pm_run="$pm run --rm --ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
if command -v podman >/dev/null \
    && podman import --change 'ENV PATH=/bin' "$work/busybox.tar" localhost/busybox:bench-net >/dev/null 2>"$work/podman.err" \
    && $pm_run localhost/busybox:bench-net true >/dev/null 2>>"$work/podman.err"; then
    podman_ok=1
    cmds+=("$pm_run localhost/busybox:bench-net true")
else
    echo "podman: not measured: $(tail -n 2 "$work/podman.err" 2>/dev/null | tr '\n' ' ')"
fi
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$work/start.json" "${cmds[@]}" >/dev/null
python3 - "$work/start.json" "$podman_ok" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
med = [x["median"] * 1000 for x in r]
names = ["berth bridge", "berth none", "podman default network"]
for n, m in zip(names, med):
    print(f"  {n:<24} median {m:7.1f} ms")
print(f"  bridge / none            {med[0] / med[1]:.2f}x")
if len(med) > 2:
    print(f"  berth bridge / podman    {med[0] / med[2]:.2f}x")
PY

echo "== TCP throughput (iperf3, median of $ROUNDS runs of ${SECONDS_EACH} s)"
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
# Receiver-side rate of one iperf3 client run, in MiB/s.
rate() {
    "$@" -t "$SECONDS_EACH" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8 / 2**20)'
}

server=$("$B/berth" run -d --name iperf-server -p 5201 -v /usr:/usr:ro busybox:bench /usr/bin/iperf3 -s)
client=$("$B/berth" run -d --name iperf-client -v /usr:/usr:ro busybox:bench sleep 3600)
sip=$("$B/berth" inspect "$server" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["network"]["endpoints"][0]["ip_address"])')
hport=$("$B/berth" inspect "$server" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["network"]["ports"][0]["host_port"])')
lport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iperf3 -s -B 127.0.0.1 -p "$lport" >"$work/iperf-host.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$lport) 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$hport) 2>/dev/null && break; sleep 0.1; done

c2c=(); pub=(); lo=()
for _ in $(seq "$ROUNDS"); do
    c2c+=("$(rate "$B/berth" exec "$client" /usr/bin/iperf3 -c "$sip")")
    pub+=("$(rate iperf3 -c 127.0.0.1 -p "$hport")")
    lo+=("$(rate iperf3 -c 127.0.0.1 -p "$lport")")
done
python3 - "$(median "${c2c[@]}")" "$(median "${pub[@]}")" "$(median "${lo[@]}")" <<'PY'
import sys
c2c, pub, lo = (float(x) for x in sys.argv[1:])
print(f"  container -> container (bridge)   {c2c:8.0f} MiB/s")
print(f"  host -> published port (DNAT)     {pub:8.0f} MiB/s")
print(f"  host loopback                     {lo:8.0f} MiB/s")
print(f"  container->container / loopback   {c2c / lo:.2f}x")
print(f"  published port / loopback         {pub / lo:.2f}x")
PY
