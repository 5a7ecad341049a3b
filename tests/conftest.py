"""Shared helpers. Integration tests are marked `root`: CI runs as root, so they
never skip there; a developer without root sees why they skip."""

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from dataclasses import dataclass

import pytest

from pspy.rpc.server import SUPERVISOR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Test-only tools (kubernetes-validate) live beside the virtualenv, out of the
# site-packages that chroot mode copies into every jail (scripts/test-tools.sh).
TEST_TOOLS = sys.prefix + "-tools"
if os.path.isdir(TEST_TOOLS):
    sys.path.append(TEST_TOOLS)
ZOOBANK = os.path.join(REPO, "examples", "zoobank")
IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: chroot, setuid and chown are real in this test")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@dataclass
class RootlessUser:
    """An unprivileged account the tests create, with a pspy install it can run."""
    name: str
    uid: int
    gid: int
    home: str
    python: str

    def command(self, argv, env=None):
        """argv run as this user, with a clean environment (plus ``env``)."""
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return ["runuser", "-u", self.name, "--", "env", "-i", f"HOME={self.home}", "LANG=C.UTF-8",
                "PATH=/usr/bin:/bin", *extra, *argv]


# Jails bootstrapped rootless, and whose they are: pspy() and probe() run
# commands on them as that user.
RUN_AS: dict[str, RootlessUser] = {}


