#!/usr/bin/env bash
# /bin/true in one busybox bundle: berth-runtime run vs runc run vs crun run.
# Medians of >= 30 runs each (hyperfine), then ratios. Run as root.
#
#   bench/runtime.sh            # builds berth-runtime (release) first
#   RUNS=50 bench/runtime.sh
#   BERTH_RUNTIME=/path/to/berth-runtime bench/runtime.sh
#
# crun refuses hybrid cgroup hosts that have a cgroup2 mount at /sys/fs/cgroup/unified,
# so it runs in a private mount namespace with that mount removed.
set -euo pipefail
RUNS=${RUNS:-50}
WARMUP=${WARMUP:-5}
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
trap 'rm -rf "$work"' EXIT
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
