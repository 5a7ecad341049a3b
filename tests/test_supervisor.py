"""The supervisor: foreground Ctrl-C, restarts, and the state status reads."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ZOOBANK, free_port, pspy

pytestmark = pytest.mark.root


def _state(jail):
    path = os.path.join(jail, ".pspy", "run", "state.json")
    try:
        return json.load(open(path))
    except (FileNotFoundError, ValueError):
        return None


def _wait(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _jail_pids(jail):
    jail = os.path.realpath(jail)
    out = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and os.readlink(f"/proc/{p}/root") == jail:
                out.append(int(p))
        except OSError:
            pass
    return out


def test_foreground_bootstrap_stops_everything_on_ctrl_c(tmp_path):
    jail = str(tmp_path / "jail")
    env = dict(os.environ, ZOOBANK_PORT=str(free_port()))
    proc = subprocess.Popen([sys.executable, "-m", "pspy", "bootstrap", ZOOBANK, "--jail", jail],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state = _wait(lambda: (s := _state(jail)) and "web" in s["principals"] and s)
        pids = [info["pid"] for info in state["principals"].values()]
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids)   # control: all running
        web_log = os.path.join(jail, ".pspy", "logs", "web.log")
        _wait(lambda: os.path.exists(web_log) and "Running on http://" in open(web_log).read())
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert _jail_pids(jail) == []
    # What the principals wrote was shown as it came, each line after its principal's name.
    assert re.search(r"^web +\| .*Running on http://", out, re.M), out
    assert not re.search(r"^ \* Running on", out, re.M), out   # never bare


def test_a_provider_that_dies_is_restarted_and_answers_again(tmp_path):
    jail = str(tmp_path / "jail")
    pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", env={"ZOOBANK_PORT": str(free_port())}, check=True)
    try:
        old = _state(jail)["principals"]["Bank"]["pid"]
        os.kill(old, signal.SIGKILL)
        new = _wait(lambda: (pid := _state(jail)["principals"]["Bank"]["pid"]) not in (None, old) and pid)
        assert new != old
        _wait(lambda: _bank_answers(jail))
        assert _state(jail)["principals"]["Bank"]["restarts"] == 1
    finally:
        pspy("stop", "--jail", jail)
    assert _jail_pids(jail) == []


def _bank_answers(jail):
    lines = pspy("status", "--jail", jail).stdout.splitlines()
    return any(line.split()[0] == "Bank" and line.endswith(", answers") for line in lines if line.strip())


def test_killing_the_supervisor_leaves_no_principal_running(tmp_path):
    jail = str(tmp_path / "jail")
    pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", env={"ZOOBANK_PORT": str(free_port())}, check=True)
    state = _state(jail)
    assert len(_jail_pids(jail)) >= 3   # control
    os.kill(state["supervisor"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _jail_pids(jail) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _jail_pids(jail) == []   # the parent-death signal took them down


@pytest.mark.parametrize("flags", [[], ["--namespaces"]], ids=["chroot", "namespaces"])
def test_a_front_end_that_dies_at_start_fails_the_bootstrap_with_its_name_and_log(tmp_path, flags):
    jail = str(tmp_path / "jail")
    script = "import sys; print('cannot bind port 8080', file=sys.stderr); raise SystemExit(3)"
    proc = pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", *flags, "--", "python", "-c", script)
    assert proc.returncode == 1, proc.stderr
    assert "front end web (python -c" in proc.stderr and "exited with status 3 at start" in proc.stderr, proc.stderr
    assert "  cannot bind port 8080" in proc.stderr, proc.stderr   # its log's last lines
    assert "Traceback" not in proc.stderr
    from pspy.plan import Plan
    from pspy.running import app_processes
    assert app_processes(Plan.load(jail)) == []   # the providers it had started were stopped
    # control: the same bootstrap with a front end that keeps running succeeds, and its processes are seen
    proc = pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", *flags, "--", "python", "-c",
                "import time; time.sleep(60)")
    try:
        assert proc.returncode == 0, proc.stderr
        assert len(app_processes(Plan.load(jail))) >= 3   # Auth, Bank and the front end at least
    finally:
        pspy("stop", "--jail", jail)


def test_a_supervisor_that_is_our_own_zombie_counts_as_stopped():
    # pspy learn forks the supervisor and stays: once it exits it is a zombie
    # of ours until reaped, and stop() must not wait on it.
    import os
    from pspy.running import still_running
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    import time
    time.sleep(0.2)   # now a zombie
    assert still_running(pid) is False
    assert still_running(os.getpid()) is True   # control


# --- ready copies, outages, start-up failures (both modes) ------------------------

from conftest import OUTCOME, REPO, probe  # noqa: E402

FLAKY = os.path.join(REPO, "tests", "apps", "flaky")
MODES = pytest.mark.parametrize("flags", [[], ["--namespaces"]], ids=["chroot", "namespaces"])
LOCKDOWN = ("Uid", "Gid", "Groups", "Seccomp", "NoNewPrivs", "CapEff", "CapPrm", "CapBnd")


def _own_process(pid, flags):
    """The principal's own Python process: in namespace mode the child of its PID 1."""
    if flags:
        from pspy.running import children_of
        return _wait(lambda: children_of(pid) and children_of(pid)[0], timeout=5)
    return pid


