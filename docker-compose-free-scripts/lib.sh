# Shared by the stack scripts: paths and defaults. Sourced, not run.
# shellcheck shell=bash

BERTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BERTH_ROOT

# Binaries: release build of this checkout unless BERTH_BIN_DIR says otherwise.
BERTH_BIN_DIR="${BERTH_BIN_DIR:-${CARGO_TARGET_DIR:-$BERTH_ROOT/target}/release}"
export BERTH_BIN_DIR

BERTH_NATS_PORT="${BERTH_NATS_PORT:-4222}"
export BERTH_NATS_URL="${BERTH_NATS_URL:-nats://127.0.0.1:$BERTH_NATS_PORT}"

# State (pids, logs, the NATS store) and node data. An explicit BERTH_STATE_DIR keeps
# everything of that stack under it, so two stacks can run side by side.
if [ -n "${BERTH_STATE_DIR:-}" ]; then
  BERTH_DATA_DIR="${BERTH_DATA_DIR:-$BERTH_STATE_DIR/data}"
elif [ "$(id -u)" -eq 0 ]; then
  BERTH_STATE_DIR=/var/lib/berth/stack
  BERTH_DATA_DIR="${BERTH_DATA_DIR:-/var/lib/berth}"
else
  BERTH_STATE_DIR="$HOME/.local/state/berth"
  BERTH_DATA_DIR="${BERTH_DATA_DIR:-$HOME/.local/share/berth}"
fi
export BERTH_STATE_DIR BERTH_DATA_DIR

BERTH_SERVICES=(berth-image-store berth-layer-unpacker berth-scheduler berth-executor)

# The nats-server to run: the first 2.10+ on PATH (setup.sh links one into /usr/local/bin).
berth_nats_server() {
  local candidate version
  for candidate in "${BERTH_NATS_SERVER:-}" /usr/local/bin/nats-server "$(command -v nats-server 2>/dev/null)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    version="$("$candidate" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
    set -- $version
    if [ -n "${1:-}" ] && { [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }; }; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
