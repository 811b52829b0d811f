#!/usr/bin/env bash
# /bin/true in one busybox bundle: berth-runtime run vs runc run vs crun run; then the
# same rootfs under the engines: `podman run --rm --network none` and `ctr run --rm` (own
# containerd, runc v2 shim) with each of the three runtimes. Medians (hyperfine), then
# ratios. Run as root.
#
#   bench/runtime.sh            # builds berth-runtime (release) first
#   RUNS=50 ENGINE_RUNS=20 bench/runtime.sh
#   BERTH_RUNTIME=/path/to/berth-runtime bench/runtime.sh
#   ENGINES=0 bench/runtime.sh  # runtimes alone
#
# crun refuses hybrid cgroup hosts that have a cgroup2 mount at /sys/fs/cgroup/unified,
# so it runs in a private mount namespace with that mount removed.
set -euo pipefail
RUNS=${RUNS:-50}
WARMUP=${WARMUP:-5}
ENGINE_RUNS=${ENGINE_RUNS:-20}
ENGINES=${ENGINES:-1}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/runtime.sh needs root" >&2; exit 1; }
for t in hyperfine runc crun busybox strip python3; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done

if [ -z "${BERTH_RUNTIME:-}" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-runtime}
    cargo build --release -q -p berth-runtime
    BERTH_RUNTIME=$CARGO_TARGET_DIR/release/berth-runtime
fi

