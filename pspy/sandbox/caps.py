"""Capabilities and process attributes through python-prctl, for chroot mode
(namespace mode drops them in C between clone and exec: pspy/_native/spawn.c)."""

import functools
import os
import signal

import prctl

from .steps import step


def arm_parent_death(parent_pid: int) -> None:
    """SIGKILL when the parent dies. Arm it after any id change (which clears
    it); the check after it closes the race where the parent died first."""
    with step("arming the parent-death signal (prctl PR_SET_PDEATHSIG)"):
        prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def lock_down(parent_pid: int | None) -> None:
    # no_new_privs: no setuid-root or file-capability binary in the jail can
    # give the principal more than it has now.
    with step("setting no_new_privs (prctl PR_SET_NO_NEW_PRIVS)"):
        prctl.set_no_new_privs(1)
    if parent_pid is not None:
        arm_parent_death(parent_pid)


@functools.cache
def last_cap() -> int:
    """The highest capability number this kernel knows (the spawn path empties the bounding set up to it)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40
