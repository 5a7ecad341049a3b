"""What one frame may cost its receiver, and all frames at once (issue 16).

A frame past the decoder's bounds (elements in one container, bytes of
objects in the whole frame, extension payloads nested in one another) is
refused with an error naming the bound, before the objects are built; the
frames being received and decoded in one process share one budget of
FRAME_MEMORY_FACTOR x max_frame, so the worst frames on every connection a
caller may hold raise a provider's peak memory by less than 4 x max_frame.

Without root: Connection over a socketpair. As root: zoobank bootstrapped
(chroot and namespace mode), its Bank provider sent the worst frames on as
many connections as it allows one caller, from inside the front end.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import textwrap
import threading

import msgpack
import pytest

from pspy.rpc import codec, protocol
from pspy.rpc import server as server_module

from conftest import ZOOBANK, free_port, provider_pid, pspy

MiB = 1024 * 1024


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _array(count: int, item: bytes) -> bytes:
    return b"\xdd" + struct.pack(">I", count) + item * count


# --- without root: one connection, then many --------------------------------------

def test_a_frame_past_the_bounds_is_refused_naming_the_bound_and_the_next_frame_decodes():
    a, b = socket.socketpair()
    try:
        conn = protocol.Connection(b, MiB)
        limit = conn.limits.max_container
        used = protocol.FRAME_MEMORY.used
        a.sendall(_frame(_array(limit + 1, b"\xc0")) + _frame(msgpack.packb(["balance", ["alice"], {}])))
        with pytest.raises(codec.FrameRefused, match=f"a list of {limit + 1} elements is over the limit of {limit}"):
            conn.recv_message()
        assert protocol.FRAME_MEMORY.used == used   # its reservation is given back
        # The refused frame was read whole: the stream is still in step.
        assert conn.recv_message() == ["balance", ["alice"], {}]
    finally:
        a.close()
        b.close()


def test_a_large_frame_within_the_bounds_decodes_and_one_over_the_total_is_refused():
    a, b = socket.socketpair()
    try:
        conn = protocol.Connection(b, MiB)
        fits = [b"s" * 4096] * 200                 # 800 KiB: well within
        over = _array(conn.limits.max_container - 1, b"\xe0")   # fresh ints: over the total for 1 MiB
        sender = threading.Thread(target=lambda: a.sendall(_frame(msgpack.packb(fits)) + _frame(_array(4, over))))
        sender.start()
        assert conn.recv_message() == fits
        with pytest.raises(codec.FrameRefused, match="bytes of objects"):
            conn.recv_message()
        sender.join()
    finally:
        a.close()
        b.close()


def test_frames_on_many_connections_share_one_budget_and_all_get_through(monkeypatch):
    max_frame = 2 * MiB
    budget = protocol._FrameMemory()
    monkeypatch.setattr(protocol, "FRAME_MEMORY", budget)
    highest = []
    reserve = budget.reserve

    def watched(size):
        reserve(size)
        highest.append(budget.used)
    monkeypatch.setattr(budget, "reserve", watched)
    value = [b"v" * 1000] * 1500               # about 1.5 MiB: one frame's cost is over 3 MiB
    wire = _frame(msgpack.packb(value))
    pairs = [socket.socketpair() for _ in range(8)]
    conns = [protocol.Connection(b, max_frame) for _, b in pairs]
    results = []

    def receive(conn):
        results.append(conn.recv_message() == value)
    try:
        senders = [threading.Thread(target=a.sendall, args=(wire,)) for a, _ in pairs]
        receivers = [threading.Thread(target=receive, args=(c,)) for c in conns]
        for t in senders + receivers:
            t.start()
        for t in senders + receivers:
            t.join(60)
        assert results == [True] * 8
        assert budget.used == 0
        # Never more than the budget at once: the others waited, their bytes left in their sockets.
        assert max(highest) <= protocol.FRAME_MEMORY_FACTOR * max_frame
        assert min(highest) > conns[0].limits.frame_cost(len(wire) - 4) - 1   # each reserved its worst case
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# --- as root: zoobank's Bank, from inside its front end -----------------------------

@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def zoobank(request, tmp_path_factory):
    jail = str(tmp_path_factory.mktemp(f"bounds-{request.param}") / "jail")
    env = {"ZOOBANK_PORT": str(free_port()), "ZOOBANK_SECRET_KEY": "front-end-only-secret"}
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", *flags, env=env, check=True)
    yield jail
    pspy("stop", "--jail", jail)


# Run inside the jail as web: the worst frames on `connections` connections to
# the Bank at once, calls through the app's own stub before, during and after.
HOSTILE = textwrap.dedent("""
    import json, socket, struct, sys, threading
    import bank
    connections, max_frame, max_container = %(connections)d, %(max_frame)d, %(max_container)d

    def array(count, item):
        return b"\\xdd" + struct.pack(">I", count) + item * count

    def frame(body):
        return struct.pack(">I", len(body)) + body
    # Within the bounds and as heavy as they allow: ASCII strs of 4 KiB, about
    # max_frame of them, decoded (then refused: not a request) and freed.
    heaviest = frame(array((max_frame - 4096) // 4099 - 96, b"\\xda\\x10\\x00" + b"s" * 4096))
    # Past the bounds: one container too many elements, lists of fresh ints past
    # the total, tuples nested in one another (each level's payload a copy).
    # (An eighth of max_frame each: they cost less than the heaviest, and the test less time.)
    size = max_frame // 8
    too_many = frame(array(max_container + 1, b"\\xc0") + b"\\xc0" * (size - max_container - 16))
    inner = array(max_container - 1, b"\\xe0")
    too_heavy = frame(array(size // len(inner) + 1, inner))
    nested = array(size // 2, b"\\x90")
    for _ in range(60):
        nested = b"\\xc9" + struct.pack(">Ib", len(nested), 1) + nested
    nested = frame(nested)
    kinds = [heaviest, too_many, heaviest, too_heavy, heaviest, nested]

    bank.new_account("bounded")
    before = bank.balance("bounded")
    socks = []
    for _ in range(connections):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(120)
        s.connect("/.pspy/sock/Bank/rpc.sock")
        socks.append(s)
    answers = [None] * connections

    def hostile(i):
        try:
            socks[i].sendall(kinds[i %% len(kinds)])
            socks[i].shutdown(socket.SHUT_WR)
            answers[i] = socks[i].recv(1 << 16)
        except OSError as e:
            answers[i] = type(e).__name__
        finally:
            socks[i].close()
    threads = [threading.Thread(target=hostile, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    during = bank.balance("bounded")
    for t in threads:
        t.join()
    after = bank.balance("bounded")
    print(json.dumps({"calls": [before, during, after],
                      "answers": [a if isinstance(a, str) else a.hex() for a in answers]}))
""")


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def _per_caller_cap() -> int:
    # Another change may cap connections per caller: whichever cap the server has now.
    return getattr(server_module, "MAX_CONNECTIONS_PER_CALLER", None) or server_module.MAX_CONNECTIONS


@pytest.mark.root
def test_the_worst_frames_on_every_allowed_connection_cost_the_provider_under_4x_max_frame(zoobank):
    with open(os.path.join(zoobank, ".pspy", "plan.json")) as f:
        max_frame = json.load(f)["max_frame"]
    limits = codec.limits_for(max_frame)
    # The front end's own connections to the Bank count against the same cap.
    connections = _per_caller_cap() - 4
    pid = provider_pid(zoobank, "Bank")
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")   # VmHWM restarts from the current RSS: the baseline, just before
    baseline = _status_kib(pid, "VmRSS") * 1024
    proc = pspy("exec", "--jail", zoobank, "web", "--", "python", "-c",
                HOSTILE % {"connections": connections, "max_frame": max_frame,
                           "max_container": limits.max_container}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = _status_kib(pid, "VmHWM") * 1024
    print(f"Bank: {connections} connections, baseline {baseline / MiB:.1f} MiB, peak rise "
          f"{(peak - baseline) / MiB:.1f} MiB (4 x max_frame: {4 * max_frame / MiB:.0f} MiB)")
    assert peak - baseline < 4 * max_frame, \
        f"Bank's peak RSS rose {(peak - baseline) / MiB:.1f} MiB over {baseline / MiB:.1f} MiB " \
        f"(4 x max_frame = {4 * max_frame / MiB:.0f} MiB)"
    # Control: the same caller's ordinary calls were answered before, during and after.
    assert report["calls"] == [10, 10, 10]
    # Every hostile frame was refused and its connection closed: a frame past the bounds
    # with an answer naming the bound, one within them (not a request) with none.
    refusals = [_answer(a) for a in report["answers"] if a not in ("", "ConnectionResetError", "BrokenPipeError")]
    assert refusals and all(r["type"] == "pspy.SerializationError" and "frame refused" in r["message"]
                            for r in refusals), refusals[:4]
    assert provider_pid(zoobank, "Bank") == pid   # the provider was not restarted


def _answer(hex_frame: str) -> dict:
    """The error payload of one response frame, as the caller's stub reads it."""
    frame = bytes.fromhex(hex_frame)
    status, payload = codec.decode(frame[4:4 + int.from_bytes(frame[:4], "big")])
    assert status == protocol.ERROR, (status, payload)
    return payload


@pytest.mark.root
def test_a_caller_whose_arguments_pass_the_bounds_gets_an_error_naming_the_bound(zoobank):
    limits = codec.limits_for(16 * MiB)
    code = textwrap.dedent(f"""
        import json, bank, pspy
        try:
            bank.balance([None] * {limits.max_container + 1})
            print(json.dumps("no error"))
        except pspy.SerializationError as e:
            print(json.dumps(str(e)))
        bank.new_account("bounds-control")
        print(json.dumps(bank.balance("bounds-control")))   # the stub works on: a fresh connection
    """)
    proc = pspy("exec", "--jail", zoobank, "web", "--", "python", "-c", code)
    assert proc.returncode == 0, proc.stderr
    error, balance = [json.loads(line) for line in proc.stdout.strip().splitlines()[-2:]]
    assert f"a list of {limits.max_container + 1} elements is over the limit of {limits.max_container}" in error
    assert "refused the request" in error and "Bank" in error
    assert balance == 10


@pytest.mark.root
def test_a_refused_frame_is_answered_and_logged_naming_the_bound(zoobank):
    limits = codec.limits_for(16 * MiB)
    code = textwrap.dedent(f"""
        import socket, struct
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect("/.pspy/sock/Bank/rpc.sock")
        body = b"\\xdd" + struct.pack(">I", {limits.max_container + 1}) + b"\\xc0" * {limits.max_container + 1}
        s.sendall(struct.pack(">I", len(body)) + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        print(answer.hex())
    """)
    proc = pspy("exec", "--jail", zoobank, "web", "--", "python", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "over the limit of" in _answer(proc.stdout.strip())["message"]   # answered, then closed
    logs = pspy("logs", "--jail", zoobank, "Bank").stdout
    assert f"a list of {limits.max_container + 1} elements is over the limit of {limits.max_container}" in logs
