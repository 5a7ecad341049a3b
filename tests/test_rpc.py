"""rpc: a real Server and Client over a Unix socket, in this process.

The caller's principal comes from the kernel (SO_PEERCRED). A process of uid 0
is always the supervisor to a Server, so tests that need an authorised caller
authorise whichever principal this test process is: "web" (mapped from our
uid) when not root, the supervisor when root. Tests about the uid -> principal
mapping itself replace peer_credentials, so they mean the same as root or not.
"""

import logging
import os
import socket
import struct
import threading

import pytest

from pspy.errors import (CallInterrupted, PermissionDenied, RemoteError, SerializationError,
                         ServiceTimeout, ServiceUnavailable)
from pspy.rpc import Client, Endpoint, Server, codec, protocol
from pspy.rpc import server as server_module



class InsufficientFunds(Exception):
    pass




def client(path, **options):
    return Client("Bank", path, timeout=30, **options)


# --- calls that work --------------------------------------------------------

def test_call_returns_the_value_of_the_service(start_server):
    path = start_server({"transfer": lambda sender, recipient, zoobars=0: (sender, recipient, zoobars * 2)})
    c = client(path)
    assert c.call("transfer", ("alice", "bob"), {"zoobars": 21}) == ("alice", "bob", 42)
    assert c.call("transfer", ["carol", "dave"]) == ("carol", "dave", 0)


def test_async_service_is_awaited(start_server):
    async def balance(username):
        return {username: 10}
    path = start_server({"balance": balance})
    assert client(path).call("balance", ("alice",)) == {"alice": 10}


def test_ping_answers_with_the_provider_name(start_server):
    path = start_server({}, callers=frozenset())
    assert client(path).ping() == "Bank"


def test_sixteen_threads_share_one_client_and_each_gets_its_own_answer(start_server):
    path = start_server({"double": lambda x: (x, 2 * x)})
    c = client(path)
    barrier = threading.Barrier(16)
    results, errors = {}, []

    def worker(n):
        try:
            barrier.wait(timeout=30)
            results[n] = [c.call("double", (n * 1000 + i,)) for i in range(25)]
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert results == {n: [(n * 1000 + i, 2 * (n * 1000 + i)) for i in range(25)] for n in range(16)}


# --- exceptions -------------------------------------------------------------

def raise_value_error():
    raise ValueError("zoobars must be positive")


def raise_custom():
    raise InsufficientFunds("alice has 3 zoobars")


def test_builtin_exception_reaches_the_caller_as_the_same_type(start_server):
    path = start_server({"transfer": raise_value_error})
    with pytest.raises(ValueError) as info:
        client(path).call("transfer")
    assert type(info.value) is ValueError
    assert str(info.value) == "zoobars must be positive"


def test_custom_exception_reaches_the_caller_as_remote_error_naming_its_type(start_server):
    path = start_server({"transfer": raise_custom})
    with pytest.raises(RemoteError) as info:
        client(path).call("transfer")
    assert info.value.remote_type.endswith("InsufficientFunds")
    assert info.value.remote_message == "alice has 3 zoobars"


def test_no_remote_traceback_without_debug(start_server):
    path = start_server({"custom": raise_custom, "builtin": raise_value_error})
    c = client(path)
    with pytest.raises(RemoteError) as info:
        c.call("custom")
    assert info.value.remote_traceback is None
    assert "Traceback" not in str(info.value)
    with pytest.raises(ValueError) as info:
        c.call("builtin")
    assert not getattr(info.value, "__notes__", None)


def test_remote_traceback_is_sent_in_debug_mode(start_server):
    path = start_server({"custom": raise_custom, "builtin": raise_value_error}, debug=True)
    c = client(path)
    with pytest.raises(RemoteError) as info:
        c.call("custom")
    assert "raise_custom" in info.value.remote_traceback
    with pytest.raises(ValueError) as info:
        c.call("builtin")
    assert any("raise_value_error" in note for note in info.value.__notes__)


