"""A principal's filesystem in namespace mode: a fresh tmpfs root holding
only what it needs, then pivot_root into it.

- read-only binds of the system libraries and the Python installation
  (nothing is copied: bootstrap time does not grow with site-packages);
- the app (staged in the jail with its owners and modes) read-only, with
  the principal's own perms paths read-write, other principals' data paths
  its group or other bits admit read-only or read-write as those bits say
  (pspy/sharing.py), and the rest of their data left out entirely: it does
  not exist in its view;
- a private /tmp, /proc of its own PID namespace, a minimal /dev;
- /.pspy with the plan, pspy itself, and the sockets of the providers it
  may call, nothing else.
Runs as the user namespace's root, as PID 1 of the principal's PID
namespace, inside a new mount namespace; mounts here are private and never
reach the host.
"""

from __future__ import annotations

import os
import stat
import sys

from .. import _native as n
from ..errors import SandboxError
from ..plan import APP_DIR, LIB_DIR, SOCKET_DIR, STATE_DIR, Plan, PrincipalPlan, filter_path, plan_path
from ..sharing import view_of
from . import cgroup
from .._landlock import rules_path

# What every view holds of the host's system (sandbox/landlock.py grants the
# same names, so the view and the Landlock rules cannot drift apart).
SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
# Host data every view holds read-only: the time-zone database, which
# zoneinfo (and through it Django's error mail, any tz-aware log line) reads
# from the host unless the tzdata package is installed. A host without it
# ships nothing: zoneinfo then finds only tzdata's copy, and pspy learn
# reports the zone files a principal looked for. Namespace mode's bind of
# /usr holds it already (build_root binds it only where it lies elsewhere);
# chroot mode copies it (jail.copy_interpreter); Landlock grants it read.
SYSTEM_DATA = ("/usr/share/zoneinfo",)
ETC_EVERYONE = ("ld.so.cache", "localtime", "mime.types")
ETC_NETWORK = ("hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "ssl")   # Landlock: network only
ETC_FILES = ETC_EVERYONE + ETC_NETWORK
DEVICES = ("null", "zero", "full", "random", "urandom")
RO = n.MS_NOSUID | n.MS_NODEV
TMP_OPTIONS = "mode=1777,size=64m"
SHM_OPTIONS = "mode=1777,size=16m"
SHM_FLAGS = n.MS_NOSUID | n.MS_NODEV | n.MS_NOEXEC


def new_root_path(plan: Plan) -> str:
    return os.path.join(plan.jail, STATE_DIR.lstrip("/"), "root")


def python_paths(jail: str) -> list[str]:
    """The interpreter's own prefixes, outside the system paths (bound already).

    Only the prefixes, never sys.path: that comes from the environment of
    whoever runs pspy (PYTHONPATH, .pth files), and must not decide what
    every principal sees. "/" and anything holding the jail are refused.
    """
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    jail = os.path.realpath(jail)
    for root in roots:
        if root == "/" or jail == root or jail.startswith(root + "/"):
            raise SandboxError(f"the Python prefix {root} holds the jail {jail} (or is /); "
                               "put the jail outside the Python installation")
    out = []
    for path in sorted(roots):
        if any(path == s or path.startswith(s + "/") for s in SYSTEM_PATHS):
            continue
        if any(path.startswith(o + "/") for o in out):
            continue
        out.append(path)
    return out


def system_data_paths() -> list[str]:
    """SYSTEM_DATA as namespace mode must bind it: the host folders it
    resolves to, outside the system paths (bound already); none if the host
    has none."""
    out = []
    for path in SYSTEM_DATA:
        real = os.path.realpath(path)
        if os.path.isdir(real) and not any(real == s or real.startswith(s + "/") for s in SYSTEM_PATHS):
            out.append(real)
    return out


def _mkdirs(root: str, path: str, mode: int = 0o755) -> str:
    target = os.path.join(root, path.lstrip("/"))
    os.makedirs(target, mode=mode, exist_ok=True)
    return target


def _bind(root: str, mounts: list[str], source: str, dest: str | None = None, readonly: bool = True) -> None:
    dest = dest or source
    target = os.path.join(root, dest.lstrip("/"))
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
        submounts = _may_hold_mounts(root, mounts, source)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            open(target, "w").close()
        submounts = False   # nothing can be mounted below a file
    n.bind_mount(source, target, readonly=readonly, submounts=submounts)


def _may_hold_mounts(root: str, mounts: list[str], source: str) -> bool:
    """Whether a recursive bind of the folder source can bring submounts along.

    ``mounts`` is the mount table read once after unshare: from then on the
    namespace is private, so the only mounts added are this build's own,
    below root. True if the table has a mount below source, or if source
    holds root or lies in it; otherwise remount_tree would find nothing.
    """
    real = os.path.realpath(source).rstrip("/") + "/"
    new = os.path.realpath(root).rstrip("/") + "/"
    return any(point.startswith(real) for point in mounts) or new.startswith(real) or real.startswith(new)


def build_root(plan: Plan, principal: PrincipalPlan, pspy_dir: str) -> str:
    root = new_root_path(plan)
    mounts = n.mount_points()   # once, not after every bind: see _may_hold_mounts
    n.mount("tmpfs", root, "tmpfs", RO, "mode=0755,size=16m", step=f"mount a tmpfs root on {root}")
    # The private /tmp first: an interpreter (a venv, say) may live under
    # /tmp on the host, and its bind must sit on top of the tmpfs, not under.
    tmp = _mkdirs(root, "/tmp")
    n.mount("tmpfs", tmp, "tmpfs", RO, TMP_OPTIONS, step=f"mount a private /tmp on {tmp}")
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), os.path.join(root, path.lstrip("/")))
        elif os.path.isdir(path):
            _bind(root, mounts, path)
    for path in python_paths(plan.jail):
        _bind(root, mounts, path)
    for path in system_data_paths():
        _bind(root, mounts, path)
    _mkdirs(root, "/etc")
    for name in ETC_FILES:
        source = os.path.join("/etc", name)
        if os.path.exists(source):
            _bind(root, mounts, os.path.realpath(source), source)
    _build_dev(root)
    # Mounted before pivot_root: in a user namespace the kernel allows a new
    # proc only while a fully visible one is still in the mount namespace.
    # It shows the PID namespace of this process, the principal's PID 1.
    proc = _mkdirs(root, "/proc")
    n.mount("proc", proc, "proc", n.MS_NOSUID | n.MS_NODEV | n.MS_NOEXEC, step=f"mount proc on {proc}")
    _build_cgroups(plan, principal, root)
    _build_app(plan, principal, root)
    _build_state(plan, principal, root, pspy_dir, mounts)
    return root


