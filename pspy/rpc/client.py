"""The caller side: pooled connections to one provider, at-most-once calls.

A call is retried only when its request was provably never delivered (the
connect failed, or a pooled connection was found closed before anything was
written). Once a request is on the wire it is never sent again: a
non-idempotent ``transfer`` must not run twice because a provider restarted.
"""

from __future__ import annotations

import errno
import os
import socket
import threading

from ..errors import (CallInterrupted, PermissionDenied, ProtocolError, RemoteError,
                      SerializationError, ServiceTimeout, ServiceUnavailable)
from . import codec, protocol
from .server import builtin_exception

_NOT_DELIVERED = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)


class Client:
    def __init__(self, provider: str, path: str, *, timeout: float | None = None,
                 max_frame: int = protocol.DEFAULT_MAX_FRAME):
        self.provider = provider
        self.path = path
        self.timeout = timeout
        self.max_frame = max_frame
        self._lock = threading.Lock()
        self._idle: list[socket.socket] = []
        self._pid = os.getpid()

    # --- connections ----------------------------------------------------------
    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise ServiceUnavailable(f"provider {self.provider!r} is not reachable at {self.path}: "
                                     f"{e.strerror or e}; the request was not sent") from None
        return sock

    def _take(self) -> tuple[socket.socket, bool]:
        """A connection, and whether it came from the pool (and may be stale)."""
        with self._lock:
            if self._pid != os.getpid():
                # After fork the pool belongs to the parent: sharing a socket
                # would interleave two processes' frames.
                self._idle = []
                self._pid = os.getpid()
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give_back(self, sock: socket.socket) -> None:
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < 32:
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            for s in self._idle:
                s.close()
            self._idle = []

    # --- calls -------------------------------------------------------------------
    def call(self, service: str, args: tuple | list = (), kwargs: dict | None = None):
        payload = codec.encode([service, list(args), kwargs or {}])
        sock, pooled = self._take()
        try:
            try:
                protocol.send_frame(sock, payload, self.max_frame)
            except OSError as e:
                if not (pooled and e.errno in _NOT_DELIVERED):
                    raise ServiceUnavailable(f"could not send to {self.provider!r}: {e}; "
                                             "the request was not delivered") from None
                # A pooled connection the provider had closed (e.g. it restarted):
                # nothing reached a live server, so one fresh attempt is safe.
                sock.close()
                sock, pooled = self._connect(), False
                protocol.send_frame(sock, payload, self.max_frame)
            try:
                frame = protocol.recv_frame(sock, self.max_frame)
            except socket.timeout:
                raise ServiceTimeout(f"{self.provider}.{service} did not answer within {self.timeout}s; "
                                     "the call may or may not have run") from None
            except (protocol.PeerClosed, ProtocolError, OSError) as e:
                raise CallInterrupted(f"{self.provider}.{service}: the request was delivered but the "
                                      f"provider closed the connection before replying ({e or 'EOF'}); "
                                      "the call may or may not have run, and was not retried") from None
        except BaseException:
            sock.close()
            raise
        self._give_back(sock)
        return _result(self.provider, service, codec.decode(frame))

    def ping(self) -> str:
        return self.call(protocol.PING)


def _result(provider: str, service: str, response):
    if not isinstance(response, list) or len(response) != 2:
        raise ProtocolError(f"malformed response from {provider!r}")
    status, payload = response
    if status == protocol.OK:
        return payload
    if status == protocol.DENIED:
        raise PermissionDenied(str(payload))
    if status == protocol.ERROR and isinstance(payload, dict):
        type_name = str(payload.get("type"))
        message = str(payload.get("message"))
        tb = payload.get("traceback")
        if type_name == "pspy.SerializationError":
            raise SerializationError(message)
        cls = builtin_exception(type_name)
        if cls is not None:
            exc = cls(message)
            if tb:
                exc.add_note("--- remote traceback ---\n" + str(tb))
            raise exc
        raise RemoteError(type_name, message, str(tb) if tb else None)
    raise ProtocolError(f"malformed response from {provider!r}")
