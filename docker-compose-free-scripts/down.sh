#!/usr/bin/env bash
# Stops exactly the processes up.sh started (pids under $BERTH_STATE_DIR/pids): services
# first with SIGTERM (they drain), nats-server last, SIGKILL after 10 s.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

pids_dir="$BERTH_STATE_DIR/pids"
[ -d "$pids_dir" ] || { log "nothing to stop ($pids_dir does not exist)"; exit 0; }

stop() { # name
  local pidfile="$pids_dir/$1.pid" pid exe
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  # Only signal the pid if it is still the program we started (pids get reused).
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  if [ -n "$exe" ] && [ "$(basename "${exe% (deleted)}")" = "$1" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$1 (pid $pid) ignored SIGTERM for 10 s; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$pidfile"
}

for service in berth-executor berth-scheduler berth-layer-unpacker berth-image-store; do
  stop "$service"
done
stop nats-server
