"""The escape battery: namespace mode, probed from inside each principal.

Each forbidden attempt is paired with a control that is allowed. Probes run
through `pspy exec`, which builds the same sandbox as the supervisor does.
The battery runs twice: bootstrapped by root, and rootless, by an
unprivileged user the tests create (every principal then has that uid).
"""

import json
import os
import signal
import socket
import time

import pytest

from conftest import ATTEMPT, REPO, bootstrap_rootless, probe, pspy

pytestmark = pytest.mark.root

ESCAPE = os.path.join(REPO, "tests", "apps", "escape")

LIBC = ATTEMPT + """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def syscall_errno(result):
    return "ok" if result == 0 else errno.errorcode[ctypes.get_errno()]
"""


@pytest.fixture(scope="module")
def root_jail(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("escape") / "jail")
    pspy("bootstrap", ESCAPE, "--jail", path, "--namespaces", "--detach", check=True)
    yield path
    pspy("stop", "--jail", path)


@pytest.fixture(scope="module")
def rootless_jail(rootless_user):
    path = bootstrap_rootless(rootless_user, ESCAPE, "escape")
    yield path
    pspy("stop", "--jail", path)


@pytest.fixture(params=["root", "rootless"])
def jail(request):
    return request.getfixturevalue(f"{request.param}_jail")


def test_proc_shows_only_the_principals_own_pid_namespace(jail):
    pids = probe(jail, "Store", "import os, json; print(json.dumps(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())))")
    assert pids == [1, 2]   # its PID 1 and itself; no host or sibling process


def test_signalling_a_sibling_principal_fails(jail):
    state = json.load(open(os.path.join(jail, ".pspy", "run", "state.json")))
    sibling = state["principals"]["Net"]["pid"]
    os.kill(sibling, 0)   # control: it runs, seen from the host
    result = probe(jail, "Store", LIBC + f"""
print(json.dumps([attempt(lambda: os.kill({sibling}, 0)), attempt(lambda: os.kill(os.getpid(), 0))]))
""")
    assert result == ["ProcessLookupError", "ok"]
    os.kill(sibling, 0)   # still alive


def test_other_principals_data_is_absent_and_only_own_paths_are_writable(jail):
    result = probe(jail, "Store", LIBC + """
def write(path):
    with open(path, "w") as f:
        f.write("x")
print(json.dumps({
    "other data exists": os.path.exists("data/net"),
    "own data exists": os.path.exists("data/store"),
    "own data write": attempt(lambda: write("data/store/x")),
    "app code write": attempt(lambda: write("store.py")),
    "new app file": attempt(lambda: write("new.py")),
    "usr write": attempt(lambda: write("/usr/x")),
    "etc write": attempt(lambda: write("/etc/x")),
    "root write": attempt(lambda: write("/x")),
    "tmp write": attempt(lambda: write("/tmp/x")),
    "host home visible": os.path.exists("/home") or os.path.exists("/var"),
}))
""")
    assert result["other data exists"] is False and result["own data exists"] is True
    assert result["own data write"] == "ok" and result["tmp write"] == "ok"   # controls
    for key in ("app code write", "new app file", "usr write", "etc write", "root write"):
        assert result[key] in ("OSError", "PermissionError"), (key, result[key])
    assert result["host home visible"] is False


