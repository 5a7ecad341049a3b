"""The provider side: accept connections, authorise each call, run the service.

The caller's identity comes from the kernel (SO_PEERCRED on the Unix
socket, read once at accept), mapped to a principal through the plan's
uids; or, rootless, where every principal has the same uid, from the
listening socket the connection came in on (each caller's view holds only
its own). Nothing the caller sends is trusted for it. A thread serves each
connection, so a slow call does not hold up other callers. A malformed
frame closes that connection only.

No caller can starve the others. The socket's folder admits only the
provider's callers (sockets.py); at accept, a peer that may call no service
here (a principal outside every ``callers``, a uid no principal has) is
answered DENIED and closed before it holds anything, and each caller may
hold at most MAX_CONNECTIONS_PER_CALLER connections: past that, the new one
is answered NOT_SERVED (the client raises ServiceUnavailable) and closed.
Accepting never waits on a slot, so one caller's connections never queue
another's. A connection idle for IDLE_TIMEOUT, or a frame that started and
is not whole within FRAME_TIMEOUT, is closed.
"""

from __future__ import annotations

import builtins
import errno
import inspect
import logging
import os
import selectors
import socket
import struct
import sys
import threading
import time
import traceback
import types
from dataclasses import dataclass
from typing import Callable

from ..errors import ProtocolError, SerializationError
from . import codec, protocol
from .protocol import set_kernel_timeout

log = logging.getLogger("pspy.rpc")

SUPERVISOR = "pspy-supervisor"   # the name given to uid 0 peers: allowed to ping only
_PEERCRED = struct.Struct("3i")
MAX_CONNECTIONS_PER_CALLER = 128   # per principal (the supervisor counts as one); past it, refused
IDLE_TIMEOUT = 10.0              # seconds a connection may wait for its next request (client.py reuses below half)
FRAME_TIMEOUT = 5.0              # seconds for a frame that started to arrive whole; and for each blocked send
_REFUSAL_LOG_EVERY = 10.0        # seconds between log lines about one caller's refused connections
UNAUTHORISED_MAX_FRAME = 4096    # a caller who may call nothing cannot make us buffer more
ACTIVE: dict[int, str] = {}      # native thread id -> "Provider.service" it ran last (kept: read later)
ON_CALL: Callable[[int, str], None] | None = None   # pspy learn: told (thread id, service) before each call
ON_AUTHORISED: Callable[[str, str], None] | None = None   # pspy learn: told (caller, service) of each call
_STOP = object()                 # the selector key of the stop pipe (Server.stop_accepting)
# The exit status of a provider that ended itself for a call past its
# call_timeout (isolation="process"): the supervisor restarts it at once.
EXIT_CALL_TIMEOUT = 124


@dataclass
class Endpoint:
    """One callable service name, e.g. ``transfer`` or ``Auth.login``."""
    name: str
    func: Callable
    callers: frozenset[str]
    is_async: bool = False
    # Called as func(state, *args) with the connection's ConnectionState:
    # calls on one connection share what it holds (a database session).
    per_connection: bool = False


class ConnectionState:
    """What the calls on one connection share: who is calling (the kernel's
    word, read at accept), the connection, and a value a per-connection
    endpoint keeps there; its close() runs when the connection ends."""

    __slots__ = ("caller", "uid", "pid", "conn", "value")

    def __init__(self, caller: str, uid: int, pid: int, conn):
        self.caller, self.uid, self.pid, self.conn = caller, uid, pid, conn
        self.value = None

    def close(self) -> None:
        value, self.value = self.value, None
        if value is not None:
            try:
                value.close()
            except Exception:  # noqa: BLE001 - the connection is gone either way; say why
                log.exception("closing the state of %s's connection", self.caller)


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, as the kernel recorded them at connect()."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)


_ACCEPT_LATER = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO)


def refuse(sock: socket.socket, status: int, message: str) -> None:
    """Answer a connection that will not be served with one [status, message]
    frame, then close it. A request that already came is read and dropped
    first, so the caller gets this answer rather than a reset; nothing here
    waits on the caller."""
    try:
        sock.setblocking(False)
        try:
            sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            pass
        protocol.Connection(sock, protocol.DEFAULT_MAX_FRAME).send_message([status, message])
    except (OSError, ProtocolError):
        pass
    finally:
        sock.close()


