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
recv(). A frame too large for it is read into an anonymous mapping of its
announced length, whose pages become resident only as bytes arrive (a
length announced is not yet a reason to commit memory). Large frames are
written with one sendmsg() of header and body, without joining them first.

What a frame costs its receiver is bounded (see codec.limits_for): the
frame and the objects it decodes into, measured before they are built. Frames
above SMALL_FRAME reserve that worst case from one budget shared by every
connection of the process (FRAME_MEMORY) before any byte of their body is
read, and give it back once decoded; a frame past the bounds is refused
with a codec.FrameRefused naming the bound. So however many connections
send their worst frames at once, the frames being received and decoded hold
at most FRAME_MEMORY_FACTOR x max_frame between them: the rest wait, their
bytes left in the socket.
"""

from __future__ import annotations

import mmap
import socket
import struct
import threading
import time

from ..errors import ProtocolError
from . import codec

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")
_HAS_ATTACHMENTS = 1 << 31
_BUFFER = 64 * 1024
_JOIN_BELOW = 64 * 1024   # below this, header + body are joined and sent with one send()
# Frames up to this many bytes are decoded without the bounds and outside the
# shared budget (the small-call path): at msgpack's worst, about 80 bytes of
# objects a byte, one is under 100 KiB of objects.
SMALL_FRAME = 1024
# The frames being received and decoded in one process hold at most this many
# times the largest max_frame of its connections, all together. One frame's
# worst case (codec.Limits.frame_cost: the frame, its objects, one dict's
# table while it grows) is under 2.3 x max_frame, so a frame of any size
# fits, and the whole stays under 4 x max_frame with room for the
# connections' own 64 KiB buffers and threads.
FRAME_MEMORY_FACTOR = 2.5

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


class _FrameMemory:
    """Bytes that frames being received and decoded may hold, shared by every
    connection of the process. A frame reserves its worst case at once, before
    reading its body, and waits while it does not fit: a waiting frame holds
    nothing, so frames cannot deadlock one another, and its sender is held
    back by the socket (its frame deadline, if any, keeps running)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self.capacity = 0
        self.used = 0
        self._waiting = 0

    def admit(self, max_frame: int) -> None:
        """A connection whose frames may be up to ``max_frame`` bytes exists."""
        need = int(FRAME_MEMORY_FACTOR * max_frame)
        if need > self.capacity:
            with self._cond:
                self.capacity = max(self.capacity, need)
                self._cond.notify_all()

    def reserve(self, size: int) -> None:
        with self._cond:
            # A frame alone always goes ahead, so none can wait forever for room it will never get.
            while self.used and self.used + size > self.capacity:
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            self.used += size

    def release(self, size: int) -> None:
        with self._cond:
            self.used -= size
            if self._waiting:
                self._cond.notify_all()


FRAME_MEMORY = _FrameMemory()


class _BufferPool:
    """Mappings of large frames, kept for the next ones: a fresh mapping
    page-faults on every page a frame is written into, which costs a 1 MiB
    frame several times its copy. What is kept, all connections together, is
    at most KEPT_FRACTION of the frame budget, so it adds to no caller's reach."""

    KEPT_FRACTION = 0.1

    def __init__(self):
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []
        self._kept = 0

    def take(self, length: int) -> mmap.mmap:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= length:
                    self._kept -= len(buf)
                    return self._free.pop(i)
        # Rounded up to a power of two so that it fits the next frames too: pages
        # never written to are never made resident.
        return mmap.mmap(-1, 1 << (length - 1).bit_length())

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if self._kept + len(buf) <= self.KEPT_FRACTION * FRAME_MEMORY.capacity:
                self._free.append(buf)
                self._kept += len(buf)
                return
        try:
            buf.close()
        except BufferError:   # a view of it is still alive (an exception's frame): freed with it
            pass


BUFFERS = _BufferPool()


