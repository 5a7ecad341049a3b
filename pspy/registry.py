"""Which ids each jail on this host uses, so two apps never share a uid.

Principals of two jails with the same uid could signal and ptrace each
other. ``/var/lib/pspy/ids.json`` (root only) records each jail's uid and
gid ranges; an entry whose jail no longer holds a plan with those ids is
forgotten. Updates hold an exclusive lock on the file.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager

from .errors import PlanError
from .plan import Plan

REGISTRY_DIR = "/var/lib/pspy"
REGISTRY = os.path.join(REGISTRY_DIR, "ids.json")


def _ranges(plan: Plan) -> dict[str, list[int]]:
    uids = [p.uid for p in plan.principals]
    gids = list(plan.groups.values())
    return {"uids": [min(uids), max(uids)], "gids": [min(gids), max(gids)]}


def _overlaps(a: list[int], b: list[int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


@contextmanager
def locked(path: str = REGISTRY):
    """The registry, read under an exclusive lock; changes are written back on exit."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read()
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            raise PlanError(f"{path}: unreadable id registry; fix or remove it") from None
        jails = data.setdefault("jails", {})
        _forget_stale(jails)
        yield jails
        f.seek(0)
        f.truncate()
        json.dump(data, f, indent=2, sort_keys=True)


def _forget_stale(jails: dict) -> None:
    for jail, ranges in list(jails.items()):
        try:
            plan = Plan.load(jail)
        except Exception:  # noqa: BLE001 - gone or unreadable: its ids are free again
            del jails[jail]
            continue
        if _ranges(plan) != ranges:
            del jails[jail]


def conflicts(plan: Plan, jails: dict) -> list[str]:
    """Why this plan's ids cannot be used (other jails, running processes)."""
    mine = _ranges(plan)
    out = []
    for jail, ranges in jails.items():
        if jail == plan.jail:
            continue
        for kind in ("uids", "gids"):
            if _overlaps(mine[kind], ranges[kind]):
                out.append(f"{kind} {mine[kind][0]}-{mine[kind][1]} overlap those of the jail {jail} "
                           f"({ranges[kind][0]}-{ranges[kind][1]})")
    uids = {p.uid: p.name for p in plan.principals}
    for pid, uid in process_uids():
        if uid in uids and _root_of(pid) != plan.jail:
            out.append(f"uid {uid} planned for {uids[uid]} is in use by process {pid} outside this jail")
            break
    return out


def record(plan: Plan, jails: dict) -> None:
    jails[plan.jail] = _ranges(plan)


def process_uids():
    """(pid, real uid) of every process on the host."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        yield int(entry), int(line.split()[1])
                        break
        except OSError:
            continue


def _root_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return None
