#!/usr/bin/env bash
# Count the user-space instructions statushost spends per seed-flow job or per fan-out
# message, under valgrind's callgrind: unlike CPU time, the count barely moves between
# runs, so a change of a few per cent shows (kernel time is not counted: see run.sh).
#
#   tests/bench/instructions.sh [seedflow|fanout-c|fanout-hook]...   (default: all three)
#
# seedflow     redis-server + worker (examples/remote_worker.lua, immediate=true) + the
#              front under callgrind (scripts/default.lua); 200 warm-up jobs, then JOBS
#              (1000) jobs of 10 tasks on 10 connections, counted: instructions ÷ jobs
# fanout-c     the front with tests/bench/fanout.lua (forwarded from C), 200 connections,
#              sh_loadgen --mode fanout at 2000 msgs/s for 6 s, counted after 3 s:
#              instructions ÷ frames queued (calls of sh_conn_send)
# fanout-hook  the same with FANOUT_HOOK=1 (an on_publish hook forwards)
#
# Environment: BUILD (<repo>/build), STATUSHOST, JOBS (1000), KEEP=DIR keeps the
# callgrind files (callgrind_annotate DIR/<mode>.out shows where they go).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SH=${STATUSHOST:-$BUILD/statushost}
LG=$BUILD/tests/bench/sh_loadgen
JOBS=${JOBS:-1000}
MODES=("$@")
[[ ${#MODES[@]} -gt 0 ]] || MODES=(seedflow fanout-c fanout-hook)

die() { echo "instructions.sh: $*" >&2; exit 1; }
for t in valgrind callgrind_control callgrind_annotate redis-server python3 curl; do
    command -v "$t" >/dev/null || die "$t not installed (apt-get install valgrind redis-server python3 curl)"
done
[[ -x "$SH" && -x "$LG" ]] || die "build statushost and sh_loadgen first (cmake --build $BUILD)"

TMP=${KEEP:-$(mktemp -d "${TMPDIR:-/tmp}/sh-instr.XXXXXX")}
mkdir -p "$TMP"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n "${KEEP:-}" ]] || rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # URL PID
    for _ in $(seq 300); do
        curl -fs -o /dev/null "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "a server exited early (logs in $TMP with KEEP=DIR)"
        sleep 0.1
    done
    die "$1 not answering after 30 s"
}
# total Ir of callgrind file $1 ÷ calls of function $2 recorded in it
per_call() {
    python3 - "$1" "$2" <<'EOF'
import re, sys
path, fn = sys.argv[1], sys.argv[2]
total, calls, names, cur_cfn = 0, 0, {}, None
for line in open(path, errors="replace"):
    if line.startswith("totals:") or line.startswith("summary:"):
        total = max(total, int(line.split()[1]))
    m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(2):
            names[m.group(1)] = m.group(2).strip()
        cur_cfn = names.get(m.group(1))
        continue
    m = re.match(r"calls=(\d+)", line)
    if m and cur_cfn == fn:
        calls += int(m.group(1))
    m = re.match(r"fn=\((\d+)\)(?: (.*))?", line)
    if m and m.group(2):
        names[m.group(1)] = m.group(2).strip()
print("%d %d" % (total, calls))
EOF
}

cd "$ROOT"
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$TMP" >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    python3 -c 'import socket, sys; s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1); s.sendall(b"PING\r\n"); sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)' "$RP" 2>/dev/null && break
    sleep 0.1
done

start_front() { # NAME SCRIPT REMOTE_PORT [ENV=V...] → FPID, FP
    local name=$1 script=$2 rport=$3
    shift 3
    FP=$(free_port)
    env "$@" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/$name.out" \
        "$SH" --listen "127.0.0.1:$FP" --redis "redis://127.0.0.1:$RP" \
        --set "remote_url=http://127.0.0.1:$rport/remote/message" "$script" >"$TMP/$name.log" 2>&1 &
    FPID=$!
    PIDS+=("$FPID")
    wait_http "http://127.0.0.1:$FP/healthz" "$FPID"
}
stop_front() {
    kill -TERM "$FPID"
    wait "$FPID" 2>/dev/null || true
}

printf '| mode | user-space instructions | per |\n| --- | --- | --- |\n'
for mode in "${MODES[@]}"; do
    case $mode in
    seedflow)
        WP=$(free_port)
        "$SH" --listen "127.0.0.1:$WP" --redis "redis://127.0.0.1:$RP" --set immediate=true \
            examples/remote_worker.lua >"$TMP/worker.log" 2>&1 &
        PIDS+=($!)
        wait_http "http://127.0.0.1:$WP/healthz" "${PIDS[-1]}"
        start_front seedflow "${SEED_SCRIPT:-scripts/default.lua}" "$WP"
        "$LG" --url "ws://127.0.0.1:$FP/" --json --connections 10 --tasks 10 --duration 600 \
            --max-jobs 200 >/dev/null
        callgrind_control -i on "$FPID" >/dev/null 2>&1
        out=$("$LG" --url "ws://127.0.0.1:$FP/" --json --connections 10 --tasks 10 --duration 600 \
            --max-jobs "$JOBS")
        callgrind_control -i off "$FPID" >/dev/null 2>&1
        stop_front
        done_jobs=$(python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(d["jobs_completed"] if d["lost_updates"] == 0 else 0)' "$out")
        [[ $done_jobs -gt 0 ]] || die "seedflow: jobs failed or updates lost: $out"
        read -r total _ < <(per_call "$TMP/seedflow.out" sh_conn_send)
        printf '| seedflow (scripts/default.lua, 10 tasks) | %d | job |\n' $((total / done_jobs))
        ;;
    fanout-c | fanout-hook)
        LP=$(free_port)
        start_front "$mode" tests/bench/fanout.lua "$LP" "FANOUT_HOOK=$([[ $mode == fanout-hook ]] && echo 1 || echo 0)"
        (sleep 3; callgrind_control -i on "$FPID" >/dev/null 2>&1) &
        out=$("$LG" --url "ws://127.0.0.1:$FP/" --json --mode fanout --connections 200 \
            --remote-port "$LP" --redis "redis://127.0.0.1:$RP" --duration 6 --rate 2000)
        callgrind_control -i off "$FPID" >/dev/null 2>&1
        stop_front
        python3 -c 'import json, sys; d = json.loads(sys.argv[1]); sys.exit(0 if d["lost"] == 0 and d["received"] > 0 else 1)' "$out" ||
            die "$mode: updates lost: $out"
        read -r total calls < <(per_call "$TMP/$mode.out" sh_conn_send)
        [[ $calls -gt 0 ]] || die "$mode: no frame counted"
        printf '| %s (200 conns, 2000 msgs/s) | %d | message |\n' "$mode" $((total / calls))
        ;;
    *) die "unknown mode $mode (seedflow, fanout-c, fanout-hook)" ;;
    esac
done
