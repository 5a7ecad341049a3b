"""The app's user namespace: one for all principals, like a pod.

Rootless, the namespace maps only the caller's own uid and gid, onto
themselves: every principal is the caller, and setgroups is denied.

Inside it the principals keep their plan uids and gids (the block is mapped
onto the same host ids), so file ownership and SO_PEERCRED identify them in
both modes. Nothing else is mapped: no id inside is host root or any other
host account, and the namespace has no root at all.

The other namespaces of a principal are made by host root before it joins
this one (see launch.py), so they belong to the host's user namespace: a
principal holds no capability over its own mount, PID or network
namespace, even in theory.
"""

from __future__ import annotations

import os

from .. import _native
from ..errors import SandboxError
from ..plan import Plan


def id_maps(plan: Plan) -> tuple[str, str]:
    """uid_map and gid_map texts for the app's namespace."""
    uids = [p.uid for p in plan.principals]
    gids = list(plan.groups.values())
    lo_u, hi_u = min(uids), max(uids)
    lo_g, hi_g = min(gids), max(gids)
    return (f"{lo_u} {lo_u} {hi_u - lo_u + 1}\n", f"{lo_g} {lo_g} {hi_g - lo_g + 1}\n")


def create_user_namespace(plan: Plan) -> int:
    """A user namespace with the plan's id maps; returns an fd that keeps it alive."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:   # holds the new namespace until its maps are written and it is opened
        os.close(ready_r)
        os.close(done_w)
        try:
            _native.unshare(_native.CLONE_NEWUSER)
            os.write(ready_w, b"ok")
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            os.write(ready_w, str(e).encode()[:500])
            os._exit(1)
        os.read(done_r, 1)
        os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        answer = os.read(ready_r, 512)
        if answer != b"ok":
            raise SandboxError(f"cannot create the app's user namespace: {answer.decode(errors='replace')}")
        uid_map, gid_map = id_maps(plan)
        files = [("uid_map", uid_map), ("gid_map", gid_map)]
        if plan.rootless:
            # Without root the kernel maps one's own ids only, and a gid only
            # once setgroups is denied in the namespace for good.
            files.insert(0, ("setgroups", "deny"))
        for name, text in files:
            try:
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(text)
            except OSError as e:
                raise SandboxError(f"writing /proc/{pid}/{name} ({text.strip()!r}) failed: {e.strerror}") from None
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.write(done_w, b"x")
        os.close(done_w)
        os.waitpid(pid, 0)


def enter(userns_fd: int) -> None:
    """Join the app's namespace: capabilities only inside it, to change ids next."""
    _native.setns(userns_fd, _native.CLONE_NEWUSER)
