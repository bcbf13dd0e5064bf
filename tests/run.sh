#!/usr/bin/env bash
# tests/run.sh — install what is missing, build, and run the whole suite through ctest:
# first the optimized build, then the same suite on an AddressSanitizer +
# UndefinedBehaviorSanitizer build.
#
#   tests/run.sh               everything (fresh Debian machine: run as root)
#   tests/run.sh --quick       optimized build only, no sanitizer pass
#   tests/run.sh --valgrind    also run the integration suite with statushost under valgrind memcheck
#   tests/run.sh --no-browser  leave out the Chromium test (else missing browser tooling fails the run)
#   tests/run.sh -R REGEX      only the ctest tests matching REGEX (passed to ctest), e.g. -R integration
#   SH_TEST_JOBS=N tests/run.sh  N tests at once (default: 2 per core)
#
# Every server a test needs (redis-server, the remote worker, statushost) is
# started by the test itself on a free port and stopped when it ends.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUICK=0
VALGRIND=0
BROWSER=ON
CTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --valgrind) VALGRIND=1 ;;
    --no-browser) BROWSER=OFF ;;
    -R) CTEST_ARGS+=(-R "$2"); shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "tests/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# ------------------------------------------------------------------ packages
PKGS=(build-essential cmake pkg-config libuv1-dev liblua5.4-dev libhiredis-dev libwslay-dev
      lua-cjson-dev node-llhttp libssl-dev uthash-dev libsystemd-dev redis-server redis-tools python3 clang
      libclang-rt-14-dev chromium nodejs npm valgrind dpkg-dev groff-base man-db)
PKGS+=(zlib1g-dev python3-websockets) # permessage-deflate: zlib; a third-party client for it
missing=()
for p in "${PKGS[@]}"; do
  # a tool already on PATH (e.g. node from another source) counts as present
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: missing packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# browser test tooling (test-only, from npm). Without it the suite fails,
# unless --no-browser says to leave the browser test out.
if [ $BROWSER = ON ]; then
  if [ ! -d tests/browser/node_modules/playwright-core ]; then
    echo "== npm install (tests/browser)"
    if ! (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error); then
      echo "tests/run.sh: npm ci in tests/browser failed: cannot run the browser test (--no-browser skips it)" >&2
      exit 1
    fi
  fi
  if [ ! -x /usr/bin/chromium ]; then
    echo "tests/run.sh: /usr/bin/chromium is missing: cannot run the browser test (--no-browser skips it)" >&2
    exit 1
  fi
fi

JOBS=$(nproc 2>/dev/null || echo 2)
# tests run in parallel: most wait on sockets; the suites bounding the time of CPU-heavy
# work take turns (RESOURCE_LOCK in tests/CMakeLists.txt). SH_TEST_JOBS=1: one at a time.
TEST_JOBS=${SH_TEST_JOBS:-$((JOBS * 2))}
export CTEST_OUTPUT_ON_FAILURE=1

run_suite() { # build-dir, extra cmake args...
  local dir=$1; shift
  echo "== configure $dir $*"
  cmake -S . -B "$dir" -DSH_BROWSER_TESTS=$BROWSER "$@" >/dev/null
  echo "== build $dir"
  cmake --build "$dir" -j"$JOBS" 2>&1 | grep -E "warning|error" | grep -v "^/usr/share/llhttp" || true
  cmake --build "$dir" -j"$JOBS" >/dev/null
  echo "== test $dir"
  (cd "$dir" && ctest --output-on-failure --timeout 900 -j"$TEST_JOBS" "${CTEST_ARGS[@]}")
}

run_suite build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSH_SANITIZE=OFF

if [ $QUICK -eq 0 ]; then
  # LeakSanitizer runs at exit: every test that stops statushost checks its exit status
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  run_suite build-asan -DCMAKE_BUILD_TYPE=Debug -DSH_SANITIZE=ON
  unset ASAN_OPTIONS UBSAN_OPTIONS
fi

if [ $VALGRIND -eq 1 ]; then
  echo "== integration suite under valgrind memcheck"
  export SH_WRAPPER="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --quiet"
  (cd build && ctest --output-on-failure --timeout 1800 -L integration)
fi
echo "== all suites passed"
