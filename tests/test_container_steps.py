"""pspy in a container: every set-up step that fails says which step and why.

`pspy bootstrap` runs under tests/container_env.py, which gives it what a
default Docker container gives (Docker's capability list, a seccomp filter
denying the keyring calls, unshare, setns, mount, umount2, pivot_root and
namespace clones) or a default Kubernetes pod (the same capabilities, no
seccomp profile). The kernel is real; the controls run the same commands
without the restrictions, or with one only.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, pspy, write_app

pytestmark = pytest.mark.root

CONTAINER_ENV = os.path.join(REPO, "tests", "container_env.py")

APP = {
    "svc.py": """
        import ctypes, errno, platform
        import pspy

        @pspy.service(service_provider="Bank", seccomp="none", callers=["web"])
        def balance(name):
            return 10

        @pspy.service(service_provider="Bank", seccomp="none", callers=["web"])
        def keyring_calls():
            # From Bank's own process, under no filter of pspy's: only the
            # container's (inherited) filter can deny these.
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            add_key, request_key, keyctl = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
            def outcome(*args):
                return "ok" if libc.syscall(*args) >= 0 else errno.errorcode[ctypes.get_errno()]
            return {"keyctl": outcome(keyctl, 0, -3, 0),   # KEYCTL_GET_KEYRING_ID of the session keyring
                    "add_key": outcome(add_key, b"user", b"pspy-probe", b"x", 1, -3),
                    "request_key": outcome(request_key, b"user", b"pspy-probe", None, 0)}
    """,
    "front.py": """
        import json, time
        import svc
        print(json.dumps({"balance": svc.balance("alice"), "keyring": svc.keyring_calls()}), flush=True)
        time.sleep(600)
    """,
}

KEPT = "keeps the session keyring of whoever started pspy"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return write_app(tmp_path_factory.mktemp("container-app"), APP)


@pytest.fixture(scope="module")
def jails(app, tmp_path_factory):
    """One jail per mode (a chroot jail holds a copy of the interpreter and
    its libraries: made once). The first bootstrap makes it, in a container
    or by built(); every test bootstraps or runs it again and stops what it ran."""
    return {mode: str(tmp_path_factory.mktemp(f"container-{mode}") / "jail") for mode in ("chroot", "namespaces")}


def built(app, jails, mode):
    """The jail of ``mode``, bootstrapped (not run) if no test did yet."""
    jail = jails[mode]
    if not os.path.exists(os.path.join(jail, ".pspy", "plan.json")):
        flags = ["--namespaces"] if mode == "namespaces" else []
        pspy("bootstrap", app, "--jail", jail, "--no-run", *flags, check=True)
    return jail


def in_container(kind, *args, timeout=120):
    """pspy ARGS run as a container of ``kind`` would run it (container_env.py)."""
    cmd = [sys.executable, CONTAINER_ENV, kind, "--", sys.executable, "-m", "pspy", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def log_size(jail, name):
    path = os.path.join(jail, ".pspy", "logs", f"{name}.log")
    return os.path.getsize(path) if os.path.exists(path) else 0


def front_end_line(jail, since):
    """The JSON line the front end logs once it called Bank (after offset ``since`` of its log)."""
    log = os.path.join(jail, ".pspy", "logs", "web.log")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with open(log) as f:
            f.seek(since)
            for line in f:
                if line.startswith("{"):
                    return json.loads(line)
        time.sleep(0.1)
    raise AssertionError(f"the front end logged no answer:\n{open(log).read()}")


def log_of(jail, name, since=0):
    with open(os.path.join(jail, ".pspy", "logs", f"{name}.log")) as f:
        f.seek(since)
        return f.read()


def nothing_left_running(jail):
    from pspy.plan import Plan
    from pspy.running import app_processes, jail_processes, supervisor_alive
    plan = Plan.load(jail)
    return not app_processes(plan) and not jail_processes(jail) and supervisor_alive(plan) is None


def assert_told(proc, *phrases):
    """A failure the user is told about in words: exit 1, no traceback, each phrase said."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and "preexec_fn" not in text, text
    for phrase in phrases:
        assert phrase in text, (phrase, text)


@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_chroot_mode_runs_in_a_default_container(app, jails, kind):
    """Docker's seccomp profile denies keyctl: the principals keep the
    inherited keyring, say so, and cannot reach it. A pod without a seccomp
    profile (the control) gets fresh keyrings and no warning."""
    jail = jails["chroot"]
    since = {name: log_size(jail, name) for name in ("web", "Bank")}
    proc = in_container(kind, "bootstrap", app, "--jail", jail, "--detach", "--", "python", "front.py")
    try:
        assert proc.returncode == 0, proc.stderr
        answer = front_end_line(jail, since["web"])
        assert answer["balance"] == 10   # a provider call works
        if kind == "docker":
            assert answer["keyring"] == {"keyctl": "EPERM", "add_key": "EPERM", "request_key": "EPERM"}
            assert KEPT in log_of(jail, "Bank", since["Bank"]) and KEPT in log_of(jail, "web", since["web"])
        else:
            assert answer["keyring"] == {"keyctl": "ok", "add_key": "ok", "request_key": "ok"}
            assert KEPT not in log_of(jail, "Bank", since["Bank"])
    finally:
        pspy("stop", "--jail", jail)


