"""A cgroup per principal with limits, on cgroup v1 or v2, whichever holds
the controller on this host (as nsjail does; root only).

Each controller a principal's limits need (memory, pids, cpu: see
pspy/limits.py) is looked up in the mount table: a v1 hierarchy mounted
with it, else the v2 hierarchy if its root lists it. A host may mix them
(this project's VM mounts memory, pids and cpu as v1 beside an almost empty
v2). The principal's cgroup is made below the supervisor's own cgroup of
that hierarchy, so whatever limits the host set on pspy still bound it:

    <hierarchy>/<supervisor's cgroup>/pspy-<jail hash>/<principal>

The supervisor writes the limits; the principal is moved in before it
runs anything of its own (chroot mode: in the preexec step, as root;
namespace mode: the launcher writes "0", itself, into cgroup.procs before
it makes the cgroup namespace, so the principal's /proc/self/cgroup shows
"/"). Its children, per-call processes included, stay in it. The folders
are root's: a principal can read its limits but change nothing.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time

from ..errors import SandboxError
from ..limits import OPTIONAL_FILES, cgroup_controllers, cgroup_files
from ..plan import Plan, PrincipalPlan

MOUNTS = "/proc/self/mounts"
OWN = "/proc/self/cgroup"


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, type, options) of every cgroup and cgroup2 mount."""
    out = []
    with open(MOUNTS) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                out.append((parts[1].replace("\\040", " "), parts[2], set(parts[3].split(","))))
    return out


def _own_paths() -> tuple[dict[str, str], str | None]:
    """This process's cgroup per v1 controller, and its v2 cgroup."""
    v1: dict[str, str] = {}
    v2 = None
    with open(OWN) as f:
        for line in f:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            if number == "0" and controllers == "":
                v2 = path
            for c in controllers.split(","):
                if c:
                    v1[c] = path
    return v1, v2


def locate(controller: str, mounts=None, own=None) -> tuple[str, str] | None:
    """(version, folder of this process's cgroup) of the hierarchy holding
    ``controller``; ``mounts`` and ``own`` (from _mounts and _own_paths) are
    read here unless given."""
    v1_paths, v2_path = own if own is not None else _own_paths()
    mounts = mounts if mounts is not None else _mounts()
    for point, kind, options in mounts:
        if kind == "cgroup" and controller in options and controller in v1_paths:
            return "v1", os.path.join(point, v1_paths[controller].lstrip("/"))
    for point, kind, _ in mounts:
        if kind == "cgroup2" and v2_path is not None:
            try:
                with open(os.path.join(point, "cgroup.controllers")) as f:
                    available = f.read().split()
            except OSError:
                continue
            if controller in available:
                return "v2", os.path.join(point, v2_path.lstrip("/"))
    return None


def hierarchies(plan: Plan) -> dict[str, str]:
    """controller -> "v1"/"v2" for every controller the principals' limits
    need; for the plan, at bootstrap. Rootless: none (cgroups need root).
    A controller the host does not offer is an error: a limit asked for
    must not be dropped silently."""
    if plan.rootless:
        return {}
    needed = sorted({c for p in plan.principals for c in cgroup_controllers(p.limits)})
    out = {}
    mounts, own = (_mounts(), _own_paths()) if needed else (None, None)
    for controller in needed:
        found = locate(controller, mounts, own)
        if found is None:
            users = ", ".join(p.name for p in plan.principals if controller in cgroup_controllers(p.limits))
            raise SandboxError(f"limits of {users} need the cgroup controller {controller!r}, which this host "
                               f"mounts neither as cgroup v1 nor in cgroup v2 ({MOUNTS}); mount it, or remove "
                               "those limits")
        out[controller] = found[0]
    return out


def app_folder_name(plan: Plan) -> str:
    return "pspy-" + hashlib.sha256(os.path.realpath(plan.jail).encode()).hexdigest()[:12]


def folders(plan: Plan, principal: PrincipalPlan) -> dict[str, str]:
    """controller -> the principal's cgroup folder (host path)."""
    wanted = [c for c in cgroup_controllers(principal.limits) if c in plan.cgroups]   # none rootless
    if not wanted:
        return {}
    out = {}
    mounts, own = _mounts(), _own_paths()
    for controller in wanted:
        found = locate(controller, mounts, own)
        if found is None:
            raise SandboxError(f"cgroup controller {controller!r} for {principal.name} is no longer mounted")
        out[controller] = os.path.join(found[1], app_folder_name(plan), principal.name)
    return out


