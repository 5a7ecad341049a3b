"""No caller can starve the others (issue 16).

Part one, a real Server and Client in this process: refusal at accept of a
peer that may call nothing, the per-caller connection cap with its clear
refusal, the idle and partial-frame deadlines, the client's connect
timeout against a provider that does not accept.

Part two, a bootstrapped app (chroot and namespace mode): web, from inside
the jail, floods Other with idle and trickling connections; Worker's calls
all succeed meanwhile, web gets the clear refusal past the cap, the
trickling and idle connections are closed at their deadlines, `pspy status`
answers; and a host process as nobody (uid 65534) cannot even connect to a
provider socket, while one with a caller's uid can.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import REPO, probe, pspy
from pspy.errors import ServiceUnavailable
from pspy.rpc import Client, protocol
from pspy.rpc import server as server_module

CALC = os.path.join(REPO, "tests", "apps", "calc")
NOBODY = 65534
GUARD = 30   # seconds: only so a broken server cannot hang the test


# --- part one: in this process ---------------------------------------------------

def connected_as(uid, path):
    """A socket connected to ``path`` by a process of ``uid`` (the kernel
    records it for SO_PEERCRED); our own uid when not root."""
    if os.getuid() != 0 or uid == os.getuid():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return sock
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            socket.send_fds(theirs, [b"s"], [sock.fileno()])
        finally:
            os._exit(0)
    theirs.close()
    _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    os.waitpid(pid, 0)
    ours.close()
    assert fds, f"could not connect as uid {uid}"
    return socket.socket(fileno=fds[0])


@pytest.fixture
def serve(start_server):
    def start(callers, principal_of_uid):
        return start_server({"add": lambda a, b: a + b}, callers=callers, principal_of_uid=principal_of_uid)
    return start


def peer_uid():
    """A uid other than root's when we are root (root is always the supervisor)."""
    return NOBODY if os.getuid() == 0 else os.getuid()


