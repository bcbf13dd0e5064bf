#!/usr/bin/env bash
# The seed flow side by side with the peers, server CPU per job split into user and kernel
# time: runs ../shared/peers' own harness (its Node load generator, mock remote and Redis)
# for each server in turn, one run each, and samples the server process's utime and stime
# (/proc/PID/stat) while it runs. The harness gives CPU per job over its measuring window;
# the sampler gives the share of it spent in user space (from 3 s after the server starts
# to its exit, so the ramp is left out and the window is inside).
#
#   tests/bench/peers.sh [node] [openresty] [statushost]      (default: all three)
#
# Environment: PEERS (../shared/peers from the project root), STATUSHOST (build/statushost),
# SCRIPT (statushost's policy: scripts/default.lua), DURATION (10 s), OUT (a temporary
# directory: the harness's JSON lines and logs).
# The peers' set-up (nginx, the Lua module, Node packages) is in PEERS/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WANT=${PEERS:-$ROOT/../shared/peers}
PEERS=$(cd "$WANT" 2>/dev/null && pwd) || { echo "peers.sh: no peers' harness at $WANT (set PEERS)" >&2; exit 1; }
SH=$(realpath "${STATUSHOST:-$ROOT/build/statushost}")
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sh-peers.XXXXXX")}
SERVERS=("$@")
[[ ${#SERVERS[@]} -gt 0 ]] || SERVERS=(node openresty statushost)
[[ -x "$PEERS/run.sh" ]] || { echo "peers.sh: no harness at $PEERS" >&2; exit 1; }
[[ -x "$SH" ]] || { echo "peers.sh: build statushost first ($SH)" >&2; exit 1; }
mkdir -p "$OUT"

# sample PATTERN FILE: wait for the process, then write "utime stime" at 3 s and at its end
sample() {
    local pid="" i=0 first="" last="" s
    for _ in $(seq 600); do pid=$(pgrep -f -n -- "$1") && break; sleep 0.1; done
    [[ -n "$pid" ]] || { echo "0 0 0 0" >"$2"; return; }
    while s=$(cat "/proc/$pid/stat" 2>/dev/null); do
        s=${s##*) }
        read -r -a f <<<"$s"
        last="${f[11]} ${f[12]}"
        [[ $i -eq 12 ]] && first=$last
        i=$((i + 1))
        sleep 0.25
    done
    echo "${first:-0 0} $last" >"$2"
}

ARGS="--listen 127.0.0.1:19300 --redis redis://127.0.0.1:16390 --set remote_url=http://127.0.0.1:19101/remote/message"
for s in "${SERVERS[@]}"; do
    case $s in
    node) pat='[p]eer-a/server.js' ;;
    openresty) pat='[n]ginx: worker process' ;;
    statushost) pat="[${SH:0:1}]${SH:1} --listen" ;;
    *) echo "peers.sh: unknown server $s (node, openresty, statushost)" >&2; exit 1 ;;
    esac
    sample "$pat" "$OUT/$s.ticks" &
    (cd "$PEERS" && REPEAT=1 DURATION=${DURATION:-10} RESULTS_JSONL="$OUT/results.jsonl" \
        STATUSHOST_BIN="$SH" STATUSHOST_ARGS="$ARGS $(realpath "${SCRIPT:-$ROOT/scripts/default.lua}")" \
        ./run.sh "$s-seedflow" >"$OUT/$s.log" 2>&1) || { echo "peers.sh: $s failed (see $OUT/$s.log)" >&2; exit 1; }
    wait
done

python3 - "$OUT" "${SERVERS[@]}" <<'EOF'
import json, sys
out, servers = sys.argv[1], sys.argv[2:]
rows = {}
for line in open(out + "/results.jsonl"):
    r = json.loads(line)
    rows[r["label"].split("-")[0]] = r
res = {}
print("| server | jobs/s | CPU per job | user | kernel | user share |")
print("| --- | --- | --- | --- | --- | --- |")
for s in servers:
    r = rows[s]
    cpu = r["resources"]["server"]["cpu_pct"] / 100 * 1e6 / r["jobs_per_s"]
    u0, s0, u1, s1 = map(int, open(f"{out}/{s}.ticks").read().split())
    share = (u1 - u0) / max(1, (u1 - u0) + (s1 - s0))
    res[s] = (cpu, cpu * share, cpu * (1 - share))
    print(f"| {s} | {r['jobs_per_s']:,.0f} | {cpu:.0f} µs | {cpu*share:.0f} µs | {cpu*(1-share):.0f} µs | {share:.2f} |")
if "statushost" in res:
    me = res["statushost"]
    for s in servers:
        if s != "statushost":
            p = res[s]
            print(f"statushost ÷ {s}: CPU {me[0]/p[0]:.2f}×, user {me[1]/p[1]:.2f}×, kernel {me[2]/p[2]:.2f}×")
EOF