def view_mounts(plan: Plan, principal: PrincipalPlan) -> list[tuple[str, str]]:
    """(host folder, path in the principal's view) of its cgroups, bound read-only
    in namespace mode: v1 at /sys/fs/cgroup/<controller>, v2 at /sys/fs/cgroup
    (/sys/fs/cgroup/unified beside v1 ones, as a hybrid host mounts it)."""
    found = folders(plan, principal)
    mixed = "v1" in {plan.cgroups[c] for c in found}
    out, v2_done = [], False
    for controller, folder in sorted(found.items()):
        if plan.cgroups[controller] == "v1":
            out.append((folder, f"/sys/fs/cgroup/{controller}"))
        elif not v2_done:
            out.append((folder, "/sys/fs/cgroup/unified" if mixed else "/sys/fs/cgroup"))
            v2_done = True
    return out


def _write(folder: str, name: str, value: str) -> None:
    path = os.path.join(folder, name)
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        if name in OPTIONAL_FILES:
            return   # no swap accounting on this host
        raise SandboxError(f"cannot set {path}: this host's cgroup has no such file") from None
    except OSError as e:
        raise SandboxError(f"cannot set {path} to {value}: {e.strerror}") from None


def _enable(folder: str, controller: str) -> None:
    """v2: let the cgroups below ``folder`` use the controller."""
    path = os.path.join(folder, "cgroup.subtree_control")
    with open(path) as f:
        if controller in f.read().split():
            return
    try:
        with open(path, "w") as f:
            f.write(f"+{controller}")
    except OSError as e:
        hint = (" (a v2 cgroup holding processes cannot hand controllers down: run pspy from a cgroup of its "
                "own, e.g. systemd-run --scope, with the controller delegated)" if e.errno == errno.EBUSY else "")
        raise SandboxError(f"cannot enable the {controller} controller in {path}: {e.strerror}{hint}") from None


def prepare(plan: Plan, principal: PrincipalPlan) -> list[str]:
    """Make the principal's cgroups and write its limits; returns the
    cgroup.procs files it must be moved into."""
    procs = []
    for controller, folder in folders(plan, principal).items():
        version = plan.cgroups[controller]
        app = os.path.dirname(folder)
        try:
            if version == "v2":
                _enable(os.path.dirname(app), controller)
            os.makedirs(app, mode=0o755, exist_ok=True)
            if version == "v2":
                _enable(app, controller)
            os.makedirs(folder, mode=0o755, exist_ok=True)
        except OSError as e:
            raise SandboxError(f"cannot make the cgroup {e.filename or folder} for {principal.name}: "
                               f"{e.strerror}") from None
        files = cgroup_files(principal.limits, controller, version)
        if version == "v1" and controller == "memory":
            # A cgroup kept from an earlier run may hold a lower memory+swap
            # limit than the new memory limit: lift it first.
            _write(folder, "memory.memsw.limit_in_bytes", "-1")
        for name, value in files:
            _write(folder, name, value)
        procs.append(os.path.join(folder, "cgroup.procs"))
    return procs


def oom_kills(plan: Plan, folder: str | None) -> int | None:
    """How many processes the kernel's OOM killer has killed in a
    principal's memory cgroup ``folder`` (folders()["memory"]; v1
    memory.oom_control, v2 memory.events); None without one. The supervisor
    compares it across a copy's life to tell a memory limit from any other SIGKILL."""
    if folder is None:
        return None
    name = "memory.events" if plan.cgroups.get("memory") == "v2" else "memory.oom_control"
    try:
        with open(os.path.join(folder, name)) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        return None
    return None


def remove(plan: Plan, principal: PrincipalPlan, wait: float = 2.0) -> None:
    """Remove the principal's cgroups (as this process places them) once empty."""
    for folder in folders(plan, principal).values():
        remove_folder(folder, wait)


def remove_folder(folder: str, wait: float = 2.0) -> None:
    """rmdir a principal's cgroup, then the app's folder above it if that is
    empty now. The kernel refuses while a process of it is still exiting:
    retried for ``wait`` seconds; still in use after that (an exec session,
    say), it is left for the next stop."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(folder)
            break
        except FileNotFoundError:
            break
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
    try:
        os.rmdir(os.path.dirname(folder))
    except OSError:
        pass


def attach_self(procs: list[str]) -> None:
    """Move the calling process into the given cgroups (chroot mode's preexec step)."""
    for path in procs:
        with open(path, "w") as f:
            f.write("0")
