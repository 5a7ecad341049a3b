"""Landlock as a layer of its own, proven from inside each principal.

tests/apps/landlock: Bank owns db/bank/ (0o700, with a seccomp filter),
Notes owns db/notes/ (0o700, no network, no filter), the front end owns
uploads/ (no filter). web and Notes run without seccomp, so what stops
them here is not seccomp.

The app is bootstrapped twice per mode, Landlock on and off (pspy.toml
landlock.enabled = false), and Bank then loosens its own data (0o777,
0o666) as a careless or compromised owner could: Unix permissions now let
anyone read and write it, and namespace mode's next view of another
principal mounts it, since mounts follow the owner's bits (pspy/sharing.py).
Landlock's rules come from the plan at bootstrap, so with Landlock on each
attempt below fails with EACCES (EPERM for the scoped ones), and with
Landlock off the very same attempt succeeds: the denial is Landlock's.
"""

import json
import os
import shutil
import socket
import subprocess

import pytest

from conftest import ERRNO_ATTEMPT, REPO, RUN_AS, probe, pspy, rootless_copy

pytestmark = pytest.mark.root

LANDLOCK_APP = os.path.join(REPO, "tests", "apps", "landlock")
OFF = '\n[landlock]\nenabled = false\n'

LOOSEN = """
import json, os
os.chmod("/app/db/bank", 0o777)
os.chmod("/app/db/bank/ledger.txt", 0o666)
print(json.dumps("loosened"))
"""

ATTEMPTS = ERRNO_ATTEMPT + """
import socket, subprocess, sys, tempfile
def write(path):
    with open(path, "a") as f:
        f.write("x")
def connect(family, address):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(address)
def run_shell():
    subprocess.run(["/bin/sh", "-c", "true"], check=True)
target = %(target)r
print(json.dumps({
    # forbidden, unless Landlock is off
    "read another principal's data": attempt(lambda: open("/app/db/bank/ledger.txt").read()),
    "write another principal's data": attempt(lambda: write(target["planted"])),
    "read a host file outside its grants": attempt(lambda: open(target["host_file"], "rb").read()),
    "write outside its own data": attempt(lambda: write(target["outside"])),
    "run a host program": attempt(run_shell),
    "connect over TCP": attempt(lambda: connect(socket.AF_INET, ("127.0.0.1", target["port"]))),
    "connect to an abstract Unix socket": attempt(lambda: connect(socket.AF_UNIX, target["abstract"])),
    "signal a process of its own uid": attempt(lambda: os.kill(target["pid"], 0)),
    # allowed, always
    "read the app": attempt(lambda: open("/app/bank.py").read()),
    "write its own data": attempt(lambda: write(target["own"])),
    "write its private temporary folder": attempt(lambda: tempfile.TemporaryFile().write(b"x")),
    "run Python": attempt(lambda: subprocess.run([sys.executable, "-c", ""], check=True)),
}))
"""

OWN = {"web": "/app/uploads/mine.txt", "Notes": "/app/db/notes/mine.txt"}
ALLOWED = ("read the app", "write its own data", "write its private temporary folder", "run Python")


def _bootstrap(request, tmp_path_factory, mode, landlock):
    source = str(tmp_path_factory.mktemp(f"landlock-app-{mode}-{landlock}") / "app")
    shutil.copytree(LANDLOCK_APP, source, ignore=shutil.ignore_patterns("__pycache__"))
    if landlock == "off":
        with open(os.path.join(source, "pspy.toml"), "a") as f:
            f.write(OFF)
    if mode == "rootless":
        user = request.getfixturevalue("rootless_user")
        app, jail = rootless_copy(user, source, f"landlock-{landlock}")
        RUN_AS[jail] = user
        flags = ["--namespaces"]
    else:
        app, jail = source, str(tmp_path_factory.mktemp(f"landlock-{mode}-{landlock}") / "jail")
        flags = []
    pspy("bootstrap", app, "--jail", jail, "--no-run", *flags, check=True)
    assert probe(jail, "Bank", LOOSEN) == "loosened"
    return jail


@pytest.fixture(scope="module")
def listeners():
    """A TCP port and an abstract Unix socket on the host, both listening."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    name = f"\0pspy-landlock-test-{os.getpid()}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(name)
    unix.listen(16)
    yield {"port": tcp.getsockname()[1], "abstract": name}
    tcp.close()
    unix.close()


def _observe(request, tmp_path_factory, listeners, mode):
    """Each principal's attempts, with Landlock on and off, in one mode."""
    seen, jails = {}, {}
    for landlock in ("on", "off"):
        jail = jails[landlock] = _bootstrap(request, tmp_path_factory, mode, landlock)
        plan = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
        uids = {p["name"]: p["uid"] for p in plan["principals"]}
        seen[landlock] = {}
        for name in ("web", "Notes"):
            # A process of the principal's own uid on the host, outside the
            # app: chroot mode has no PID namespace to hide it.
            sleeper = subprocess.Popen(["sleep", "60"], user=uids[name], group=uids[name])
            target = dict(listeners, pid=sleeper.pid, own=OWN[name], planted=f"/app/db/bank/planted-{name}",
                          # chroot: Bank's seccomp filter file, 0644 in the jail;
                          # namespace mode: /etc/hosts, mounted for every principal.
                          host_file="/.pspy/seccomp/Bank.filter" if mode == "chroot" else "/etc/hosts",
                          # Bank's loosened ledger (0666): chroot mode's /tmp is
                          # root's now (tests/test_private_dirs.py).
                          outside="/app/db/bank/ledger.txt")
            try:
                seen[landlock][name] = probe(jail, name, ATTEMPTS % {"target": target})
            finally:
                sleeper.kill()
                sleeper.wait()
    return {"seen": seen, "jails": jails}


