#!/usr/bin/env bash
# tests/ops/test_package.sh BUILD_DIR — the Debian package end to end:
# cpack -G DEB in BUILD_DIR, check its control data and contents, apt-get install
# it, run the installed binary, read the man page, remove and purge it, check
# nothing is left.
#
# It installs a package system-wide, so it runs only as root with apt-get, and
# only on a machine where statushost is not installed and /etc/statushost does
# not exist (a developer's own installation is never touched); otherwise it
# says why and exits 77 (ctest: skipped).
set -euo pipefail
BUILD=${1:?usage: test_package.sh BUILD_DIR}
cd "$BUILD"

skip() { echo "SKIP package test: $*" >&2; echo "package: 0 passed, 0 failed, 1 skipped"; exit 77; }
fail() { echo "FAIL package test: $*" >&2; echo "package: 0 passed, 1 failed"; exit 1; }

[ "$(id -u)" -eq 0 ] || skip "not root (it installs a .deb system-wide)"
command -v apt-get >/dev/null || skip "no apt-get"
command -v dpkg-shlibdeps >/dev/null || skip "no dpkg-shlibdeps (apt-get install dpkg-dev)"
if dpkg-query -W -f='${Status}' statushost 2>/dev/null | grep -q "installed"; then
  skip "a statushost package is already installed on this machine: not touching it"
fi
[ ! -e /etc/statushost ] || skip "/etc/statushost exists on this machine: not touching it"
[ ! -e /usr/bin/statushost ] || skip "/usr/bin/statushost exists on this machine: not touching it"

installed=0
cleanup() {
  if [ $installed -eq 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq statushost >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

echo "== cpack -G DEB"
rm -f statushost_*.deb
cpack -G DEB >cpack.log 2>&1 || { cat cpack.log; fail "cpack failed"; }
debs=(statushost_*_amd64.deb)
[ -f "${debs[0]}" ] || fail "no statushost_<version>_amd64.deb in $BUILD: $(ls *.deb 2>/dev/null)"
deb=${debs[0]}
echo "== $deb"

depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
for lib in libuv1 libhiredis liblua5.4 libssl lua-cjson libsystemd0 zlib1g libc6; do
  echo "$depends" | grep -q "$lib" || fail "Depends lacks $lib: $depends"
done
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/bin/statushost ./usr/share/man/man1/statushost.1 \
         ./usr/lib/systemd/system/statushost.service ./usr/lib/systemd/system/statushost@.service \
         ./usr/share/statushost/scripts/default.lua ./usr/share/statushost/scripts/test.lua \
         ./usr/share/statushost/web/index.html \
         ./usr/share/statushost/examples/echo.lua ./usr/share/statushost/dist/statushost.conf \
         ./usr/share/statushost/dist/grafana-dashboard.json; do
  echo "$contents" | grep -qx "$f" || fail "$deb lacks $f"
done
if echo "$contents" | grep -q "^./usr/local"; then fail "files under /usr/local in the package"; fi
if echo "$contents" | grep -q "demo.sh"; then fail "examples/demo.sh (needs a checkout) is in the package"; fi

echo "== apt-get install ./$deb"
installed=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "./$deb" >apt.log 2>&1 \
  || { cat apt.log; fail "apt-get install failed"; }

/usr/bin/statushost --version
/usr/bin/statushost --check /usr/share/statushost/scripts/default.lua >/dev/null \
  || fail "statushost --check default.lua failed"
# a bare name finds the installed policy, and --check names the static files it will serve
out=$(cd / && /usr/bin/statushost --check default) || fail "statushost --check default (bare name) failed"
echo "$out" | grep -q "^/usr/share/statushost/scripts/default.lua: ok" || fail "bare name resolved elsewhere: $out"
echo "$out" | grep -q "static files: /usr/share/statushost/web$" || fail "--check does not name the installed web/: $out"
# the policy test kit: the shipped tests pass installed, and a test file of the user's,
# outside any checkout, finds require "statushost.test" and "statushost.default"
/usr/bin/statushost --test /usr/share/statushost/scripts/default_test.lua >/dev/null \
  || fail "statushost --test default_test.lua failed installed"
kitdir=$(mktemp -d)
printf '%s\n' 'return require "statushost.default"' >"$kitdir/mine.lua"
printf '%s\n' 'local t = require "statushost.test"' \
  't.test("installed", function() local c = t.policy("mine.lua"):open{}; c:send("[]")' \
  '  c:expect_frame{ error = "invalid_message" } end)' >"$kitdir/mine_test.lua"
(cd / && /usr/bin/statushost --test "$kitdir/mine_test.lua" >/dev/null) \
  || { rm -rf "$kitdir"; fail "a user's test file does not run with the installed kit"; }
rm -rf "$kitdir"
[ -f /etc/statushost/statushost.conf ] && [ -f /etc/statushost/statushost.lua ] \
  || fail "postinst did not create /etc/statushost/statushost.{conf,lua}"
/usr/bin/statushost --check --config /etc/statushost/statushost.conf /etc/statushost/statushost.lua \
  >/dev/null || fail "the installed unit's command line does not --check"
grep -q '^ExecStart=/usr/bin/statushost --config /etc/statushost/statushost.conf /etc/statushost/statushost.lua$' \
  /usr/lib/systemd/system/statushost.service || fail "unit ExecStart does not name /usr/bin/statushost"
if command -v man >/dev/null; then
  page=$(man -w statushost) || fail "man -w statushost finds nothing"
  echo "man page: $page"
  MANWIDTH=80 MANPAGER=cat man statushost 2>/dev/null | grep -q "max_connections" \
    || fail "man statushost does not render the configuration"
else
  [ -f /usr/share/man/man1/statushost.1 ] || fail "no /usr/share/man/man1/statushost.1"
fi
if command -v systemd-analyze >/dev/null; then
  # offline check of the unit's syntax; systemd's own environment may be absent (containers)
  systemd-analyze verify /usr/lib/systemd/system/statushost.service 2>&1 | grep -v "^$" | sed 's/^/  systemd-analyze: /' || true
fi

echo "== apt-get remove statushost"
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq statushost >/dev/null 2>&1 || fail "apt-get remove failed"
for f in /usr/bin/statushost /usr/share/man/man1/statushost.1 /usr/lib/systemd/system/statushost.service \
         /usr/lib/systemd/system/statushost@.service /usr/share/statushost; do
  [ ! -e "$f" ] || fail "$f is still there after apt-get remove"
done
[ -f /etc/statushost/statushost.conf ] || fail "remove must keep the configuration (purge deletes it)"
echo "== apt-get purge statushost"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq statushost >/dev/null 2>&1 || fail "apt-get purge failed"
installed=0
[ ! -e /etc/statushost ] || fail "/etc/statushost is still there after purge"
echo "ok   package ($deb: built, installed, checked, removed, purged)"
echo "package: 1 passed, 0 failed"
