"""The providers' listening sockets: made by the supervisor, handed to each
copy of a provider by descriptor, and pinged to tell whether one answers.

They are made through a descriptor on their folder, so a long jail path does
not hit the 108-byte limit of socket paths. The folder is root's (see
jail.prepare_root) and admits only the provider's callers: mode 0700 plus a
POSIX ACL granting search to each caller's uid, taken from the plan. So a
host user who is no caller (``nobody``, say) cannot even connect, and
cannot hold a connection slot; root (the supervisor, ``pspy status``) passes
as root does. In namespace mode the uids are the same on the host, so the
ACL holds for the bind-mounted folder too. Rootless, every principal is the
one host uid that owns the folder: 0700 keeps other host users out, and
each principal's mount view holds only the sockets it may call (the uid
cannot tell principals apart there).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct

from .plan import Plan, PrincipalPlan
from .rpc import protocol
from .rpc.client import Client

BACKLOG = 128
log = logging.getLogger("pspy")

# POSIX ACL as the kernel stores it (system.posix_acl_access): a version,
# then (tag, permissions, id) entries sorted by tag and id.
_ACL_VERSION = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF
_SEARCH = 0o1


def _socket_dir_fd(plan: Plan, jail_socket: str, flags: int = os.O_PATH) -> int:
    return os.open(plan.host_path(os.path.dirname(jail_socket)),
                   flags | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def listen(plan: Plan, principal: PrincipalPlan) -> socket.socket:
    """Create the provider's listening socket; the provider gets it by fd."""
    return _listen_at(plan, principal.socket, caller_uids(plan, principal))


def caller_listeners(plan: Plan, principal: PrincipalPlan) -> dict[str, socket.socket]:
    """Rootless: one listening socket per caller, each mounted into that caller's view alone."""
    if not plan.rootless:
        return {}
    return {caller: _listen_at(plan, plan.caller_socket(principal, caller), set())
            for caller in plan.callers_of(principal)}


def caller_uids(plan: Plan, provider: PrincipalPlan) -> set[int]:
    """The uids that may reach the provider's socket: its callers'. Rootless
    none apart from the folder's owner, whom every principal is."""
    if plan.rootless:
        return set()
    callers = set(plan.callers_of(provider))
    return {p.uid for p in plan.principals if p.name in callers}


def admit_only(dir_fd: int, uids: set[int]) -> None:
    """Make the folder open to its owner and to ``uids`` (search only: they
    can reach a socket by name, not list the folder); closed to all else."""
    entries = [(_ACL_USER_OBJ, 0o7, _ACL_UNDEFINED_ID)]
    entries += [(_ACL_USER, _SEARCH, uid) for uid in sorted(uids)]
    entries += [(_ACL_GROUP_OBJ, 0, _ACL_UNDEFINED_ID), (_ACL_MASK, _SEARCH, _ACL_UNDEFINED_ID),
                (_ACL_OTHER, 0, _ACL_UNDEFINED_ID)]
    if not uids:
        os.fchmod(dir_fd, 0o700)
        try:
            os.removexattr(dir_fd, "system.posix_acl_access")
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
        return
    acl = _ACL_VERSION.pack(2) + b"".join(_ACL_ENTRY.pack(*e) for e in entries)
    try:
        os.setxattr(dir_fd, "system.posix_acl_access", acl)   # sets the mode bits too (0710)
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
        # A filesystem without ACLs: the callers must still reach the socket.
        # Every host user can then connect; providers still refuse, at accept,
        # any uid that is no caller (in chroot mode).
        os.fchmod(dir_fd, 0o711)
        log.warning("the jail's filesystem has no POSIX ACLs: any host user can connect to the "
                    "provider sockets (providers refuse them at accept); put the jail on ext4, xfs or tmpfs")


def _listen_at(plan: Plan, jail_socket: str, uids: set[int]) -> socket.socket:
    dir_fd = _socket_dir_fd(plan, jail_socket, os.O_RDONLY)
    try:
        admit_only(dir_fd, uids)   # before the socket exists: no moment when others could connect
        name = os.path.basename(jail_socket)
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"/proc/self/fd/{dir_fd}/{name}")
        # The folder decides who can reach it (admit_only); the provider
        # refuses at accept whoever may call nothing, and authorises each call.
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
