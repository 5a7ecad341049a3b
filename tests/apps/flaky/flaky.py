"""A provider that refuses to start while a file data/broken exists (or
FLAKY_BROKEN=1 is set at bootstrap): the tests use it to make every new copy
of a provider fail at import, as an app broken by a bad deploy would."""

import os

import pspy

HERE = os.path.dirname(os.path.abspath(__file__))

if os.environ.get("FLAKY_BROKEN") == "1" or os.path.exists(os.path.join(HERE, "data", "broken")):
    raise RuntimeError("flaky: told not to start (data/broken exists or FLAKY_BROKEN=1)")


@pspy.service(service_provider="Flaky", group="FlakyGroup", perms={"data/": 0o700}, callers=["web"])
def hello():
    return f"hello from {os.getpid()}"


@pspy.service(service_provider="Flaky", callers=["web"])
def scrub_own_log(marker):
    """Log a marker, then try everything that would take it back: what each attempt ended in."""
    import sys
    print(marker, flush=True)
    results = {}

    def attempt(name, fn):
        try:
            fn()
            results[name] = "ok"
        except OSError as e:
            results[name] = type(e).__name__

    attempt("ftruncate stdout", lambda: os.ftruncate(1, 0))
    attempt("ftruncate stderr", lambda: os.ftruncate(sys.stderr.fileno(), 0))
    attempt("seek stdout", lambda: os.lseek(1, 0, os.SEEK_SET))
    attempt("reopen stdout", lambda: os.close(os.open("/proc/self/fd/1", os.O_WRONLY | os.O_TRUNC)))
    attempt("open the log", lambda: os.close(os.open("/.pspy/logs/Flaky.log", os.O_WRONLY | os.O_TRUNC)))
    return results


@pspy.service(service_provider="Flaky", callers=["web"])
def flood(megabytes):
    """Write that much to stdout, as a chatty or hostile provider would."""
    line = "x" * 1023 + "\n"
    for _ in range(megabytes * 1024):
        os.write(1, line.encode())
    return megabytes
