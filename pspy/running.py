"""What runs of an app, seen from outside its supervisor: the run state
file, the app's processes, and acting on them (``pspy status``, ``pspy stop``).

The state file, ``<jail>/.pspy/run/state.json``, is written by the
supervisor alone (root only, or the rootless user's; supervisor_writes.StateFile)
and read here.
"""

from __future__ import annotations

import json
import os
import signal
import time

from .errors import PspyError
from .plan import RUN_DIR, Plan
from .registry import process_uids
from .sandbox import cgroup
from .sockets import ping, remove


def state_path(plan: Plan) -> str:
    return os.path.join(plan.host_path(RUN_DIR), "state.json")


def still_running(pid: int) -> bool:
    """Alive and not a zombie; a supervisor that is our own child (pspy learn
    forks it and stays) is reaped here, or it would stay a zombie."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    return is_live(pid)


def is_live(pid: int) -> bool:
    """The process exists and has not exited. A zombie (state Z, or X while it
    is reaped) has exited: it runs nothing and holds nothing, and only waits
    for its parent, which for an orphan is the host's init, reaping in its own time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def jail_processes(jail: str) -> list[int]:
    """Every process whose root directory is the jail: all principals and their children."""
    jail = os.path.realpath(jail)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/root") == jail and is_live(int(entry)):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def app_processes(plan: Plan) -> list[int]:
    """Every process of the app: rooted in the jail (chroot mode), running as
    one of its uids (both modes; the id registry gives each jail its own), or
    in the app's user namespace (namespace mode).

    Rootless, the uid is the caller's, shared with their shell and everything
    else they run, so only the user namespace the supervisor recorded counts;
    once the supervisor is gone, the parent-death signals have taken the
    principals down with it.
    """
    found = set(jail_processes(plan.jail))
    if not plan.rootless:
        uids = {p.uid for p in plan.principals}
        found |= {pid for pid, uid in process_uids() if uid in uids}
    # Trusted only while the supervisor that recorded it lives and holds the
    # namespace open: a dead namespace's inode number can be reused by another.
    state = (read_state(plan) or {}) if plan.mode == "namespaces" else {}
    userns = state.get("userns")
    if isinstance(userns, str) and userns.startswith("user:[") and supervisor_alive(plan):
        found |= set(userns_processes(userns))
    # Each principal's PID namespace: whatever runs in one is the app's, even
    # once the supervisor is gone (a principal that slipped its parent-death
    # signal). Matched with the app's uids too, against a reused inode number.
    own = os.readlink("/proc/self/ns/pid")
    pidns = {ns for ns in state.get("pidns", []) if isinstance(ns, str) and ns.startswith("pid:[") and ns != own}
    if pidns:
        uids = {p.uid for p in plan.principals}
        found |= {pid for pid in _processes_in(pidns, "pid") if uid_of(pid) in uids}
    found.discard(os.getpid())
    # Zombies are left out: right after a supervisor is killed, its principals
    # are dead but wait for the host's init to reap them (seconds, on some hosts).
    return sorted(pid for pid in found if is_live(pid))


def userns_processes(userns: str) -> list[int]:
    """Processes whose user namespace is ``userns`` ("user:[inode]")."""
    return _processes_in({userns}, "user")


