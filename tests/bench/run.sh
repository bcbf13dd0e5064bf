#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup/http_ok/redis_ok run from traps and wait_for
# Benchmark statushost end to end on this machine and print one table:
#   seedflow   redis-server (free port) + worker statushost (examples/remote_worker.lua,
#              immediate=true) + front statushost (scripts/default.lua) + sh_loadgen:
#              jobs/s, latency, server CPU per job; then, when strace is installed, the
#              same flow for SYSCALL_JOBS jobs under `strace -c -f`: syscalls per job
#   fanout     front statushost (tests/bench/fanout.lua; sh_loadgen is its remote) with
#              FANOUT_CONNS connections; PUBLISH as fast as possible (forwarded from C, then
#              through an on_publish hook: FANOUT_HOOK=1), then at FANOUT_RATE msgs/s:
#              server CPU per delivered message, publish → frame latency p50/p99
#   foreign    front statushost (scripts/default.lua), FOREIGN_CONNS connections waiting on a
#              job; FOREIGN_RATE msgs/s of updates for no task of it (all dropped, counted,
#              logged at most once a second per connection): server CPU per dropped update
#   idle       front statushost (scripts/default.lua), ramp through IDLE_STEPS connections
#              that each sent a 1-task batch and wait: server VmRSS growth per connection
#
# Environment:
#   CONNS (100), TASKS (10), DURATION (10 s)   seedflow --connections/--tasks/--duration
#   SYSCALL_JOBS (2000)   jobs counted under strace (0: skip); STRACE_OUT=FILE keeps its table
#   FANOUT_CONNS (1000), FANOUT_RATE (5000), FANOUT_DURATION (10 s)
#   IDLE_STEPS (1000,2000,5000,10000)
#   FOREIGN_CONNS (100), FOREIGN_RATE (10000)
#   ONLY           run only these scenarios (space-separated: seedflow syscalls fanout foreign idle)
#   LOADGEN_ARGS   extra sh_loadgen arguments for the seedflow run, e.g. "--max-jobs 5000"
#   BUILD          build directory (default: <repo>/build); built if a binary is missing
#   STATUSHOST, LOADGEN   override the binaries' paths
#   KEEP_LOGS=1    keep the temporary directory with the servers' logs
# Exit status: 0 when every run had no failed job and no lost update, 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
CONNS=${CONNS:-100}
TASKS=${TASKS:-10}
DURATION=${DURATION:-10}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
SYSCALL_JOBS=${SYSCALL_JOBS:-2000}
FANOUT_CONNS=${FANOUT_CONNS:-1000}
FANOUT_RATE=${FANOUT_RATE:-5000}
FANOUT_DURATION=${FANOUT_DURATION:-10}
IDLE_STEPS=${IDLE_STEPS:-1000,2000,5000,10000}
FOREIGN_CONNS=${FOREIGN_CONNS:-100}
FOREIGN_RATE=${FOREIGN_RATE:-10000}
ONLY=${ONLY:-seedflow syscalls fanout foreign idle}

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
want() { [[ " $ONLY " == *" $1 "* ]]; }

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$TMP" --maxclients 20000 >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_for redis "${PIDS[-1]}" redis_ok "$RP"

P1=$(free_port)
"$SH" --listen "127.0.0.1:$P1" --redis "redis://127.0.0.1:$RP" --set immediate=true \
    examples/remote_worker.lua >"$TMP/worker.log" 2>&1 &
PIDS+=($!)
wait_for worker "${PIDS[-1]}" http_ok "http://127.0.0.1:$P1/healthz"

# start_front NAME SCRIPT REMOTE_PORT [ENV=VALUE...]: a front statushost → SERVER_PID, P2
start_front() {
    local name=$1 script=$2 rport=$3
    shift 3
    P2=$(free_port)
    env "$@" "$SH" --listen "127.0.0.1:$P2" --redis "redis://127.0.0.1:$RP" \
        --set "remote_url=http://127.0.0.1:$rport/remote/message" "$script" >"$TMP/$name.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_for "$name" "$SERVER_PID" http_ok "http://127.0.0.1:$P2/healthz"
}
stop_front() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

