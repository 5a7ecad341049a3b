"""A provider whose every call runs in a fresh process (Runner), and one
that runs calls in its own process with a call_timeout (Steady): the tests
run snippets in them and watch what one call leaves to the next."""

import contextlib
import io
import os

import pspy

LEFT = []   # a global a call may change: the next call must not see it


@pspy.service(service_provider="Runner", isolation="per_call", seccomp="strict", perms={"results/": 0o700},
              limits={"call_timeout": 2, "cpu_seconds": 5, "memory": "256M", "processes": 32,
                      "file_size": "1M"})
def run(code):
    """Run a snippet; its output and its exception, if any."""
    out = io.StringIO()
    error = None
    with contextlib.redirect_stdout(out):
        try:
            exec(code, {"LEFT": LEFT, "os": os})
        except Exception as e:  # noqa: BLE001 - the snippet's failure is its output
            error = f"{type(e).__name__}: {e}"
    return [out.getvalue(), error]


@pspy.service(service_provider="Runner")
def whoami():
    return [os.getpid(), os.getppid(), len(LEFT), os.environ.get("TMPDIR")]


@pspy.service(service_provider="Steady", perms={"steady/": 0o700}, limits={"call_timeout": 1})
def spin(seconds):
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "done"


@pspy.service(service_provider="Steady")
def steady_pid():
    return os.getpid()


STARTED = os.urandom(8).hex()   # differs in every start of the provider


@pspy.service(service_provider="Steady")
def steady_start():
    return STARTED
