"""The supervisor's pure rules, without root: how an exit is described, the
restart delay after failures in a row, and the answer callers get while no
copy of a provider runs."""

import signal
import socket
import threading
from types import SimpleNamespace

import pytest

import pspy
from pspy.rpc import protocol
from pspy.rpc.client import Client
from pspy.supervisor import (BACKOFF_CAP, BACKOFF_FIRST, FREE_FAILURES, Child, Supervisor, describe_exit,
                             refuse_connection)

CHROOT, NAMESPACES = SimpleNamespace(mode="chroot"), SimpleNamespace(mode="namespaces")


@pytest.mark.parametrize("code, plan, oom, said", [
    (-signal.SIGKILL, CHROOT, False, "was killed by SIGKILL"),
    (128 + signal.SIGKILL, NAMESPACES, False, "was killed by SIGKILL"),   # pspy-init's status for a signal
    (137, CHROOT, False, "exited with status 137"),                       # chroot: a real exit status
    (-signal.SIGKILL, CHROOT, True, "was killed by SIGKILL (its memory limit: the kernel's OOM killer ran "
                                    "in its cgroup)"),
    (-signal.SIGSYS, CHROOT, False, "was killed by SIGSYS (its seccomp filter)"),
    (128 + signal.SIGXCPU, NAMESPACES, False, "was killed by SIGXCPU (its cpu_seconds limit)"),
    (-signal.SIGXFSZ, CHROOT, False, "was killed by SIGXFSZ (its file_size limit)"),
    (124, CHROOT, False, "ended itself for a call past its call_timeout"),
    (1, NAMESPACES, False, "exited with status 1"),
])
def test_an_exit_is_described_by_its_signal_and_the_limit_it_means(code, plan, oom, said):
    assert describe_exit(code, plan, oom) == said


def test_restarts_are_immediate_until_failures_repeat_then_back_off_to_a_cap():
    sup = Supervisor.__new__(Supervisor)   # only the rule is used
    child = Child(principal=None)
    delays = []
    for failures in range(12):
        child.failures = failures
        delays.append(sup._delay(child))
    assert delays[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert delays[FREE_FAILURES] == BACKOFF_FIRST
    assert all(b == min(2 * a, BACKOFF_CAP) for a, b in zip(delays[FREE_FAILURES:], delays[FREE_FAILURES + 1:]))
    assert delays[-1] == BACKOFF_CAP


def _serve_refusals(listener, count):
    for _ in range(count):
        conn, _ = listener.accept()
        refuse_connection(conn, "Bank")


def test_a_caller_the_supervisor_answers_gets_service_unavailable_not_a_reset(tmp_path):
    path = str(tmp_path / "rpc.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    client = Client("Bank", path, timeout=5)
    # Connected and the request sent before the supervisor looks: the
    # request is read and dropped, the answer still arrives.
    thread = threading.Thread(target=_serve_refusals, args=(listener, 2))
    thread.start()
    for _ in range(2):   # the connection is never pooled: the second call connects again
        with pytest.raises(pspy.ServiceUnavailable, match="not delivered"):
            client.call("transfer", ("alice", "bob", 1, "token"))
    thread.join(5)
    listener.close()


def test_a_service_that_raises_service_unavailable_itself_is_not_taken_for_an_undelivered_call(tmp_path):
    # Bank may have done work before its own call to Auth failed: its caller
    # must not read that as "not delivered".
    path = str(tmp_path / "rpc.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer():
        conn, _ = listener.accept()
        c = protocol.Connection(conn, protocol.DEFAULT_MAX_FRAME)
        c.recv_message()
        c.send_message([protocol.ERROR, {"type": "pspy.ServiceUnavailable", "message": "Auth is down",
                                         "args": None, "traceback": None}])
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    with pytest.raises(pspy.RemoteError) as raised:
        Client("Bank", path, timeout=5).call("transfer", ())
    assert not isinstance(raised.value, pspy.ServiceUnavailable)
    assert raised.value.remote_type == "pspy.ServiceUnavailable"
    thread.join(5)
    listener.close()
