"""What ``@pspy.service`` does inside a principal, and the provider entry point.

A principal learns who it is from ``PSPY_PRINCIPAL`` and reads the plan at
``PSPY_PLAN``; both are set by the supervisor. Services of its own provider
are kept as they are and served; every other service becomes a stub that
calls its provider. ``python -m pspy.runtime`` is the provider entry point.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
import threading

from .errors import PermissionDenied, PspyError, SandboxError, SerializationError, ServiceUnavailable
from .plan import Plan, PrincipalPlan, ServicePlan
from .rpc import codec
from .rpc.client import Client
from .rpc.server import SUPERVISOR, Endpoint, Server

ENV_PRINCIPAL = "PSPY_PRINCIPAL"
ENV_PLAN = "PSPY_PLAN"
ENV_DEBUG = "PSPY_DEBUG"
ENV_LISTEN_FD = "PSPY_LISTEN_FD"   # the listening socket the supervisor made for this provider
ENV_CALLER_FDS = "PSPY_CALLER_FDS"  # rootless: "fd=caller,..." one listening socket per caller
ENV_SECCOMP = "PSPY_SECCOMP"      # "none": the plan gives the principal no filter (sitecustomize skips the plan)
ENV_CONTROL_FD = "PSPY_CONTROL_FD"  # a copy started ahead: says "ready", serves once told "go" (supervisor.py)
CONTROL_READY, CONTROL_GO = b"ready", b"go"
SD_LISTEN_FDS_START = 3   # systemd's socket activation hands its sockets over from this fd on

_current: "Runtime | None" = None
_current_lock = threading.Lock()


def current() -> "Runtime | None":
    """The runtime of this process, or None when the app runs without pspy."""
    global _current
    if _current is None and os.environ.get(ENV_PRINCIPAL):
        with _current_lock:
            if _current is None:
                plan_file = os.environ.get(ENV_PLAN, "/.pspy/plan.json")
                try:
                    with open(plan_file) as f:
                        import json
                        plan = Plan.from_dict(json.load(f))
                except OSError as e:
                    raise PspyError(f"{plan_file}: cannot read the pspy plan: {e.strerror}") from None
                _current = Runtime(plan, os.environ[ENV_PRINCIPAL])
    return _current


class Runtime:
    def __init__(self, plan: Plan, principal: str):
        self.plan = plan
        self.me: PrincipalPlan = plan.principal(principal)
        self.served: dict[str, object] = {}
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()

    def bind(self, provider: str, obj):
        """Called by the decorator: keep and serve our own services, stub the rest."""
        name = obj.__name__
        try:
            owner = self.plan.principal(provider)
        except PspyError:
            owner = None
        spec = owner.service(name) if owner is not None else None
        if spec is None:
            raise PspyError(f"service {provider}.{name} ({_where(obj)}) is not in this jail's plan; "
                            "the app changed since bootstrap: run 'pspy bootstrap' again")
        if provider == self.me.name:
            self.served[name] = obj
            return obj
        if spec.kind == "class":
            return _class_proxy(self, provider, obj, spec)
        return _function_stub(self, provider, obj, spec)

    def client(self, provider: str) -> Client:
        c = self._clients.get(provider)   # every stub call comes here: no lock once it exists
        if c is not None:
            return c
        with self._lock:
            c = self._clients.get(provider)
            if c is None:
                socket_path = self.plan.principal(provider).socket
                c = self._clients[provider] = Client(provider, socket_path, timeout=self.plan.rpc_timeout,
                                                     max_frame=self.plan.max_frame)
            return c


def _where(obj) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (OSError, TypeError):
        return getattr(obj, "__module__", "?")


def _call(rt: Runtime, provider: str, service: str, original, args, kwargs, timeout=None,
          bound_self: bool = False, callers: list[str] | None = None):
    try:
        return rt.client(provider).call(service, args, kwargs, timeout=timeout)
    except ServiceUnavailable:
        if callers is not None and rt.me.name not in callers:
            # In namespace mode a provider none of whose services this principal
            # may call is not even in its view: say why, rather than "unreachable".
            raise PermissionDenied(f"{rt.me.name} may not call {provider}.{service} (allowed callers: "
                                   f"{', '.join(callers) or 'none'}); its socket is not in "
                                   f"{rt.me.name}'s view") from None
        raise
    except SerializationError as e:
        # A method's signature starts with self, which is not sent: (None,) stands in for it.
        which = _which_argument(provider, service, original, ((None,) + tuple(args)) if bound_self else args,
                                kwargs)
        if which is None:
            raise   # not an argument: the provider's return value, already named
        raise SerializationError(which) from e


def _which_argument(provider, service, original, args, kwargs) -> str | None:
    """Name the parameter whose value cannot cross, as the minitwit lesson asks;
    None when every argument encodes."""
    try:
        bound = inspect.signature(original).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {f"argument {i}": v for i, v in enumerate(args)} | dict(kwargs)
    for param, value in bound.items():
        try:
            codec.encode(value)
        except SerializationError as e:
            return f"calling {provider}.{service}: parameter {param!r}: {e}"
    return None


def _function_stub(rt: Runtime, provider: str, original, spec: ServicePlan):
    if spec.kind == "async_function":
        @functools.wraps(original)
        async def async_stub(*args, **kwargs):
            import asyncio
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                None, lambda: _call(rt, provider, spec.name, original, args, kwargs, spec.timeout,
                                    callers=spec.callers))
        async_stub.__pspy_remote__ = provider
        return async_stub

    @functools.wraps(original)
    def stub(*args, **kwargs):
        return _call(rt, provider, spec.name, original, args, kwargs, spec.timeout, callers=spec.callers)
    stub.__pspy_remote__ = provider
    return stub


def _class_proxy(rt: Runtime, provider: str, cls, spec: ServicePlan):
    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise TypeError(f"{cls.__name__} is a class service of {provider!r}: it is created once, "
                            "without arguments, in its provider; call it as "
                            f"{cls.__name__}() on this side")

    namespace = {"__init__": __init__, "__doc__": cls.__doc__, "__module__": cls.__module__,
                 "__pspy_remote__": provider}
    for method in spec.methods:
        original = getattr(cls, method, None)
        remote_name = f"{spec.name}.{method}"

        def make(remote_name=remote_name, original=original):
            # The provider calls the bound method of its one instance, so
            # `self` is not sent; (None,) stands in for it when naming parameters.
            def send(self, *args, **kwargs):
                return _call(rt, provider, remote_name, original, args, kwargs, spec.timeout,
                             bound_self=True, callers=spec.callers)
            if original is not None:
                functools.update_wrapper(send, original)
            return send
        namespace[method] = make()
    return type(cls.__name__, (), namespace)


# --- provider entry point ----------------------------------------------------------

def _endpoints(rt: Runtime) -> dict[str, Endpoint]:
    endpoints = {}
    for spec in rt.me.services:
        if spec.kind == "database":
            endpoints[spec.name] = _database_endpoint(rt, spec)
            continue
        obj = rt.served.get(spec.name)
        if obj is None:
            raise PspyError(f"{spec.file}:{spec.line}: service {spec.name!r} was not defined when "
                            f"module {spec.module!r} was imported")
        callers = frozenset(spec.callers)
        if spec.kind == "class":
            instance = obj()
            for method in spec.methods:
                endpoints[f"{spec.name}.{method}"] = Endpoint(f"{spec.name}.{method}",
                                                              getattr(instance, method), callers)
        else:
            endpoints[spec.name] = Endpoint(spec.name, obj, callers)
    return endpoints


def _database_endpoint(rt: Runtime, spec: ServicePlan) -> Endpoint:
    """The databases this provider owns, served to their grantees (pspy/data/session.py)."""
    from .data.session import DatabaseService
    owned = [d for d in rt.plan.databases if d["owner"] == rt.me.name]
    # A statement is stopped a little before its caller stops waiting (so the
    # caller hears why), and no value may be longer than a frame can carry.
    service = DatabaseService(rt.plan.app_dir, owned, {p.name: p.grants for p in rt.plan.principals},
                              time_limit=0.9 * rt.plan.rpc_timeout, max_length=rt.plan.max_frame,
                              transaction_limit=2 * rt.plan.rpc_timeout)
    return Endpoint(spec.name, service, frozenset(spec.callers), per_connection=True)


def listening_fds(env, pid: int | None = None) -> list[tuple[int, str | None]]:
    """The listening sockets the supervisor handed over, from the environment:
    (fd, None) for the provider's main socket, then (fd, caller) for each
    caller's own (rootless). Started by systemd (pspy export systemd), the
    socket comes by socket activation instead: LISTEN_FDS sockets from fd 3,
    meant for this process only if LISTEN_PID is its pid (sd_listen_fds(3))."""
    out: list[tuple[int, str | None]] = []
    if env.get(ENV_LISTEN_FD) is not None:
        out.append((int(env[ENV_LISTEN_FD]), None))
        for item in filter(None, env.get(ENV_CALLER_FDS, "").split(",")):
            fd, _, caller = item.partition("=")
            out.append((int(fd), caller))
    elif env.get("LISTEN_FDS") and env.get("LISTEN_PID") == str(os.getpid() if pid is None else pid):
        out.extend((SD_LISTEN_FDS_START + i, None) for i in range(int(env["LISTEN_FDS"])))
    return out


def _attribute_learned_calls(provider: str, endpoints: dict) -> None:
    """pspy learn: number the services in the log, and tell the kernel-side
    recorder which one each serving thread runs."""
    from ._native import lib
    from .rpc import server as server_module
    index = {name: i for i, name in enumerate(sorted(endpoints), 1)}
    for name, i in index.items():
        print(f"pspy-learn-service {i} {provider}.{name}", file=sys.stderr, flush=True)
    server_module.ON_CALL = lambda tid, name: lib.pspy_learn_set_service(tid, index.get(name, 0))
    seen: set[tuple[str, str]] = set()

    def authorised(caller: str, name: str) -> None:
        # Who calls what, once per pair: pspy learn writes it beside the
        # profiles, and analyze finds services every principal may call
        # though one does. The caller is the kernel's word (SO_PEERCRED).
        if (caller, name) not in seen:
            seen.add((caller, name))
            print(f"pspy-learn-call {caller} {provider}.{name}", file=sys.stderr, flush=True)
    server_module.ON_AUTHORISED = authorised


def serve_provider() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {os.environ.get(ENV_PRINCIPAL)} %(levelname)s %(message)s")
    log = logging.getLogger("pspy.provider")
    rt = current()
    if rt is None or rt.me.kind != "provider":
        print("pspy.runtime: run by the pspy supervisor as a provider only", file=sys.stderr)
        return 2
    import prctl
    # PR_GET_SECCOMP is 0 without a filter; PSPY_CONFINED is set by the
    # sitecustomize once it loaded this principal's own (an outer filter, a
    # container's, would fool the first check alone).
    if rt.me.seccomp and (not prctl.get_seccomp() or os.environ.get("PSPY_CONFINED") != rt.me.name):
        # sitecustomize loads it before anything else; if it did not run
        # (python -S), the provider refuses to import the app unfiltered.
        print(f"pspy.runtime: {rt.me.name}'s seccomp filter is not loaded; not serving", file=sys.stderr)
        return 2
    sys.path.insert(0, rt.plan.app_dir)
    for module in rt.me.modules:
        importlib.import_module(module)
    endpoints = _endpoints(rt)
    if rt.plan.rootless:
        # Every principal has the same uid: a caller is known by the socket
        # it came in on (only its own is in its view); the main socket is the
        # supervisor's, for pings.
        uids: dict[int, str] = {}
    else:
        uids = {p.uid: p.name for p in rt.plan.principals}
    if rt.me.seccomp and rt.me.seccomp.get("learn"):
        _attribute_learned_calls(rt.me.name, endpoints)
    call_timeout = rt.me.limits.get("call_timeout")
    per_call = rt.me.isolation == "per_call"
    server = Server(rt.me.name, endpoints, uids.get, max_frame=rt.plan.max_frame,
                    debug=rt.plan.debug or os.environ.get(ENV_DEBUG) == "1",
                    call_timeout=None if per_call else call_timeout)
    listeners = listening_fds(os.environ)
    control = os.environ.pop(ENV_CONTROL_FD, None)   # not for the app's own children
    if per_call:
        # Forked now, with the app imported and before any serving thread.
        from . import percall
        from .limits import call_rlimits
        writable = [os.path.join(rt.plan.app_dir, p.pattern.rstrip("/")) for p in rt.me.perms if p.mode & 0o200]
        server.per_call = percall.Zygote(server, writable=writable, call_timeout=call_timeout,
                                         call_bpf=percall.call_filter(rt.me.seccomp),
                                         rlimits=call_rlimits(rt.me.limits),
                                         close_fds=[fd for fd, _ in listeners]
                                         + ([int(control)] if control is not None else []))
        try:
            server.per_call.start()
        except SandboxError as e:
            print(f"pspy.runtime: {e}", file=sys.stderr)
            return 2
    if listeners:
        for fd, caller in listeners:
            server.adopt(fd, caller if caller is not None else (SUPERVISOR if rt.plan.rootless else None))
    else:
        server.bind(rt.me.socket)
    if control is not None and not wait_for_go(int(control)):
        return 0   # the supervisor let this copy go unused (it is stopping)
    log.info("serving %s on %s as uid %d gid %d%s", ", ".join(sorted(endpoints)), rt.me.socket,
             os.getuid(), os.getgid(), ", every call in a process of its own" if per_call else "")
    server.serve_forever()
    return 0


def wait_for_go(fd: int) -> bool:
    """A ready copy: the app is imported and the listening sockets are in
    hand, but nothing is accepted until the supervisor says so (the copy
    before this one has died). True: serve now; False: the supervisor
    closed the channel, so end without serving."""
    import socket
    channel = socket.socket(fileno=fd)
    try:
        channel.sendall(CONTROL_READY)
        return channel.recv(16) == CONTROL_GO
    except OSError:
        return False
    finally:
        channel.close()