def closed_by_peer(sock, seconds=GUARD):
    """Whether the other side closes ``sock`` within ``seconds`` (what comes is read and dropped)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_a_peer_that_may_call_nothing_is_refused_at_accept(serve):
    path = serve({"web"}, {peer_uid(): "stranger"}.get)
    sock = connected_as(peer_uid(), path)
    sock.settimeout(GUARD)
    # Answered before it sends anything, then closed: it holds no thread.
    status, message = protocol.Connection(sock).recv_message()
    assert status == protocol.DENIED and message == "stranger may call no service of Bank; connection refused"
    assert closed_by_peer(sock)
    # Control: the same uid as a caller is served.
    path = serve({"stranger"}, {peer_uid(): "stranger"}.get)
    sock = connected_as(peer_uid(), path)
    sock.settimeout(GUARD)
    conn = protocol.Connection(sock)
    conn.send_message(["add", [2, 3], {}])
    assert conn.recv_message() == [protocol.OK, 5]


def test_an_unknown_uid_is_refused_and_the_client_says_so(serve):
    if os.getuid() != 0:
        pytest.skip("needs root, to connect with a uid no principal has")
    path = serve({"web"}, {}.get)
    sock = connected_as(NOBODY, path)
    sock.settimeout(GUARD)
    assert protocol.Connection(sock).recv_message() == [
        protocol.DENIED, f"uid {NOBODY} may call no service of Bank; connection refused"]


def test_past_its_cap_a_caller_gets_a_clear_refusal_and_another_is_served(serve, monkeypatch):
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS_PER_CALLER", 3)
    me = server_module.SUPERVISOR if os.getuid() == 0 else "web"
    path = serve({"web", me}, {peer_uid(): "web"}.get)
    held = [connected_as(peer_uid(), path) for _ in range(3)]
    late = connected_as(peer_uid(), path)
    late.settimeout(GUARD)
    status, message = protocol.Connection(late).recv_message()
    assert status == protocol.NOT_SERVED and "web already holds 3 connections to provider 'Bank'" in message
    if os.getuid() == 0:
        # Another caller (here the supervisor) is served meanwhile, through pspy's client.
        assert Client("Bank", path, timeout=GUARD).call("add", (1, 2)) == 3
    # A refused call through the client is a clear pspy error, not a reset.
    if os.getuid() != 0:
        with pytest.raises(ServiceUnavailable, match="the most one caller may"):
            Client("Bank", path, timeout=GUARD).call("add", (1, 2))
    for sock in held:
        sock.close()


def test_the_client_turns_a_refusal_at_accept_into_a_pspy_error(serve):
    path = serve({"web"}, {peer_uid(): "stranger"}.get)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:   # pragma: no cover - the child: the client runs as the refused uid
        try:
            if os.getuid() == 0:
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
            try:
                Client("Bank", path, timeout=GUARD).call("add", (1, 2))
                got = "ok"
            except Exception as e:  # noqa: BLE001 - reported to the test
                got = f"{type(e).__name__}: {e}"
            os.write(w, got.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = f.read()
    os.waitpid(child, 0)
    assert got == "PermissionDenied: stranger may call no service of Bank; connection refused"


def test_a_trickled_frame_is_closed_at_its_deadline_and_an_idle_connection_at_its_own(serve, monkeypatch):
    monkeypatch.setattr(server_module, "FRAME_TIMEOUT", 0.5)
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 1.0)
    me = server_module.SUPERVISOR if os.getuid() == 0 else "web"
    path = serve({"web", me}, {peer_uid(): "web"}.get)
    slow = connected_as(peer_uid(), path)
    # A byte every 0.1 s of a 1 KiB frame: each recv comes well within any
    # idle timeout, so only a deadline on the whole frame can end it.
    slow.sendall(b"\x00\x00\x04")
    closed = False
    for _ in range(int(GUARD / 0.1)):
        time.sleep(0.1)
        try:
            slow.send(b"\x00")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
    assert closed, "a frame trickled a byte at a time was never closed"
    idle = connected_as(peer_uid(), path)
    assert closed_by_peer(idle)


def test_connect_times_out_when_the_provider_does_not_accept():
    folder = tempfile.mkdtemp(prefix="pspy-fair-", dir="/tmp")
    path = os.path.join(folder, "full.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)   # never accepts: its queue fills at once
    filling = []
    try:
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            filling.append(s)
        result = []

        def call():
            try:
                Client("Bank", path, timeout=0.3).call("add", (1, 2))
            except ServiceUnavailable as e:
                result.append(str(e))
        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(GUARD)
        assert not t.is_alive(), "the call hung on a provider that does not accept"
        assert result and "did not accept the connection within 0.3s" in result[0], result
    finally:
        for s in filling:
            s.close()
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


# --- part two: a bootstrapped app ----------------------------------------------------

FLOOD = """
import json, os, select, socket, threading, time
import pspy, other
PATH = "/.pspy/sock/Other/rpc.sock"
SLOWLORIS, IDLE, DEADLINE = 20, 1000, %(deadline)r

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(PATH)
    return s

FRAME = b"\\x00\\x00\\x04\\x00" + b"\\x00" * 1024   # a 1 KiB frame, trickled a byte a second
slow = []
for _ in range(SLOWLORIS):
    s = connect()
    s.send(FRAME[:1])   # the first byte of its header: the frame has started
    slow.append(s)
