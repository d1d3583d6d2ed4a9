#!/usr/bin/env bash
# Data-plane benchmark (not a test): one echo agent reached directly, through myagent-proxy
# (with and without the metadata envelope) and through nginx as a WebSocket reverse proxy,
# all in the same run on loopback. Prints absolute figures and ratios (see PERFORMANCE.md).
#
#   tests/bench.sh                 # every scenario, 5 rounds of 3 s per target
#   SECONDS_PER_RUN=5 ROUNDS=7 tests/bench.sh
#   SCENARIOS=pp100-64,pp100-4k PINNED_SCENARIOS=pp1-64 PINNED_ROUNDS=15 tests/bench.sh
#
# Each scenario runs ROUNDS times (the pinned single-connection rows, which are cheap and swing
# the most, PINNED_ROUNDS times) with the targets in a rotated order; each row is that target's
# median round (single runs on a shared 2-vCPU machine swing by 5-25 %). "CPU µs/msg" is the
# target's processes' exact run time (schedstat) over that round's measured window.
#
# Installs nginx-light from Debian's packages when nginx is missing (needs root), writes its
# config to a temp dir, and stops everything it started (by PID) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${SECONDS_PER_RUN:-3}"
ROUNDS="${ROUNDS:-5}"
SCEN="${SCENARIOS:-pp100-64,pp100-4k,pp1000-64,pp1000-4k,stream100x16-4k,connect2000}"
PINNED="${PINNED_SCENARIOS:-pp1-64,pp1-4k}"
PINNED_ROUNDS="${PINNED_ROUNDS:-9}"

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "bench: installing nginx-light from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# The proxy as the image ships it (the `production` profile: fat LTO, one codegen unit).
cargo build --profile production -q -p myagent-data-plane --bin myagent-proxy --example wsbench
BIN=target/production
WSB="$BIN/examples/wsbench"

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# Starts a command in the background and waits for its first stdout line.
start() { # name cmd...
  local name="$1"; shift
  "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  PIDS+=("$!")
  eval "${name}_PID=$!"
  for _ in $(seq 1 200); do
    [ -s "$TMP/$name.out" ] && return 0
    sleep 0.05
  done
  echo "bench: $name did not start: $(cat "$TMP/$name.err")" >&2
  exit 1
}

start agent "$WSB" agent --listen 127.0.0.1:0
AGENT="$(awk '{print $2}' "$TMP/agent.out")"
start control "$WSB" control --listen 127.0.0.1:0 --agent "$AGENT"
CONTROL="$(awk '{print $2}' "$TMP/control.out")"
RUST_LOG=warn start proxy "$BIN/myagent-proxy" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --control-plane "http://$CONTROL" --data-dir "$TMP/proxy" --idle-timeout 0 --report-interval 1s
PROXY="$(sed -n 's/.*ws=\([^ ]*\).*/\1/p' "$TMP/proxy.out")"
ADMIN="$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$TMP/proxy.out")"
for _ in $(seq 1 100); do
  curl -fs "http://$ADMIN/readyz" >/dev/null 2>&1 && break
  python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$ADMIN/readyz')" 2>/dev/null && break
  sleep 0.1
done

# nginx: a free port, 16 KiB proxy buffers (its 4 KiB default costs ~35 % at 4 KiB messages).
NPORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$TMP/nginx.conf" <<CONF
worker_processes auto;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  upstream agent { server $AGENT; keepalive 64; }
  server {
    listen 127.0.0.1:$NPORT backlog=4096;
    location / {
      proxy_pass http://agent;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_buffer_size 16k;
      proxy_buffers 4 16k;
      proxy_read_timeout 300s;
    }
  }
}
CONF
"$NGINX" -c "$TMP/nginx.conf" -p "$TMP" -g 'daemon on;' 2>/dev/null
for _ in $(seq 1 100); do [ -s "$TMP/nginx.pid" ] && break; sleep 0.05; done
NGINX_MASTER="$(cat "$TMP/nginx.pid")"
NGINX_PIDS="$(pgrep -P "$NGINX_MASTER" | paste -sd, -)"

T_DIRECT="direct=ws://$AGENT/@$agent_PID"
T_PROXY="myagent-proxy=ws://$PROXY/ws?service=echo@$proxy_PID"
T_RAW="myagent-proxy-noenv=ws://$PROXY/ws?service=echo-raw@$proxy_PID"
T_NGINX="nginx=ws://127.0.0.1:$NPORT/@$NGINX_PIDS"
echo "# wsbench $(date -u +%FT%TZ) $(nproc) vCPU, ${SECS}s per run, median of $ROUNDS rounds; agent=$AGENT proxy=$PROXY nginx=127.0.0.1:$NPORT"

ulimit -n 65536 2>/dev/null || true
# Resident memory per idle connection, first, while every process is fresh (memory freed by
# earlier rows would be reused and hide the growth); one round, the envelope target only
# (both proxy targets are one process).
echo "# resident memory per idle connection (fresh processes, 2000 connections held 1 s)"
"$WSB" run --seconds "$SECS" --rounds 1 --scenarios idle2000 \
  --target "$T_DIRECT" --target "$T_PROXY" --target "$T_NGINX"

# Multi-connection rows: every process free to use both vCPUs.
"$WSB" run --seconds "$SECS" --rounds "$ROUNDS" --scenarios "$SCEN" \
  --target "$T_DIRECT" --target "$T_PROXY" --target "$T_RAW" --target "$T_NGINX"

# 1 connection, 64 B and 4 KiB: every process pinned to vCPU 0 (cross-vCPU wake-ups dominate
# otherwise).
for p in "$agent_PID" "$proxy_PID" "$NGINX_MASTER" $(echo "$NGINX_PIDS" | tr , ' '); do taskset -apc 0 "$p" >/dev/null; done
echo; echo "# pinned to vCPU 0 (taskset -c 0), median of $PINNED_ROUNDS rounds"
taskset -c 0 "$WSB" run --seconds "$SECS" --rounds "$PINNED_ROUNDS" --scenarios "$PINNED" \
  --target "$T_DIRECT" --target "$T_PROXY" --target "$T_RAW" --target "$T_NGINX"
