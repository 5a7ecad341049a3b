"""The paste-bin's "evaluate": run a user's Python snippet and return what
it printed. The code is anyone's, so under pspy every call runs in a fresh
process of its own (isolation="per_call") under the strict seccomp profile,
with no network, nothing writable but a private temporary folder, and the
limits below (edX's CodeJail is the reference: CPU 1 s, real time 1 s,
memory and file-size caps, 15 processes). Nothing of one call reaches the
next.

Without pspy (`python manage.py runserver` for development) the decorator
does nothing and the snippet runs inside the server: never serve it so.
"""

import contextlib
import io
import traceback

import pspy

MAX_OUTPUT = 64 * 1024   # characters of output kept


@pspy.service(service_provider="Evaluator", isolation="per_call", seccomp="strict", network=False,
              callers=["web"],
              limits={"call_timeout": 1, "cpu_seconds": 1, "memory": "128M", "processes": 15,
                      "open_files": 32, "file_size": "1M"})
def evaluate(code):
    """{"output": what the snippet printed, "error": its exception's last
    line, or None}."""
    out = io.StringIO()
    error = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            exec(compile(code, "<paste>", "exec"), {"__name__": "__paste__"})
        except BaseException as e:  # noqa: BLE001 - SystemExit too: the snippet's end is its result
            error = traceback.format_exception_only(type(e), e)[-1].strip()
    return {"output": out.getvalue()[:MAX_OUTPUT], "error": error}
