#!/usr/bin/env bash
# Warm start end to end: `berth run --rm busybox true` over the bus (CLI -> executor ->
# monitor -> runtime, overlay mount, logs, wait, rm) vs `crun run` of the same rootfs
# with the spec berth generated vs `podman run --rm --network none` of the same image
# (imported with `podman import`, podman's own storage under the bench's temp dir).
# Medians of >= 30 runs (hyperfine), then the ratios. Also prints one container's
# monitor memory (RSS, and what is its own: private pages). Run as root.
#
#   bench/run.sh                    # builds the release binaries first
#   RUNS=50 bench/run.sh
#   BERTH_BIN_DIR=/path/to/release bench/run.sh
#
# crun refuses hybrid cgroup hosts that have a cgroup2 mount at /sys/fs/cgroup/unified,
# so it runs in a private mount namespace with that mount removed (the wrapper's own cost
# is measured and printed too).
set -euo pipefail
RUNS=${RUNS:-30}
WARMUP=${WARMUP:-3}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/run.sh needs root" >&2; exit 1; }
for t in hyperfine crun nats-server busybox strip python3 tar; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done

if [ -z "${BERTH_BIN_DIR:-}" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
    cargo build --release -q --bins -p berth-executor -p berth-cli -p berth-image-store -p berth-layer-unpacker -p berth-scheduler
    BERTH_BIN_DIR=$CARGO_TARGET_DIR/release
fi

work=$(mktemp -d /tmp/berth-bench-run.XXXXXX)
pids=()
cleanup() {
    if [ -x "$work/bin/berth" ]; then
        ids=$("$work/bin/berth" ps -a -q 2>/dev/null || true)
        [ -z "$ids" ] || "$work/bin/berth" rm -f $ids >/dev/null 2>&1 || true
    fi
    # Services before nats-server; whatever has not exited a moment later is killed.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
    sleep 1
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -z "${pm:-}" ] || $pm rm -af >/dev/null 2>&1 || true
    awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
    rm -rf "$work"
}
trap cleanup EXIT

# Shipped binaries are stripped; the monitor is copied into a sealed memfd to become the
# container's init, so its size is part of every start.
mkdir -p "$work/bin"
for b in berth berth-executor berth-monitor berth-image-store berth-layer-unpacker berth-scheduler; do
    strip -o "$work/bin/$b" "$BERTH_BIN_DIR/$b"
done
B=$work/bin

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export BERTH_NATS_URL=nats://127.0.0.1:$port BERTH_DATA_DIR=$work/data BERTH_NODE_ID=bench RUST_LOG=warn
nats-server -a 127.0.0.1 -p "$port" -js -sd "$work/js" >"$work/nats.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for s in image-store layer-unpacker executor scheduler; do
    "$B/berth-$s" >"$work/$s.log" 2>&1 & pids+=($!)
done
for _ in $(seq 100); do "$B/berth" ps --node bench >/dev/null 2>&1 && break; sleep 0.1; done
# berth run goes through the scheduler: wait until it answers too.
for _ in $(seq 100); do "$B/berth" node ls >/dev/null 2>&1 && break; sleep 0.1; done

rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
cp "$(command -v busybox)" "$rootfs/bin/busybox"
for a in $("$rootfs/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
tar -C "$rootfs" --numeric-owner -cf "$work/busybox.tar" .
"$B/berth" import "$work/busybox.tar" busybox:bench --change 'ENV PATH=/bin' >/dev/null
# Warm: the image is unpacked on the node from now on.
"$B/berth" run --rm --network none --node bench busybox:bench true

# crun gets the spec berth generates for the same command, pointed at a plain copy of the
# rootfs (no overlay: that is berth's extra work) and its own cgroup.
id=$("$B/berth" create --network none --node bench busybox:bench /bin/true)
bundle=$work/bundle
mkdir -p "$bundle"
cp -a "$rootfs" "$bundle/rootfs"
python3 - "$work/data/containers/$id/config.json" "$bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["root"]["path"] = "rootfs"
c["linux"]["cgroupsPath"] = "/berth-bench/crun"
# Files berth writes per container (hosts, resolv.conf, hostname) go with `berth rm`.
here = sys.argv[1].rsplit("/", 1)[0] + "/"
c["mounts"] = [m for m in c.get("mounts", []) if not m.get("source", "").startswith(here)]
json.dump(c, open(sys.argv[2], "w"), indent=1)
PY
"$B/berth" rm "$id" >/dev/null
mkdir -p "$work/root-crun"
crun_cmd="unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $work/root-crun run -b $bundle bench-c'"
eval "$crun_cmd"

# podman: its own root and runroot under the bench dir, so no host state is touched.
podman_args=()
if command -v podman >/dev/null; then
    # runc: crun refuses this host's hybrid cgroups. Explicit nofile/nproc: podman's
    # defaults are above what this host lets a container set.
    pm="podman --root $work/podman/root --runroot $work/podman/run --storage-driver overlay --runtime runc"
    pm_limits="--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
    $pm import --change 'ENV PATH=/bin' "$work/busybox.tar" busybox:bench >/dev/null
    $pm run --rm --network none $pm_limits busybox:bench true
    podman_args=(-n "podman run --rm" "$pm run --rm --network none $pm_limits busybox:bench true")
else
    echo "podman not installed: its column is skipped" >&2
fi

hyperfine -N --warmup "$WARMUP" --runs "$RUNS" --export-json "$work/result.json" \
    -n "berth run --rm" "$B/berth run --rm --network none --node bench busybox:bench true" \
    -n "crun run" "$crun_cmd" \
    "${podman_args[@]}" \
    -n "crun wrapper alone" "unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; true'"

# One container's monitor: resident memory while its container sleeps.
cid=$("$B/berth" run -d --network none --node bench busybox:bench sleep 60)
sleep 0.5
mpid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["monitor_pid"])' "$work/data/containers/$cid/state.json")
rss_kb=$(awk '/^Rss:/ {print $2}' "/proc/$mpid/smaps_rollup")
own_kb=$(awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s}' "/proc/$mpid/smaps_rollup")
"$B/berth" rm -f "$cid" >/dev/null

python3 - "$work/result.json" "$rss_kb" "$own_kb" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
med = {k: v["median"] * 1000 for k, v in r.items()}
print()
print(f"{'command':24s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s}")
for k, v in r.items():
    print(f"{k:24s} {med[k]:10.2f} {v['min']*1000:8.2f} {v['max']*1000:8.2f}")
b, c, w = med["berth run --rm"], med["crun run"], med["crun wrapper alone"]
print()
print(f"berth / crun = {b / c:.2f}x   (<= 1 is the aim; crun without its wrapper ~ {c - w:.2f} ms -> {b / max(c - w, 0.01):.2f}x)")
if "podman run --rm" in med:
    p = med["podman run --rm"]
    print(f"berth / podman = {b / p:.2f}x")
print(f"monitor per container: RSS {int(sys.argv[2]) / 1024:.2f} MiB, private {int(sys.argv[3]) / 1024:.2f} MiB")
PY
