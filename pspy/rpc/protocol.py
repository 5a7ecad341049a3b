"""Framing and message shapes shared by client and server.

A frame is a 4-byte big-endian length followed by that many bytes of
msgpack (see codec). The length is checked against the limit before any
buffer is allocated, so a peer cannot make the other side allocate 4 GiB.

    request:  [service, args, kwargs]
    response: [status, payload]
"""

from __future__ import annotations

import socket
import struct

from ..errors import ProtocolError

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")

OK = 0          # payload: the return value
ERROR = 1       # payload: {"type", "message", "traceback"}
DENIED = 2      # payload: message

PING = "__pspy_ping__"   # answered by every provider, for the supervisor and status


class PeerClosed(Exception):
    """The peer closed the connection before a frame started."""


def send_frame(sock: socket.socket, payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> None:
    if len(payload) > max_frame:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {max_frame}-byte frame limit")
    sock.sendall(_HEADER.pack(len(payload)) + payload if len(payload) < 65536
                 else _HEADER.pack(len(payload)))
    if len(payload) >= 65536:
        sock.sendall(payload)


def recv_frame(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    header = _recv_exact(sock, _HEADER.size, at_start=True)
    (length,) = _HEADER.unpack(header)
    if length > max_frame:
        raise ProtocolError(f"peer announced a {length}-byte frame, over the {max_frame}-byte limit")
    return _recv_exact(sock, length, at_start=False)


def _recv_exact(sock: socket.socket, n: int, at_start: bool) -> bytes:
    if n == 0:
        return b""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            if at_start and got == 0:
                raise PeerClosed()
            raise ProtocolError("connection closed in the middle of a frame")
        got += r
    return bytes(buf)
