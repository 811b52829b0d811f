#!/usr/bin/env bash
# Container networking, same run:
#  1. start latency: `berth run --rm busybox true` with --network bridge vs --network none,
#     and podman's default network (`podman run --rm` of the same rootfs), medians of
#     hyperfine runs;
#  2. TCP throughput with busybox nc (512 MiB from /dev/zero, medians of 5):
#     container -> container over the bridge, host -> published port (loopback DNAT),
#     and host loopback as the ceiling; ratios printed.
# Traffic stays on this host: loopback and the bench's own bridge. Run as root.
#
#   bench/network.sh            # builds the release binaries first
#   RUNS=40 MIB=1024 bench/network.sh
set -euo pipefail
RUNS=${RUNS:-30}
MIB=${MIB:-512}
ROUNDS=${ROUNDS:-5}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/network.sh needs root" >&2; exit 1; }
for t in hyperfine nats-server busybox python3 tar nft ip; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done

if [ -z "${BERTH_BIN_DIR:-}" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
    cargo build --release -q --bins -p berth-executor -p berth-cli -p berth-image-store -p berth-layer-unpacker
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
for s in image-store layer-unpacker executor; do
    "$B/berth-$s" >"$work/$s.log" 2>&1 & pids+=($!)
done
for _ in $(seq 100); do "$B/berth" ps >/dev/null 2>&1 && break; sleep 0.1; done

rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
cp "$(command -v busybox)" "$rootfs/bin/busybox"
for a in $("$rootfs/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
tar -C "$rootfs" --numeric-owner -cf "$work/busybox.tar" .
"$B/berth" import "$work/busybox.tar" busybox:bench --change 'ENV PATH=/bin' >/dev/null
"$B/berth" run --rm --network none busybox:bench true   # warm: unpacked from now on

echo "== start latency (hyperfine, $RUNS runs each, same run)"
cmds=("$B/berth run --rm --network bridge busybox:bench true"
      "$B/berth run --rm --network none busybox:bench true")
podman_ok=0
if command -v podman >/dev/null \
    && podman import --change 'ENV PATH=/bin' "$work/busybox.tar" localhost/busybox:bench-net >/dev/null 2>"$work/podman.err" \
    && podman run --rm localhost/busybox:bench-net true >/dev/null 2>>"$work/podman.err"; then
    podman_ok=1
    cmds+=("podman run --rm localhost/busybox:bench-net true")
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

echo "== TCP throughput (busybox nc, $MIB MiB, median of $ROUNDS)"
count=$((MIB * 16)) # 64 KiB blocks
# Seconds for one transfer: $1 starts the listener (it exits after one connection),
# $2 sends.
transfer() {
    local listen=$1 send=$2
    bash -c "$listen" & local lp=$!
    sleep 0.3
    local t0 t1
    t0=$(date +%s%N)
    bash -c "$send"
    wait "$lp" 2>/dev/null || true
    t1=$(date +%s%N)
    python3 -c "print(($t1 - $t0) / 1e9)"
}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

server=$("$B/berth" run -d --name nc-server -p 5001 busybox:bench sleep 3600)
client=$("$B/berth" run -d --name nc-client busybox:bench sleep 3600)
sip=$("$B/berth" inspect "$server" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["network"]["endpoints"][0]["ip_address"])')
hport=$("$B/berth" inspect "$server" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["network"]["ports"][0]["host_port"])')
lport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# The container-to-container sender runs through `berth exec`: its own cost (median of
# `berth exec true`) is taken off that transfer's time.
ex=()
for _ in $(seq 5); do
    t0=$(date +%s%N); "$B/berth" exec "$client" true; t1=$(date +%s%N)
    ex+=("$(python3 -c "print(($t1 - $t0) / 1e9)")")
done
m_exec=$(median "${ex[@]}")
c2c=(); pub=(); lo=()
for _ in $(seq "$ROUNDS"); do
    c2c+=("$(transfer "$B/berth exec $server sh -c 'nc -l -p 5001 >/dev/null'" \
        "$B/berth exec $client sh -c 'dd if=/dev/zero bs=65536 count=$count 2>/dev/null | nc $sip 5001'")")
    pub+=("$(transfer "$B/berth exec $server sh -c 'nc -l -p 5001 >/dev/null'" \
        "dd if=/dev/zero bs=65536 count=$count 2>/dev/null | busybox nc 127.0.0.1 $hport")")
    lo+=("$(transfer "busybox nc -l -p $lport >/dev/null" \
        "dd if=/dev/zero bs=65536 count=$count 2>/dev/null | busybox nc 127.0.0.1 $lport")")
done
python3 - "$MIB" "$m_exec" "$(median "${c2c[@]}")" "$(median "${pub[@]}")" "$(median "${lo[@]}")" <<'PY'
import sys
mib, ex, c2c, pub, lo = (float(x) for x in sys.argv[1:])
rate = lambda t: mib / t
c2c_rate, pub_rate, lo_rate = rate(max(c2c - ex, 1e-3)), rate(pub), rate(lo)
print(f"  container -> container (bridge)   {c2c_rate:8.0f} MiB/s  ({c2c:.2f} s less {ex*1000:.0f} ms of berth exec)")
print(f"  host -> published port (DNAT)     {pub_rate:8.0f} MiB/s  ({pub:.2f} s)")
print(f"  host loopback                     {lo_rate:8.0f} MiB/s  ({lo:.2f} s)")
print(f"  container->container / loopback   {c2c_rate / lo_rate:.2f}x")
print(f"  published port / loopback         {pub_rate / lo_rate:.2f}x")
PY