def _status(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {k: fields[k].strip() for k in LOCKDOWN}


def _answers_within(plan, name, seconds):
    """Seconds until the provider answers a ping, or None past ``seconds``."""
    from pspy.sockets import ping
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if ping(plan, plan.principal(name), timeout=seconds):
            return time.monotonic() - t0
    return None


@MODES
def test_a_killed_provider_is_replaced_by_its_ready_copy_at_once(tmp_path, flags):
    from pspy.plan import Plan
    jail = str(tmp_path / "jail")
    pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", *flags, env={"ZOOBANK_PORT": str(free_port())},
         check=True)
    try:
        bank = _wait(lambda: (b := _state(jail)["principals"]["Bank"])["spare_ready"] and b)
        serving, spare = _own_process(bank["pid"], flags), _own_process(bank["spare_pid"], flags)
        # The ready copy is locked down exactly as the serving one: ids,
        # filter, no_new_privs, no capability; and it sees the same view.
        assert _status(spare) == _status(serving)
        assert _status(spare)["Seccomp"] == "2" and _status(spare)["Uid"].split()[0] != "0"
        assert sorted(os.listdir(f"/proc/{spare}/root/")) == sorted(os.listdir(f"/proc/{serving}/root/"))
        plan = Plan.load(jail)
        os.kill(serving, signal.SIGKILL)
        took = _answers_within(plan, "Bank", 1.0)
        assert took is not None, "Bank did not answer within 1 s of its death"
        now = _wait(lambda: (b := _state(jail)["principals"]["Bank"])["pid"] != bank["pid"] and b, timeout=5)
        assert now["pid"] == bank["spare_pid"]   # the ready copy took over: no new start
        assert now["restarts"] == 1 and "SIGKILL" in now["last_exit"]["reason"]
        # ... and a new ready copy is prepared behind it.
        again = _wait(lambda: (b := _state(jail)["principals"]["Bank"])["spare_ready"] and b, timeout=20)
        assert again["spare_pid"] not in (bank["pid"], bank["spare_pid"])
        rows = {r["name"]: r for r in json.loads(pspy("status", "--jail", jail, "--format", "json",
                                                      check=True).stdout)["principals"]}
        assert rows["Bank"]["restarts"] == 1 and rows["Bank"]["answers"] is True
        assert rows["Bank"]["last_exit"]["reason"] == "was killed by SIGKILL"
        assert rows["Auth"]["restarts"] == 0 and rows["Auth"]["last_exit"] is None   # control
    finally:
        pspy("stop", "--jail", jail)
    assert _jail_pids(jail) == []


CALL_FLAKY = OUTCOME + """
import flaky
print(json.dumps(outcome(flaky.hello)))
"""


@MODES
def test_callers_get_service_unavailable_while_no_copy_can_start_and_succeed_once_one_can(tmp_path, flags):
    from pspy.plan import Plan
    jail = str(tmp_path / "jail")
    pspy("bootstrap", FLAKY, "--jail", jail, "--detach", *flags, check=True)
    plan = Plan.load(jail)
    broken = plan.host_path(os.path.join(plan.app_dir, "data", "broken"))
    try:
        assert probe(jail, "web", CALL_FLAKY)[0] == "ok"   # control
        first = _wait(lambda: (f := _state(jail)["principals"]["Flaky"])["spare_ready"] and f)
        open(broken, "w").close()   # from now on no new copy can import the app
        os.kill(_own_process(first["pid"], flags), signal.SIGKILL)
        # The ready copy (imported before) took over; the copies after it fail.
        assert probe(jail, "web", CALL_FLAKY)[0] == "ok"
        failing = _wait(lambda: (f := _state(jail)["principals"]["Flaky"])["failures"] >= 4 and f, timeout=20)
        assert failing["spare_pid"] is None or not failing["spare_ready"]
        os.kill(_own_process(failing["pid"], flags), signal.SIGKILL)
        _wait(lambda: _state(jail)["principals"]["Flaky"]["pid"] is None, timeout=5)
        t0 = time.monotonic()
        kind, message = probe(jail, "web", CALL_FLAKY)
        assert kind == "ServiceUnavailable" and "not" in message, message   # at once, not a hang
        assert time.monotonic() - t0 < 10
        os.unlink(broken)
        assert _answers_within(plan, "Flaky", 20.0) is not None
        assert probe(jail, "web", CALL_FLAKY)[0] == "ok"
        log = open(os.path.join(jail, ".pspy", "logs", "supervisor.log")).read()
        assert "Flaky's ready copy exited with status 1 before it was ready" in log
        assert "flaky: told not to start" in log   # the copy's own last log lines
    finally:
        pspy("stop", "--jail", jail)
        if os.path.exists(broken):
            os.unlink(broken)


