"""The supervisor: foreground Ctrl-C, restarts, and the state status reads."""

import json
import os
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
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert _jail_pids(jail) == []


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


def test_a_front_end_that_dies_at_start_fails_the_bootstrap(tmp_path):
    jail = str(tmp_path / "jail")
    proc = pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", "--", "python", "-c", "raise SystemExit(3)")
    assert proc.returncode == 1
    assert "front end" in proc.stderr and "status 3" in proc.stderr
    assert _jail_pids(jail) == []   # the providers it had started were stopped


def test_a_supervisor_that_is_our_own_zombie_counts_as_stopped():
    # pspy learn forks the supervisor and stays: once it exits it is a zombie
    # of ours until reaped, and stop() must not wait on it.
    import os
    from pspy.supervisor import _still_running
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    import time
    time.sleep(0.2)   # now a zombie
    assert _still_running(pid) is False
    assert _still_running(os.getpid()) is True   # control
