#!/usr/bin/env bash
# Starts nats-server (JetStream) and the four berth services; records pids and logs under
# $BERTH_STATE_DIR and waits until every service answers $SRV.PING.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

for binary in berth "${BERTH_SERVICES[@]}"; do
  [ -x "$BERTH_BIN_DIR/$binary" ] || die "$BERTH_BIN_DIR/$binary missing: run docker-compose-free-scripts/setup.sh"
done
nats="$(berth_nats_server)" || die "no nats-server 2.10+ found: run docker-compose-free-scripts/setup.sh"

mkdir -p "$BERTH_STATE_DIR/pids" "$BERTH_STATE_DIR/logs" "$BERTH_STATE_DIR/nats" "$BERTH_DATA_DIR"

running() { local pid; pid="$(cat "$1" 2>/dev/null)" && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

start() { # name, command...
  local name="$1"; shift
  local pidfile="$BERTH_STATE_DIR/pids/$name.pid"
  if running "$pidfile"; then
    log "$name already running (pid $(cat "$pidfile"))"
    return
  fi
  setsid "$@" >>"$BERTH_STATE_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$pidfile"
}

start nats-server "$nats" -c "$BERTH_ROOT/config/nats-server.conf" \
  -a 127.0.0.1 -p "$BERTH_NATS_PORT" -sd "$BERTH_STATE_DIR/nats"
nats_up=0
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$BERTH_NATS_PORT") 2>/dev/null; then nats_up=1; break; fi
  running "$BERTH_STATE_DIR/pids/nats-server.pid" || break
  sleep 0.1
done
if [ $nats_up -eq 0 ]; then
  tail -n 5 "$BERTH_STATE_DIR/logs/nats-server.log" >&2 || true
  "$(dirname "$0")/down.sh" || true
  die "nats-server did not start on port $BERTH_NATS_PORT; log: $BERTH_STATE_DIR/logs/nats-server.log"
fi

export BERTH_NATS_URL BERTH_DATA_DIR
for service in "${BERTH_SERVICES[@]}"; do
  config="$BERTH_ROOT/config/${service#berth-}.toml"
  start "$service" "$BERTH_BIN_DIR/$service" --config "$config"
done

log "waiting for the services to answer on $BERTH_NATS_URL"
for _ in $(seq 150); do
  names="$("$BERTH_BIN_DIR/berth" system info --json --timeout 2 2>/dev/null | jq -r '.[].name' 2>/dev/null | sort -u | tr '\n' ' ')" || true
  ready=1
  for service in "${BERTH_SERVICES[@]}"; do
    case " $names " in *" $service "*) ;; *) ready=0 ;; esac
  done
  if [ $ready -eq 1 ]; then
    log "berth is up on $BERTH_NATS_URL"
    log "logs: $BERTH_STATE_DIR/logs   pids: $BERTH_STATE_DIR/pids   data: $BERTH_DATA_DIR"
    exit 0
  fi
  sleep 0.2
done
"$(dirname "$0")/down.sh" || true
die "services did not all answer within 30 s (answering: ${names:-none}); see $BERTH_STATE_DIR/logs"
