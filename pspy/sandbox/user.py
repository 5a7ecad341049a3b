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

Before any principal starts, ``check_namespaces`` tries, in a throwaway
child, what every start does (unshare, mount, pivot_root, umount2): where a
container forbids them (no CAP_SYS_ADMIN, a seccomp profile denying them),
the error names the call and says what the container must allow.
"""

from __future__ import annotations

import os

from .. import _native
from ..errors import SandboxError
from ..plan import Plan
from . import steps

USER_STEP = "making the app's user namespace (unshare CLONE_NEWUSER)"
# What launch.py makes for every start (less the network namespace, costly to make and free).
PRINCIPAL_NAMESPACES = ("CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWIPC", "CLONE_NEWUTS", "CLONE_NEWCGROUP")


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
            _raw(_native.lib.pspy_unshare(_native.CLONE_NEWUSER))
            os.write(ready_w, b"ok")
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            err = getattr(e, "errno", 0) or 0
            os.write(ready_w, (f"{err} {USER_STEP}" if err else f"0 {e}").encode()[:500])
            os._exit(1)
        os.read(done_r, 1)
        os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        answer = os.read(ready_r, 512)
        if answer != b"ok":
            number, _, step = answer.decode(errors="replace").partition(" ")
            if not number.isdigit() or number == "0":
                raise SandboxError(f"namespace mode: {USER_STEP} failed: {step or 'its maker exited'}")
            raise SandboxError(steps.describe("namespace mode", step, int(number)))
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
                raise SandboxError(steps.describe("namespace mode", f"writing {text.strip()!r} to "
                                                  f"/proc/{pid}/{name} (write {name})", e.errno)) from None
        userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        try:
            os.write(done_w, b"x")
        except BrokenPipeError:
            pass   # it exited already, having failed
        os.close(done_w)
        os.waitpid(pid, 0)
    try:
        check_namespaces(plan, userns_fd)
    except BaseException:
        os.close(userns_fd)
        raise
    return userns_fd


def check_namespaces(plan: Plan, userns_fd: int) -> None:
    """What each start of a principal needs, tried once in a child that
    then exits: make its namespaces (as host root; rootless, in the app's
    user namespace), make / private, mount a tmpfs where its root goes,
    pivot_root into it and detach the old one; and, as root, the
    CAP_NET_ADMIN that brings lo up. The first step refused is raised by
    name, with what to allow (sandbox/steps.py)."""
    from .mount import new_root_path
    n = _native
    flags = 0
    for name in PRINCIPAL_NAMESPACES:
        flags |= getattr(n, name)
    root = new_root_path(plan)
    lib = n.lib
    tmpfs = (b"tmpfs", os.fsencode(root), b"tmpfs", n.MS_NOSUID | n.MS_NODEV, b"mode=0755,size=64k")
    tries = [(f"making the principals' namespaces (unshare {'|'.join(PRINCIPAL_NAMESPACES)})",
              lambda: _raw(lib.pspy_unshare(flags))),
             ("making / private in a new mount namespace (mount MS_REC|MS_PRIVATE)",
              lambda: _raw(lib.pspy_mount(n.ffi.NULL, b"/", n.ffi.NULL, n.MS_REC | n.MS_PRIVATE, n.ffi.NULL))),
             (f"mounting a tmpfs on {root}, as each principal's root is (mount tmpfs)",
              lambda: _raw(lib.pspy_mount(*tmpfs))),
             (f"entering {root} as the new root (pivot_root)",
              lambda: (os.chdir(root), _raw(lib.pspy_pivot_root(b".", b".")))),
             ("detaching the old root (umount2 MNT_DETACH)", lambda: _raw(lib.pspy_umount2(b".", n.MNT_DETACH)))]
    if plan.rootless:
        tries.insert(0, ("joining the app's user namespace (setns CLONE_NEWUSER)",
                         lambda: _raw(lib.pspy_setns(userns_fd, n.CLONE_NEWUSER))))
    answer_r, answer_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(answer_r)
        code = 0
        try:
            for text, attempt in tries:
                try:
                    attempt()
                except OSError as e:
                    os.write(answer_w, f"{e.errno or 0} {text}".encode())
                    code = 1
                    break
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            os.write(answer_w, f"0 {e}".encode()[:2000])
            code = 1
        finally:
            os._exit(code)
    os.close(answer_w)
    try:
        answer = os.read(answer_r, 4096).decode(errors="replace")
    finally:
        os.close(answer_r)
        os.waitpid(pid, 0)
    if answer:
        number, _, step = answer.partition(" ")
        if number.isdigit() and number != "0":
            raise SandboxError(steps.describe("namespace mode", step, int(number)))
        raise SandboxError(f"namespace mode: checking that namespaces can be made failed: {step}")
    if not plan.rootless and any(not p.network for p in plan.principals) \
            and not steps.has_capability(steps.CAP_NET_ADMIN):
        # Not tried: making a network namespace costs more than the rest of the check.
        raise SandboxError("namespace mode: this process lacks CAP_NET_ADMIN, which bringing up lo in each "
                           "principal's network namespace (netlink RTM_NEWLINK) needs — "
                           + steps.namespace_advice())


def _raw(result: int) -> None:
    """A native call's -1 as OSError with its errno (the step is named by the caller)."""
    if result != 0:
        err = _native.ffi.errno
        raise OSError(err, os.strerror(err))


def enter(userns_fd: int) -> None:
    """Join the app's namespace: capabilities only inside it, to change ids next."""
    _native.setns(userns_fd, _native.CLONE_NEWUSER)
