"""Framing and message shapes shared by client and server.

A frame is a 4-byte big-endian length followed by that many bytes of
msgpack (see codec). The length is checked against the limit before any
buffer is allocated, so a peer cannot make the other side allocate 4 GiB.

    request:  [service, args, kwargs]
    response: [status, payload]

Reads go through a per-connection buffer, so a small frame costs one
recv(); large frames are read straight into their own buffer and written
with one sendmsg() of header and body, without joining them first.
"""

from __future__ import annotations

import socket
import struct

from ..errors import ProtocolError
from . import codec

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")
_BUFFER = 64 * 1024
_JOIN_BELOW = 64 * 1024   # below this, header + body are joined and sent with one send()

OK = 0          # payload: the return value
ERROR = 1       # payload: {"type", "message", "args", "traceback"}
DENIED = 2      # payload: message

PING = "__pspy_ping__"   # answered by every provider, for the supervisor and status


class PeerClosed(Exception):
    """The peer closed the connection before a frame started."""


class Connection:
    """A socket with frame-level send and receive. Not thread-safe: one user at a time."""

    __slots__ = ("sock", "max_frame", "_buf", "_view", "_start", "_end", "_large", "timeout")

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME):
        self.sock = sock
        self.max_frame = max_frame
        self._buf = bytearray(_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._large: bytearray | None = None   # kept for the next large frame: no fresh allocation
        self.timeout: float | None = None   # the receive timeout currently set on the socket

    def close(self) -> None:
        self.sock.close()

    def send_message(self, value) -> None:
        """Encode and send, straight from the encoder's buffer."""
        with codec.encoded(value) as view:
            self.send(view)

    def send(self, payload) -> None:
        n = len(payload)
        if n > self.max_frame:
            raise ProtocolError(f"message of {n} bytes exceeds the {self.max_frame}-byte frame limit")
        if n < _JOIN_BELOW:
            self.sock.sendall(_HEADER.pack(n) + payload)
            return
        header = _HEADER.pack(n)
        sent = self.sock.sendmsg([header, payload])
        if sent < 4:
            self.sock.sendall(header[sent:])
            sent = 4
        if sent - 4 < n:
            self.sock.sendall(memoryview(payload)[sent - 4:])

    def recv(self):
        """The next frame's body: a buffer valid until the next recv() on this connection."""
        while self._end - self._start < 4:
            self._fill()
        (length,) = _HEADER.unpack_from(self._buf, self._start)
        if length > self.max_frame:
            raise ProtocolError(f"peer announced a {length}-byte frame, over the "
                                f"{self.max_frame}-byte limit")
        begin = self._start + 4
        if begin + length > len(self._buf):
            return self._recv_large(begin, length)
        while self._end - begin < length:
            self._fill()
        self._start = begin + length
        if self._start == self._end:
            self._start = self._end = 0
        return self._view[begin:begin + length]

    def _fill(self) -> None:
        if self._end == len(self._buf):   # make room: keep only the unread part
            pending = self._end - self._start
            self._buf[:pending] = self._buf[self._start:self._end]
            self._start, self._end = 0, pending
        n = self.sock.recv_into(self._view[self._end:])
        if n == 0:
            if self._start == self._end:
                raise PeerClosed()
            raise ProtocolError("connection closed in the middle of a frame")
        self._end += n

    def _recv_large(self, begin: int, length: int) -> memoryview:
        out = self._large
        if out is None or len(out) < length:
            out = bytearray(length)
            # Keep buffers up to a few MiB for the next frame; larger ones are one-offs.
            self._large = out if length <= 4 * 1024 * 1024 else None
        have = min(self._end - begin, length)
        out[:have] = self._view[begin:begin + have]
        self._start = self._end = 0
        view = memoryview(out)[:length]
        got = have
        while got < length:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise ProtocolError("connection closed in the middle of a frame")
            got += n
        return view


# Kept for callers that frame a plain socket once (tests, the supervisor's ping).
def send_frame(sock: socket.socket, payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> None:
    Connection(sock, max_frame).send(payload)


def recv_frame(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    return bytes(Connection(sock, max_frame).recv())
