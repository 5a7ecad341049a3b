"""A principal's template mount namespace: its root built once, copied per start.

Building a principal's root (sandbox/mount.py) takes about eighty mount
calls; copying a mount namespace that already holds it takes one unshare.
So each principal's root is built once per supervisor (or per ``pspy
exec``), in a mount namespace nothing runs in, and every start of the
principal enters it and unshares a private copy (pspy/_native/spawn.c).
What must be new at each start is mounted on top of the copy by the
principal's PID 1 (``start_ops``): /proc of the new PID namespace, an empty
/tmp and an empty /dev/shm.

A template is taken from the jail as it is when the template is built: a
path that appears later is seen as its folder was bound then (a new file in
a folder bound read-only is there read-only; another principal's data
folders are not mounted at all, so nothing new appears in them).
"""

from __future__ import annotations

import functools
import os
import socket

from .. import _native as n
from ..errors import SandboxError
from ..plan import Plan, PrincipalPlan
from . import mount, user

_templates: dict[tuple[str, str, int], int] = {}


def template_fd(plan: Plan, principal: PrincipalPlan, userns_fd: int) -> int:
    """The principal's template (an fd on its mount namespace), built on first use."""
    key = (os.path.realpath(plan.jail), principal.name, os.fstat(userns_fd).st_ino)
    fd = _templates.get(key)
    if fd is None:
        fd = _templates[key] = build(plan, principal, userns_fd)
    return fd


def release(plan: Plan) -> None:
    """Close the app's templates: the namespaces go with the last reference."""
    jail = os.path.realpath(plan.jail)
    for key in [k for k in _templates if k[0] == jail]:
        os.close(_templates.pop(key))


def build(plan: Plan, principal: PrincipalPlan, userns_fd: int) -> int:
    """Build the principal's root in a new mount namespace; return an fd on it.

    A child makes the mount namespace (and a PID namespace), its child, PID 1
    there, builds the root and pivots into it, then exits: the /proc the
    template holds shows a namespace with no process left. The child then
    hands the supervisor an fd on the namespace (rootless, joining the app's
    user namespace made it non-dumpable, so /proc/PID/ns would be closed).
    """
    pspy_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _precompile(pspy_dir)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    middle = os.fork()
    if middle == 0:
        code = 1
        try:
            ours.close()
            os.umask(0o022)   # the root's folders are traversable whatever the supervisor's umask
            if plan.rootless:
                user.enter(userns_fd)   # without root, only the app's user namespace can own the new ones
            n.unshare(n.CLONE_NEWNS | n.CLONE_NEWPID)
            # Nothing mounted from here on may propagate back to the host.
            n.mount(None, "/", None, n.MS_REC | n.MS_PRIVATE, step="make / private")
            # Opened now: the pivot below moves this process's root too, onto a
            # /proc it is not in.
            ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            inner = os.fork()
            if inner == 0:
                try:
                    mount.enter(mount.build_root(plan, principal, pspy_dir))
                    os._exit(0)
                except BaseException as e:  # noqa: BLE001 - reported by the supervisor
                    theirs.sendall(f"{e}\n".encode(errors="replace")[:2000])
                    os._exit(1)
            _, status = os.waitpid(inner, 0)
            if status == 0:
                socket.send_fds(theirs, [b"ok\n"], [ns])
                code = 0
        except BaseException as e:  # noqa: BLE001
            theirs.sendall(f"{e}\n".encode(errors="replace")[:2000])
        finally:
            os._exit(code)
    theirs.close()
    try:
        answer, fds, _, _ = socket.recv_fds(ours, 4096, 1)
        if answer == b"ok\n" and len(fds) == 1:
            os.set_inheritable(fds[0], False)
            return fds[0]
        for fd in fds:
            os.close(fd)
        rest = answer
        while rest and not answer.endswith(b"\n"):
            rest = ours.recv(4096)
            answer += rest
        text = answer.decode(errors="replace").strip() or "its builder exited without a word"
        raise SandboxError(f"cannot build the root of {principal.name}: {text}")
    finally:
        ours.close()
        os.waitpid(middle, 0)


@functools.cache
def _precompile(pspy_dir: str) -> None:
    """pspy's own modules, compiled once on the host. Principals import them
    from a read-only bind and write no bytecode, so each start would compile
    again whatever the host never imported (the filter loader, the provider).
    A regular install has them compiled already; where the install is not
    writable (rootless, pspy installed by root), nothing is written."""
    import compileall
    try:
        compileall.compile_dir(pspy_dir, quiet=2)
    except OSError:
        pass


def start_ops(plan: Plan) -> list[tuple]:
    """PID 1's mounts on its copy of the template, in order: (kind, slot,
    source, target, fstype, data, flags, mode), for spawn.c."""
    proc_flags = n.MS_NOSUID | n.MS_NODEV | n.MS_NOEXEC
    ops: list[tuple] = [(n.OP_MOUNT, -1, "proc", "/proc", "proc", None, proc_flags, 0)]
    # The interpreter may live under /tmp on the host, bound on top of the
    # template's /tmp: kept by an fd while the new /tmp covers it, bound again.
    under_tmp = [p for p in mount.python_paths(plan.jail) if p == "/tmp" or p.startswith("/tmp/")]
    if len(under_tmp) > n.MAX_SLOTS:
        raise SandboxError(f"more than {n.MAX_SLOTS} Python prefixes under /tmp: {under_tmp}")
    for slot, path in enumerate(under_tmp):
        ops.append((n.OP_SAVE, slot, None, path, None, None, 0, 0))
    ops.append((n.OP_MOUNT, -1, "tmpfs", "/tmp", "tmpfs", mount.TMP_OPTIONS, mount.RO, 0))
    for slot, path in enumerate(under_tmp):
        ops.append((n.OP_MKDIRS, -1, None, path, None, None, 0, 0o755))
        ops.append((n.OP_BIND_SAVED, slot, path, path, None, None, 0, 0))
    ops.append((n.OP_MOUNT, -1, "tmpfs", "/dev/shm", "tmpfs", mount.SHM_OPTIONS, mount.SHM_FLAGS, 0))
    return ops