class Connection:
    """A socket with frame-level send and receive. Not thread-safe: one user at a time."""

    __slots__ = ("sock", "max_frame", "limits", "_small", "_buf", "_view", "_start", "_end", "timeout",
                 "idle_timeout", "frame_timeout", "_frame_deadline", "_frame_wait")

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME):
        self.sock = sock
        self.max_frame = max_frame
        self.limits = codec.limits_for(max_frame)
        self._small = min(SMALL_FRAME, max_frame)
        FRAME_MEMORY.admit(max_frame)
        self._buf = bytearray(_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.timeout: float | None = None   # the receive timeout currently set on the socket
        self.idle_timeout: float | None = None    # see hold_frames_to
        self.frame_timeout: float | None = None
        self._frame_deadline = 0.0   # when the frame being received must be whole; 0: none started
        self._frame_wait = 0.0

    def hold_frames_to(self, idle_timeout: float, frame_timeout: float) -> None:
        """Receive waits at most ``idle_timeout`` for a frame to begin, and a
        frame that needs more than one recv must be whole within
        ``frame_timeout`` of its second: a peer trickling bytes cannot hold
        the connection longer. Kernel timeouts (SO_RCVTIMEO), so a frame that
        arrives whole, the small-call path, pays nothing for it."""
        self.idle_timeout, self.frame_timeout = idle_timeout, frame_timeout
        set_kernel_timeout(self.sock, socket.SO_RCVTIMEO, idle_timeout)

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
        """Receive and decode one message, attachments included; a frame past
        the bounds is a codec.FrameRefused (a ProtocolError) naming the bound."""
        if self._frame_deadline:   # the last frame took several recvs: back to waiting idle
            self._frame_deadline = 0.0
            set_kernel_timeout(self.sock, socket.SO_RCVTIMEO, self.idle_timeout)
        if self._start == self._end:
            # The common case, one small frame arriving whole into an empty
            # buffer, costs a single recv() and no bookkeeping.
            n = self.sock.recv_into(self._view)
            if n == 0:
                raise PeerClosed()
            if n >= 4:
                (length,) = _HEADER.unpack_from(self._buf, 0)
                if length == n - 4 and length <= self._small:
                    return codec.decode(self._view[4:n])
            self._start, self._end = 0, n
        while self._end - self._start < 4:
            self._fill()
        (length,) = _HEADER.unpack_from(self._buf, self._start)
        body_length = length & ~_HAS_ATTACHMENTS
        if body_length <= self._small and not length & _HAS_ATTACHMENTS:
            return codec.decode(self.recv())
        if body_length > self.max_frame:
            self.recv(attachments_allowed=True)   # raises the ProtocolError naming the limit
        cost = self.limits.frame_cost(body_length)
        FRAME_MEMORY.reserve(cost)
        mapping = None
        try:
            frame = self.recv(attachments_allowed=True)
            body, attachments = frame if type(frame) is tuple else (frame, None)
            mapping = body.obj if type(body.obj) is mmap.mmap else None
            return codec.decode(body, attachments, limits=self.limits)
        finally:
            # Decoding copied what it needed: the frame's mapping may serve another.
            frame = body = attachments = None
            if mapping is not None:
                BUFFERS.give(mapping)
            FRAME_MEMORY.release(cost)

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
        n = self._recv_more(self._view[self._end:])
        if n == 0:
            if self._start == self._end:
                raise PeerClosed()
            raise ProtocolError("connection closed in the middle of a frame")
        self._end += n

    def _recv_large(self, begin: int, length: int) -> memoryview:
        # An anonymous mapping of (at least) the announced length: its pages
        # are made resident only as bytes are written into them, so a bare
        # 4-byte header announcing 16 MiB commits nothing, and a mapping is
        # returned to the system whole (no heap it stays in). recv_message
        # gives it back to BUFFERS once decoded; recv() leaves it to its caller.
        have = self._end - begin
        out = memoryview(BUFFERS.take(length))[:length]
        out[:have] = self._view[begin:self._end]
        self._start = self._end = 0
        self._recv_exactly(out, have)
        return out

    def _recv_exactly(self, view: memoryview, got: int) -> None:
        """Fill ``view`` from ``got`` on, straight from the socket."""
        while got < len(view):
            n = self._recv_more(view[got:])
            if n == 0:
                raise ProtocolError("connection closed in the middle of a frame")
            got += n


    def _recv_more(self, view: memoryview) -> int:
        """recv_into for a frame that did not arrive in one piece, within its deadline."""
        if self.frame_timeout is None:
            return self.sock.recv_into(view)
        now = time.monotonic()
        if not self._frame_deadline:
            self._frame_deadline = now + self.frame_timeout
            self._frame_wait = self.frame_timeout
            set_kernel_timeout(self.sock, socket.SO_RCVTIMEO, self.frame_timeout)
        left = self._frame_deadline - now
        if left <= 0:
            raise ProtocolError(f"a frame that started to arrive was not whole within {self.frame_timeout:g}s")
        if left < self._frame_wait / 2:
            # Shortened by halves, not at every recv (a large frame takes
            # many): no recv waits past the deadline by more than the time
            # left, so a frame ends within twice frame_timeout at worst.
            self._frame_wait = left
            set_kernel_timeout(self.sock, socket.SO_RCVTIMEO, left)
        try:
            return self.sock.recv_into(view)
        except (BlockingIOError, socket.timeout):
            raise ProtocolError(f"a frame that started to arrive was not whole within "
                                f"{self.frame_timeout:g}s") from None


def set_kernel_timeout(sock: socket.socket, option: int, seconds: float | None) -> None:
    """SO_RCVTIMEO or SO_SNDTIMEO: a blocked recv/send fails with EAGAIN
    after ``seconds`` (None: never). Unlike Python's socket timeout it costs
    no poll() before each call."""
    seconds = seconds or 0.0
    tv = struct.pack("ll", int(seconds), int((seconds - int(seconds)) * 1_000_000))
    if seconds and tv == _NO_TIMEOUT:
        tv = struct.pack("ll", 0, 1)   # 0 would mean "forever"
    sock.setsockopt(socket.SOL_SOCKET, option, tv)


_NO_TIMEOUT = struct.pack("ll", 0, 0)


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