work=$(mktemp -d /tmp/berth-bench.XXXXXX)
ctrd_pid=
cleanup() {
    # Engines first: podman's vfs layers and containerd's state live under $work.
    [ -z "${PM:-}" ] || $PM rm --all --force >/dev/null 2>&1 || true
    [ -z "$ctrd_pid" ] || { kill "$ctrd_pid" 2>/dev/null; wait "$ctrd_pid" 2>/dev/null; } || true
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# Shipped binaries are stripped; the init re-exec copies the binary into a sealed memfd,
# so its size matters.
strip -o "$work/berth-runtime" "$BERTH_RUNTIME"
BR=$work/berth-runtime

bundle=$work/bundle
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/sys" "$bundle/rootfs/dev" "$bundle/rootfs/tmp"
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
for a in $("$bundle/rootfs/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$bundle/rootfs/bin/$a"
done
# One Docker-equivalent spec (namespaces, mounts, caps, seccomp) for all three runtimes.
(cd "$bundle" && "$BR" spec)
python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]
json.dump(c, open(p, "w"), indent=1)
PY

mkdir -p "$work/root-berth" "$work/root-runc" "$work/root-crun"
# Sanity: each runtime runs the bundle and exits 0.
(cd "$bundle" && "$BR" --root "$work/root-berth" run bench-sanity)
(cd "$bundle" && runc --root "$work/root-runc" run bench-sanity)
(cd "$bundle" && unshare -m sh -c "umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $work/root-crun run bench-sanity")

hyperfine -N --warmup "$WARMUP" --runs "$RUNS" --export-json "$work/result.json" \
    -n berth-runtime "sh -c 'cd $bundle && $BR --root $work/root-berth run bench-b'" \
    -n runc "sh -c 'cd $bundle && runc --root $work/root-runc run bench-r'" \
    -n crun "unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; cd $bundle && crun --root $work/root-crun run bench-c'" \
    -n "baseline (unshare -m sh, no runtime)" "unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; cd $bundle'"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
med = {k: v["median"] * 1000 for k, v in r.items()}
print()
print(f"{'runtime':40s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s}")
for k, v in r.items():
    print(f"{k:40s} {med[k]:10.2f} {v['min']*1000:8.2f} {v['max']*1000:8.2f}")
b = med["berth-runtime"]
print()
print(f"runc / berth-runtime = {med['runc'] / b:.2f}x   (>1: berth-runtime is faster)")
print(f"crun / berth-runtime = {med['crun'] / b:.2f}x   (crun includes its unshare+umount wrapper;")
base = med["baseline (unshare -m sh, no runtime)"]
print(f"  wrapper alone is {base:.2f} ms, so crun itself ~ {med['crun'] - base:.2f} ms -> {(med['crun'] - base) / b:.2f}x)")
PY

# Cross-check robust to load drift (other builds on the same host): the same commands
# interleaved round-robin, so every runtime sees the same background load.
python3 - "$RUNS" "$bundle" "$BR" "$work" <<'PY2'
import statistics, subprocess, sys, time
runs, bundle, br, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
cmds = {
    "berth-runtime": [br, "--root", f"{work}/root-berth", "run", "il-b"],
    "runc": ["runc", "--root", f"{work}/root-runc", "run", "il-r"],
    "crun": ["unshare", "-m", "sh", "-c", f"umount /sys/fs/cgroup/unified 2>/dev/null; crun --root {work}/root-crun run il-c"],
}
times = {k: [] for k in cmds}
for _ in range(runs):
    for k, c in cmds.items():
        t = time.perf_counter()
        subprocess.run(c, cwd=bundle, check=True)
        times[k].append((time.perf_counter() - t) * 1000)
med = {k: statistics.median(v) for k, v in times.items()}
print()
print("interleaved medians (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
print(f"interleaved: runc/berth = {med['runc'] / med['berth-runtime']:.2f}x, crun/berth = {med['crun'] / med['berth-runtime']:.2f}x")
PY2

[ "$ENGINES" = 1 ] || exit 0
for t in podman conmon containerd ctr containerd-shim-runc-v2 umoci tar; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
# crun refuses the hybrid cgroup layout (see above): under the engines it runs through a
# wrapper that drops the v2 mount in a private mount namespace first.
printf '%s\n' '#!/bin/sh' \
    'exec unshare -m sh -c '"'"'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"'"'"' crun "$@"' \
    >"$work/crun-wrap"
chmod +x "$work/crun-wrap"
RUNC=$(command -v runc)

# podman: own store, the bundle's rootfs imported as an image, ulimits this host allows
# (podman's root default of nofile 1048576 is above many hosts' hard limit).
pm=$work/podman
mkdir -p "$pm"
printf '%s\n' '[containers]' 'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]' \
    'log_driver = "k8s-file"' '[engine]' 'events_logger = "file"' >"$pm/containers.conf"
tar -C "$bundle/rootfs" -cf "$work/rootfs.tar" .
PM="env CONTAINERS_CONF=$pm/containers.conf podman --root $pm/root --runroot $pm/runroot --tmpdir $pm/tmp --storage-driver vfs --cgroup-manager cgroupfs"
$PM import -q "$work/rootfs.tar" localhost/bench:latest >/dev/null
for rt in "$BR" "$RUNC" "$work/crun-wrap"; do
    $PM --runtime "$rt" run --rm --network none localhost/bench:latest /bin/true
done

# containerd: own root, state, sockets, no CRI; the rootfs as an OCI image via umoci.
cd_dir=$work/ctrd
mkdir -p "$cd_dir"
printf '%s\n' 'version = 2' "root = \"$cd_dir/root\"" "state = \"$cd_dir/state\"" \
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]' \
    '[grpc]' "  address = \"$cd_dir/c.sock\"" '[ttrpc]' "  address = \"$cd_dir/c-ttrpc.sock\"" \
    '[debug]' '  address = ""' '[metrics]' '  address = ""' >"$cd_dir/config.toml"
containerd --config "$cd_dir/config.toml" >"$cd_dir/log" 2>&1 &
ctrd_pid=$!
CTR="ctr -a $cd_dir/c.sock -n berth-bench"
for _ in $(seq 100); do $CTR version >/dev/null 2>&1 && break; sleep 0.1; done
umoci init --layout "$cd_dir/oci" >/dev/null
umoci new --image "$cd_dir/oci:latest" >/dev/null
umoci unpack --image "$cd_dir/oci:latest" "$cd_dir/unpacked" >/dev/null
cp -a "$bundle/rootfs/." "$cd_dir/unpacked/rootfs/"
umoci repack --image "$cd_dir/oci:latest" "$cd_dir/unpacked" >/dev/null
tar -C "$cd_dir/oci" -cf "$cd_dir/image.tar" .
$CTR image import --snapshotter native --index-name localhost/bench:latest "$cd_dir/image.tar" >/dev/null
for rt in "$BR" "$RUNC" "$work/crun-wrap"; do
    $CTR run --rm --snapshotter native --runc-binary "$rt" localhost/bench:latest sanity /bin/true
done

hyperfine -N --warmup 3 --runs "$ENGINE_RUNS" --export-json "$work/engines.json" \
    -n "podman berth-runtime" "$PM --runtime $BR run --rm --network none localhost/bench:latest /bin/true" \
    -n "podman runc" "$PM --runtime $RUNC run --rm --network none localhost/bench:latest /bin/true" \
    -n "podman crun" "$PM --runtime $work/crun-wrap run --rm --network none localhost/bench:latest /bin/true" \
    -n "ctr berth-runtime" "$CTR run --rm --snapshotter native --runc-binary $BR localhost/bench:latest hb /bin/true" \
    -n "ctr runc" "$CTR run --rm --snapshotter native --runc-binary $RUNC localhost/bench:latest hr /bin/true" \
    -n "ctr crun" "$CTR run --rm --snapshotter native --runc-binary $work/crun-wrap localhost/bench:latest hc /bin/true"

python3 - "$work/engines.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
print()
print(f"{'engine + runtime':28s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s}")
for k, v in r.items():
    print(f"{k:28s} {v['median']*1000:10.2f} {v['min']*1000:8.2f} {v['max']*1000:8.2f}")
for eng in ("podman", "ctr"):
    b = r[f"{eng} berth-runtime"]["median"]
    print(f"{eng}: runc/berth = {r[f'{eng} runc']['median'] / b:.2f}x, "
          f"crun/berth = {r[f'{eng} crun']['median'] / b:.2f}x   (>1: berth-runtime is faster; "
          "crun runs through its unshare+umount wrapper)")
PY
