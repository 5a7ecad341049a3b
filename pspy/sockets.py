"""The providers' listening sockets: made by the supervisor, handed to each
copy of a provider by descriptor, and pinged to tell whether one answers.

They are made through a descriptor on their folder, so a long jail path does
not hit the 108-byte limit of socket paths. The folder is root's (see
jail.prepare_root).
"""

from __future__ import annotations

import os
import socket

from .plan import Plan, PrincipalPlan
from .rpc import protocol
from .rpc.client import Client

BACKLOG = 128


def _socket_dir_fd(plan: Plan, jail_socket: str) -> int:
    return os.open(plan.host_path(os.path.dirname(jail_socket)),
                   os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def listen(plan: Plan, principal: PrincipalPlan) -> socket.socket:
    """Create the provider's listening socket; the provider gets it by fd."""
    return _listen_at(plan, principal.socket)


def caller_listeners(plan: Plan, principal: PrincipalPlan) -> dict[str, socket.socket]:
    """Rootless: one listening socket per caller, each mounted into that caller's view alone."""
    if not plan.rootless:
        return {}
    return {caller: _listen_at(plan, plan.caller_socket(principal, caller)) for caller in plan.callers_of(principal)}


def _listen_at(plan: Plan, jail_socket: str) -> socket.socket:
    dir_fd = _socket_dir_fd(plan, jail_socket)
    try:
        name = os.path.basename(jail_socket)
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"/proc/self/fd/{dir_fd}/{name}")
        # Anyone who can reach it may connect; the provider authorises each call by uid.
        os.chmod(name, 0o666, dir_fd=dir_fd)
        sock.listen(BACKLOG)
        return sock
    finally:
        os.close(dir_fd)


def remove(plan: Plan, jail_socket: str) -> None:
    """Unlink a socket file nobody serves any more (a stale one would only
    make callers wait on a connect that fails)."""
    try:
        dir_fd = _socket_dir_fd(plan, jail_socket)
    except OSError:
        return
    try:
        os.unlink(os.path.basename(jail_socket), dir_fd=dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def ping(plan: Plan, principal: PrincipalPlan, timeout: float = 1.0) -> bool:
    """Does the provider answer on its socket?"""
    dir_fd = _socket_dir_fd(plan, principal.socket)
    try:
        client = Client(principal.name, f"/proc/self/fd/{dir_fd}/{os.path.basename(principal.socket)}",
                        timeout=timeout)
        try:
            return client.call(protocol.PING) == principal.name
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False
        finally:
            client.close()
    finally:
        os.close(dir_fd)