def test_a_service_exception_is_logged_with_service_type_message_and_traceback(start_server, caplog):
    path = start_server({"transfer": raise_value_error, "refund": raise_custom, "balance": lambda: 3})
    c = client(path)
    with caplog.at_level(logging.ERROR, logger="pspy.rpc"):
        assert c.call("balance") == 3
        assert caplog.records == []   # success logs nothing
        with pytest.raises(ValueError):
            c.call("transfer")
        with pytest.raises(RemoteError) as info:
            c.call("refund")
    assert info.value.remote_traceback is None   # the log has it; the caller (not debug) does not
    builtin, custom = caplog.records
    assert (builtin.name, builtin.levelno) == ("pspy.rpc", logging.ERROR)
    assert builtin.getMessage() == "service Bank.transfer raised ValueError: zoobars must be positive"
    assert custom.getMessage().startswith("service Bank.refund raised ")
    assert custom.getMessage().endswith("InsufficientFunds: alice has 3 zoobars")
    text = caplog.text
    assert "Traceback (most recent call last)" in text
    assert f'File "{__file__}"' in text and "in raise_value_error" in text and "in raise_custom" in text


def test_unknown_service_is_a_lookup_error(start_server):
    path = start_server({"transfer": lambda: None})
    with pytest.raises(LookupError) as info:
        client(path).call("tranfser")
    assert "tranfser" in str(info.value)


def test_return_value_that_cannot_cross_is_a_serialization_error_at_the_caller(start_server):
    path = start_server({"leak": lambda: {"handle": object()}})
    with pytest.raises(SerializationError) as info:
        client(path).call("leak")
    assert "leak" in str(info.value) and "object" in str(info.value)


def test_argument_that_cannot_cross_fails_before_anything_is_sent(start_server):
    ran = []
    path = start_server({"transfer": lambda *a: ran.append(a)})
    c = client(path)
    with pytest.raises(SerializationError) as info:
        c.call("transfer", (threading.Lock(),))
    assert "lock" in str(info.value).lower()
    c.call("transfer", (1,))
    assert ran == [(1,)]


# --- who may call -----------------------------------------------------------

def test_caller_not_in_callers_is_denied_and_the_service_does_not_run(start_server):
    ran = []
    path = start_server({"transfer": lambda: ran.append(1)}, callers=frozenset({"Auth"}))
    with pytest.raises(PermissionDenied) as info:
        client(path).call("transfer")
    assert "Bank.transfer" in str(info.value)
    assert ran == []


def test_peer_credentials_are_the_kernel_view_of_the_caller():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert server_module.peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())


def fake_peer_uid(monkeypatch, uid):
    monkeypatch.setattr(server_module, "peer_credentials", lambda conn: (4242, uid, uid))


def test_caller_principal_is_mapped_from_its_uid(start_server, monkeypatch):
    fake_peer_uid(monkeypatch, 40001)
    path = start_server(
        {"for_auth": Endpoint("for_auth", lambda: "ok", frozenset({"Auth"})),
         "for_web": Endpoint("for_web", lambda: "ok", frozenset({"web"}))},
        principal_of_uid={40001: "Auth"}.get)
    c = client(path)
    assert c.call("for_auth") == "ok"
    with pytest.raises(PermissionDenied):
        c.call("for_web")


def test_uid_of_no_principal_is_denied(start_server, monkeypatch):
    fake_peer_uid(monkeypatch, 40099)
    path = start_server({"transfer": lambda: "ok"}, callers=frozenset({"web", "Auth"}),
                        principal_of_uid={40001: "Auth"}.get)
    with pytest.raises(PermissionDenied) as info:
        client(path).call("transfer")
    assert "40099" in str(info.value)


def test_uid_0_is_the_supervisor_which_may_ping_but_not_call_services(start_server, monkeypatch):
    fake_peer_uid(monkeypatch, 0)
    # Even a principal_of_uid that would call uid 0 "web" does not make it one.
    path = start_server({"transfer": lambda: "ok"}, callers=frozenset({"web"}),
                        principal_of_uid=lambda uid: "web")
    c = client(path)
    assert c.ping() == "Bank"
    with pytest.raises(PermissionDenied):
        c.call("transfer")


