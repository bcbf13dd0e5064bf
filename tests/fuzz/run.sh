#!/usr/bin/env bash
# tests/fuzz/run.sh — build the libFuzzer targets with clang and run each one.
#
#   tests/fuzz/run.sh [SECONDS]     fuzz each target SECONDS (default 20)
#
# For each target (fuzz_http, fuzz_ws, fuzz_ws_deflate, fuzz_http_client,
# fuzz_http_client_tls, fuzz_route, fuzz_json): first every input in
# tests/fuzz/regressions/<target>/ runs once and must pass; then the target
# fuzzes a temporary copy of tests/fuzz/corpus/<target>/ for SECONDS. Prints
# the executions per target and whether anything was found; exits 1 when a
# regression fails or the fuzzer found a crash, leak, UB or timeout.
# Findings are kept in build-fuzz/findings/<target>/ with the log; a finding
# becomes a regression by copying it into tests/fuzz/regressions/<target>/.
#
# Long runs (hours), e.g. overnight — 4 hours per target:
#   tests/fuzz/run.sh 14400
# in parallel on every core (libFuzzer's fork mode, one process per core):
#   SH_FUZZ_FORK=$(nproc) tests/fuzz/run.sh 14400
# or by hand, keeping what the fuzzer learns in a corpus directory:
#   build-fuzz/fuzz_ws -fork=$(nproc) -max_total_time=14400 -timeout=10 \
#       /tmp/ws-corpus tests/fuzz/corpus/ws
#
# Reproduce a finding:  build-fuzz/fuzz_ws FILE   (SH_FUZZ_VERBOSE=1 shows
# what the input does). Regenerate the seeds: python3 tests/fuzz/make_corpus.py
#
# Environment: SH_FUZZ_BUILD (build dir, default build-fuzz), SH_FUZZ_TARGETS
# (default "http ws ws_deflate http_client http_client_tls route json"), SH_FUZZ_FORK (processes), SH_FUZZ_PATCHED_SRC (a
# directory of candidate fixes: its ws_conn.c, http_parse.c, ... are fuzzed
# instead of src/'s; use a separate SH_FUZZ_BUILD).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SECS=${1:-20}
case "$SECS" in
  ''|*[!0-9]*) echo "usage: tests/fuzz/run.sh [SECONDS]" >&2; exit 2 ;;
esac
BUILD=${SH_FUZZ_BUILD:-$ROOT/build-fuzz}
TARGETS=${SH_FUZZ_TARGETS:-http ws ws_deflate http_client http_client_tls route json}
FORK=${SH_FUZZ_FORK:-0}

if ! command -v clang >/dev/null 2>&1; then
  echo "tests/fuzz/run.sh: clang not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi

echo "== configure and build $BUILD"
CMAKE_ARGS=(-S tests/fuzz -B "$BUILD" -DCMAKE_C_COMPILER=clang)
CMAKE_ARGS+=(-DSH_FUZZ_PATCHED_SRC="${SH_FUZZ_PATCHED_SRC:-}")
cmake "${CMAKE_ARGS[@]}" >/dev/null
cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)" >"$BUILD/build.log" 2>&1 || {
  cat "$BUILD/build.log" >&2
  echo "tests/fuzz/run.sh: build failed" >&2
  exit 1
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sh-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The part of a libFuzzer log that says what went wrong.
show_failure() { # log
  grep -E -A40 "check failed|depends on how|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|ALARM|out-of-memory" "$1" \
    | grep -v -E "^(INFO|#[0-9]+)" | head -80 || tail -40 "$1"
}

status=0
for t in $TARGETS; do
  bin="$BUILD/fuzz_$t"
  case "$t" in
    http) maxlen=16384; dict=(-dict="$ROOT/tests/fuzz/http.dict") ;;
    http_client|http_client_tls) maxlen=16384; dict=(-dict="$ROOT/tests/fuzz/http_client.dict") ;;
    json) maxlen=8192; dict=(-dict="$ROOT/tests/fuzz/json.dict") ;;
    *) maxlen=8192; dict=() ;;
  esac

  # 1. regressions: each must run clean
  reg="$ROOT/tests/fuzz/regressions/$t"
  if [ -d "$reg" ] && [ -n "$(ls -A "$reg" 2>/dev/null)" ]; then
    nreg=$(find "$reg" -type f ! -name '*.txt' ! -name '*.md' | wc -l)
    if find "$reg" -type f ! -name '*.txt' ! -name '*.md' -print0 \
        | xargs -0 "$bin" >"$WORK/$t-regressions.log" 2>&1; then
      echo "fuzz_$t: $nreg regression inputs pass"
    else
      echo "fuzz_$t: REGRESSION FAILED ($reg)"
      grep "^Running:" "$WORK/$t-regressions.log" | tail -1 || true
      show_failure "$WORK/$t-regressions.log"
      status=1
      continue # fuzzing would stop at the same input
    fi
  fi

  # 2. fuzz a copy of the seed corpus
  mkdir -p "$WORK/corpus-$t" "$BUILD/findings/$t"
  cp "$ROOT/tests/fuzz/corpus/$t/"* "$WORK/corpus-$t/"
  touch "$WORK/$t.start"
  args=(-max_total_time="$SECS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
        -max_len=$maxlen -artifact_prefix="$BUILD/findings/$t/" "${dict[@]}")
  if [ "$FORK" -gt 0 ]; then
    args+=(-fork="$FORK" -ignore_crashes=0)
  fi
  log="$WORK/$t.log"
  rc=0
  (cd "$WORK" && "$bin" "${args[@]}" "$WORK/corpus-$t") >"$log" 2>&1 || rc=$?
  cp "$log" "$BUILD/findings/$t/last-run.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  if [ -z "$execs" ]; then # fork mode: the last status line
    execs=$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -E 's/^#([0-9]+).*/\1/' || true)
  fi
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1 || true)
  if [ -z "$rate" ] && [ -n "$execs" ] && [ "$SECS" -gt 0 ]; then
    rate=$((execs / SECS)) # fork mode: all processes together
  fi
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | sed 's/cov: //' || true)
  if [ $rc -eq 0 ]; then
    echo "fuzz_$t: ${execs:-?} executions in ${SECS}s (${rate:-?} exec/s, coverage ${cov:-?}): nothing found"
  else
    status=1
    echo "fuzz_$t: ${execs:-?} executions in ${SECS}s (${rate:-?} exec/s): FOUND a problem (exit $rc)"
    show_failure "$log"
    find "$BUILD/findings/$t" -type f ! -name last-run.log -newer "$WORK/$t.start" | head -5 |
      while read -r f; do
        echo "  reproducer: $f"
        echo "    run: $bin $f"
        echo "    keep: cp $f tests/fuzz/regressions/$t/"
      done
    echo "  full log: $BUILD/findings/$t/last-run.log"
  fi
done
exit $status