@MODES
def test_a_provider_that_raises_at_import_fails_the_bootstrap_with_its_name_and_log(tmp_path, flags):
    jail = str(tmp_path / "jail")
    proc = pspy("bootstrap", FLAKY, "--jail", jail, "--detach", *flags, env={"FLAKY_BROKEN": "1"})
    assert proc.returncode == 1
    assert "provider Flaky exited with status 1 before it was ready" in proc.stderr
    assert "RuntimeError: flaky: told not to start" in proc.stderr   # its log's last lines
    assert proc.stderr.count("pspy: error") == 1   # one message, the log lines inside it
    from pspy.plan import Plan
    from pspy.running import app_processes
    assert app_processes(Plan.load(jail)) == []


@MODES
def test_a_principal_cannot_take_back_what_it_logged_and_its_logs_stay_bounded(tmp_path, flags):
    import glob
    jail = str(tmp_path / "jail")
    pspy("bootstrap", FLAKY, "--jail", jail, "--detach", *flags, check=True)
    log = os.path.join(jail, ".pspy", "logs", "Flaky.log")
    marker = f"logged-and-kept-{os.getpid()}"
    try:
        kind, results = probe(jail, "web", OUTCOME + f"import flaky\n"
                                                     f"print(json.dumps(outcome(lambda: flaky.scrub_own_log({marker!r}))))")
        assert kind == "ok", results
        # Its stdout and stderr are a pipe: no truncating, no seeking back;
        # the log file itself is not within its reach.
        for attempt in ("ftruncate stdout", "ftruncate stderr", "seek stdout", "open the log"):
            assert results[attempt] != "ok", (attempt, results)
        _wait(lambda: marker in open(log).read(), timeout=5)   # control: what it logged is there
        st = os.stat(log)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
        # 2 MiB of output against log_max_bytes = 64 KiB, log_keep = 2 (tests/apps/flaky/pspy.toml).
        assert probe(jail, "web", OUTCOME + "import flaky\nprint(json.dumps(outcome(lambda: flaky.flood(2))))") \
            == ["ok", 2]
        _wait(lambda: os.path.exists(log + ".2"), timeout=10)
        files = sorted(glob.glob(log + "*"))
        assert files == [log, log + ".1", log + ".2"]
        assert sum(os.path.getsize(f) for f in files) <= 3 * (65536 + 16384)
        assert probe(jail, "web", CALL_FLAKY)[0] == "ok"   # and it still serves
        tail = pspy("logs", "Flaky", "--jail", jail, "--lines", "2", check=True).stdout.splitlines()
        assert tail and all(line == "x" * 1023 for line in tail[-1:]), tail
    finally:
        pspy("stop", "--jail", jail)


FRONT_END_ON_SIGTERM = (
    "import signal, sys, time\n"
    "import flaky\n"
    "def stopping(*_):\n"
    "    print('on SIGTERM the provider says:', flaky.hello(), flush=True)\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # and then it stays: only SIGKILL ends it\n"
    "signal.signal(signal.SIGTERM, stopping)\n"
    "print('front end up', flush=True)\n"
    "while True:\n"
    "    time.sleep(1)\n")


FRONT_END_SAYS_WHO_SIGNALS = (
    "import signal\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
    "print('front end up', flush=True)\n"
    "info = signal.sigwaitinfo({signal.SIGTERM})\n"
    "print('SIGTERM from pid', info.si_pid, flush=True)\n")