def _processes_in(namespaces: set[str], kind: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/{kind}") in namespaces:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def uid_of(pid: int) -> int | None:
    return status_field(pid, "Uid")


def status_field(pid: int, name: str) -> int | None:
    """The first number of a field of /proc/PID/status (Uid: the real uid)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{name}:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def sweep_jail(plan: Plan) -> None:
    """Kill whatever of the app still runs: nothing of it is left behind."""
    if os.path.realpath(plan.jail) == "/":
        raise PspyError("refusing to sweep processes of /: that is every process")
    for _ in range(50):
        pids = app_processes(plan)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    raise PspyError(f"processes of the app in {plan.jail} still running after SIGKILL: {app_processes(plan)}")


def read_state(plan: Plan) -> dict | None:
    try:
        with open(state_path(plan)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    except PermissionError:
        raise PspyError(f"{state_path(plan)}: permission denied; the app's run state is root only") from None


def supervisor_alive(plan: Plan) -> int | None:
    state = read_state(plan)
    if not state:
        return None
    pid = state.get("supervisor")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    if not is_live(pid):
        return None   # killed, not yet reaped
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"pspy" not in f.read():
                return None   # the pid was reused by something else
    except OSError:
        return None
    return pid


def remove_cgroups(plan: Plan, folders) -> None:
    """Remove the principals' cgroup folders, once empty. Only folders named
    for this jail are touched (they come from the root-only run state)."""
    name = cgroup.app_folder_name(plan)
    for folder in folders:
        if isinstance(folder, str) and os.path.basename(os.path.dirname(folder)) == name \
                and folder.startswith("/sys/fs/cgroup/"):
            cgroup.remove_folder(folder)


def stop(plan: Plan, timeout: float = 15.0) -> bool:
    """Stop a running app; True if something was running."""
    recorded = (read_state(plan) or {}).get("cgroups") or []
    pid = supervisor_alive(plan)
    was_running = pid is not None or bool(app_processes(plan))
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not still_running(pid):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
    sweep_jail(plan)
    remove_cgroups(plan, recorded if isinstance(recorded, list) else [])
    # A supervisor killed with SIGKILL left its sockets: nobody serves them now.
    for p in plan.providers:
        remove(plan, p.socket)
        for caller in plan.callers_of(p) if plan.rootless else ():
            remove(plan, plan.caller_socket(p, caller))
    try:
        os.unlink(state_path(plan))
    except FileNotFoundError:
        pass
    return was_running


def lost_writes(plan: Plan) -> dict:
    """The running supervisor's writes lost to a full disk (or a quota, an
    I/O error), per kind: {"logs": {"writes", "since", "errno", "error",
    "failing"}, ...}; empty if none were lost, or nothing runs."""
    if supervisor_alive(plan) is None:
        return {}
    lost = (read_state(plan) or {}).get("lost_writes")
    return {kind: loss for kind, loss in lost.items() if isinstance(loss, dict) and loss.get("writes")} \
        if isinstance(lost, dict) else {}


_CAUSES = {"ENOSPC": "a full disk", "EDQUOT": "a disk quota"}


def describe_lost_writes(lost: dict) -> list[str]:
    """``pspy status``'s lines for ``lost_writes(plan)``, such as
    "logs: 12 writes lost to a full disk since 18:40 (still failing)"."""
    lines = []
    now = time.localtime()
    for kind, loss in sorted(lost.items()):
        count, since = loss.get("writes", 0), loss.get("since")
        cause = _CAUSES.get(loss.get("errno") or "") or (loss.get("error") or "failed writes").lower()
        when = ""
        if isinstance(since, (int, float)):
            at = time.localtime(since)
            when = " since " + time.strftime("%H:%M" if at[:3] == now[:3] else "%Y-%m-%d %H:%M", at)
        lines.append(f"{kind}: {count} write{'s' if count != 1 else ''} lost to {cause}{when}"
                     + (" (still failing)" if loss.get("failing") else ""))
    return lines


def status(plan: Plan) -> list[dict]:
    """Per principal: its ids, whether it runs (pid, uptime), how often it
    was restarted and why it last ended, its ready copy, and (providers)
    whether its socket answers. Plain data: ``pspy status --format json``."""
    state = read_state(plan) or {}
    alive = set(app_processes(plan))
    supervisor = supervisor_alive(plan)
    now = time.time()
    rows = []
    for p in plan.principals:
        recorded = state.get("principals", {}).get(p.name) or {}
        pid = recorded.get("pid")
        # Or the live supervisor's child: rootless, the app's processes are not
        # dumpable, so their namespaces are closed to the user, but not their ppid.
        running = pid in alive or (supervisor is not None and isinstance(pid, int)
                                   and status_field(pid, "PPid") == supervisor)
        since = recorded.get("serving_since")
        row = {"name": p.name, "kind": p.kind, "uid": p.uid, "gid": p.gid, "groups": list(p.groups),
               "pid": pid if running else None, "running": running,
               "uptime_s": round(now - since, 3) if running and isinstance(since, (int, float)) else None,
               "restarts": recorded.get("restarts", 0) if supervisor else 0,
               "failures_in_a_row": recorded.get("failures", 0) if supervisor else 0,
               "last_exit": recorded.get("last_exit") if supervisor else None}
        if p.kind == "provider":
            spare = recorded.get("spare_pid")
            row["ready_copy"] = ({"pid": spare, "ready": bool(recorded.get("spare_ready"))}
                                 if supervisor and running and spare else None)
            row["answers"] = running and ping(plan, p)
        rows.append(row)
    return rows
