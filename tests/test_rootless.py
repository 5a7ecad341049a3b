"""Rootless namespace mode: what differs when an unprivileged user bootstraps.

The escape battery (test_namespaces.py), the RPC suite (test_rpc_sandboxed.py)
and zoobank (test_zoobank.py) run rootless too; here is what only rootless
has: every principal shares the user's uid, so stopping the app must find
its processes by the app's user namespace, never by uid (the user's other
processes share it), and what needs root is refused with a clear error.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import ATTEMPT, REPO, RUN_AS, ZOOBANK, bootstrap_rootless, probe, pspy, rootless_copy

pytestmark = pytest.mark.root

ESCAPE = os.path.join(REPO, "tests", "apps", "escape")


def _processes_of(uid):
    """{pid: comm} of every process whose real uid is ``uid``."""
    out = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                out[int(entry)] = fields["Name"].strip()
        except (OSError, ValueError, KeyError):
            continue
    return out


def _user_sleeper(user):
    """A process of the user that has nothing to do with pspy."""
    return subprocess.Popen(user.command(["sleep", "300"]), start_new_session=True)


def _principals(uid):
    return {pid: name for pid, name in _processes_of(uid).items() if name.startswith("pspy")}


def _wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_stop_ends_the_app_and_spares_the_users_other_processes(rootless_user):
    sleeper = _user_sleeper(rootless_user)
    try:
        jail = bootstrap_rootless(rootless_user, ESCAPE, "stop")
        assert _principals(rootless_user.uid)   # control: the app runs, as the user
        assert pspy("status", "--jail", jail).returncode == 0
        assert "stopped" in pspy("stop", "--jail", jail, check=True).stdout
        assert _wait_until(lambda: not _principals(rootless_user.uid)), _principals(rootless_user.uid)
        assert sleeper.poll() is None, "pspy stop killed a process of the user that is not the app's"
        assert pspy("status", "--jail", jail).returncode == 3
    finally:
        os.killpg(sleeper.pid, signal.SIGKILL)   # runuser and its sleep
        sleeper.wait()


def test_killing_the_supervisor_leaves_no_principal(rootless_user):
    jail = bootstrap_rootless(rootless_user, ESCAPE, "sigkill")
    assert _principals(rootless_user.uid)   # control
    state = json.load(open(os.path.join(jail, ".pspy", "run", "state.json")))
    os.kill(state["supervisor"], signal.SIGKILL)
    assert _wait_until(lambda: not _principals(rootless_user.uid)), _principals(rootless_user.uid)


def test_what_needs_root_is_refused_with_a_clear_error(rootless_user):
    app, jail = rootless_copy(rootless_user, ZOOBANK, "refused")
    RUN_AS[jail] = rootless_user
    chroot = pspy("bootstrap", app, "--jail", jail, "--no-run")
    assert chroot.returncode == 1 and "chroot mode needs root" in chroot.stderr and "--namespaces" in chroot.stderr
    ids = pspy("bootstrap", app, "--jail", jail, "--namespaces", "--uid-base", "50000", "--no-run")
    assert ids.returncode == 1 and "need root" in ids.stderr
    no_jail = pspy("bootstrap", app, "--namespaces", "--no-run", user=rootless_user)
    assert no_jail.returncode == 1 and "--jail" in no_jail.stderr
    for proc in (chroot, ids, no_jail):
        assert "Traceback" not in proc.stderr
    # control: the same app bootstraps rootless with a jail of the user's
    assert pspy("bootstrap", app, "--jail", jail, "--namespaces", "--no-run").returncode == 0


def test_only_the_owner_may_exec_into_a_rootless_jail(rootless_user):
    app, jail = rootless_copy(rootless_user, ESCAPE, "exec")
    RUN_AS[jail] = rootless_user
    pspy("bootstrap", app, "--jail", jail, "--namespaces", "--no-run", check=True)
    # Root acts only on jails under folders root alone controls: this one is the user's.
    as_root = subprocess.run([*pspy_argv(), "exec", "--jail", jail, "Store", "--", "python", "-c", "pass"],
                             capture_output=True, text=True)
    assert as_root.returncode == 1 and f"rootless app of uid {rootless_user.uid}" in as_root.stderr
    assert pspy("exec", "--jail", jail, "Store", "--", "python", "-c", "pass").returncode == 0   # control


def pspy_argv():
    import sys
    return [sys.executable, "-m", "pspy"]


def test_principals_and_their_pid_1_cannot_be_ptraced_or_robbed_of_descriptors(rootless_user):
    """Rootless, every principal has the same uid; being non-dumpable is what
    keeps one from ptracing another process of the app or taking its file
    descriptors (pidfd_getfd). Bare runs without a seccomp filter, so this is
    the dumpable layer alone."""
    jail = bootstrap_rootless(rootless_user, ESCAPE, "ptrace")
    try:
        result = probe(jail, "Bare", ATTEMPT + """
import ctypes, errno, platform, prctl
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": (434, 438), "aarch64": (434, 438)}[platform.machine()]   # pidfd_open, pidfd_getfd
def err(result):
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
pidfd = libc.syscall(nr[0], 1, 0)
print(json.dumps({
    "dumpable": prctl.get_dumpable(),
    "pidfd_open(1)": err(pidfd),
    "pidfd_getfd from PID 1": err(libc.syscall(nr[1], pidfd, 0, 0)),
    "ptrace attach PID 1": err(libc.ptrace(16, 1, None, None)),
}))
""")
        assert result["pidfd_open(1)"] == "ok"   # control: PID 1 is there to be asked
        assert result["dumpable"] is False
        assert result["pidfd_getfd from PID 1"] == "EPERM"
        assert result["ptrace attach PID 1"] == "EPERM"
    finally:
        pspy("stop", "--jail", jail)


def test_stop_finds_a_process_that_left_the_launchers_tree(rootless_user):
    """A process in a principal's PID namespace that is no longer the
    launcher's descendant (as one that freed itself from the parent-death
    chain would be) is still the app's: the supervisor records each
    principal's PID namespace."""
    from pspy.plan import Plan
    from pspy.running import app_processes
    jail = bootstrap_rootless(rootless_user, ESCAPE, "pidns")
    sleeper = None
    try:
        store = next(pid for pid, name in _principals(rootless_user.uid).items() if name == "pspy:Store")
        assert _wait_until(lambda: json.load(open(os.path.join(jail, ".pspy", "run", "state.json"))).get("pidns"))
        sleeper = subprocess.Popen(["nsenter", "-t", str(store), "-p", "--", "setpriv",
                                    f"--reuid={rootless_user.uid}", f"--regid={rootless_user.gid}",
                                    "--clear-groups", "sleep", "300"], start_new_session=True)
        assert _wait_until(lambda: any(n == "sleep" for n in _processes_of(rootless_user.uid).values()))
        rogue = next(pid for pid, n in _processes_of(rootless_user.uid).items() if n == "sleep")
        assert rogue in app_processes(Plan.load(jail))
        pspy("stop", "--jail", jail, check=True)
        assert _wait_until(lambda: not os.path.exists(f"/proc/{rogue}"))
    finally:
        pspy("stop", "--jail", jail)
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
