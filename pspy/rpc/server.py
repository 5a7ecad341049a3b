"""The provider side: accept connections, authorise each call, run the service.

The caller's identity comes from the kernel (SO_PEERCRED on the Unix
socket), mapped to a principal through the plan's uids; nothing the caller
sends is trusted for it. A malformed frame closes that connection only.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
import os
import socket
import struct
import threading
import traceback
from dataclasses import dataclass
from typing import Callable

from ..errors import ProtocolError, SerializationError
from . import codec, protocol

log = logging.getLogger("pspy.rpc")

SUPERVISOR = "pspy-supervisor"   # the name given to uid 0 peers: allowed to ping only
_PEERCRED = struct.Struct("3i")


@dataclass
class Endpoint:
    """One callable service name, e.g. ``transfer`` or ``Auth.login``."""
    name: str
    func: Callable
    callers: frozenset[str]


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
        self.principal_of_uid = principal_of_uid
        self.debug = debug
        self.max_frame = max_frame
        self._listener: socket.socket | None = None

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
        self._listener = sock

    def serve_forever(self) -> None:
        assert self._listener is not None
        while True:
            conn, _ = self._listener.accept()
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        with conn:
            pid, uid, _gid = peer_credentials(conn)
            caller = SUPERVISOR if uid == 0 else self.principal_of_uid(uid)
            while True:
                try:
                    frame = protocol.recv_frame(conn, self.max_frame)
                    request = codec.decode(frame)
                    if (not isinstance(request, list) or len(request) != 3
                            or not isinstance(request[0], str) or not isinstance(request[1], list)
                            or not isinstance(request[2], dict)):
                        raise ProtocolError("request is not [service, args, kwargs]")
                    response = self._handle(caller, uid, pid, *request)
                    protocol.send_frame(conn, response, self.max_frame)
                except protocol.PeerClosed:
                    return
                except ProtocolError as e:
                    log.warning("closing connection from %s (uid %d): %s", caller, uid, e)
                    return
                except OSError:
                    return

    def _handle(self, caller: str | None, uid: int, pid: int, name: str, args: list, kwargs: dict) -> bytes:
        if name == protocol.PING:
            return codec.encode([protocol.OK, self.provider])
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return self._error_response("LookupError",
                                        f"provider {self.provider!r} has no service {name!r}")
        if caller is None or caller not in endpoint.callers:
            who = caller or f"an unknown process (uid {uid})"
            log.warning("denied: %s (uid %d, pid %d) called %s.%s; allowed callers: %s",
                        who, uid, pid, self.provider, name, ", ".join(sorted(endpoint.callers)) or "none")
            return codec.encode([protocol.DENIED,
                                 f"{who} may not call {self.provider}.{name} "
                                 f"(allowed callers: {', '.join(sorted(endpoint.callers)) or 'none'})"])
        try:
            result = endpoint.func(*args, **{str(k): v for k, v in kwargs.items()})
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
        except Exception as e:  # noqa: BLE001 - every service failure goes back to the caller
            return self._exception_response(e)
        try:
            return codec.encode([protocol.OK, result])
        except SerializationError as e:
            return self._error_response("pspy.SerializationError",
                                        f"return value of {self.provider}.{name}: {e}")

    def _exception_response(self, exc: Exception) -> bytes:
        t = type(exc)
        if t.__module__ == "builtins":
            type_name = t.__qualname__
        elif t.__module__ == "pspy.errors":
            type_name = f"pspy.{t.__qualname__}"
        else:
            type_name = f"{t.__module__}.{t.__qualname__}"
        tb = "".join(traceback.format_exception(exc)) if self.debug else None
        return self._error_response(type_name, str(exc), tb)

    def _error_response(self, type_name: str, message: str, tb: str | None = None) -> bytes:
        return codec.encode([protocol.ERROR, {"type": type_name, "message": message, "traceback": tb}])


def builtin_exception(type_name: str) -> type[BaseException] | None:
    """The builtin exception class for a name, if it is one that is safe to rebuild."""
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, (SystemExit, KeyboardInterrupt)):
        return cls
    return None