held, refused, refusal = [], 0, None
for _ in range(IDLE // 100):   # in batches: a refused one is answered at once, then closed here
    batch = [connect() for _ in range(100)]
    time.sleep(0.3)
    for s in batch:
        s.setblocking(False)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            held.append(s)   # nothing to read: the provider serves it
            continue
        refused += 1
        refusal = refusal or data[4:].decode("utf-8", "replace")
        s.close()
try:
    other.ping()
    stub = ["ok"]
except Exception as e:
    stub = [type(e).__name__, str(e)]
print(json.dumps({"held": len(held), "refused": refused, "refusal": refusal, "stub": stub}), flush=True)

# The trickle goes on (a byte a second per slowloris) until the provider closes them.
slow_closed = []
def trickle():
    live = list(slow)
    sent = 1
    while live and time.monotonic() < end:
        time.sleep(1)
        for s in list(live):
            try:
                s.send(FRAME[sent:sent + 1])
            except OSError:
                live.remove(s)
                slow_closed.append(s)
        sent += 1
end = time.monotonic() + DEADLINE
t = threading.Thread(target=trickle)
t.start()
open_idle = list(held)
idle_closed = 0
while open_idle and time.monotonic() < end:
    ready, _, _ = select.select(open_idle, [], [], 1)
    for s in ready:
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if not data:
            open_idle.remove(s)
            idle_closed += 1
t.join()
print(json.dumps({"idle_closed": idle_closed, "slow_closed": len(slow_closed)}), flush=True)
"""

WORKER_CALLS = """
import json, other
out = []
for _ in range(200):
    try:
        out.append(other.ping())
    except Exception as e:
        out.append(type(e).__name__ + ": " + str(e))
print(json.dumps(out))
"""


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def jail(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(f"fair-{request.param}") / "jail")
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", CALC, "--jail", path, "--detach", *flags, check=True)
    yield path
    pspy("stop", "--jail", path)


def plan_uids(jail):
    with open(os.path.join(jail, ".pspy", "plan.json")) as f:
        plan = json.load(f)
    return {p["name"]: (p["uid"], p["gid"]) for p in plan["principals"]}


@pytest.mark.root
def test_one_principal_flooding_a_provider_starves_no_one_else(jail):
    log_file = os.path.join(jail, ".pspy", "logs", "Other.log")
    offset = os.path.getsize(log_file)
    deadline = server_module.IDLE_TIMEOUT + server_module.FRAME_TIMEOUT + 15
    flood = subprocess.Popen([sys.executable, "-m", "pspy", "exec", "--jail", jail, "web", "--",
                              "python", "-c", FLOOD % {"deadline": deadline}],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = flood.stdout.readline()
        assert line, f"the flood did not start:\n{flood.stderr.read()}"
        held = json.loads(line)
        # While web holds its cap of connections, 20 of them trickling a frame:
        calls = probe(jail, "Worker", WORKER_CALLS)
        status = pspy("status", "--jail", jail, "--format", "json", timeout=60)
        out, err = flood.communicate(timeout=deadline + 60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    assert calls == ["pong"] * 200   # another principal's calls all succeed
    assert status.returncode == 0, status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)["principals"]}
    assert rows["Other"]["answers"] is True and rows["Worker"]["answers"] is True
    cap = server_module.MAX_CONNECTIONS_PER_CALLER
    assert held["held"] == cap - 20 and held["refused"] == 1000 - held["held"]
    assert "web already holds" in held["refusal"] and "the most one caller may" in held["refusal"]
    kind, message = held["stub"]
    assert kind == "ServiceUnavailable" and f"web already holds {cap} connections to provider 'Other'" in message
    closed = json.loads(out.strip().splitlines()[-1])
    # Trickling a byte a second, each slowloris was still closed: by the
    # deadline on its frame (an idle deadline alone never fires on it) ...
    assert closed["slow_closed"] == 20, (closed, err)
    # ... and the idle ones by theirs.
    assert closed["idle_closed"] == held["held"], (closed, err)
    with open(log_file, errors="replace") as f:
        f.seek(offset)
        logged = f.read()
    assert f"was not whole within {server_module.FRAME_TIMEOUT:g}s" in logged
    assert "refused a connection from web" in logged and "malformed" not in logged


CONNECT_AS = """
import errno, json, os, socket, sys
from pspy.rpc import protocol
uid, gid, providers = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
os.chdir(os.environ["SOCK_DIR"])   # reached as root: the jail's parents may be closed
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
out = {}
for name in providers:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(f"{name}/rpc.sock")
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
        continue
    conn = protocol.Connection(s)
    conn.send_message([protocol.PING, [], {}])
    out[name] = conn.recv_message()
print(json.dumps(out))
"""


def connect_from_host(jail, uid, gid, providers):
    env = dict(os.environ, SOCK_DIR=os.path.join(jail, ".pspy", "sock"), PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", CONNECT_AS, str(uid), str(gid), *providers],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.root
def test_a_host_user_who_is_no_principal_cannot_connect_to_any_provider_socket(jail):
    # The kernel refuses at the socket's folder: nobody never holds a slot.
    assert connect_from_host(jail, NOBODY, NOBODY, ["Worker", "Other"]) == {"Worker": "EACCES", "Other": "EACCES"}
    # Control: web, a caller of both, connects and is answered.
    uid, gid = plan_uids(jail)["web"]
    assert connect_from_host(jail, uid, gid, ["Worker", "Other"]) == {
        "Worker": [protocol.OK, "Worker"], "Other": [protocol.OK, "Other"]}
    # And Worker, a caller of Other but not of itself, reaches Other only.
    uid, gid = plan_uids(jail)["Worker"]
    assert connect_from_host(jail, uid, gid, ["Worker", "Other"]) == {
        "Worker": "EACCES", "Other": [protocol.OK, "Other"]}
