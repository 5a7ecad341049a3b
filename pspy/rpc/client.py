"""The caller side: pooled connections to one provider, at-most-once calls.

A call is retried only when its request was provably never delivered (the
connect failed, or a pooled connection was found closed before anything was
written). Once a request is on the wire it is never sent again: a
non-idempotent ``transfer`` must not run twice because a provider restarted.

Thread-safe: each call takes a connection from the pool for its duration.
Fork-safe: a child process never uses its parent's connections.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import time

from ..errors import (CallInterrupted, PermissionDenied, ProtocolError, RemoteError,
                      SerializationError, ServiceTimeout, ServiceUnavailable)
from . import codec, protocol
from .protocol import set_kernel_timeout
from .server import IDLE_TIMEOUT, builtin_exception

_NOT_DELIVERED = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)
_POOL_SIZE = 32
# A pooled connection idle longer than this is closed rather than reused:
# the provider closes it at IDLE_TIMEOUT, and a request sent just as it
# does would be lost in flight (CallInterrupted) instead of never sent.
_REUSE_WITHIN = IDLE_TIMEOUT / 2
_monotonic = time.monotonic
_CONNECT_RETRY = 0.002   # first pause when the provider's listening queue is full; doubles up to 50 ms

# Bumped in every forked child: a pool made before the fork belongs to the
# parent, and sharing its sockets would interleave two processes' frames.
# Checking a counter costs nothing per call, unlike os.getpid() (a syscall).
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class Client:
    def __init__(self, provider: str, path: str, *, timeout: float | None = None,
                 max_frame: int = protocol.DEFAULT_MAX_FRAME):
        self.provider = provider
        self.path = path
        self.timeout = timeout          # default for calls that give none; None: wait forever
        self.max_frame = max_frame
        # deque.append and deque.pop are atomic: the pool needs no lock.
        # Entries: (connection, when the call that last used it began).
        self._idle: collections.deque[tuple[protocol.Connection, float]] = collections.deque()
        self._generation = _fork_generation

    # --- connections ----------------------------------------------------------
    def _connect(self, timeout: float | None = None) -> protocol.Connection:
        """A new connection, within ``timeout`` seconds (None: this client's default)."""
        if timeout is None:
            timeout = self.timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Non-blocking: a Unix socket whose listening queue is full blocks
        # connect() with no end (a caller flooding the provider, or one that
        # stopped accepting); non-blocking it fails with EAGAIN at once, and
        # is tried again until the deadline, so rpc_timeout and the
        # health check always fire.
        sock.setblocking(False)
        deadline = time.monotonic() + timeout if timeout is not None else float("inf")
        pause = _CONNECT_RETRY
        try:
            while True:
                try:
                    sock.connect(self.path)
                    break
                except (BlockingIOError, InterruptedError) as e:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ServiceUnavailable(
                            f"provider {self.provider!r} at {self.path} did not accept the connection within "
                            f"{timeout:g}s (its queue is full: {e.strerror or e}); the request was not sent") from None
                    time.sleep(min(pause, left))
                    pause = min(pause * 2, 0.05)
        except OSError as e:
            sock.close()
            raise ServiceUnavailable(f"provider {self.provider!r} is not reachable at {self.path}: "
                                     f"{e.strerror or e}; the request was not sent") from None
        except BaseException:
            sock.close()
            raise
        sock.setblocking(True)
        return protocol.Connection(sock, self.max_frame)

    def _take(self, timeout: float | None, now: float) -> tuple[protocol.Connection, bool]:
        """A connection, and whether it came from the pool (and may be stale)."""
        if self._generation != _fork_generation:
            self._idle = collections.deque()   # the parent's; never closed here, never used
            self._generation = _fork_generation
        while True:
            try:
                conn, since = self._idle.pop()
            except IndexError:
                return self._connect(timeout), False
            if now - since < _REUSE_WITHIN:
                return conn, True
            conn.close()   # the provider may be closing it: a fresh one is safe

    def _give_back(self, conn: protocol.Connection, since: float) -> None:
        # ``since``: when the call that used it began, a little before its
        # idle time did, so the pool errs on the side of a fresh connection
        # (and the clock is read once per call, not twice).
        if self._generation == _fork_generation and len(self._idle) < _POOL_SIZE:
            self._idle.append((conn, since))
        else:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.pop()[0].close()
            except IndexError:
                return

    # --- calls -------------------------------------------------------------------
    def call(self, service: str, args: tuple | list = (), kwargs: dict | None = None, *,
             timeout: float | None = None):
        if timeout is None:
            timeout = self.timeout
        args, attachments = codec.split_large(args if type(args) is list else list(args))
        # Encoded before a connection is taken: a value that cannot cross fails
        # here, with nothing sent; the same bytes serve the one allowed retry.
        packer, payload = codec.pack_into_buffer([service, args, kwargs or {}])
        try:
            began = _monotonic()
            conn, pooled = self._take(timeout, began)
            try:
                if conn.timeout != timeout:
                    _set_timeout(conn, timeout)
                try:
                    conn.send_with_attachments(payload, attachments) if attachments else conn.send(payload)
                except OSError as e:
                    if not (pooled and e.errno in _NOT_DELIVERED):
                        _raise_refusal(self.provider, service, conn)
                        raise ServiceUnavailable(f"could not send to {self.provider!r}: {e}; "
                                                 "the request was not delivered") from None
                    # A pooled connection the provider had closed (it restarted, say):
                    # nothing reached a live server, so one fresh attempt is safe.
                    conn.close()
                    conn, pooled = self._connect(timeout), False
                    _set_timeout(conn, timeout)
                    try:
                        conn.send_with_attachments(payload, attachments) if attachments else conn.send(payload)
                    except OSError as e2:
                        _raise_refusal(self.provider, service, conn)
                        raise ServiceUnavailable(f"could not send to {self.provider!r}: {e2}; "
                                                 "the request was not delivered") from None
            except BaseException:
                conn.close()
                raise
        finally:
            codec.release(packer, payload)
        response = _answer(conn, self.provider, service, timeout)
        if type(response) is list and len(response) == 2 and response[0] == protocol.OK:
            self._give_back(conn, began)
            return response[1]
        if _never_reuse(response):
            conn.close()
        else:
            self._give_back(conn, began)
        return _result(self.provider, service, response)

    def ping(self) -> str:
        return self.call(protocol.PING)

    def session(self, service: str) -> "Session":
        """A connection of one's own to ``service``, for calls that share state
        in the provider (a database session lives as long as it does)."""
        return Session(self, service)


class Session:
    """Calls to one per-connection service over one connection, never pooled.
    Nothing is retried: the state the calls share dies with the connection."""

    def __init__(self, client: Client, service: str):
        self.client, self.service = client, service
        self.conn: protocol.Connection | None = client._connect()
        _set_timeout(self.conn, client.timeout)

    def call(self, *args):
        conn = self.conn
        if conn is None:
            raise ServiceUnavailable(f"{self.client.provider}.{self.service}: this session is closed")
        if conn.timeout != self.client.timeout:
            _set_timeout(conn, self.client.timeout)
        packer, payload = codec.pack_into_buffer([self.service, list(args), {}])
        try:
            conn.send(payload)
        except OSError as e:
            _raise_refusal(self.client.provider, self.service, conn)
            self.close()
            raise ServiceUnavailable(f"{self.client.provider}.{self.service}: the session's connection is "
                                     f"closed ({e.strerror or e}); the request was not delivered") from None
        finally:
            codec.release(packer, payload)
        try:
            response = _answer(conn, self.client.provider, self.service, self.client.timeout)
        except BaseException:
            self.conn = None   # closed: the session's state in the provider is gone with it
            raise
        return _result(self.client.provider, self.service, response)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


def _answer(conn: protocol.Connection, provider: str, service: str, timeout: float | None):
    """The response to a request on the wire; on any failure the connection
    is closed, and the caller learns the call may or may not have run."""
    try:
        return conn.recv_message()
    except (BlockingIOError, socket.timeout):
        conn.close()
        raise ServiceTimeout(f"{provider}.{service} did not answer within {timeout}s; "
                             "the call may or may not have run") from None
    except (protocol.PeerClosed, ProtocolError, OSError) as e:
        conn.close()
        raise CallInterrupted(f"{provider}.{service}: the request was delivered but the "
                              f"provider closed the connection before replying ({e or 'EOF'}); "
                              "the call may or may not have run, and was not retried") from None
    except BaseException:
        conn.close()
        raise


def _set_timeout(conn: protocol.Connection, timeout: float | None) -> None:
    # Set only when it changes, so steady-state calls pay nothing for it.
    set_kernel_timeout(conn.sock, socket.SO_RCVTIMEO, timeout)
    set_kernel_timeout(conn.sock, socket.SO_SNDTIMEO, timeout)
    conn.timeout = timeout


def _raise_refusal(provider: str, service: str, conn: protocol.Connection) -> None:
    """A provider that refuses a connection (past the caller's connection
    cap, or a caller it does not serve at all) answers before closing; if
    the request could not be written because it closed, that answer is
    what the caller should see, not a bare EPIPE."""
    try:
        conn.sock.setblocking(False)
        response = conn.recv_message()
    except (OSError, protocol.PeerClosed, ProtocolError):
        return
    if type(response) is list and len(response) == 2 and response[0] in (protocol.DENIED, protocol.NOT_SERVED):
        _result(provider, service, response)


def _result(provider: str, service: str, response):
    if type(response) is not list or len(response) != 2:
        raise ProtocolError(f"malformed response from {provider!r}")
    status, payload = response
    if status == protocol.OK:
        return payload
    if status == protocol.DENIED:
        raise PermissionDenied(str(payload))
    if status == protocol.NOT_SERVED:
        # The supervisor's own answer, distinct from a service that raised
        # ServiceUnavailable itself (that one may have done work first).
        raise ServiceUnavailable(f"{provider}.{service}: {payload}")
    if status == protocol.ERROR and isinstance(payload, dict):
        raise _rebuild_exception(payload)
    raise ProtocolError(f"malformed response from {provider!r}")


# The errors a provider answers with itself (not raised by a service): the
# caller gets pspy's own class, so `except pspy.ServiceTimeout` works.
_OWN_ERRORS = {"pspy.SerializationError": SerializationError, "pspy.ServiceTimeout": ServiceTimeout,
               "pspy.CallInterrupted": CallInterrupted}


def _never_reuse(response) -> bool:
    """After these answers the connection is closed: the provider is ending
    itself (past a call_timeout), or none runs and the supervisor answered."""
    if type(response) is not list or len(response) != 2:
        return False
    return response[0] == protocol.NOT_SERVED or (
        response[0] == protocol.ERROR and isinstance(response[1], dict)
        and response[1].get("type") == "pspy.ServiceTimeout")


def _rebuild_exception(payload: dict) -> BaseException:
    """The same exception type for builtins and registered classes, else RemoteError."""
    type_name = str(payload.get("type"))
    message = str(payload.get("message"))
    args = payload.get("args")
    tb = payload.get("traceback")
    own = _OWN_ERRORS.get(type_name)
    if own is not None:
        return own(message)
    cls = builtin_exception(type_name) or codec.registered_exception(type_name)
    if cls is not None:
        try:
            exc = cls(*args) if isinstance(args, list) else cls(message)
        except Exception:  # noqa: BLE001 - a constructor that wants other arguments
            exc = None
        if exc is not None:
            if tb:
                exc.add_note("--- remote traceback ---\n" + str(tb))
            return exc
    return RemoteError(type_name, message, str(tb) if tb else None)