@pytest.mark.parametrize("kind, step, why", [
    ("docker", "making the app's user namespace (unshare CLONE_NEWUSER) failed: Operation not permitted",
     "a seccomp filter is loaded"),
    ("kubernetes", "making the principals' namespaces (unshare CLONE_NEWNS", "this process lacks CAP_SYS_ADMIN"),
    ("docker-sys-admin", "(pivot_root) failed: Operation not permitted", "Docker's default denies pivot_root"),
])
def test_namespace_mode_in_a_default_container_names_the_step_and_what_to_allow(app, jails, kind, step, why):
    jail = jails["namespaces"]
    proc = in_container(kind, "bootstrap", app, "--jail", jail, "--namespaces", "--detach", "--", "python", "front.py")
    assert_told(proc, step, why, "--cap-add SYS_ADMIN --cap-add NET_ADMIN", "seccomp=unconfined", "privileged",
                "leave out --namespaces")
    assert nothing_left_running(jail)


@pytest.mark.parametrize("kind", ["host", "docker-as-advised"])
def test_namespace_mode_runs_outside_a_container_or_given_what_the_error_asks_for(app, jails, kind):
    """The controls of the test above: the same command outside the
    container, and in one that allows what the error says to allow."""
    jail = jails["namespaces"]
    since = {name: log_size(jail, name) for name in ("web", "Bank")}
    args = ("bootstrap", app, "--jail", jail, "--namespaces", "--detach", "--", "python", "front.py")
    try:
        proc = pspy(*args) if kind == "host" else in_container(kind, *args)
        assert proc.returncode == 0, proc.stderr
        answer = front_end_line(jail, since["web"])
        assert answer["balance"] == 10
        assert answer["keyring"] == {"keyctl": "ok", "add_key": "ok", "request_key": "ok"}
        assert KEPT not in log_of(jail, "Bank", since["Bank"])
    finally:
        pspy("stop", "--jail", jail)


@pytest.mark.parametrize("mode", ["chroot", "namespaces"])
def test_keyring_is_never_kept_where_the_principal_could_reach_it(app, jails, mode):
    """keyctl denied but add_key and request_key allowed: a principal that
    kept the inherited keyring could write into it, so the bootstrap is
    refused, naming the step, and leaves nothing running. The control: the
    same principal starts outside that filter."""
    jail = built(app, jails, mode)
    ok = pspy("exec", "--jail", jail, "Bank", "--", "python", "-c", "print('in')")
    assert ok.returncode == 0 and ok.stdout.strip() == "in", ok.stderr
    flags = ["--namespaces"] if mode == "namespaces" else []
    proc = in_container("keyctl-denied", "bootstrap", app, "--jail", jail, "--detach", *flags,
                        "--", "python", "front.py")
    assert_told(proc, "Bank: joining a fresh session keyring (keyctl KEYCTL_JOIN_SESSION_KEYRING) failed: "
                      "Operation not permitted (EPERM)", "add_key or request_key is allowed")
    assert nothing_left_running(jail)


def test_chroot_mode_names_a_failed_chdir_and_its_errno(app, jails):
    jail = built(app, jails, "chroot")
    ok = pspy("exec", "--jail", jail, "web", "--", "python", "-c", "print('in')")
    assert ok.returncode == 0 and ok.stdout.strip() == "in", ok.stderr   # control
    app_dir, moved = os.path.join(jail, "app"), os.path.join(jail, "app.moved")
    os.rename(app_dir, moved)
    try:
        with open(app_dir, "w") as f:
            f.write("not a folder\n")
        proc = pspy("exec", "--jail", jail, "web", "--", "python", "-c", "print('in')")
    finally:
        os.remove(app_dir)
        os.rename(moved, app_dir)
    assert_told(proc, "web: changing into /app in the jail (chdir) failed: Not a directory (ENOTDIR)",
                "run pspy bootstrap again")


def test_namespace_mode_names_a_gid_the_kernel_refuses(app, jails):
    """A gid outside the app's user namespace map: setresgid fails with
    EINVAL in the C spawn path, and the error says so."""
    jail = built(app, jails, "namespaces")
    ok = pspy("exec", "--jail", jail, "web", "--", "python", "-c", "print('in')")
    assert ok.returncode == 0 and ok.stdout.strip() == "in", ok.stderr   # control
    path = os.path.join(jail, ".pspy", "plan.json")
    with open(path) as f:
        original = f.read()
    plan = json.loads(original)
    web = next(p for p in plan["principals"] if p["name"] == "web")
    unmapped = max(plan["groups"].values()) + 1000
    web["gid"] = unmapped
    try:
        with open(path, "w") as f:
            json.dump(plan, f)
        proc = pspy("exec", "--jail", jail, "web", "--", "python", "-c", "print('in')")
    finally:
        with open(path, "w") as f:
            f.write(original)
    assert_told(proc, f"web: changing to gid {unmapped} (setresgid) failed: Invalid argument (EINVAL)",
                "not mapped in the user namespace")
