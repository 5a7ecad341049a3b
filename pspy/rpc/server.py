"""The provider side: accept connections, authorise each call, run the service.

The caller's identity comes from the kernel (SO_PEERCRED on the Unix
socket, read once at accept), mapped to a principal through the plan's
uids; or, rootless, where every principal has the same uid, from the
listening socket the connection came in on (each caller's view holds only
its own). Nothing the caller sends is trusted for it. A thread serves each
connection, so a slow call does not hold up other callers. A malformed
frame closes that connection only.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import os
import selectors
import socket
import struct
import threading
import traceback
import types
from dataclasses import dataclass
from typing import Callable

from ..errors import ProtocolError, SerializationError
from . import codec, protocol

log = logging.getLogger("pspy.rpc")

SUPERVISOR = "pspy-supervisor"   # the name given to uid 0 peers: allowed to ping only
_PEERCRED = struct.Struct("3i")
MAX_CONNECTIONS = 256            # beyond this, accept() waits for a connection to end
UNAUTHORISED_MAX_FRAME = 4096    # a caller who may call nothing cannot make us buffer more
ACTIVE: dict[int, str] = {}      # native thread id -> "Provider.service" it ran last (kept: read later)
ON_CALL: Callable[[int, str], None] | None = None   # pspy learn: told (thread id, service) before each call


@dataclass
class Endpoint:
    """One callable service name, e.g. ``transfer`` or ``Auth.login``."""
    name: str
    func: Callable
    callers: frozenset[str]
    is_async: bool = False


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, as the kernel recorded them at connect()."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)


class Server:
    def __init__(self, provider: str, endpoints: dict[str, Endpoint],
                 principal_of_uid: Callable[[int], str | None], *,
                 debug: bool = False, max_frame: int = protocol.DEFAULT_MAX_FRAME):
        self.provider = provider
        self.endpoints = endpoints
        for endpoint in endpoints.values():
            endpoint.is_async = endpoint.is_async or inspect.iscoroutinefunction(endpoint.func)
        self.principal_of_uid = principal_of_uid
        self.debug = debug
        self.max_frame = max_frame
        self._listeners: list[tuple[socket.socket, str | None]] = []   # (socket, identity or None: by uid)
        self._loop_local = threading.local()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._may_call_something = frozenset().union(*(e.callers for e in endpoints.values()))

    def bind(self, path: str) -> None:
        try:
            os.unlink(path)   # a stale socket from a previous run of this provider
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        # Anyone who can reach the socket may connect; authorisation is per call, by uid.
        os.chmod(path, 0o666)
        sock.listen(128)
        self._listeners.append((sock, None))

    def adopt(self, fd: int, identity: str | None = None) -> None:
        """Serve on a listening socket made by someone else (the supervisor).
        With ``identity``, every connection on it is that principal's."""
        sock = socket.socket(fileno=fd)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"fd {fd} is not a Unix stream socket")
        self._listeners.append((sock, identity))

    def serve_forever(self) -> None:
        assert self._listeners
        selector = None
        if len(self._listeners) > 1:
            selector = selectors.DefaultSelector()
            for sock, identity in self._listeners:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, identity)
        listener, identity = self._listeners[0]
        while True:
            self._slots.acquire()   # a bounded number of connection threads
            try:
                if selector is not None:
                    listener, identity = self._ready(selector)
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:   # another accept took it first
                    self._slots.release()
                    continue
                sock.setblocking(True)
                threading.Thread(target=self._serve_connection, args=(sock, identity), daemon=True).start()
            except BaseException:
                self._slots.release()
                raise

    @staticmethod
    def _ready(selector) -> tuple[socket.socket, str | None]:
        while True:
            for key, _ in selector.select():
                return key.fileobj, key.data

    def _serve_connection(self, sock: socket.socket, identity: str | None = None) -> None:
        try:
            pid, uid, _gid = peer_credentials(sock)
            if identity is not None:
                caller = identity
            else:
                caller = SUPERVISOR if uid == 0 else self.principal_of_uid(uid)
            # Refusals still get an answer (PermissionDenied), but a caller that
            # may call nothing cannot make this provider buffer large frames.
            allowed = caller in self._may_call_something
            conn = protocol.Connection(sock, self.max_frame if allowed else UNAUTHORISED_MAX_FRAME)
        except BaseException:
            sock.close()
            self._slots.release()
            raise
        try:
            while True:
                try:
                    request = conn.recv_message()
                    if (type(request) is not list or len(request) != 3 or type(request[0]) is not str
                            or type(request[1]) is not list or type(request[2]) is not dict):
                        raise ProtocolError("request is not [service, args, kwargs]")
                    response = self._handle(caller, uid, pid, request[0], request[1], request[2])
                    attachments: list[bytes] = []
                    if type(response[1]) is bytes and response[0] == protocol.OK:
                        response[1] = codec.attach(response[1], attachments)
                    try:
                        conn.send_message(response, attachments)
                    except SerializationError as e:   # raised while encoding, before any byte is sent
                        conn.send_message(self._error("pspy.SerializationError",
                                                      f"return value of {self.provider}.{request[0]}: {e}"))
                except protocol.PeerClosed:
                    return
                except ProtocolError as e:
                    log.warning("closing connection from %s (uid %d, pid %d): %s", caller, uid, pid, e)
                    return
                except OSError:
                    return
        finally:
            conn.close()
            self._slots.release()

    def _handle(self, caller: str | None, uid: int, pid: int, name: str, args: list, kwargs: dict) -> list:
        """The response to one request, as a value still to be encoded."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            if name == protocol.PING:
                return [protocol.OK, self.provider]
            return self._error("LookupError", f"provider {self.provider!r} has no service {name!r}")
        if caller not in endpoint.callers:
            who = caller or f"an unknown process (uid {uid})"
            allowed = ", ".join(sorted(endpoint.callers)) or "none"
            log.warning("denied: %s (uid %d, pid %d) called %s.%s; allowed callers: %s",
                        who, uid, pid, self.provider, name, allowed)
            return [protocol.DENIED, f"{who} may not call {self.provider}.{name} (allowed callers: {allowed})"]
        tid = threading.get_native_id()
        ACTIVE[tid] = f"{self.provider}.{name}"   # for seccomp's denial reports
        if ON_CALL is not None:
            ON_CALL(tid, name)
        try:
            if kwargs:
                if any(type(k) is not str for k in kwargs):
                    raise TypeError("keyword argument names must be strings")
                result = endpoint.func(*args, **kwargs)
            else:
                result = endpoint.func(*args)
            if endpoint.is_async or type(result) is types.CoroutineType:
                result = self._run_coroutine(result)
        except Exception as e:  # noqa: BLE001 - every service failure goes back to the caller
            response = self._exception_response(e)
            # The caller sees a traceback only in debug mode; the provider's
            # own log always keeps one, so a failure in production leaves a trace.
            # The headline escapes line breaks: the message may carry the caller's input.
            log.error("service %s.%s raised %s: %s", self.provider, name, response[1]["type"],
                      response[1]["message"].replace("\n", "\\n"), exc_info=e)
            return response
        return [protocol.OK, result]

    def _run_coroutine(self, coro):
        # One event loop per connection thread, kept: async services may share
        # loop-bound state across calls on the same connection.
        loop = getattr(self._loop_local, "loop", None)
        if loop is None:
            import asyncio   # only providers with async services pay for it
            loop = self._loop_local.loop = asyncio.new_event_loop()
        return loop.run_until_complete(coro)

    def _exception_response(self, exc: Exception) -> list:
        t = type(exc)
        registered = codec.registered_name(t)
        if registered is not None:
            type_name = registered
        elif t.__module__ == "builtins":
            type_name = t.__qualname__
        elif t.__module__ == "pspy.errors":
            type_name = f"pspy.{t.__qualname__}"
        else:
            type_name = f"{t.__module__}.{t.__qualname__}"
        tb = "".join(traceback.format_exception(exc)) if self.debug else None
        args = list(exc.args)
        try:
            codec.encode(args)
        except SerializationError:
            args = None
        return self._error(type_name, str(exc), tb, args)

    def _error(self, type_name: str, message: str, tb: str | None = None, args=None) -> list:
        return [protocol.ERROR, {"type": type_name, "message": message, "args": args, "traceback": tb}]


def builtin_exception(type_name: str) -> type[BaseException] | None:
    """The builtin exception class for a name, if it is one that is safe to rebuild."""
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return None
