#!/usr/bin/env bash
# examples/demo.sh — the seed's demo on statushost, from a fresh Debian machine.
#
# Installs what is missing (as root), builds, then starts:
#   redis-server                        127.0.0.1:$REDIS_PORT   (default 6379; a free port if taken)
#   the remote worker                   127.0.0.1:$WORKER_PORT  (examples/remote_worker.lua, 500 ms ticks)
#   statushost with scripts/default.lua 127.0.0.1:$PORT         (default 9999)
# and prints the page's URL. Ctrl-C stops all three.
#
#   examples/demo.sh                    # then open http://127.0.0.1:9999/ and click 发送
#   PORT=8080 TICK_MS=200 examples/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-9999}
WORKER_PORT=${WORKER_PORT:-9101}
REDIS_PORT=${REDIS_PORT:-6379}
TICK_MS=${TICK_MS:-500}

PKGS=(build-essential cmake pkg-config libuv1-dev liblua5.4-dev libhiredis-dev libwslay-dev
      lua-cjson-dev node-llhttp libssl-dev uthash-dev libsystemd-dev redis-server python3)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "demo: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "demo: run as root to install packages" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "demo: building"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target statushost >/dev/null

port_busy() { # host port → 0 when something listens there
  python3 -c "import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(('127.0.0.1',int(sys.argv[1])))==0 else 1)" "$1"
}
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }

for v in PORT WORKER_PORT; do
  if port_busy "${!v}"; then echo "demo: port ${!v} ($v) is in use; set $v=... to another" >&2; exit 1; fi
done
if port_busy "$REDIS_PORT"; then REDIS_PORT=$(free_port); fi

LOGS=$(mktemp -d)
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo; echo "demo: stopping"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo: logs were in $LOGS"
}
trap cleanup EXIT INT TERM

wait_http() { # url what pid
  for _ in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || { echo "demo: $2 exited:"; tail -5 "$LOGS/$2.log"; exit 1; }
    sleep 0.1
  done
  echo "demo: $2 did not come up"; tail -5 "$LOGS/$2.log"; exit 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$LOGS/redis.log" 2>&1 &
pids+=($!)
REDIS=redis://127.0.0.1:$REDIS_PORT

build/statushost --listen "127.0.0.1:$WORKER_PORT" --redis "$REDIS" --set "tick_ms=$TICK_MS" \
  examples/remote_worker.lua >"$LOGS/worker.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$WORKER_PORT/healthz" worker "${pids[-1]}"

# statushost's own PID is recorded (not tee's): a SIGINT/SIGTERM to this script stops it
build/statushost --listen "127.0.0.1:$PORT" --redis "$REDIS" \
  --set "remote_url=http://127.0.0.1:$WORKER_PORT/remote/message" \
  scripts/default.lua > >(tee "$LOGS/statushost.log") 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$PORT/healthz" statushost "${pids[-1]}"

cat <<EOF

  statushost is running the seed's demo.

    page:     http://127.0.0.1:$PORT/        (click 发送 and watch ten tasks reach 已完成)
    health:   http://127.0.0.1:$PORT/healthz
    metrics:  http://127.0.0.1:$PORT/metrics
    redis:    $REDIS     worker: http://127.0.0.1:$WORKER_PORT/remote/message

  Ctrl-C stops redis-server, the worker and statushost.

EOF
wait
