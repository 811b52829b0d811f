#!/usr/bin/env bash
# From a fresh Debian 12 machine (as root): install, build, start the stack, show it.
set -euo pipefail
here="$(dirname "$0")"
"$here/setup.sh"
"$here/up.sh"
source "$here/lib.sh"
"$BERTH_BIN_DIR/berth" system info
log "stop the stack with docker-compose-free-scripts/down.sh"
