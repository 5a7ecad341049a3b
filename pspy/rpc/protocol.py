"""Framing and message shapes shared by client and server.

A frame is a 4-byte big-endian length followed by that many bytes of
msgpack (see codec). The length is checked against the limit before any
buffer is allocated, so a peer cannot make the other side allocate 4 GiB.

Large bytes values travel as attachments: the length's top bit is set, and
the frame is [count][count lengths][msgpack body][attachments], the body
naming each attachment by index. They are sent from the caller's own
object with one sendmsg(), never copied into the body.

    request:  [service, args, kwargs]
    response: [status, payload]

Reads go through a per-connection buffer, so a small frame costs one
recv(); a large frame is read straight into the buffer kept from the last
one, or gathered in pieces that grow only with what arrives (a length
announced is not yet a reason to allocate). Large frames are written with
one sendmsg() of header and body, without joining them first.
"""

from __future__ import annotations

import socket
import struct

from ..errors import ProtocolError
from . import codec

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")
_HAS_ATTACHMENTS = 1 << 31
_BUFFER = 64 * 1024
_JOIN_BELOW = 64 * 1024   # below this, header + body are joined and sent with one send()

OK = 0          # payload: the return value
ERROR = 1       # payload: {"type", "message", "args", "traceback"}
DENIED = 2      # payload: message
NOT_SERVED = 3  # payload: message; from the supervisor: no copy of the provider runs, the request was not read

PING = "__pspy_ping__"   # answered by every provider, for the supervisor and status
# [MAY_CALL, [service], {}]: whether the asking peer may call the service,
# decided by the same check a real call meets; nothing runs. For analyze --live.
MAY_CALL = "__pspy_may_call__"


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

    def send_message(self, value, attachments: list | tuple = ()) -> None:
        """Encode and send, straight from the encoder's buffer."""
        packer, view = codec.pack_into_buffer(value)
        try:
            if attachments:
                self.send_with_attachments(view, attachments)
            elif len(view) < _JOIN_BELOW and len(view) <= self.max_frame:
                self.sock.sendall(_HEADER.pack(len(view)) + view)
            else:
                self.send(view)
        finally:
            codec.release(packer, view)

    def send_with_attachments(self, body, attachments) -> None:
        table = struct.pack(f">{len(attachments) + 1}I", len(attachments), *map(len, attachments))
        n = len(table) + len(body) + sum(map(len, attachments))
        if n > self.max_frame:
            raise ProtocolError(f"message of {n} bytes exceeds the {self.max_frame}-byte frame limit")
        self._send_all([_HEADER.pack(n | _HAS_ATTACHMENTS), table, body, *attachments])

    def _send_all(self, parts: list) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            sent = self.sock.sendmsg(views[:64])
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]

    def recv_message(self):
        """Receive and decode one message, attachments included."""
        if self._start == self._end:
            # The common case, one small frame arriving whole into an empty
            # buffer, costs a single recv() and no bookkeeping.
            n = self.sock.recv_into(self._view)
            if n == 0:
                raise PeerClosed()
            if n >= 4:
                (length,) = _HEADER.unpack_from(self._buf, 0)
                if length == n - 4 and length <= self.max_frame:
                    return codec.decode(self._view[4:n])
            self._start, self._end = 0, n
        frame = self.recv(attachments_allowed=True)
        if type(frame) is not tuple:
            return codec.decode(frame)
        body, attachments = frame
        return codec.decode(body, attachments)

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

    def recv(self, attachments_allowed: bool = False):
        """The next frame's body: a buffer valid until the next recv() on this connection.

        With attachments_allowed, a frame with attachments comes back as
        (body, [attachment views]).
        """
        while self._end - self._start < 4:
            self._fill()
        (length,) = _HEADER.unpack_from(self._buf, self._start)
        if length & _HAS_ATTACHMENTS:
            if not attachments_allowed:
                raise ProtocolError("unexpected attachments")
            self._start += 4
            length &= ~_HAS_ATTACHMENTS
            if length > self.max_frame:
                raise ProtocolError(f"peer announced a {length}-byte frame, over the "
                                    f"{self.max_frame}-byte limit")
            return _split_attachments(self._read(self._start, length))
        if length > self.max_frame:
            raise ProtocolError(f"peer announced a {length}-byte frame, over the "
                                f"{self.max_frame}-byte limit")
        return self._read(self._start + 4, length)

    def _read(self, begin: int, length: int) -> memoryview:
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
        have = min(self._end - begin, length)
        out = self._large
        if out is not None and len(out) >= length:
            # The buffer kept from an earlier frame, which the peer did send: filled in place.
            out[:have] = self._view[begin:begin + have]
            self._start = self._end = 0
            view = memoryview(out)[:length]
            self._recv_exactly(view, have)
            return view
        # Otherwise the frame is gathered in pieces that grow with the bytes
        # received, never ahead of them: a bare 4-byte header announcing a
        # 16 MiB frame must not make this side allocate (and zero, touching
        # every page) 16 MiB, or a caller holding 256 such connections makes a
        # provider commit 4 GiB for 1 KiB sent. Each piece is no larger than
        # what came before it (or the 64 KiB of the connection's own buffer),
        # so memory stays under twice what arrived; the pieces are joined
        # once, at the end.
        self._large = None
        pieces = [bytes(self._view[begin:begin + have])]
        self._start = self._end = 0
        got = have
        while got < length:
            piece = bytearray(min(max(got, _BUFFER), length - got))
            self._recv_exactly(memoryview(piece), 0)
            pieces.append(piece)
            got += len(piece)
        out = bytearray().join(pieces)
        # Keep buffers up to a few MiB for the next frame; larger ones are one-offs.
        self._large = out if length <= 4 * 1024 * 1024 else None
        return memoryview(out)

    def _recv_exactly(self, view: memoryview, got: int) -> None:
        """Fill ``view`` from ``got`` on, straight from the socket."""
        while got < len(view):
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise ProtocolError("connection closed in the middle of a frame")
            got += n


def _split_attachments(frame: memoryview) -> tuple[memoryview, list[memoryview]]:
    if len(frame) < 4:
        raise ProtocolError("truncated attachment table")
    (count,) = struct.unpack_from(">I", frame)
    table_end = 4 + 4 * count
    if count == 0 or count > 1024 or table_end > len(frame):
        raise ProtocolError("malformed attachment table")
    lengths = struct.unpack_from(f">{count}I", frame, 4)
    body_len = len(frame) - table_end - sum(lengths)
    if body_len < 0:
        raise ProtocolError("attachments longer than their frame")
    body = frame[table_end:table_end + body_len]
    attachments, offset = [], table_end + body_len
    for n in lengths:
        attachments.append(frame[offset:offset + n])
        offset += n
    return body, attachments


# Kept for callers that frame a plain socket once (tests, the supervisor's ping).
def send_frame(sock: socket.socket, payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> None:
    Connection(sock, max_frame).send(payload)


def recv_frame(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    return bytes(Connection(sock, max_frame).recv())