@pytest.fixture(scope="module")
def chroot_seen(request, tmp_path_factory, listeners):
    return _observe(request, tmp_path_factory, listeners, "chroot")


@pytest.fixture(scope="module")
def rootless_seen(request, tmp_path_factory, listeners):
    return _observe(request, tmp_path_factory, listeners, "rootless")


# What Landlock (on) refuses, per mode and principal, with its errno. Off,
# each of these succeeds (a chroot holds no host program to run: the jail
# has only the interpreter, its libraries and pspy) (or, where namespace mode's network namespace
# already answers, fails the same way whether Landlock is on or not).
FORBIDDEN = {
    ("chroot", "web"): {
        "read another principal's data": "EACCES", "write another principal's data": "EACCES",
        "read a host file outside its grants": "EACCES", "write outside its own data": "EACCES",
        "connect to an abstract Unix socket": "EPERM", "signal a process of its own uid": "EPERM"},
    ("chroot", "Notes"): {
        "read another principal's data": "EACCES", "write another principal's data": "EACCES",
        "read a host file outside its grants": "EACCES", "write outside its own data": "EACCES",
        "connect over TCP": "EACCES", "connect to an abstract Unix socket": "EPERM",
        "signal a process of its own uid": "EPERM"},
    ("rootless", "web"): {
        "read another principal's data": "EACCES", "write another principal's data": "EACCES",
        "write outside its own data": "EACCES", "run a host program": "EACCES",
        "connect to an abstract Unix socket": "EPERM"},
    ("rootless", "Notes"): {
        "read another principal's data": "EACCES", "write another principal's data": "EACCES",
        "read a host file outside its grants": "EACCES", "write outside its own data": "EACCES",
        "run a host program": "EACCES"},
}


@pytest.mark.parametrize("mode", ["chroot", "rootless"])
@pytest.mark.parametrize("principal", ["web", "Notes"])
def test_landlock_refuses_what_the_plan_does_not_grant_and_unix_permissions_would_allow(request, mode, principal):
    seen = request.getfixturevalue(f"{mode}_seen")["seen"]
    on, off = seen["on"][principal], seen["off"][principal]
    forbidden = FORBIDDEN[(mode, principal)]
    for what, errno_name in forbidden.items():
        assert on[what] == errno_name, (what, on)
        assert off[what] == "ok", (f"{what}: without Landlock this must succeed, or the denial is not "
                                   f"Landlock's", off)
    for what in ALLOWED:   # the controls
        assert on[what] == "ok", (what, on)
        assert off[what] == "ok", (what, off)


def test_what_namespace_mode_already_refuses_is_refused_the_same_with_landlock(rootless_seen):
    """Rootless, Notes has an empty network namespace and no principal sees
    a host process: those answers come before Landlock's and stay."""
    seen = rootless_seen["seen"]
    for landlock in ("on", "off"):
        assert seen[landlock]["Notes"]["connect to an abstract Unix socket"] == "ECONNREFUSED"
        assert seen[landlock]["web"]["signal a process of its own uid"] == "ESRCH"
        assert seen[landlock]["Notes"]["signal a process of its own uid"] == "ESRCH"
    assert seen["on"]["web"]["connect over TCP"] == "ok"   # the front end has the network
    # Notes' TCP: Landlock refuses it first; without Landlock its own, empty,
    # network namespace does.
    assert seen["on"]["Notes"]["connect over TCP"] == "EACCES"
    assert seen["off"]["Notes"]["connect over TCP"] == "ECONNREFUSED"


def test_analyze_says_which_landlock_abi_is_in_force_and_what_it_holds(chroot_seen):
    jails = chroot_seen["jails"]
    report = json.loads(pspy("analyze", "--jail", jails["on"], "--format", "json", check=True).stdout)
    by_name = {p["name"]: p["landlock"] for p in report["principals"]}
    assert by_name["Notes"]["in_force"] and by_name["Notes"]["abi"] >= 1
    assert by_name["Notes"]["tcp"] == "denied" and by_name["web"]["tcp"] == "allowed"
    assert ["rw", "/app/db/notes"] in by_name["Notes"]["rules"]
    assert not any(path.startswith("/app/db/bank") for _, path in by_name["Notes"]["rules"])
    text = pspy("analyze", "--jail", jails["on"], check=True).stdout
    assert f"landlock:  ABI {by_name['Notes']['abi']}: files" in text
    off = json.loads(pspy("analyze", "--jail", jails["off"], "--format", "json", check=True).stdout)
    assert all(not p["landlock"]["in_force"] and "off" in p["landlock"]["summary"] for p in off["principals"])