def test_mount_umount_pivot_root_chroot_setuid_and_modules_fail(jail):
    result = probe(jail, "Store", LIBC + """
import platform
nr = {"x86_64": {"pivot_root": 155, "init_module": 175, "finit_module": 313},
      "aarch64": {"pivot_root": 41, "init_module": 105, "finit_module": 273}}[platform.machine()]
print(json.dumps({
    "mount": syscall_errno(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None)),
    "umount": syscall_errno(libc.umount2(b"/app", 0)),
    "pivot_root": syscall_errno(libc.syscall(nr["pivot_root"], b"/tmp", b"/tmp")),
    "chroot": attempt(lambda: os.chroot("/tmp")),
    "setuid(0)": attempt(lambda: os.setuid(0)),
    "init_module": syscall_errno(libc.syscall(nr["init_module"], None, 0, b"")),
    "finit_module": syscall_errno(libc.syscall(nr["finit_module"], -1, b"", 0)),
    "getuid": os.getuid(),
}))
""")
    assert result["mount"] == "EPERM" and result["umount"] == "EPERM"
    assert result["pivot_root"] == "EPERM"
    assert result["chroot"] == "PermissionError"
    assert result["setuid(0)"] in ("PermissionError", "OSError")   # EPERM, or EINVAL: no uid 0 is mapped
    # ENOSYS where the kernel has no module support at all (as on this VM)
    assert result["init_module"] in ("EPERM", "ENOSYS")
    assert result["finit_module"] in ("EPERM", "EBADF", "ENOSYS")
    assert result["getuid"] != 0   # control: it runs as its own uid


def test_no_capability_no_new_privs_and_setuid_binaries_gain_nothing(jail):
    result = probe(jail, "Store", LIBC + """
import subprocess
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
passwd = [p for p in ("/usr/bin/passwd", "/usr/bin/su") if os.path.exists(p)]
runs = subprocess.run([passwd[0], "-S", "root"], capture_output=True).returncode if passwd else None
st = os.statvfs("/usr")
print(json.dumps({k: status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb", "NoNewPrivs")}
                 | {"setuid binary exit": runs, "usr nosuid": bool(st.f_flag & os.ST_NOSUID),
                    "setuid binary present": bool(passwd)}))
""")
    for key in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
        assert int(result[key], 16) == 0, (key, result[key])
    assert result["NoNewPrivs"] == "1"
    assert result["usr nosuid"] is True
    if result["setuid binary present"]:
        assert result["setuid binary exit"] != 0   # it ran, but as the principal: root's data stays closed


@pytest.fixture
def host_listeners():
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    abstract = socket.socket(socket.AF_UNIX)
    name = f"pspy-test-{os.getpid()}-{time.monotonic_ns()}"
    abstract.bind("\0" + name)
    abstract.listen(8)
    yield tcp.getsockname()[1], name
    tcp.close()
    abstract.close()


NET_PROBE = LIBC + """
import socket
def tcp():
    s = socket.create_connection(("127.0.0.1", {port}), timeout=3)
    s.close()
def abstract():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect("\\0{name}")
    s.close()
print(json.dumps([attempt(tcp), attempt(abstract)]))
"""


def test_without_network_host_tcp_and_abstract_sockets_are_unreachable(jail, host_listeners):
    port, name = host_listeners
    # Bare runs without a seccomp filter: Landlock refuses TCP before its
    # network namespace is asked, and the abstract socket is not in that
    # namespace (tests/test_landlock.py shows the namespace alone refusing TCP) ...
    assert probe(jail, "Bare", NET_PROBE.format(port=port, name=name)) == ["PermissionError",
                                                                          "ConnectionRefusedError"]
    # ... and with the filter network=False derives: no inet socket at all.
    assert probe(jail, "Store", NET_PROBE.format(port=port, name=name)) == ["PermissionError",
                                                                           "ConnectionRefusedError"]


def test_with_network_true_the_host_is_reachable(jail, host_listeners):
    port, name = host_listeners
    # TCP reaches the host; an abstract Unix socket of the host does not:
    # Landlock scopes those to the principal's own processes (ABI 6).
    assert probe(jail, "Net", NET_PROBE.format(port=port, name=name)) == ["ok", "PermissionError"]