RC=0
RESULTS=$TMP/results.tsv
: >"$RESULTS"
# run_lg LABEL ARGS...: one sh_loadgen --json run against the front; its line, labelled, into RESULTS
run_lg() {
    local label=$1 rc=0 out
    shift
    log "$label: sh_loadgen $*"
    out=$("$LG" --url "ws://127.0.0.1:$P2/" --server-pid "$SERVER_PID" --json "$@") || rc=$?
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        log "$label: statushost died; last lines of its log:"
        tail -n 20 "$TMP/$label.log" >&2 || true
        rc=1
    fi
    [[ $rc == 0 ]] || { log "$label: sh_loadgen exit $rc"; RC=1; }
    printf '%s\t%s\n' "$label" "$out" >>"$RESULTS"
}

if want seedflow; then
    start_front seedflow scripts/default.lua "$P1"
    # shellcheck disable=SC2086  # LOADGEN_ARGS is a list of words on purpose
    run_lg seedflow --connections "$CONNS" --tasks "$TASKS" --duration "$DURATION" $LOADGEN_ARGS
    stop_front
fi

if want syscalls && [[ $SYSCALL_JOBS != 0 ]]; then
    if command -v strace >/dev/null; then
        start_front syscalls scripts/default.lua "$P1"
        strace -c -f -o "$TMP/strace.txt" -p "$SERVER_PID" 2>"$TMP/strace.err" &
        STRACE_PID=$!
        for _ in $(seq 50); do grep -q attached "$TMP/strace.err" 2>/dev/null && break; sleep 0.1; done
        run_lg syscalls --connections "$CONNS" --tasks "$TASKS" --duration 600 --max-jobs "$SYSCALL_JOBS"
        kill -INT "$STRACE_PID" 2>/dev/null || true
        wait "$STRACE_PID" 2>/dev/null || true
        [[ -z "${STRACE_OUT:-}" ]] || cp "$TMP/strace.txt" "$STRACE_OUT"
        stop_front
    else
        log "strace not installed: no syscall count (apt-get install strace)"
    fi
fi

if want fanout; then
    LP=$(free_port)
    FAN=(--mode fanout --connections "$FANOUT_CONNS" --remote-port "$LP" --redis "redis://127.0.0.1:$RP"
         --duration "$FANOUT_DURATION")
    start_front fanout-c tests/bench/fanout.lua "$LP"
    run_lg fanout-c "${FAN[@]}" --rate max
    stop_front
    start_front fanout-hook tests/bench/fanout.lua "$LP" FANOUT_HOOK=1
    run_lg fanout-hook "${FAN[@]}" --rate max
    stop_front
    start_front fanout-rate tests/bench/fanout.lua "$LP"
    run_lg fanout-rate "${FAN[@]}" --rate "$FANOUT_RATE"
    stop_front
fi

if want foreign; then
    LP=$(free_port)
    start_front foreign scripts/default.lua "$LP"
    run_lg foreign --mode fanout --connections "$FOREIGN_CONNS" --remote-port "$LP" \
        --redis "redis://127.0.0.1:$RP" --duration "$FANOUT_DURATION" --rate "$FOREIGN_RATE" --foreign
    FOREIGN_LOG_LINES=$(grep -c "not for this job" "$TMP/foreign.log" || true)
    stop_front
fi

if want idle; then
    LP=$(free_port)
    start_front idle scripts/default.lua "$LP"
    run_lg idle --mode idle --remote-port "$LP" --steps "$IDLE_STEPS"
    stop_front
fi

FOREIGN_LOG_LINES=${FOREIGN_LOG_LINES:-} python3 "$ROOT/tests/bench/table.py" "$RESULTS" "$TMP/strace.txt"
exit "$RC"
