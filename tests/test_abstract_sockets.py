"""Abstract Unix sockets and signals, tried from inside every principal.

chroot mode. A host process (this test) listens on an abstract Unix socket,
as D-Bus or X11 may, and runs a process of each principal's uid. The seccomp filter
cannot see a socket's address, so what keeps a principal from the socket is
Landlock's scoping (ABI 6): from inside the front end, a provider with the
network and one without, connect() fails with EPERM and so does a signal
to the host process. Controls, in the same run: each principal calls the
providers over their path sockets, and a host process still connects to
the abstract socket. What a principal with the network still reaches in
chroot mode (loopback TCP and UDP) is shown too, as the README says.

tests/test_landlock.py shows the same attempts succeeding with Landlock
off (the denial is Landlock's), and rootless mode, where the scope is the
same and a principal without the network has no host abstract names at all.
"""

import json
import os
import socket
import subprocess

import pytest

from conftest import ERRNO_ATTEMPT, probe, pspy, write_app
from pspy import _landlock

pytestmark = pytest.mark.root

APP = {
    "wide.py": """
        import pspy
        import narrow

        @pspy.service(service_provider="Wide", network=True)
        def relay():
            return "wide+" + narrow.ping()

        @pspy.service(service_provider="Wide", network=True)
        def ping():
            return "wide"

        @pspy.service(service_provider="Wide", network=True)
        def connect_abstract(address):
            # From the running provider (the supervisor started it), not a pspy exec.
            import errno, socket
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(address)
                return "ok"
            except OSError as e:
                return errno.errorcode.get(e.errno, str(e.errno))
    """,
    "narrow.py": """
        import pspy

        @pspy.service(service_provider="Narrow")
        def ping():
            return "narrow"
    """,
    "pspy.toml": """
        front_end = ["python", "-c", "import time; time.sleep(3600)"]
    """,
}

ATTEMPTS = ERRNO_ATTEMPT + """
import socket
def connect(family, address):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(address)
def udp(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("127.0.0.1", port))
def call(module, name, *args):
    return getattr(__import__(module), name)(*args)
target = %(target)r
print(json.dumps({
    "connect to the host's abstract socket": attempt(lambda: connect(socket.AF_UNIX, target["abstract"])),
    "signal a host process of its own uid": attempt(lambda: os.kill(target["pid"], 0)),
    "loopback TCP": attempt(lambda: connect(socket.AF_INET, ("127.0.0.1", target["tcp"]))),
    "loopback UDP": attempt(lambda: udp(target["udp"])),
    # the controls: calls over the providers' path sockets
    "calls": [call(*c) for c in target["calls"]],
}))
"""

# What each principal calls: every provider, and Wide's call reaches Narrow
# from inside Wide.
CALLS = {"web": [["narrow", "ping"], ["wide", "relay"]], "Wide": [["narrow", "ping"]], "Narrow": [["wide", "ping"]]}
ANSWERS = {"web": ["narrow", "wide+narrow"], "Wide": ["narrow"], "Narrow": ["wide"]}



@pytest.fixture(scope="module")
def listeners():
    """An abstract Unix socket, a TCP port and a UDP port on the host's loopback."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"\0pspy-abstract-test-{os.getpid()}"
    unix.bind(name)
    unix.listen(16)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    yield {"abstract": name, "tcp": tcp.getsockname()[1], "udp": udp.getsockname()[1]}
    for s in (unix, tcp, udp):
        s.close()


def _observe(jail, listeners):
    plan = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
    seen = {}
    for p in plan["principals"]:
        # A host process of the principal's uid, outside the app.
        sleeper = subprocess.Popen(["sleep", "60"], user=p["uid"], group=p["gid"])
        try:
            calls = CALLS[p["name"]] + ([["wide", "connect_abstract", listeners["abstract"]]]
                                        if p["name"] == "web" else [])
            target = dict(listeners, pid=sleeper.pid, calls=calls)
            seen[p["name"]] = probe(jail, p["name"], ATTEMPTS % {"target": target})
        finally:
            sleeper.kill()
            sleeper.wait()
    # The host's own processes still reach the socket: the scope is the principals'.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(listeners["abstract"])
    return seen


@pytest.fixture(scope="module")
def seen(tmp_path_factory, listeners):
    if _landlock.abi() < 6:
        pytest.fail("this kernel's Landlock has no scoping (ABI < 6): the README says abstract sockets "
                    "stay open there; run this test on Linux 6.12 or later")
    source = write_app(tmp_path_factory.mktemp("abstract") / "app", APP)
    jail = str(tmp_path_factory.mktemp("abstract") / "jail")
    pspy("bootstrap", source, "--jail", jail, "--detach", check=True)
    try:
        yield _observe(jail, listeners)
    finally:
        pspy("stop", "--jail", jail)


def test_no_principal_reaches_a_host_abstract_socket_or_signals_a_host_process(seen):
    assert seen["web"]["calls"][2] == "EPERM", seen["web"]   # the running provider, too
    for name, got in seen.items():
        assert got["calls"][:len(ANSWERS[name])] == ANSWERS[name], (name, got)   # the control: path sockets work
        assert got["connect to the host's abstract socket"] == "EPERM", (name, got)
        assert got["signal a host process of its own uid"] == "EPERM", (name, got)
    assert set(seen) == {"web", "Wide", "Narrow"}


def test_what_a_principal_with_the_network_still_reaches_is_the_hosts_loopback(seen):
    """network=True is the host's network: loopback TCP and UDP services too
    (README). Without it, no inet socket: its seccomp filter refuses one."""
    for name in ("web", "Wide"):
        assert seen[name]["loopback TCP"] == seen[name]["loopback UDP"] == "ok", (name, seen[name])
    assert seen["Narrow"]["loopback TCP"] == seen["Narrow"]["loopback UDP"] == "EPERM", seen["Narrow"]
