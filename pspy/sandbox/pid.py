"""A principal's PID namespace and its PID 1, pspy-init.

Each principal gets a PID namespace of its own; its PID 1 is pspy-init
(pspy/_native/init.c, compiled next to the native helper at install),
which starts as the principal's parent, reaps orphans, passes SIGTERM,
SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 on, and exits with the principal's
status. When it exits the kernel kills everything left in the namespace:
nothing of the principal outlives it.

The principal itself must not be PID 1: the kernel ignores signals PID 1
has no handler for (a Python front end would ignore SIGTERM), and orphans
would never be reaped.
"""

from __future__ import annotations

import functools
import os

from ..errors import SandboxError

INIT_PROGRAM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_native", "pspy-init")


@functools.cache
def init_program_fd() -> int:
    """pspy-init, opened once: PID 1 runs it by descriptor (it is not in
    the principal's view), after its namespaces are made."""
    try:
        return os.open(INIT_PROGRAM, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise SandboxError(f"pspy-init is missing ({INIT_PROGRAM}: {e.strerror}); reinstall pspy with a C "
                           "compiler available (pip install .)") from None