def _build_cgroups(plan: Plan, principal: PrincipalPlan, root: str) -> None:
    """The principal's own cgroups, read-only, where a system mounts cgroups:
    it can read its limits and usage (memory.max, pids.current, ...), and
    nothing of the host's hierarchy (supervisor/cgroup.py made them root's)."""
    for folder, target in cgroup.view_mounts(plan, principal):
        n.bind_mount(folder, _mkdirs(root, target), readonly=True, recursive=False)


def _build_dev(root: str) -> None:
    dev = _mkdirs(root, "/dev")
    n.mount("tmpfs", dev, "tmpfs", n.MS_NOSUID | n.MS_NOEXEC, "mode=0755,size=64k",
            step=f"mount a minimal /dev on {dev}")
    for name in DEVICES:
        target = os.path.join(dev, name)
        open(target, "w").close()
        n.bind_mount(f"/dev/{name}", target, readonly=False, recursive=False, device=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    shm = os.path.join(dev, "shm")
    os.mkdir(shm)
    n.mount(None, dev, None, n.MS_REMOUNT | n.MS_NOSUID | n.MS_NOEXEC | n.MS_RDONLY,
            step=f"remount {dev} read-only")
    # POSIX shared memory and semaphores (multiprocessing uses them): a
    # private, small tmpfs of the principal's own.
    n.mount("tmpfs", shm, "tmpfs", SHM_FLAGS, SHM_OPTIONS,
            step=f"mount a private /dev/shm on {shm}")


def _build_app(plan: Plan, principal: PrincipalPlan, root: str) -> None:
    source = plan.host_path(APP_DIR)
    view = view_of(plan, principal, source)
    _assemble(source, _mkdirs(root, APP_DIR), "", set(view.hidden), set(view.writable))


def _assemble(src: str, dst: str, rel: str, hidden: set[str], writable: set[str]) -> None:
    """Mirror src into dst with binds, leaving hidden paths out and writable
    ones read-write (its own data, and others' its group or other bits let
    it write: pspy/sharing.py); everything else is read-only."""
    special = hidden | writable
    for name in sorted(os.listdir(src)):
        r = f"{rel}{name}"
        s, d = os.path.join(src, name), os.path.join(dst, name)
        st = os.lstat(s)
        if r in hidden:
            continue
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
            continue
        if r in writable:
            _bind_entry(s, d, st, readonly=False)
        elif stat.S_ISDIR(st.st_mode) and any(p.startswith(r + "/") for p in special):
            os.mkdir(d)
            os.chmod(d, stat.S_IMODE(st.st_mode))
            _assemble(s, d, r + "/", hidden, writable)
        else:
            _bind_entry(s, d, st, readonly=True)


def _bind_entry(source: str, target: str, st: os.stat_result, readonly: bool) -> None:
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(target)
    else:
        open(target, "w").close()
    n.bind_mount(source, target, readonly=readonly, recursive=False)


def _build_state(plan: Plan, principal: PrincipalPlan, root: str, pspy_dir: str, mounts: list[str]) -> None:
    _bind(root, mounts, plan_path(plan.jail), f"{STATE_DIR}/plan.json")
    _bind(root, mounts, pspy_dir, f"{LIB_DIR}/pspy")
    _bind(root, mounts, os.path.join(pspy_dir, "_sitecustomize.py"), f"{LIB_DIR}/sitecustomize.py")
    _compile_sitecustomize(root, pspy_dir)
    own = filter_path(principal.name)
    source = os.path.join(plan.jail, own.lstrip("/"))
    if principal.seccomp and not principal.seccomp.get("learn") and os.path.isfile(source):
        # Its own filter only (jail.write_filters wrote one per principal; a
        # jail bootstrapped before has none, and the plan serves instead).
        _bind(root, mounts, source, own)
    rules = rules_path(principal.name)
    if principal.landlock and os.path.isfile(plan.host_path(rules)):
        _bind(root, mounts, plan.host_path(rules), rules)
    # Only the sockets of providers this principal may call are in its view.
    callees = {q.name for q in plan.providers if q.name != principal.name
               and any(principal.name in s.callers for s in q.services)}
    _mkdirs(root, SOCKET_DIR)
    for q in plan.providers:
        if q.name in callees:
            folder = os.path.dirname(q.socket)
            # Rootless, the folder of the socket made for this caller alone:
            # the provider knows the caller by it (see rpc/server.py).
            source = os.path.dirname(plan.caller_socket(q, principal.name)) if plan.rootless else folder
            _bind(root, mounts, plan.host_path(source), folder)


def _compile_sitecustomize(root: str, pspy_dir: str) -> None:
    """Its bytecode, next to it in the root: every start of the principal
    would compile it again otherwise (the bind is of the file alone, and
    principals write no bytecode). Unchecked: the root is read-only, so the
    source cannot change under it while this root exists."""
    import importlib.util
    import py_compile
    view = f"{LIB_DIR}/sitecustomize.py"
    target = os.path.join(root, importlib.util.cache_from_source(view).lstrip("/"))
    py_compile.compile(os.path.join(pspy_dir, "_sitecustomize.py"), cfile=target, dfile=view, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def enter(root: str) -> None:
    """pivot_root into root, then detach the old root entirely."""
    n.mount(None, root, None, n.MS_REMOUNT | n.MS_RDONLY | n.MS_NOSUID | n.MS_NODEV,
            step=f"remount the new root {root} read-only")
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root on top of the new one; the
    # detach below then removes it, leaving no path back to the host.
    n.pivot_root(".", ".")
    n.umount2(".", n.MNT_DETACH)
    os.chdir("/")
