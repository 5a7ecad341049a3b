"""Which of another principal's data a principal may reach, and how.

A principal's data paths are what its perms match in the jail. Another
principal reaches one through the owner's mode bits, as Unix decides: the
group bits when the owner's group is its group or one of its extra groups,
else the other bits (exactly one class applies). A folder is reached if
those bits let it be read or searched and written if they let it be written
and searched; a file is reached if they let it be read or written, written
if they let it be written.

Namespace mode mounts exactly this (sandbox/mount.py): a reached path
read-only, or read-write if it may be written; a path not reached is not
mounted at all. ``pspy analyze`` reads the same answer. Groups are compared
by name from the plan and the mode read from the jail, so the answer holds
rootless too, where every principal has the same uid and gid and only the
mounts tell principals apart. Inside a mounted path the kernel still checks
every file's own bits.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .jail import data_paths
from .plan import Plan, PrincipalPlan

READ_ONLY = "read-only"
READ_WRITE = "read-write"


@dataclass(frozen=True)
class View:
    """The data paths (app-relative) in one principal's view, by how they are there."""
    own: frozenset[str]          # its own: read-write
    shared: dict                 # another principal's path -> (owner, READ_ONLY or READ_WRITE)
    hidden: frozenset[str]       # another principal's, not reached: not mounted

    @property
    def writable(self) -> frozenset[str]:
        return self.own | {rel for rel, (_, how) in self.shared.items() if how == READ_WRITE}


def outermost(paths: set[str]) -> set[str]:
    """The paths not inside another of them (a nested one goes with its outer one)."""
    return {p for p in paths if not any(p.startswith(o + "/") for o in paths if o != p)}


def class_bits(plan: Plan, who: PrincipalPlan, owner: PrincipalPlan, mode: int) -> int:
    """The rwx bits of ``mode`` that apply to ``who`` on a path ``owner`` owns."""
    if who.name == owner.name:
        return (mode >> 6) & 7
    if owner.group == who.group or owner.group in who.extra_groups:
        return (mode >> 3) & 7
    return mode & 7


def access_of(plan: Plan, who: PrincipalPlan, owner: PrincipalPlan, st: os.stat_result) -> str | None:
    """READ_WRITE, READ_ONLY or None (not reached) for ``who`` on ``owner``'s path."""
    bits = class_bits(plan, who, owner, stat.S_IMODE(st.st_mode))
    if stat.S_ISDIR(st.st_mode):
        if bits & 2 and bits & 1:
            return READ_WRITE
        return READ_ONLY if bits & 5 else None
    if bits & 2:
        return READ_WRITE
    return READ_ONLY if bits & 4 else None


def view_of(plan: Plan, principal: PrincipalPlan, app_root: str,
            owned: dict[str, set[str]] | None = None) -> View:
    """What of every principal's data ``principal`` has in its view; ``app_root``
    is the jail's app folder on the host, ``owned`` its data_paths if known."""
    owned = data_paths(plan, app_root) if owned is None else owned
    mine = frozenset(owned.get(principal.name, ()))
    shared: dict = {}
    hidden: set[str] = set()
    for name, paths in owned.items():
        if name == principal.name:
            continue
        owner = plan.principal(name)
        for rel in outermost(set(paths) - mine):
            try:
                st = os.lstat(os.path.join(app_root, rel))
            except FileNotFoundError:
                continue
            how = None if stat.S_ISLNK(st.st_mode) else access_of(plan, principal, owner, st)
            if how is None:
                hidden.add(rel)
            else:
                shared[rel] = (name, how)
    return View(own=mine, shared=shared, hidden=frozenset(hidden))
