"""Capabilities and process attributes, through python-prctl."""

import os
import signal

import prctl


def arm_parent_death(parent_pid: int) -> None:
    """SIGKILL when the parent dies. Arm it after any id change (which clears
    it); the check after it closes the race where the parent died first."""
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def lock_down(parent_pid: int | None) -> None:
    # no_new_privs: no setuid-root or file-capability binary in the jail can
    # give the principal more than it has now.
    prctl.set_no_new_privs(1)
    if parent_pid is not None:
        arm_parent_death(parent_pid)


def drop_bounding_set() -> None:
    """Empty the capability bounding set (needs CAP_SETPCAP: call before the uid drop).

    Afterwards not even a setuid-root or file-capability binary could gain a
    capability, even if no_new_privs were somehow lifted.
    """
    for cap in range(0, last_cap() + 1):
        try:
            prctl.capbset_drop(cap)
        except OSError:
            pass   # unknown to this kernel


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def clear_all() -> None:
    """No effective, permitted or inheritable capability, nor ambient ones."""
    prctl.cap_effective.limit()
    prctl.cap_permitted.limit()
    prctl.cap_inheritable.limit()
    try:
        prctl.cap_ambient.clear()  # type: ignore[attr-defined]
    except AttributeError:
        pass


def set_name(name: str) -> None:
    prctl.set_name(name[:15])
