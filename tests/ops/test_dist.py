"""What ships beside the binary stays true to it:

  manpage_documents_every_key   every key `statushost --check scripts/default.lua`
                                prints is documented in doc/statushost.1 (`.B key`),
                                and so are the CLI flags
  manpage_renders_cleanly       groff -man -ww (and man -l) render it without a warning
  dashboard_metrics_exist       every metric named in dist/grafana-dashboard.json and
                                dist/prometheus-alerts.yml is exported on /metrics by a
                                running statushost (real redis-server)
  units_are_consistent          the systemd units: Type=notify, watchdog, reload, hardening

    python3 tests/ops/test_dist.py [test_name ...]
"""
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from harness import BIN, ROOT, Statushost, Suite, http_get, shared_redis  # noqa: E402

suite = Suite("dist")
MAN = os.path.join(ROOT, "doc", "statushost.1")
DASHBOARD = os.path.join(ROOT, "dist", "grafana-dashboard.json")
ALERTS = os.path.join(ROOT, "dist", "prometheus-alerts.yml")


def checked_keys(script):
    p = subprocess.run([BIN, "--check", script], capture_output=True, cwd=ROOT, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    keys, in_cfg = [], False
    for line in p.stdout.decode().splitlines():
        if line.strip() == "config:":
            in_cfg = True
        elif in_cfg and re.match(r"^\s+\S+ =( |$)", line):
            keys.append(line.split()[0])
        elif in_cfg and line.strip():
            in_cfg = line.startswith("  ")  # the config section ends at a dedent
    return keys


def documented(text):
    """Names given as `.B name` (alone, or first of .B/.BR/.BI lines after .TP)."""
    out = set()
    for m in re.finditer(r'^\.B[IR]?\s+"?([^\s"]+)', text, re.M):
        out.add(m.group(1).replace("\\-", "-"))
    return out


@suite.test
def manpage_documents_every_key():
    text = open(MAN, encoding="utf-8").read()
    names = documented(text)
    keys = checked_keys(os.path.join(ROOT, "scripts", "default.lua"))
    assert len(keys) >= 20, keys
    missing = [k for k in keys if k not in names]
    assert not missing, "keys missing from doc/statushost.1 (add a `.TP` / `.B key` entry): %s" % missing
    # the flags --help lists are documented as options
    helptext = subprocess.run([BIN, "--help"], capture_output=True).stdout.decode()
    flags = sorted(set(re.findall(r"(--[a-z][a-z-]+)", helptext)))
    assert "--config" in flags, flags
    missing = [f for f in flags if f not in names and ("\\-\\-" + f[2:]) not in text]
    assert not missing, "flags missing from doc/statushost.1: %s" % missing
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "CONFIGURATION", "ENDPOINTS",
                    "SIGNALS", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert re.search(r'^\.SH "?%s"?$' % section, text, re.M), "no .SH %s" % section


@suite.test
def manpage_renders_cleanly():
    groff = shutil.which("groff")
    if not groff:
        print("SKIP manpage_renders_cleanly: groff not installed (apt-get install groff-base)")
        return
    p = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", MAN], capture_output=True)
    assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()
    man = shutil.which("man")
    if man:
        p = subprocess.run([man, "-l", MAN], capture_output=True,
                           env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat"))
        assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()
        out = p.stdout.decode()
        assert "max_connections" in out and "statushost" in out, out[:500]


# ------------------------------------------------------------ metrics in dashboards

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "histogram_quantile", "label_values", "label_replace", "clamp_min", "clamp_max",
    "abs", "ceil", "floor", "round", "time", "vector", "scalar", "absent", "changes", "resets",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "predict_linear",
    "humanize", "humanizePercentage", "humanizeDuration", "inf", "nan",
}
# series Prometheus makes itself, not statushost
SYNTHETIC = {"up"}


def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\{[^}]*\}", "", e)                        # label matchers
    e = re.sub(r"\$\{?\w+\}?", "", e)                      # dashboard variables
    e = re.sub(r"label_values\(([^,()]*),\s*\w+\s*\)", r"\1", e)  # its label argument
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)                       # ranges
    names = set()
    for m in re.finditer(r"(?<![\w$.:])([a-zA-Z_:][\w:]*)", e):
        w = m.group(1)
        if w in PROMQL_WORDS:
            continue
        names.add(w)
    return names


def dashboard_exprs():
    d = json.load(open(DASHBOARD, encoding="utf-8"))
    exprs = []

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "expr" and isinstance(v, str):
                    exprs.append(v)
                elif k in ("query", "definition") and isinstance(v, str):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(d)
    return exprs


def alert_exprs():
    """expr: values of the rules file: one-liners and | / > blocks."""
    exprs, lines = [], open(ALERTS, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest and rest[0] not in "|>":
            exprs.append(rest)
            continue
        block = []
        while i < len(lines) and (not lines[i].strip() or
                                  len(lines[i]) - len(lines[i].lstrip()) > indent):
            block.append(lines[i])
            i += 1
        exprs.append("\n".join(block))
    return exprs


def exported_names(port):
    status, _, body = http_get(port, "/metrics")
    assert status == 200, status
    names = set()
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))
    return names


@suite.test
def dashboard_metrics_exist():
    dash, alerts = dashboard_exprs(), alert_exprs()
    assert len(dash) >= 15 and len(alerts) >= 8, (len(dash), len(alerts))
    used = set()
    for e in dash + alerts:
        used |= metric_names(e)
    # what the issue asks the dashboard and alerts to cover
    for want in ("statushost_connections_current", "statushost_websockets_current",
                 "statushost_jobs_completed_total", "statushost_jobs_failed_total",
                 "statushost_dispatch_seconds_bucket", "statushost_slow_consumer_closes_total",
                 "statushost_lua_errors_total", "statushost_redis_up",
                 "statushost_redis_reconnects_total", "process_resident_memory_bytes",
                 "statushost_max_connections"):
        assert want in used, "%s is not on the dashboard or in the alerts" % want
    assert any("histogram_quantile" in e for e in dash), "no latency percentiles"
    with Statushost("examples/echo.lua", redis=shared_redis()) as sh:
        exported = exported_names(sh.port)
    missing = sorted(n for n in used - SYNTHETIC if n not in exported)
    assert not missing, "used in dist/ but not exported on /metrics: %s" % missing


@suite.test
def units_are_consistent():
    for name in ("statushost.service", "statushost@.service"):
        text = open(os.path.join(ROOT, "dist", name)).read()
        for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes",
                     "ProtectSystem=strict", "NoNewPrivileges=yes", "WatchdogSec=",
                     "LimitNOFILE=", "RestartPreventExitStatus=2"):
            assert line in text, "%s: no %s" % (name, line)
        start = re.search(r"^ExecStart=(.*)$", text, re.M).group(1)
        assert start.startswith("@SH_BINDIR@/statushost --config /etc/statushost/"), start
    inst = open(os.path.join(ROOT, "dist", "statushost@.service")).read()
    assert "/etc/statushost/%i.conf /etc/statushost/%i.lua" in inst


if __name__ == "__main__":
    suite.run()
