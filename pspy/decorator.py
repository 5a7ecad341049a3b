"""``@pspy.service``: the one thing most apps import.

Without a pspy runtime (plain ``python app.py``) it returns the function or
class unchanged. Under pspy it keeps the object in its own provider and
replaces it with an RPC stub everywhere else. The arguments are read by
``pspy bootstrap`` from the source (see discover), so they must be literals.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from . import runtime
from .rpc import codec

T = TypeVar("T")


def service(*, service_provider: str, group: str | None = None,
            perms: dict[str, int] | None = None, extra_groups: list[str] | None = None,
            callers: list[str] | None = None, timeout: float | None = None,
            network: bool | None = None, seccomp: str | dict | None = None,
            limits: dict | None = None, isolation: str | None = None) -> Callable[[T], T]:
    """Declare a function or class as a service run by ``service_provider``.

    group: the provider's primary group (default: a group named after it).
    perms: app paths (globs allowed) the provider owns, with their modes.
    extra_groups: supplementary groups of the provider.
    callers: principals allowed to call (default: every principal of the app).
    timeout: seconds a caller waits for this service (default: the app's rpc_timeout).
    network: whether the provider keeps the host's network (namespace mode;
      default False: an empty network namespace with loopback only).
    seccomp: the provider's system-call filter: 'default' (the default),
      'web', 'strict', 'none', a .json OCI profile in the app, or a dict
      {"allow": [...], "deny": [...], "default_action": "errno"|"kill"|"log"}
      layered on 'default'.
    limits: the provider's resource limits, a dict of cpu_seconds, memory
      (bytes or '64M'), processes, open_files, file_size, cpus and
      call_timeout (wall seconds per call); see pspy/limits.py.
    isolation: 'process' (the default: one process serves every call) or
      'per_call': every call runs in a fresh process forked from a ready,
      pre-imported copy of the provider, which exits after replying.
    """
    def decorate(obj: T) -> T:
        rt = runtime.current()
        if rt is None:
            return obj
        return rt.bind(service_provider, obj)
    return decorate


def serializable(cls: type | None = None, *, name: str | None = None):
    """Let a dataclass or an exception class cross between principals.

    ``@pspy.serializable`` or ``@pspy.serializable(name="Point")``. The class
    travels by name (default: its qualified name) and fields; the receiver
    rebuilds it only if it registered a class under that name, with the same
    fields. Register the class on both sides (import the module that defines it).
    """
    def register(target: type) -> type:
        return codec.register(target, name)
    return register(cls) if cls is not None else register