def pspy(*args, env=None, timeout=120, check=False, input=None, user=None):
    """Run the pspy CLI as a user would; returns CompletedProcess with text output.
    A command on a rootless jail (``--jail`` of RUN_AS) runs as its user."""
    if user is None and "--jail" in args:
        user = RUN_AS.get(args[args.index("--jail") + 1])
    if user is not None:
        cmd, full_env = user.command([user.python, "-m", "pspy", *args], env), None
    else:
        cmd, full_env = [sys.executable, "-m", "pspy", *args], dict(os.environ, **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"pspy {' '.join(args)} failed ({proc.returncode}):\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def detached(app_dir, tmp_path_factory, name, mode, front_end=(), env=None):
    """The app bootstrapped --detach in ``mode`` ("chroot" or "namespaces")
    in a jail of its own; yields the jail, and stops the app after."""
    jail = str(tmp_path_factory.mktemp(f"{name}-{mode}") / "jail")
    flags = ["--namespaces"] if mode == "namespaces" else []
    pspy("bootstrap", app_dir, "--jail", jail, "--detach", *flags, *(["--", *front_end] if front_end else []),
         env=env, check=True)
    try:
        yield jail
    finally:
        pspy("stop", "--jail", jail)


def wait_for_http(url, timeout=30.0):
    """Until ``url`` answers at all (any status): the front end is up."""
    import time
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def probe(jail, principal, code):
    """Run Python `code` as `principal` inside the jail; it must print one JSON value."""
    proc = pspy("exec", "--jail", jail, principal, "--", "python", "-c", textwrap.dedent(code))
    assert proc.returncode == 0, f"probe as {principal} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Probe code: attempt(fn) runs fn and reports "ok" or the exception's type name.
ATTEMPT = """
import json, os
def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as e:
        return type(e).__name__
"""

# Probe code: attempt(fn) runs fn and reports "ok" or its errno's name ("EACCES").
ERRNO_ATTEMPT = """
import errno, json, os
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"""

# Probe code: outcome(fn) returns ["ok", value] or [exception type, message].
OUTCOME = """
import json
def outcome(fn):
    try:
        return ["ok", fn()]
    except Exception as e:
        return [type(e).__name__, str(e)]
"""

ACCESS_PROBE = ATTEMPT + """
def read(p):
    with open(p, "rb") as f:
        f.read(1)
def append(p):
    with open(p, "ab") as f:
        pass
paths = %r
print(json.dumps({p: {"read": attempt(lambda: read(p)), "write": attempt(lambda: append(p))} for p in paths}))
"""


def access_of(jail, principal, paths):
    return probe(jail, principal, ACCESS_PROBE % (list(paths),))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_app(root, files):
    """Create an app folder from {relative path: source text}."""
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
    return str(root)


def seccomp_modes(jail, name):
    """The Seccomp field of /proc/PID/status of each process named pspy:<name> with the principal's uid."""
    uid = {p["name"]: p["uid"] for p in json.load(open(os.path.join(jail, ".pspy", "plan.json")))["principals"]}[name]
    modes = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except (OSError, ValueError):
            continue
        if fields["Name"].strip() == f"pspy:{name}"[:15] and int(fields["Uid"].split()[0]) == uid:
            modes.add(fields["Seccomp"].strip())
    return modes


@pytest.fixture(scope="module", autouse=True)
def release_jails(tmp_path_factory):
    """Stop and remove, once a test module is done, every jail it made.

    A jail holds its ids in pspy's host registry for as long as its folder
    exists (200 blocks of 100 ids): kept to the end of the session, the
    suite's jails would take most of them at once, and a few runs on one
    host would use up every free block. Autouse and module-scoped, this
    is torn down after the module's own fixtures have stopped their apps.
    PSPY_TEST_KEEP_JAILS=1 keeps them to debug.
    """
    yield
    if not IS_ROOT or os.environ.get("PSPY_TEST_KEEP_JAILS"):
        return
    from pspy.errors import PspyError
    from pspy.plan import Plan
    from pspy.running import stop
    base = tmp_path_factory.getbasetemp()
    for pattern in ("*/.pspy/plan.json", "*/*/.pspy/plan.json", "*/*/*/.pspy/plan.json"):
        for plan_file in base.glob(pattern):
            jail = plan_file.parent.parent
            try:
                stop(Plan.load(str(jail)))
            except PspyError:
                pass   # an unreadable plan starts nothing; the folder still goes
            shutil.rmtree(jail, ignore_errors=True)


# One user and folder per run (the pytest process's pid), so two runs on one
# host never share or remove each other's. Not under /tmp or /var/tmp:
# probes look for those.
ROOTLESS_PREFIX = "pspy-rt-"
ROOTLESS_USER = f"{ROOTLESS_PREFIX}{os.getpid()}"
ROOTLESS_BASE = f"/opt/pspy-rootless-{os.getpid()}"


def _forget_rootless_users_of_ended_runs():
    """Users and folders a run that was killed left behind (its pid is gone)."""
    for account in pwd.getpwall():
        name = account.pw_name
        if name == "pspy-rootless-test" or (name.startswith(ROOTLESS_PREFIX)
                                           and name[len(ROOTLESS_PREFIX):].isdigit()
                                           and not os.path.exists(f"/proc/{name[len(ROOTLESS_PREFIX):]}")):
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            subprocess.run(["userdel", "--remove", name], capture_output=True)
            suffix = name[len(ROOTLESS_PREFIX):] if name.startswith(ROOTLESS_PREFIX) else "test"
            shutil.rmtree(f"/opt/pspy-rootless-{suffix}", ignore_errors=True)


@pytest.fixture(scope="session")
def rootless_user():
    """An unprivileged user with pspy installed in a venv of its own.

    The developer's interpreter may not be reachable by another user (a
    pyenv under /root is 0700), so the venv is made from a system Python of
    the same version, as a user installing pspy would, from a copy of this
    tree. Removed, with the user, at the end of the session.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base_python = next((p for p in (f"/usr/bin/{version}", f"/usr/local/bin/{version}") if os.path.exists(p)), None)
    if base_python is None:
        pytest.fail(f"rootless tests need a system {version} another user can run (apt-get install {version}-venv)")
    _forget_rootless_users_of_ended_runs()
    try:
        pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", ROOTLESS_USER], check=True)
    account = pwd.getpwnam(ROOTLESS_USER)
    shutil.rmtree(ROOTLESS_BASE, ignore_errors=True)
    source = os.path.join(ROOTLESS_BASE, "src")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.so", "build", "*.egg-info", ".pytest_cache"))
    venv = os.path.join(ROOTLESS_BASE, "venv")
    subprocess.run([base_python, "-m", "venv", venv], check=True)
    pip = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "--disable-pip-version-check",
                          f"{source}[example]"], capture_output=True, text=True)
    assert pip.returncode == 0, f"installing pspy for the rootless user failed:\n{pip.stdout}\n{pip.stderr}"
    subprocess.run(["chmod", "-R", "a+rX", ROOTLESS_BASE], check=True)
    yield RootlessUser(ROOTLESS_USER, account.pw_uid, account.pw_gid, account.pw_dir,
                       os.path.join(venv, "bin", "python"))
    subprocess.run(["pkill", "-KILL", "-u", ROOTLESS_USER], capture_output=True)
    subprocess.run(["userdel", "--remove", ROOTLESS_USER], capture_output=True)
    shutil.rmtree(ROOTLESS_BASE, ignore_errors=True)


def rootless_copy(user, app_source, name):
    """A folder of the user's own holding a copy of the app; returns (app, jail) paths."""
    import tempfile
    top = tempfile.mkdtemp(prefix=f"{name}-", dir=user.home)
    app = os.path.join(top, "app")
    shutil.copytree(app_source, app, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", top], check=True)
    os.chmod(top, 0o700)
    return app, os.path.join(top, "jail")


def bootstrap_rootless(user, app_source, name, *extra, env=None):
    """Bootstrap a copy of the app as the user (namespace mode, detached); returns the jail."""
    app, jail = rootless_copy(user, app_source, name)
    RUN_AS[jail] = user
    pspy("bootstrap", app, "--jail", jail, "--namespaces", "--detach", *extra, env=env, check=True)
    return jail


def run_state(jail):
    """The supervisor's state file of a bootstrapped jail."""
    with open(os.path.join(jail, ".pspy", "run", "state.json")) as f:
        return json.load(f)


def own_process(pid):
    """A principal's own process for the pid pspy records: in namespace mode,
    the child of that PID 1 (pspy-init); in chroot mode, the pid itself."""
    kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    return int(kids[0]) if kids and "pspy-init" in open(f"/proc/{pid}/cmdline").read() else pid


def provider_pid(jail, name):
    """The pid of the provider's own process (in namespace mode, the child of its PID 1)."""
    return own_process(run_state(jail)["principals"][name]["pid"])


def status_rows(jail):
    """``pspy status --format json``, per principal name."""
    return {r["name"]: r for r in json.loads(pspy("status", "--jail", jail, "--format", "json",
                                                  check=True).stdout)["principals"]}


# rpc tests: the principal this process is to a Server (a uid 0 peer is
# always the supervisor), and the uid mapping that makes it so when not root.
RPC_ME = SUPERVISOR if os.getuid() == 0 else "web"


def rpc_principal_of_uid(uid):
    return "web" if uid == os.getuid() else None


@pytest.fixture
def sock_dir():
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="pspy-rpc-", dir="/tmp")
    os.chmod(path, 0o755)   # a peer of another uid reaches the socket
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_server(sock_dir):
    """start(endpoints, ...) serves a Server("Bank") on a socket of its own, in
    a thread of this process; its path. Endpoints may be plain functions."""
    from pspy.rpc import Endpoint, Server
    listeners = []

    def start(endpoints, *, callers=frozenset({RPC_ME}), principal_of_uid=None, **options):
        endpoints = {name: e if isinstance(e, Endpoint) else Endpoint(name, e, frozenset(callers))
                     for name, e in endpoints.items()}
        server = Server("Bank", endpoints, principal_of_uid or rpc_principal_of_uid, **options)
        path = os.path.join(sock_dir, f"bank{len(listeners)}.sock")
        server.bind(path)
        listeners.append(server._listeners[0][0])

        def serve():
            try:
                server.serve_forever()
            except OSError:   # the listener was shut down by the fixture
                pass
        threading.Thread(target=serve, daemon=True).start()
        return path

    yield start
    for listener in listeners:
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        listener.close()
