#!/usr/bin/env bash
# From a fresh Debian 12 machine (as root): install, build, start the stack, show it,
# then make a busybox image from the host's busybox-static and list it.
set -euo pipefail
here="$(dirname "$0")"
"$here/setup.sh"
"$here/up.sh"
source "$here/lib.sh"
berth="$BERTH_BIN_DIR/berth"
"$berth" system info

# A root filesystem with busybox and one symlink per applet (what `busybox --install -s`
# would make), packed as a tarball and imported like `docker import`.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$work/rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
tar -C "$work/rootfs" --numeric-owner --owner=0 --group=0 -cf "$work/busybox.tar" .
log "importing busybox:latest from /bin/busybox"
"$berth" import "$work/busybox.tar" busybox:latest \
  --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' --message 'busybox-static from the host'
"$berth" images
"$berth" history busybox:latest

# The point of it all: a container from that image, attached, removed when it exits.
log "berth run --rm busybox:latest echo hello from berth"
"$berth" run --rm busybox:latest echo hello from berth
log "stop the stack with docker-compose-free-scripts/down.sh"