def test_proc_root_cwd_and_descriptors_give_no_path_to_the_host(jail):
    result = probe(jail, "Store", """
import json, os
print(json.dumps({
    "root of pid 1": sorted(os.listdir("/proc/1/root")) if os.access("/proc/1/root", os.R_OK) else None,
    "shadow via pid 1": os.path.exists("/proc/1/root/etc/shadow"),
    "cwd": os.readlink("/proc/self/cwd"),
    # pspy's own denial-report pipe, made by the principal itself, aside
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")
                  if int(fd) not in __import__("pspy._filter")._filter.reporter_fds),
    "fd targets": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
}))
""")
    assert result["shadow via pid 1"] is False
    assert result["root of pid 1"] is None or "home" not in result["root of pid 1"]
    assert result["cwd"] == "/app"
    assert result["fds"][:3] == [0, 1, 2] and len(result["fds"]) == 4   # stdio and listdir's own
    assert all(t.startswith(("pipe:", "socket:", "/dev/null")) for t in result["fd targets"]), result


def test_killing_the_supervisor_leaves_no_principal(tmp_path):
    path = str(tmp_path / "jail")
    pspy("bootstrap", ESCAPE, "--jail", path, "--namespaces", "--detach", check=True)
    plan = json.load(open(os.path.join(path, ".pspy", "plan.json")))
    uids = {p["uid"] for p in plan["principals"]}

    def app_pids():
        out = []
        for entry in os.listdir("/proc"):
            try:
                for line in open(f"/proc/{entry}/status"):
                    if line.startswith("Uid:") and int(line.split()[1]) in uids:
                        out.append(int(entry))
            except (OSError, ValueError):
                pass
        return out

    assert app_pids()   # control: running
    state = json.load(open(os.path.join(path, ".pspy", "run", "state.json")))
    os.kill(state["supervisor"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while app_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app_pids() == []


def test_the_minimal_dev_works_and_holds_nothing_else(jail):
    result = probe(jail, "Store", LIBC + """
def use(path, mode):
    with open(path, mode) as f:
        f.read(4) if "r" in mode else f.write(b"x")
print(json.dumps({
    "entries": sorted(e for e in os.listdir("/dev") if not os.path.islink(f"/dev/{e}")),
    "null": attempt(lambda: use("/dev/null", "wb")),
    "urandom": attempt(lambda: use("/dev/urandom", "rb")),
    "zero": attempt(lambda: use("/dev/zero", "rb")),
    "mknod": attempt(lambda: os.mknod("/tmp/disk", 0o600 | 0o060000, os.makedev(8, 0))),
    "shm": attempt(lambda: use("/dev/shm/x", "wb")),
}))
""")
    assert result["null"] == result["urandom"] == result["zero"] == result["shm"] == "ok"   # controls
    assert result["entries"] == ["full", "null", "random", "shm", "urandom", "zero"]
    assert result["mknod"] == "PermissionError"


@pytest.fixture(scope="module")
def chroot_jail(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("escape-chroot") / "jail")
    pspy("bootstrap", ESCAPE, "--jail", path, "--no-run", check=True)
    return path


@pytest.mark.parametrize("mode", ["chroot", "namespaces"])
def test_principal_has_a_session_keyring_of_its_own(root_jail, chroot_jail, mode):
    jail = chroot_jail if mode == "chroot" else root_jail
    # Root puts a secret in its session keyring, then probes through pspy exec.
    code = r"""
import ctypes, os, platform, subprocess, sys
nr = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
KEY_SPEC_SESSION_KEYRING = -3
assert libc.syscall(nr[1], 1, None) > 0   # KEYCTL_JOIN_SESSION_KEYRING: a fresh one for this test
key = libc.syscall(nr[0], b"user", b"pspy-test-secret", b"ROOT-SECRET", 11, KEY_SPEC_SESSION_KEYRING)
assert key > 0
assert libc.syscall(nr[1], 10, KEY_SPEC_SESSION_KEYRING, b"user", b"pspy-test-secret", 0) == key   # control
probe = '''
import ctypes, json, platform
nr = {"x86_64": 250, "aarch64": 219}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
found = libc.syscall(nr, 10, -3, b"user", b"pspy-test-secret", 0)   # KEYCTL_SEARCH in @s
print(json.dumps(found))
'''
sys.exit(subprocess.run([sys.executable, "-m", "pspy", "exec", "--jail", sys.argv[1], "Store", "--",
                         "python", "-c", probe]).returncode)
"""
    import subprocess, sys
    proc = subprocess.run([sys.executable, "-c", code, jail], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == -1   # not found: not root's keyring


def test_pid_1_shows_neither_the_supervisors_command_nor_its_environment(jail):
    result = probe(jail, "Store", LIBC + """
def read(path):
    with open(path, "rb") as f:
        return f.read()
def content(path):
    try:
        return read(path).decode(errors="replace")
    except Exception as e:
        return type(e).__name__
print(json.dumps({"cmdline": content("/proc/1/cmdline"), "environ": content("/proc/1/environ"),
                  "umask": oct(os.umask(0o077))}))
""")
    # PID 1 is pspy-init, exec'd with a command line and an environment of
    # its own: nothing of root's (the command, its environment) is there.
    assert result["cmdline"] == "pspy-init:Store\x002\x003\x00", result
    assert "PATH" not in result["environ"], result
    assert result["umask"] == "0o77"


def test_nested_data_paths_of_two_providers_are_refused_in_namespace_mode(tmp_path):
    from conftest import write_app
    app = write_app(tmp_path / "app", {
        "a.py": "import pspy\n@pspy.service(service_provider='Alpha', perms={'var/data/': 0o700})\ndef f(): pass\n",
        "b.py": "import pspy\n@pspy.service(service_provider='Beta', perms={'var/data/b/': 0o700})\ndef g(): pass\n"})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--namespaces", "--no-run")
    assert proc.returncode == 1 and "must not nest" in proc.stderr


def test_what_runs_pspy_does_not_widen_the_principals_view(jail):
    # PYTHONPATH of whoever runs pspy exec must not be bound into the principal.
    visible = probe(jail, "Store", "import os, json; print(json.dumps(os.path.exists('/var/tmp')))")
    assert visible is False
    proc = pspy("exec", "--jail", jail, "Store", "--", "python", "-c",
                "import os, json; print(json.dumps(os.path.exists('/var/tmp')))", env={"PYTHONPATH": "/var/tmp"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("false")


def test_mounts_below_a_read_only_bind_are_read_only_too(tmp_path):
    # A host mount under the Python prefix (like /usr/local under /usr) is
    # bound with it; it must not stay writable inside.
    import sys
    from pspy import _native
    below = os.path.join(os.path.realpath(sys.prefix), f"pspy-test-mount-{os.getpid()}")
    os.mkdir(below)
    try:
        _native.mount("tmpfs", below, "tmpfs", 0, "mode=0777")
        try:
            with open(os.path.join(below, "host"), "w") as f:   # control: writable on the host
                f.write("x")
            path = str(tmp_path / "jail")
            pspy("bootstrap", ESCAPE, "--jail", path, "--namespaces", "--no-run", check=True)
            result = probe(path, "Store", ATTEMPT + f"""
def write():
    with open({os.path.join(below, 'inside')!r}, "w") as f:
        f.write("x")
print(json.dumps([os.path.exists({os.path.join(below, 'host')!r}), attempt(write)]))
""")
            assert result == [True, "OSError"]   # seen, but EROFS
        finally:
            _native.umount2(below, _native.MNT_DETACH)
    finally:
        os.rmdir(below)


def test_exec_finds_programs_by_path(jail):
    # As in chroot mode: a command name is looked up in the principal's PATH.
    proc = pspy("exec", "--jail", jail, "Store", "--", "sh", "-c", "echo found")
    assert proc.returncode == 0 and proc.stdout.strip() == "found", proc.stderr
