#!/usr/bin/env bash
# Density: N (default 500) concurrent `sleep 600` containers on one node, started with
# `berth run -d` from 8 parallel CLIs. Prints the time until all N run, the executor's
# RSS and CPU while it supervises them idle (the one shared log pump), each monitor's
# memory (RSS and private pages), and node memory per container (MemAvailable before
# and after, divided by N; noisy when other work runs on the host). Then the peer, in
# the same run: N `podman run -d --network none` of the same image from 8 parallel
# CLIs (podman's own root under the bench dir, runc), with conmon's memory standing
# for the monitor's. PEER=none skips podman; SMAPS=1 also prints one monitor's RSS by
# mapping; COLD=1 evicts the binaries from the page cache first. Run as root.
#
#   bench/containers.sh            N=100 bench/containers.sh      PEER=none bench/containers.sh
set -euo pipefail
N=${N:-500}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/containers.sh needs root" >&2; exit 1; }
for t in nats-server busybox python3 tar xargs; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
if [ -z "${BERTH_BIN_DIR:-}" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
    cargo build --release -q --bins -p berth-executor -p berth-cli -p berth-image-store -p berth-layer-unpacker -p berth-scheduler
    BERTH_BIN_DIR=$CARGO_TARGET_DIR/release
fi
work=$(mktemp -d /tmp/berth-bench-containers.XXXXXX)
pids=()
cleanup() {
    if [ -n "${pm:-}" ]; then
        $pm rm -f -a -t 0 >/dev/null 2>&1 || true
    fi
    if [ -x "$work/bin/berth" ]; then
        "$work/bin/berth" ps -a -q 2>/dev/null | xargs -r -n 50 "$work/bin/berth" rm -f >/dev/null 2>&1 || true
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
    sleep 1
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/bin"
for b in berth berth-executor berth-monitor berth-image-store berth-layer-unpacker berth-scheduler; do
    strip -o "$work/bin/$b" "$BERTH_BIN_DIR/$b"
done
B=$work/bin
if [ -n "${COLD:-}" ]; then
    # As after a reboot: the binaries' pages come from disk, not from the copy just
    # written, so the kernel maps code in 64 KB fault-around windows rather than in the
    # large folios a freshly written file has (which count whole in every RSS).
    sync
    python3 -c 'import os, sys
for f in sys.argv[1:]:
    fd = os.open(f, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$B"/*
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export BERTH_NATS_URL=nats://127.0.0.1:$port BERTH_DATA_DIR=$work/data BERTH_NODE_ID=density RUST_LOG=warn
nats-server -a 127.0.0.1 -p "$port" -js -sd "$work/js" >"$work/nats.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for s in image-store layer-unpacker executor scheduler; do
    "$B/berth-$s" >"$work/$s.log" 2>&1 & pids+=($!)
done
executor_pid=${pids[3]}
for _ in $(seq 100); do "$B/berth" ps --node density >/dev/null 2>&1 && break; sleep 0.1; done
# berth run goes through the scheduler: wait until it answers too.
for _ in $(seq 100); do "$B/berth" node ls >/dev/null 2>&1 && break; sleep 0.1; done
rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc"
cp "$(command -v busybox)" "$rootfs/bin/busybox"
for a in $("$rootfs/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
tar -C "$rootfs" --numeric-owner -cf "$work/busybox.tar" .
"$B/berth" import "$work/busybox.tar" busybox:bench --change 'ENV PATH=/bin' >/dev/null
"$B/berth" run --rm --node density busybox:bench true
sync
avail() { awk '/MemAvailable/ {print $2}' /proc/meminfo; }
before_kb=$(avail)
start=$(date +%s.%N)
seq "$N" | xargs -P 8 -I{} "$B/berth" --timeout 120 run -d --node density busybox:bench sleep 600 >/dev/null
while [ "$("$B/berth" ps -q --node density | wc -l)" -lt "$N" ]; do sleep 0.2; done
end=$(date +%s.%N)
sleep 5
after_kb=$(avail)
ticks() { awk '{print $14 + $15}' "/proc/$executor_pid/stat"; }
t0=$(ticks); sleep 10; t1=$(ticks)
hz=$(getconf CLK_TCK)
exec_rss=$(awk '/^VmRSS/ {print $2}' "/proc/$executor_pid/status")
python3 - "$work/data/containers" "$N" "$start" "$end" "$before_kb" "$after_kb" "$exec_rss" "$t0" "$t1" "$hz" <<'PY'
import json, os, sys
root, n = sys.argv[1], int(sys.argv[2])
start, end = float(sys.argv[3]), float(sys.argv[4])
before, after, exec_rss = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
t0, t1, hz = int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
rss, own, pids = [], [], []
for cid in os.listdir(root):
    try:
        pid = json.load(open(f"{root}/{cid}/state.json"))["monitor_pid"]
        fields = dict(l.split(":", 1) for l in open(f"/proc/{pid}/smaps_rollup").read().splitlines()[1:])
        kb = lambda k: int(fields[k].split()[0])
        rss.append(kb("Rss")); own.append(kb("Private_Clean") + kb("Private_Dirty")); pids.append(pid)
    except (OSError, KeyError, ValueError):
        pass
med = lambda xs: sorted(xs)[len(xs) // 2] if xs else 0
print(f"containers running:          {len(rss)} of {n}")
print(f"time to start all:           {end - start:.1f} s ({n / (end - start):.1f} containers/s)")
print(f"executor RSS:                {exec_rss / 1024:.1f} MiB")
print(f"executor CPU while idle:     {(t1 - t0) / hz / 10 * 100:.1f} % of a core ({n} containers, 10 s)")
print(f"monitor RSS (median):        {med(rss) / 1024:.2f} MiB, private {med(own) / 1024:.2f} MiB")
if os.environ.get("SMAPS") and pids:
    # What one monitor's RSS is made of, by mapping: Rss (Private) kB.
    pid, by = pids[len(pids) // 2], {}
    name = None
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if "-" in parts[0] and not parts[0].endswith(":"):
            name = (parts[5] if len(parts) > 5 else "[anon]") + " " + parts[1]
        elif parts[0] in ("Rss:", "Private_Clean:", "Private_Dirty:"):
            r, p = by.get(name, (0, 0))
            by[name] = (r + int(parts[1]), p) if parts[0] == "Rss:" else (r, p + int(parts[1]))
    for name, (r, p) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        if r:
            print(f"  {r:6d} kB ({p:5d} private)  {name}")
print(f"node memory per container:   {(before - after) / n / 1024:.2f} MiB (MemAvailable delta / {n})")
PY

# The peer: berth's containers go first so both sides start from the same host state.
"$B/berth" ps -a -q | xargs -r -n 50 "$B/berth" rm -f >/dev/null
if [ "${PEER:-podman}" = none ]; then exit 0; fi
if ! command -v podman >/dev/null; then
    echo "podman not installed: the peer is skipped" >&2
    exit 0
fi
# runc: crun refuses this host's hybrid cgroups. Explicit nofile/nproc: podman's defaults
# are above what this host lets a container set.
pm="podman --root $work/podman/root --runroot $work/podman/run --storage-driver overlay --runtime runc"
pm_limits="--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
$pm import --change 'ENV PATH=/bin' "$work/busybox.tar" busybox:bench >/dev/null
$pm run --rm --network none $pm_limits busybox:bench true
sync
sleep 5
before_kb=$(avail)
start=$(date +%s.%N)
seq "$N" | xargs -P 8 -I{} $pm run -d --network none $pm_limits busybox:bench sleep 600 >/dev/null
while [ "$($pm ps -q | wc -l)" -lt "$N" ]; do sleep 0.2; done
end=$(date +%s.%N)
sleep 5
after_kb=$(avail)
python3 - "$N" "$start" "$end" "$before_kb" "$after_kb" $(pgrep -x conmon) <<'PY'
import sys
n, start, end = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
before, after, pids = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
rss, own = [], []
for pid in pids:
    try:
        fields = dict(l.split(":", 1) for l in open(f"/proc/{pid}/smaps_rollup").read().splitlines()[1:])
        kb = lambda k: int(fields[k].split()[0])
        rss.append(kb("Rss")); own.append(kb("Private_Clean") + kb("Private_Dirty"))
    except (OSError, KeyError, ValueError):
        pass
med = lambda xs: sorted(xs)[len(xs) // 2] if xs else 0
print(f"podman: containers running:  {n} (conmon processes: {len(rss)})")
print(f"podman: time to start all:   {end - start:.1f} s ({n / (end - start):.1f} containers/s)")
print(f"podman: conmon RSS (median): {med(rss) / 1024:.2f} MiB, private {med(own) / 1024:.2f} MiB")
print(f"podman: node memory per container: {(before - after) / n / 1024:.2f} MiB (MemAvailable delta / {n})")
PY