def test_rootless_the_listening_socket_names_the_caller_whatever_its_uid(sock_dir, monkeypatch):
    """Rootless, every principal has one uid: each caller gets its own socket,
    and the socket a connection arrives on is who the caller is."""
    fake_peer_uid(monkeypatch, 0)   # a uid that would otherwise mean the supervisor
    server = Server("Bank", {"transfer": Endpoint("transfer", lambda: "moved", frozenset({"web"}))},
                    lambda uid: "web")
    socks = {}
    for identity in ("web", "Auth", server_module.SUPERVISOR):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = os.path.join(sock_dir, f"{identity}.sock")
        s.bind(path)
        s.listen(8)
        server.adopt(os.dup(s.fileno()), identity)
        s.close()
        socks[identity] = path
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assert client(socks["web"]).call("transfer") == "moved"
    with pytest.raises(PermissionDenied) as info:
        client(socks["Auth"]).call("transfer")
    assert "Auth" in str(info.value)
    assert client(socks[server_module.SUPERVISOR]).ping() == "Bank"
    with pytest.raises(PermissionDenied):
        client(socks[server_module.SUPERVISOR]).call("transfer")


# --- transport failures -----------------------------------------------------

def test_client_of_a_missing_socket_raises_service_unavailable(sock_dir):
    with pytest.raises(ServiceUnavailable) as info:
        client(os.path.join(sock_dir, "nobody.sock")).call("transfer")
    assert "not sent" in str(info.value)


def test_oversized_frame_closes_that_connection_only(start_server):
    path = start_server({"double": lambda x: 2 * x}, max_frame=1024)
    kept = client(path)
    assert kept.call("double", (1,)) == 2          # a pooled connection, open before the attack
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as attacker:
        attacker.settimeout(30)
        attacker.connect(path)
        attacker.sendall(struct.pack(">I", 1025))
        assert attacker.recv(1) == b""               # closed without reading 1025 bytes
    assert kept.call("double", (2,)) == 4
    assert client(path).call("double", (3,)) == 6


def test_slow_service_raises_service_timeout(start_server):
    release = threading.Event()
    path = start_server({"slow": lambda: release.wait(30)})
    try:
        with pytest.raises(ServiceTimeout):
            Client("Bank", path, timeout=0.2).call("slow")
    finally:
        release.set()


class FakeProvider:
    """A provider that reads requests and, for "transfer", dies before replying.

    It serves one connection at a time, so once it has answered the test's
    final "sentinel" request, every earlier connection has been handled.
    """

    def __init__(self, path, close_after_reply=False):
        self.received = []
        self.closed_after_reply = threading.Event()
        self.close_after_reply = close_after_reply
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                while True:
                    try:
                        request = codec.decode(protocol.recv_frame(conn))
                    except Exception:  # noqa: BLE001 - EOF or garbage: drop the connection
                        break
                    self.received.append(request)
                    if request[0] == "transfer":
                        break                    # dies: closes without a reply
                    protocol.send_frame(conn, codec.encode([protocol.OK, "pong"]))
                    if self.close_after_reply:
                        break
            if self.close_after_reply:
                self.closed_after_reply.set()

    def requests_after_sentinel(self, path):
        c = Client("Fake", path, timeout=30)
        assert c.call("sentinel") == "pong"
        c.close()
        assert self.received[-1][0] == "sentinel"
        return [r[0] for r in self.received[:-1]]

    def close(self):
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.mark.parametrize("warm", [False, True], ids=["fresh_connection", "pooled_connection"])
def test_provider_dying_after_the_request_gives_call_interrupted_and_no_resend(sock_dir, warm):
    path = os.path.join(sock_dir, "fake.sock")
    fake = FakeProvider(path)
    try:
        c = Client("Fake", path, timeout=30)
        if warm:
            assert c.call("warmup") == "pong"
        with pytest.raises(CallInterrupted) as info:
            c.call("transfer", ("alice", "bob", 5))
        assert "not retried" in str(info.value)
        expected = ["warmup", "transfer"] if warm else ["transfer"]
        assert fake.requests_after_sentinel(path) == expected
        assert [r for r in fake.received if r[0] == "transfer"] == [["transfer", ["alice", "bob", 5], {}]]
    finally:
        fake.close()


def test_pooled_connection_closed_by_a_restarted_provider_is_replaced_without_losing_the_call(sock_dir):
    path = os.path.join(sock_dir, "fake.sock")
    fake = FakeProvider(path, close_after_reply=True)
    try:
        c = Client("Fake", path, timeout=30)
        assert c.call("warmup") == "pong"
        assert fake.closed_after_reply.wait(30)     # the pooled connection is now dead
        assert c.call("balance", ("alice",)) == "pong"
        assert fake.requests_after_sentinel(path) == ["warmup", "balance"]
    finally:
        fake.close()
