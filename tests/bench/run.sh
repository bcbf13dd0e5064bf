#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup/http_ok/redis_ok run from traps and wait_for
# Benchmark statushost end to end on this machine:
#   redis-server (free port) + worker statushost (examples/remote_worker.lua,
#   immediate=true) + front statushost (scripts/default.lua) + sh_loadgen.
#
# Environment:
#   CONNS (100), TASKS (10), DURATION (10 s)   sh_loadgen --connections/--tasks/--duration
#   LOADGEN_ARGS   extra sh_loadgen arguments, e.g. "--json" or "--max-jobs 5000"
#   BUILD          build directory (default: <repo>/build); built if a binary is missing
#   STATUSHOST, LOADGEN   override the binaries' paths
#   KEEP_LOGS=1    keep the temporary directory with the servers' logs
# Exit status: sh_loadgen's (0: no failed job, no lost update), or 1 if the set-up failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
CONNS=${CONNS:-100}
TASKS=${TASKS:-10}
DURATION=${DURATION:-10}
LOADGEN_ARGS=${LOADGEN_ARGS:-}

log() { echo "run.sh: $*" >&2; }
die() { log "$*"; exit 1; }

find_loadgen() {
    local p
    for p in "${LOADGEN:-}" "$BUILD/tests/bench/sh_loadgen" "$BUILD/sh_loadgen" "$BUILD/bin/sh_loadgen"; do
        [[ -n "$p" && -x "$p" ]] && { echo "$p"; return 0; }
    done
    return 1
}

SH=${STATUSHOST:-$BUILD/statushost}
if [[ ! -x "$SH" ]] || ! find_loadgen >/dev/null; then
    log "building statushost and sh_loadgen in $BUILD"
    if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
        cmake -S "$ROOT" -B "$BUILD" >&2 || die "cmake configure failed"
    fi
    cmake --build "$BUILD" --target statushost sh_loadgen -j "$(nproc 2>/dev/null || echo 2)" >&2 ||
        die "build failed"
fi
[[ -x "$SH" ]] || die "statushost binary not found at $SH"
LG=$(find_loadgen) || die "sh_loadgen binary not found under $BUILD"
command -v redis-server >/dev/null || die "redis-server not installed (apt-get install redis-server)"
command -v python3 >/dev/null || die "python3 not installed"

# Many connections need many descriptors in every process started below.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sh-bench.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? p _
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [[ "${KEEP_LOGS:-0}" == 1 ]]; then log "logs kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for NAME PID CHECK-COMMAND...: up to 15 s; fails early if the process died
wait_for() {
    local name=$1 pid=$2 _
    shift 2
    for _ in $(seq 150); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited early; last lines of its log:"
            tail -n 20 "$TMP/$name.log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    log "$name not ready after 15 s; last lines of its log:"
    tail -n 20 "$TMP/$name.log" >&2 || true
    exit 1
}

http_ok() { # URL → success iff 200
    if command -v curl >/dev/null; then
        curl -fsS -m 2 -o /dev/null "$1"
    else
        python3 -c 'import sys, urllib.request; sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)' "$1"
    fi
}

redis_ok() { # PORT
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
EOF
}

cd "$ROOT"

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$TMP" --maxclients 10000 >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_for redis "${PIDS[-1]}" redis_ok "$RP"

P1=$(free_port)
"$SH" --listen "127.0.0.1:$P1" --redis "redis://127.0.0.1:$RP" --set immediate=true \
    examples/remote_worker.lua >"$TMP/worker.log" 2>&1 &
PIDS+=($!)
wait_for worker "${PIDS[-1]}" http_ok "http://127.0.0.1:$P1/healthz"

P2=$(free_port)
"$SH" --listen "127.0.0.1:$P2" --redis "redis://127.0.0.1:$RP" \
    --set "remote_url=http://127.0.0.1:$P1/remote/message" scripts/default.lua >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
wait_for server "$SERVER_PID" http_ok "http://127.0.0.1:$P2/healthz"

log "redis :$RP, worker :$P1, statushost :$P2 (pid $SERVER_PID); $CONNS connections, $TASKS tasks, ${DURATION}s"
set +e
# shellcheck disable=SC2086  # LOADGEN_ARGS is a list of words on purpose
"$LG" --url "ws://127.0.0.1:$P2/" --connections "$CONNS" --tasks "$TASKS" --duration "$DURATION" \
    --server-pid "$SERVER_PID" $LOADGEN_ARGS
rc=$?
set -e
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "statushost died during the run; last lines of its log:"
    tail -n 20 "$TMP/server.log" >&2 || true
    rc=1
fi
exit "$rc"
