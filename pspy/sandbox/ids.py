"""Become the principal: supplementary groups, then gid, then uid.

Order matters: once the uid is not 0, the process may no longer change its
groups, so groups and gid go first. setres* sets real, effective and saved
ids together, so no saved id of 0 is left to switch back to.
"""

import os

from .. import _native


def become(principal) -> None:
    """The principal's ids, and a new, empty session keyring: whoever started
    it (root) may hold keys in its own, which the principal must not share."""
    drop_to(principal.uid, principal.gid, principal.groups)
    _native.join_new_session_keyring()


def drop_to(uid: int, gid: int, groups: list[int]) -> None:
    try:
        os.setgroups(groups)
    except PermissionError:
        # Only rootless: setgroups is denied in the app's user namespace (the
        # kernel's condition for mapping a gid without root), and a rootless
        # plan has no supplementary groups. The caller's own stay (unmapped,
        # shown as 65534); the README says so.
        if groups:
            raise
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise OSError("ids did not change as asked")

