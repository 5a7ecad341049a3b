"""Become the principal: supplementary groups, then gid, then uid, then a
session keyring of its own.

Order matters: once the uid is not 0, the process may no longer change its
groups, so groups and gid go first. setres* sets real, effective and saved
ids together, so no saved id of 0 is left to switch back to. Each step
that fails raises StepFailed naming it (sandbox/steps.py).
"""

import errno
import os

from .. import _native
from .steps import KEYRING_STEP, StepFailed, step


def become(principal) -> bool:
    """The principal's ids, and a new, empty session keyring: whoever started
    it (root) may hold keys in its own, which the principal must not share.
    False: the keyring is kept, out of the principal's reach (join_session_keyring)."""
    drop_to(principal.uid, principal.gid, principal.groups)
    return join_session_keyring()


def join_session_keyring() -> bool:
    """A new, empty session keyring (True). Where keyctl is denied (EPERM or
    ENOSYS: a container's seccomp profile, as Docker's default), the
    inherited keyring stays (False), but only if add_key and request_key are
    denied too: the filter that denies them here is inherited by the
    principal and cannot be removed, so it can neither read a key of that
    keyring (only keyctl reads) nor add or replace one. Otherwise refused."""
    if _native.lib.pspy_join_new_session_keyring() >= 0:
        return True
    err = _native.ffi.errno
    if err in (errno.EPERM, errno.ENOSYS) and _native.lib.pspy_keyring_unreachable():
        return False
    raise StepFailed(KEYRING_STEP, err)


def drop_to(uid: int, gid: int, groups: list[int]) -> None:
    with step(f"setting the supplementary groups to {_ids(groups)} (setgroups)"):
        try:
            os.setgroups(groups)
        except PermissionError:
            # Only rootless: setgroups is denied in the app's user namespace (the
            # kernel's condition for mapping a gid without root), and a rootless
            # plan has no supplementary groups. The caller's own stay (unmapped,
            # shown as 65534); the README says so.
            if groups:
                raise
    with step(f"changing to gid {gid} (setresgid)"):
        os.setresgid(gid, gid, gid)
    with step(f"changing to uid {uid} (setresuid)"):
        os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise StepFailed(f"changing to uid {uid} and gid {gid} (setresuid: the ids did not change)", errno.EPERM)


def _ids(values: list[int]) -> str:
    return ",".join(map(str, values)) if values else "none"