def _outsider_uid() -> int | None:
    """The uid a process outside this process's user namespace shows as
    (namespace mode: the overflow uid, the supervisor and ``pspy status``
    included); None where root is mapped (chroot mode: root is uid 0)."""
    try:
        with open("/proc/self/uid_map") as f:
            ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
    except (OSError, ValueError):
        return None
    if any(inside <= 0 < inside + count for inside, _, count in ranges):
        return None
    try:
        with open("/proc/sys/kernel/overflowuid") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65534   # the kernel's default


class Server:
    def __init__(self, provider: str, endpoints: dict[str, Endpoint],
                 principal_of_uid: Callable[[int], str | None], *,
                 debug: bool = False, max_frame: int = protocol.DEFAULT_MAX_FRAME,
                 call_timeout: float | None = None):
        self.provider = provider
        self.endpoints = endpoints
        for endpoint in endpoints.values():
            endpoint.is_async = endpoint.is_async or inspect.iscoroutinefunction(endpoint.func)
        self.principal_of_uid = principal_of_uid
        self.debug = debug
        self.max_frame = max_frame
        self._listeners: list[tuple[socket.socket, str | None]] = []   # (socket, identity or None: by uid)
        self._loop_local = threading.local()
        self._held: dict[str, int] = {}          # caller -> connections it holds now
        self._held_lock = threading.Lock()
        self._refusals_logged: dict[str, float] = {}   # caller -> when its last refusal was logged
        self._outsider_uid = _outsider_uid()
        self._may_call_something = frozenset().union(*(e.callers for e in endpoints.values()))
        self.per_call = None   # isolation="per_call": the pspy.percall.Zygote that runs every call
        self._watchdog = _Watchdog(self, call_timeout) if call_timeout else None
        self._accepting = threading.Lock()
        self._stopped = False
        self._stop_pipe = os.pipe2(os.O_CLOEXEC) if call_timeout else (-1, -1)

    def bind(self, path: str) -> None:
        try:
            os.unlink(path)   # a stale socket from a previous run of this provider
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        # Whoever reaches the socket may connect (its folder decides who can:
        # sockets.py); whoever may call nothing here is closed at accept.
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
        if len(self._listeners) > 1 or self._watchdog is not None:
            # With a watchdog the loop must be stoppable (stop_accepting): a
            # connection that comes while this provider ends itself stays in
            # the listening socket's queue, for the provider started next.
            selector = selectors.DefaultSelector()
            for sock, identity in self._listeners:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, identity)
            if self._watchdog is not None:
                selector.register(self._stop_pipe[0], selectors.EVENT_READ, _STOP)
        listener, identity = self._listeners[0]
        while True:
            if selector is not None:
                listener, identity = self._ready(selector)
            with self._accepting:
                if not (identity is _STOP or self._stopped):
                    self._accept(listener, identity)
                    continue
            threading.Event().wait()   # the process is ending: accept nothing more

    def _accept(self, listener: socket.socket, identity: str | None) -> None:
        """Take one connection, and either refuse it at once or give it a
        thread. Never waits on the peer: one caller's connections cannot
        keep this loop from another's."""
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):   # another accept took it first
            return
        except OSError as e:
            if e.errno not in _ACCEPT_LATER:
                raise   # the listening socket itself is gone
            # Out of descriptors or memory: the callers wait in the queue; no busy loop.
            log.warning("cannot accept a connection now: %s", e)
            time.sleep(0.01)
            return
        try:
            pid, uid, _gid = peer_credentials(sock)
        except OSError:
            sock.close()
            return
        caller = identity if identity is not None else self.caller_of_uid(uid)
        if caller != SUPERVISOR and caller not in self._may_call_something:
            who = caller or f"uid {uid}"
            self._log_refusal(who, "refused a connection from %s (uid %d, pid %d): it may call no service of %s",
                              who, uid, pid, self.provider)
            refuse(sock, protocol.DENIED, f"{who} may call no service of {self.provider}; connection refused")
            return
        with self._held_lock:
            held = self._held.get(caller, 0)
            if held < MAX_CONNECTIONS_PER_CALLER:
                self._held[caller] = held + 1
        if held >= MAX_CONNECTIONS_PER_CALLER:
            self._log_refusal(caller, "refused a connection from %s (uid %d, pid %d): it holds %d already, "
                              "the most one caller may", caller, uid, pid, held)
            refuse(sock, protocol.NOT_SERVED,
                   f"{caller} already holds {held} connections to provider {self.provider!r}, the most one "
                   "caller may; this one was refused and the request was not delivered (close idle "
                   "connections, or share a pool)")
            return
        try:
            threading.Thread(target=self._serve_connection, args=(sock, caller, uid, pid), daemon=True).start()
        except RuntimeError as e:
            # No thread to be had (its processes or memory limit is reached,
            # a call's fork bomb say): this caller is turned away, the
            # provider keeps serving.
            log.warning("turning a connection away: %s", e)
            self._release(caller)
            refuse(sock, protocol.NOT_SERVED, f"provider {self.provider!r} has no thread to serve this "
                                              "connection now; the request was not delivered")
            time.sleep(0.01)

    def caller_of_uid(self, uid: int) -> str | None:
        """The principal a peer uid is, SUPERVISOR for root, or None."""
        if uid == 0:
            return SUPERVISOR
        name = self.principal_of_uid(uid)
        if name is None and uid == self._outsider_uid:
            # Namespace mode: a process outside the app's user namespace,
            # which the kernel shows as the overflow uid. The socket's folder
            # admits no one from outside but root (sockets.admit_only).
            return SUPERVISOR
        return name

    def _release(self, caller: str) -> None:
        with self._held_lock:
            self._held[caller] -= 1

    def _log_refusal(self, key: str, message: str, *args) -> None:
        # A peer that reconnects in a loop must not flood the provider's log.
        now = time.monotonic()
        if now - self._refusals_logged.get(key, -_REFUSAL_LOG_EVERY) >= _REFUSAL_LOG_EVERY:
            self._refusals_logged[key] = now
            log.warning(message, *args)

    def stop_accepting(self) -> None:
        """Accept no more connections (the process is about to end); returns
        once no accept is under way."""
        self._stopped = True
        os.write(self._stop_pipe[1], b"x")
        self._accepting.acquire()

    @staticmethod
    def _ready(selector) -> tuple[socket.socket, str | None]:
        while True:
            for key, _ in selector.select():
                return key.fileobj, key.data

    def _serve_connection(self, sock: socket.socket, caller: str, uid: int, pid: int) -> None:
        try:
            sock.setblocking(True)
            # Kernel timeouts, not Python's (which polls before every recv):
            # the small-call path pays nothing for them.
            set_kernel_timeout(sock, socket.SO_SNDTIMEO, FRAME_TIMEOUT)
            # Refusals still get an answer (PermissionDenied), but a caller that
            # may call nothing (the supervisor) cannot make this provider buffer large frames.
            allowed = caller in self._may_call_something
            conn = protocol.Connection(sock, self.max_frame if allowed else UNAUTHORISED_MAX_FRAME)
            conn.hold_frames_to(IDLE_TIMEOUT, FRAME_TIMEOUT)
            state = ConnectionState(caller, uid, pid, conn)
        except BaseException:
            sock.close()
            self._release(caller)
            raise
        try:
            while True:
                try:
                    request = conn.recv_message()
                    if (type(request) is not list or len(request) != 3 or type(request[0]) is not str
                            or type(request[1]) is not list or type(request[2]) is not dict):
                        raise ProtocolError("request is not [service, args, kwargs]")
                    response = self._handle(caller, uid, pid, request[0], request[1], request[2], conn, state)
                    if response is None:
                        # The watchdog answered this call (past its call_timeout)
                        # and is ending the process: never touch the socket again.
                        threading.Event().wait()
                    self.send_response(conn, request[0], response)
                    request = response = None   # an idle connection keeps no decoded request alive
                except protocol.PeerClosed:
                    return
                except ProtocolError as e:
                    if isinstance(e, codec.FrameRefused):
                        # Read whole, so the stream is in step: the caller learns which bound
                        # (as a value that could not cross), then the connection closes.
                        try:
                            conn.send_message(self._error("pspy.SerializationError",
                                                          f"provider {self.provider!r} refused the request: {e}"))
                        except (OSError, ProtocolError):
                            pass
                    log.warning("closing connection from %s (uid %d, pid %d): %s", caller, uid, pid, e)
                    return
                except OSError:   # idle past IDLE_TIMEOUT (EAGAIN), a send that could not finish, a reset
                    return
        finally:
            state.close()
            conn.close()
            self._release(caller)

    def _handle(self, caller: str | None, uid: int, pid: int, name: str, args: list, kwargs: dict,
                conn: protocol.Connection | None = None, state: ConnectionState | None = None) -> list | None:
        """The response to one request, as a value still to be encoded; None
        when the watchdog already answered it (past the call_timeout)."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            if name == protocol.PING:
                return [protocol.OK, self.provider]
            if name == protocol.MAY_CALL and len(args) == 1 and type(args[0]) is str and not kwargs:
                asked = self.endpoints.get(args[0])
                if asked is None:
                    return self._error("LookupError", f"provider {self.provider!r} has no service {args[0]!r}")
                return [protocol.OK, caller in asked.callers]
            return self._error("LookupError", f"provider {self.provider!r} has no service {name!r}")
        if caller not in endpoint.callers:
            who = caller or f"an unknown process (uid {uid})"
            allowed = ", ".join(sorted(endpoint.callers)) or "none"
            log.warning("denied: %s (uid %d, pid %d) called %s.%s; allowed callers: %s",
                        who, uid, pid, self.provider, name, allowed)
            return [protocol.DENIED, f"{who} may not call {self.provider}.{name} (allowed callers: {allowed})"]
        if ON_AUTHORISED is not None:
            ON_AUTHORISED(caller, name)
        if self.per_call is not None:
            return self.per_call.run(caller, uid, pid, name, args, kwargs)
        if self._watchdog is None:
            return self.invoke(endpoint, args, kwargs, state)
        token = self._watchdog.start(conn, name)
        try:
            response = self.invoke(endpoint, args, kwargs, state)
        finally:
            answered = not self._watchdog.finish(token)
        return None if answered else response

    def send_response(self, conn: protocol.Connection, name: str, response: list) -> None:
        attachments: list[bytes] = []
        if type(response[1]) is bytes and response[0] == protocol.OK:
            response[1] = codec.attach(response[1], attachments)
        try:
            conn.send_message(response, attachments)
        except SerializationError as e:   # raised while encoding, before any byte is sent
            conn.send_message(self._error("pspy.SerializationError",
                                          f"return value of {self.provider}.{name}: {e}"))

    def invoke(self, endpoint: Endpoint, args: list, kwargs: dict, state: ConnectionState | None = None) -> list:
        """Run one authorised call in this process: the response, still to be encoded."""
        name = endpoint.name
        tid = threading.get_native_id()
        ACTIVE[tid] = f"{self.provider}.{name}"   # for seccomp's denial reports
        if ON_CALL is not None:
            ON_CALL(tid, name)
        try:
            if endpoint.per_connection:
                if state is None or kwargs:
                    raise TypeError(f"{name} takes positional arguments, on a connection of its own")
                result = endpoint.func(state, *args)
            elif kwargs:
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


class _Watchdog:
    """call_timeout for isolation="process": a thread cannot be stopped, so
    when a call passes its time the watchdog answers it with ServiceTimeout
    and ends the whole provider (EXIT_CALL_TIMEOUT), whose supervisor starts
    it again at once. Other calls in flight see CallInterrupted."""

    def __init__(self, server: Server, seconds: float):
        self.server = server
        self.seconds = seconds
        self._cond = threading.Condition()
        self._calls: dict[int, tuple[float, protocol.Connection | None, str]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None

    def start(self, conn: protocol.Connection | None, name: str) -> int:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pspy-call-timeout", daemon=True)
                self._thread.start()
            self._next += 1
            self._calls[self._next] = (time.monotonic() + self.seconds, conn, name)
            self._cond.notify()
            return self._next

    def finish(self, token: int) -> bool:
        """True if the call was still the caller's to answer."""
        with self._cond:
            return self._calls.pop(token, None) is not None

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                expired = [(t, c) for t, c in self._calls.items() if c[0] <= now]
                if expired:
                    token, (_, conn, name) = expired[0]
                    del self._calls[token]
                    break
                nearest = min((c[0] for c in self._calls.values()), default=None)
                self._cond.wait(None if nearest is None else nearest - now)
        provider = self.server.provider
        self.server.stop_accepting()
        log.error("service %s.%s passed its call_timeout of %ss: answering ServiceTimeout and ending "
                  "this provider (the supervisor starts it again)", provider, name, self.seconds)
        try:
            if conn is not None:
                conn.send_message(self.server._error(
                    "pspy.ServiceTimeout", f"{provider}.{name} passed its call_timeout of {self.seconds}s "
                    "and was stopped; its provider is starting again"))
        except (OSError, ProtocolError):
            pass
        flush_and_exit(EXIT_CALL_TIMEOUT)


def flush_and_exit(status: int) -> None:
    """End this process at once (no unwinding, no atexit), keeping what it printed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def builtin_exception(type_name: str) -> type[BaseException] | None:
    """The builtin exception class for a name, if it is one that is safe to rebuild."""
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return None
