"""The command line (SPEC §3): --version, --help, --check, and the rule for bad
input: a one-line error on stderr naming the problem, exit status 2.

    python3 tests/integration/test_cli.py [test_name ...]
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, ROOT, Suite, free_port  # noqa: E402

suite = Suite("cli")
POL = os.path.join(ROOT, "tests", "integration", "policies")
ECHO = os.path.join(ROOT, "examples", "echo.lua")
# when a bad invocation wrongly starts a server, it must not collide with
# anything: a free port, and a Redis address where nothing listens
SAFE = ["--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:%d" % free_port()]


def run(*args, timeout=10):
    """→ (exit status, stdout text, stderr text). A process still running
    after timeout is killed and reported as such."""
    try:
        p = subprocess.run([BIN] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("statushost %s did not exit within %ss (stderr so far: %r)" % (
            " ".join(args), timeout, e.stderr))
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def expect_usage_error(args, *words):
    """Exit 2, nothing on stdout, exactly one line on stderr that contains
    every one of words."""
    rc, out, err = run(*args)
    what = "statushost %s" % " ".join(args)
    assert rc == 2, "%s: exit %s, want 2 (stderr %r)" % (what, rc, err)
    lines = err.splitlines()
    assert len(lines) == 1, "%s: want exactly one line on stderr, got %d:\n%s" % (
        what, len(lines), err)
    for w in words:
        assert w in lines[0], "%s: stderr %r does not name %r" % (what, lines[0], w)
    assert out == "", "%s: unexpected stdout %r" % (what, out)
    return lines[0]


# ------------------------------------------------------------ info flags

@suite.test
def version_exits_0():
    rc, out, err = run("--version")
    assert rc == 0, (rc, err)
    assert out.startswith("statushost "), out
    assert len(out.splitlines()) == 1, out
    version = out.split()[1]
    assert version[0].isdigit(), out


@suite.test
def help_exits_0():
    rc, out, err = run("--help")
    assert rc == 0, (rc, err)
    for flag in ("--listen", "--redis", "--set", "--check", "--version", "--help"):
        assert flag in out, "--help does not mention %s:\n%s" % (flag, out)
    assert "SCRIPT" in out, out


@suite.test
def help_wins_over_a_missing_script():
    rc, out, _ = run("--help", "--bogus")
    assert rc == 0 and "--listen" in out, (rc, out)


# ------------------------------------------------------------ bad flags

@suite.test
def unknown_flag():
    expect_usage_error(["--bogus", ECHO], "--bogus")


@suite.test
def flag_missing_its_value():
    expect_usage_error([ECHO, "--listen"], "--listen")
    expect_usage_error([ECHO, "--set"], "--set")


@suite.test
def set_without_equals():
    expect_usage_error(SAFE + ["--set", "max_connections", ECHO], "max_connections")


@suite.test
def missing_script():
    line = expect_usage_error(["--listen", "127.0.0.1:0"])
    assert "script" in line, line


@suite.test
def nonexistent_script():
    path = os.path.join(POL, "no_such_policy.lua")
    expect_usage_error(SAFE + [path], "no_such_policy.lua")


@suite.test
def bare_name_finds_the_shipped_policy():
    """`statushost --check default` from any directory: the build tree's
    scripts/default.lua (BIN/../scripts), and the static files --check names."""
    p = subprocess.run([BIN, "--check", "default"], capture_output=True, cwd="/",
                       stdin=subprocess.DEVNULL, timeout=10)
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    first = out.splitlines()[0]
    assert first.endswith("scripts/default.lua: ok"), first
    assert os.path.samefile(first[:-len(": ok")], os.path.join(ROOT, "scripts", "default.lua")), first
    web = [l for l in out.splitlines() if l.startswith("  static files: ")]
    assert web and os.path.samefile(web[0].split(": ", 1)[1], os.path.join(ROOT, "web")), out
    p = subprocess.run([BIN, "--check", "echo"], capture_output=True, cwd="/",
                       stdin=subprocess.DEVNULL, timeout=10)
    assert p.returncode == 0 and b"examples/echo.lua: ok" in p.stdout, (p.stdout, p.stderr)


@suite.test
def bare_name_not_shipped():
    expect_usage_error(SAFE + ["no_such_policy"], "no_such_policy", "bare name")


@suite.test
def two_scripts():
    expect_usage_error(SAFE + [ECHO, ECHO], "echo.lua")


# ------------------------------------------------------------ broken scripts
# Each is checked as a server start (the ordinary use) and with --check.

def both_modes(args, *words):
    """expect_usage_error as a server start and with --check; both are tried
    and every failure is reported."""
    problems = []
    for mode in (SAFE + args, ["--check"] + args):
        try:
            expect_usage_error(mode, *words)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, "\n".join(problems)


def broken_script(name, *words):
    both_modes([os.path.join(POL, name)], *words)


@suite.test
def script_with_syntax_error():
    broken_script("bad_syntax_error.lua", "bad_syntax_error.lua:3", "expected")


@suite.test
def script_failing_while_loading():
    broken_script("bad_runtime_error.lua", "bad_runtime_error.lua:3", "nil value")


@suite.test
def script_returning_a_non_table():
    broken_script("bad_not_a_table.lua", "table", "string")


@suite.test
def hook_that_is_not_a_function():
    broken_script("bad_hook_not_function.lua", "on_message", "function")


@suite.test
def config_key_of_the_wrong_type():
    broken_script("bad_config_mismatch.lua", "max_connections", "number")


# ------------------------------------------------------------ bad --set

@suite.test
def set_unknown_key():
    both_modes(["--set", "no_such_key=1", ECHO], "no_such_key")


@suite.test
def set_bad_number():
    both_modes(["--set", "max_connections=lots", ECHO], "max_connections")


@suite.test
def set_bad_boolean():
    both_modes(["--set", "reuseport=maybe", ECHO], "reuseport")


@suite.test
def set_value_out_of_range():
    both_modes(["--set", "max_head_bytes=10", ECHO], "max_head_bytes")


@suite.test
def bad_listen_address():
    expect_usage_error(["--listen", "nohost", "--redis", SAFE[3], ECHO], "nohost")
    expect_usage_error(["--check", "--listen", "nohost", ECHO], "nohost")


@suite.test
def bad_redis_url():
    expect_usage_error(["--check", "--redis", "http://127.0.0.1:6379", ECHO], "redis")


@suite.test
def too_many_cluster_seeds():
    """64 seed nodes are taken; a 65th is refused with a one-line reason, at --check and
    at start. fails on old: yes (the seeds past 64 were silently left out)."""
    seeds = ",".join("127.0.0.1:%d" % (7000 + i) for i in range(65))
    for mode in (["--check"], ["--listen", "127.0.0.1:0"]):
        expect_usage_error(mode + ["--set", "redis_cluster=" + seeds, ECHO],
                           "redis_cluster", "65 seed nodes, at most 64")
    rc, out, err = run("--check", "--set", "redis_cluster=" + seeds.rsplit(",", 1)[0], ECHO)
    assert rc == 0, (rc, err)


# ------------------------------------------------------------ --check

def config_lines(out):
    """'  key = value' lines of the config section → dict."""
    cfg = {}
    in_cfg = False
    for line in out.splitlines():
        if line.strip() == "config:":
            in_cfg = True
            continue
        if in_cfg and " = " in line:
            k, _, v = line.strip().partition(" = ")
            cfg[k] = v
    return cfg


@suite.test
def check_echo_prints_hooks_and_config():
    rc, out, err = run("--check", ECHO)
    assert rc == 0, (rc, err)
    assert "ok" in out.splitlines()[0], out
    hooks = [l for l in out.splitlines() if "hooks:" in l]
    assert hooks, out
    for h in ("on_open", "on_message", "on_binary"):
        assert h in hooks[0], "hook %s missing from %r" % (h, hooks[0])
    for h in ("on_handshake", "on_publish", "on_close"):
        assert h not in hooks[0], "echo.lua has no %s: %r" % (h, hooks[0])
    cfg = config_lines(out)
    assert cfg.get("listen") == "127.0.0.1:9999", cfg
    assert cfg.get("max_connections") == "10000", cfg
    assert cfg.get("max_message_bytes") == "1048576", cfg
    assert cfg.get("max_head_bytes") == "8192", cfg
    assert cfg.get("handshake_timeout_ms") == "10000", cfg
    assert cfg.get("redis") == "redis://127.0.0.1:6379", cfg
    assert "allowed_origins" in cfg and "reuseport" in cfg, cfg


@suite.test
def check_shows_overrides():
    rc, out, err = run("--check", "--set", "max_connections=3",
                       "--set", "allowed_origins=https://a.example, https://b.example",
                       "--set", "reuseport=yes", "--listen", "127.0.0.1:7777",
                       "--redis", "redis://127.0.0.1:6380", ECHO)
    assert rc == 0, (rc, err)
    cfg = config_lines(out)
    assert cfg.get("max_connections") == "3", cfg
    assert cfg.get("listen") == "127.0.0.1:7777", cfg
    assert cfg.get("redis") == "redis://127.0.0.1:6380", cfg
    assert cfg.get("reuseport") == "true", cfg
    origins = cfg.get("allowed_origins", "")
    assert "https://a.example" in origins and "https://b.example" in origins, cfg
    assert " https://b" not in origins, "list items are trimmed: %r" % origins


@suite.test
def check_policy_without_binary_hook():
    rc, out, err = run("--check", os.path.join(POL, "handshake_auth.lua"))
    assert rc == 0, (rc, err)
    hooks = [l for l in out.splitlines() if "hooks:" in l][0]
    assert "on_handshake" in hooks and "on_message" in hooks and "on_binary" not in hooks, hooks



@suite.test
def host_type_and_table_new_where_policies_run():
    """policies/host_lib.lua asserts, in a script generation, that the host's type()
    gives the base library's names and error, and that host.table_new makes plain
    empty tables, refuses bad sizes and, under lua_max_memory (in on_config), raises
    "not enough memory" for room past it. Without the cap the last check fails:
    the test can tell."""
    script = os.path.join(POL, "host_lib.lua")
    rc, out, err = run("--check", script)
    assert rc == 0, (rc, err)
    rc, out, err = run("--check", "--set", "lua_max_memory=0", script)
    assert rc == 2 and "room past lua_max_memory" in err, (rc, err)

@suite.test
def the_main_chunk_runs_under_lua_max_memory():
    """The main chunk (before the merged config exists) runs under lua_max_memory as
    --set gives it, else the default: policies/load_big.lua takes 8 MiB while it loads,
    which the default (256 MiB) lets through and --set lua_max_memory=4194304 does not,
    with a one-line error naming the cap; 0 (no cap) lets it through.
    fails on old: yes (the main chunk ran with no cap at all: host.table_new or
    string.rep there could take 700 MB before any limit applied)."""
    # on_config too, with the same one-line reason
    for name, refusal in (("load_big.lua", "not enough memory (lua_max_memory 4194304"),
                          ("load_big_config.lua",
                           "config: not enough memory (lua_max_memory 4194304")):
        script = os.path.join(POL, name)
        rc, out, err = run("--check", script)
        assert rc == 0, (name, rc, err)
        rc, out, err = run("--check", "--set", "lua_max_memory=4194304", script)
        assert rc == 2 and refusal in err, (name, rc, err)
        assert len(err.strip().splitlines()) == 1, err
    rc, out, err = run("--check", "--set", "lua_max_memory=0", os.path.join(POL, "load_big.lua"))
    assert rc == 0, (rc, err)


if __name__ == "__main__":
    suite.run()
