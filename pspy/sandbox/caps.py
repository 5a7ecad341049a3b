"""Process attributes set after the ids drop, through python-prctl."""

import os
import signal

import prctl


def lock_down(parent_pid: int | None) -> None:
    # no_new_privs: no setuid-root or file-capability binary in the jail can
    # give the principal more than it has now.
    prctl.set_no_new_privs(1)
    if parent_pid is not None:
        # Set after the uid change, which clears it. The check after it closes
        # the race where the parent died before the signal was armed.
        prctl.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent_pid:
            os._exit(1)
