"""PID 1 of a principal's PID namespace: start the principal, reap, forward signals.

The principal itself must not be PID 1: the kernel ignores signals PID 1
has no handler for (a Python front end would ignore SIGTERM), and orphans
would never be reaped. When this init exits, the kernel kills everything
left in the namespace: nothing of the principal outlives it.
"""

from __future__ import annotations

import os
import signal

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def run_init(child: int) -> "NoReturn":  # noqa: F821
    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status)
                     else 128 + os.WTERMSIG(status))
