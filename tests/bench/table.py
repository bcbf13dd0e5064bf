#!/usr/bin/env python3
"""The table of tests/bench/run.sh: RESULTS.tsv (label TAB sh_loadgen --json line) and the
`strace -c -f` summary of the syscalls run → one Markdown table on stdout."""
import json
import os
import sys


def strace_calls(path, name):
    """→ (calls, errors) of syscall `name` ("total": all) in an `strace -c` table, or None.
    The errors column is blank when there were none."""
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if fields and fields[-1] == name:
                    return int(fields[3]), int(fields[4]) if len(fields) == 6 else 0
    except (OSError, ValueError, IndexError):
        pass
    return None


def main(results, strace):
    rows = {}
    with open(results) as f:
        for line in f:
            label, _, js = line.rstrip("\n").partition("\t")
            try:
                rows[label] = json.loads(js)
            except ValueError:
                rows[label] = None
    out = [("measure", "value", "same run")]
    r = rows.get("seedflow")
    if r:
        out.append(("seedflow: server CPU per job", "%.0f µs" % r["server_cpu_us_per_job"],
                    "%.0f jobs/s, p50 %.2f ms, p99 %.2f ms, %d lost, %d failed (C=%d, T=%d)" % (
                        r["jobs_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
                        r["lost_updates"], r["jobs_failed"], r["connections"], r["tasks"])))
    r, total = rows.get("syscalls"), strace_calls(strace, "total")
    if r and total:
        n = total[0]
        epoll = strace_calls(strace, "epoll_ctl") or (0, 0)
        out.append(("seedflow: syscalls per job (strace -c -f)",
                    "%.1f" % (n / max(r["jobs_completed"], 1)),
                    "%d syscalls (%d epoll_ctl failing), %d jobs, %d lost" % (
                        n, epoll[1], r["jobs_completed"], r["lost_updates"])))
    for label, what in (("fanout-c", "fan-out, max rate, forwarded from C"),
                        ("fanout-hook", "fan-out, max rate, on_publish hook"),
                        ("fanout-rate", "fan-out, fixed rate, forwarded from C")):
        r = rows.get(label)
        if r:
            out.append(("%s: server CPU per message" % what, "%.2f µs" % r["server_cpu_us_per_msg"],
                        "%d conns, %.0f msgs/s, p50 %.2f ms, p99 %.2f ms, %d lost" % (
                            r["connections"], r["msgs_per_s"], r["latency_ms"]["p50"],
                            r["latency_ms"]["p99"], r["lost"])))
    r = rows.get("foreign")
    if r:
        lines = os.environ.get("FOREIGN_LOG_LINES", "")
        out.append(("foreign updates (default.lua): server CPU per dropped update",
                    "%.2f µs" % r["server_cpu_us_per_msg"],
                    "%d conns, %d published in %.1f s, %d forwarded (must be 0)%s" % (
                        r["connections"], r["published"], r["publish_s"], r["received"],
                        ", %s log lines" % lines if lines else "")))
    r = rows.get("idle")
    if r and r.get("steps"):
        out.append(("idle: server RSS per subscribed connection", "%.2f KiB" % r["kib_per_conn"],
                    "at %d conns (%s)" % (r["steps"][-1]["connections"], ", ".join(
                        "%d: %.2f" % (s["connections"], s["kib_per_conn"]) for s in r["steps"]))))
    for label, r in rows.items():
        if r is None:
            out.append((label, "FAILED", "no result (see run.sh's log)"))
    width = [max(len(x[i]) for x in out) for i in range(3)]
    for i, x in enumerate(out):
        print("| " + " | ".join(x[j].ljust(width[j]) for j in range(3)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in width) + "|")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