def test_in_namespace_mode_the_front_ends_sigterm_comes_from_its_pid_1_alone(tmp_path):
    # PID 1 passes SIGTERM on to the principal, which is in its process
    # group. Signalling the group as well delivered it twice (from outside
    # the namespace: pid 0), and a handler that called a provider could run
    # again inside itself, hang, and be killed before it finished.
    jail = str(tmp_path / "jail")
    pspy("bootstrap", FLAKY, "--jail", jail, "--detach", "--namespaces", "--", "python", "-c",
         FRONT_END_SAYS_WHO_SIGNALS, check=True)
    web_log = os.path.join(jail, ".pspy", "logs", "web.log")
    _wait(lambda: "front end up" in open(web_log).read(), timeout=10)
    assert pspy("stop", "--jail", jail, timeout=60).returncode == 0
    log = open(web_log).read()
    assert "SIGTERM from pid 1\n" in log, log[-2000:]


@MODES
def test_stop_ends_the_front_end_first_while_providers_answer_and_kills_what_ignores_sigterm(tmp_path, flags):
    jail = str(tmp_path / "jail")
    pspy("bootstrap", FLAKY, "--jail", jail, "--detach", *flags, "--", "python", "-c", FRONT_END_ON_SIGTERM,
         check=True)
    web_log = os.path.join(jail, ".pspy", "logs", "web.log")
    _wait(lambda: "front end up" in open(web_log).read(), timeout=10)
    assert pspy("stop", "--jail", jail, timeout=60).returncode == 0
    log = open(web_log).read()
    # The front end got SIGTERM while Flaky still served it ...
    assert "on SIGTERM the provider says: hello from" in log, log[-2000:]
    # ... and, since it ignored the signal, SIGKILL ended it after the grace; nothing is left.
    assert _jail_pids(jail) == []
    from pspy.plan import Plan
    from pspy.running import app_processes
    assert app_processes(Plan.load(jail)) == []
    assert not os.path.exists(os.path.join(jail, ".pspy", "run", "state.json"))
    assert not os.path.exists(os.path.join(jail, ".pspy", "sock", "Flaky", "rpc.sock"))   # no stale socket


# Run as its own process: a child subreaper, so that the killed supervisor and
# its principals become zombies of this script and stay so (unreaped) while
# the second bootstrap looks, as they do for seconds under a slow host init.
KILL_AND_REBOOTSTRAP = r"""
import ctypes, json, os, signal, subprocess, sys, time
app, jail, port = sys.argv[1:4]
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0   # PR_SET_CHILD_SUBREAPER
env = dict(os.environ, ZOOBANK_PORT=port)
pspy = [sys.executable, "-m", "pspy"]
def bootstrap(*flags):
    done = subprocess.run(pspy + ["bootstrap", app, "--jail", jail, "--namespaces", *flags], env=env,
                          capture_output=True, text=True)
    return [done.returncode, done.stderr]
def our_children():
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            out[int(pid)] = fields[0]
    return out
bootstrap("--detach")
out = {"while running": bootstrap("--no-run")}
os.kill(json.load(open(os.path.join(jail, ".pspy", "run", "state.json")))["supervisor"], signal.SIGKILL)
deadline = time.monotonic() + 10
while any(s != "Z" for s in our_children().values()) and time.monotonic() < deadline:
    time.sleep(0.05)
out["zombies"] = sorted(our_children().values()).count("Z")
out["after the kill"] = bootstrap("--no-run")
out["zombies still"] = sorted(our_children().values()).count("Z")
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
print(json.dumps(out))
"""


def test_right_after_the_supervisor_is_killed_its_zombies_do_not_count_as_a_running_app(tmp_path):
    from conftest import write_app
    app = write_app(tmp_path / "app", {"svc.py": "import pspy\n\n@pspy.service(service_provider='Bank')\n"
                                                 "def balance():\n    return 1\n",
                                       "pspy.toml": 'front_end = ["python", "-c", "import time; time.sleep(600)"]\n'})
    jail = str(tmp_path / "jail")
    done = subprocess.run([sys.executable, "-c", KILL_AND_REBOOTSTRAP, app, jail, "0"],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        out = json.loads(done.stdout.splitlines()[-1])
        code, err = out["while running"]
        assert code == 1 and f"the app in {jail} is running" in err, err    # control: a live app is seen
        assert out["zombies"] >= 3 and out["zombies still"] == out["zombies"]   # supervisor, Bank, web
        code, err = out["after the kill"]
        assert code == 0, err
        assert "is running" not in err and "Traceback" not in err
    finally:
        pspy("stop", "--jail", jail)
