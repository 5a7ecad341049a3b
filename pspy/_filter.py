"""Loading a principal's seccomp filter at start-up, cheaply.

Imported by every principal's sitecustomize before the app: it loads the BPF
program bootstrap compiled for the principal (pspy.seccomp.compile_bpf) and,
when the filter traps denials, sets up their reporting first: a pipe, the
SIGSYS handler of the native helper, and a thread that turns records into
log lines (pspy.seccomp.report, imported only once a denial arrives).
Nothing heavier is imported here: this runs at every principal start.
"""

from __future__ import annotations

# Imported here, before the filter, on both paths (enforcing and learning):
# whatever a module does when first imported must happen on the same side of
# the filter in both, or a learned profile would miss it.
import fcntl
import os
import threading

F_SETPIPE_SZ = 1031
# Where CPython exports no traceback dumper for C (3.13), the SIGSYS handler
# sends this signal to its own thread and faulthandler, registered for it,
# writes the stack into the denial record. A real-time signal apps rarely use.
STACK_SIGNAL_FROM_MAX = 2   # SIGRTMAX - 2
reporter_fds: tuple[int, ...] = ()   # the denial pipe's two ends, the principal's own


FILE_MAGIC = b"pspy-seccomp-1"


def install(policy: dict, stream, app_dir: str) -> None:
    """Load ``policy`` (a principal's, from the plan) into this process and
    every thread of it. Raises OSError or RuntimeError; the caller must not
    go on without it."""
    import base64
    install_program(base64.b64decode(policy["bpf"]), bool(policy.get("trapping")), policy.get("errno", 1),
                    stream, app_dir, bool(policy.get("tkill")))


def file_bytes(policy: dict, app_dir: str) -> bytes:
    """The policy as jail.write_filters stores it for a principal: a header
    line, then the BPF program (no JSON, no base64 to import at start-up)."""
    import base64
    header = b"%s trapping=%d errno=%d tkill=%d app_dir=%s\n" % (
        FILE_MAGIC, bool(policy.get("trapping")), policy.get("errno", 1), bool(policy.get("tkill")),
        os.fsencode(app_dir))
    return header + base64.b64decode(policy["bpf"])


def install_file(path: str, stream) -> None:
    """Load the filter ``file_bytes`` wrote at ``path``."""
    with open(path, "rb") as f:
        data = f.read()
    header, _, program = data.partition(b"\n")
    fields = header.split()
    if not fields or fields[0] != FILE_MAGIC or not program:
        raise RuntimeError(f"{path} is not a pspy seccomp filter")
    values = dict(field.split(b"=", 1) for field in fields[1:])
    install_program(program, values.get(b"trapping") == b"1", int(values.get(b"errno", b"1")), stream,
                    os.fsdecode(values.get(b"app_dir", b"/app")), values.get(b"tkill") == b"1")


def install_program(program: bytes, trapping: bool, denial_errno: int, stream, app_dir: str,
                    tkill_allowed: bool = False) -> None:
    import _prctl   # python-prctl's C module; its Python wrapper is slow to import
    from ._native import ffi, lib
    if trapping:
        start_reporter(stream, denial_errno, app_dir, tkill_allowed)
    if os.environ.get("PSPY_CONFINED") and _prctl.prctl(_prctl.PR_GET_SECCOMP):
        # A child the principal started (subprocess): it runs under the filter
        # it inherited, which no process can remove or loosen; only the
        # reporting above is its own to set up again. (A filter from outside
        # pspy, a container's or systemd's, is no such reason: pspy's own is
        # loaded on top of it.)
        return
    buf = ffi.from_buffer(program)
    if lib.pspy_load_bpf(buf, len(program), lib.SECCOMP_FILTER_FLAG_TSYNC) != 0:
        err = ffi.errno
        raise OSError(err, f"loading the seccomp filter failed: {os.strerror(err)}")


def start_reporter(stream, denial_errno: int, app_dir: str, tkill_allowed: bool = False) -> None:
    """``tkill_allowed``: the filter lets the process signal its own threads,
    so the stack of a denied call can be had from faulthandler where CPython
    exports no dumper (see the native helper)."""
    from ._native import lib
    global reporter_fds
    r, w = os.pipe2(os.O_CLOEXEC)
    reporter_fds = (r, w)
    os.set_blocking(w, False)   # a full pipe drops a record; it never blocks the trapped thread
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    # The helper's argument: 0, CPython's dumper; -1, no stack; else faulthandler's signal.
    how = stack_source(tkill_allowed)
    stack_signal = 0 if how == "dumper" else -1
    if how == "signal":
        import faulthandler
        import signal
        stack_signal = signal.SIGRTMAX - STACK_SIGNAL_FROM_MAX
        faulthandler.register(stack_signal, file=w, all_threads=False, chain=False)
    if lib.pspy_install_sigsys_reporter(w, denial_errno, stack_signal) != 0:
        raise RuntimeError("installing the SIGSYS handler failed")
    threading.Thread(target=_report, args=(r, stream, app_dir), name="pspy-seccomp-report", daemon=True).start()


def stack_source(tkill_allowed: bool) -> str:
    """Where a denial record's Python stack comes from: "dumper" (CPython's
    _Py_DumpTraceback, exported up to 3.12), "signal" (faulthandler, when
    the filter lets a thread signal itself), or "none"."""
    if force_stack_source is not None:
        return force_stack_source
    from ._native import lib
    if lib.pspy_traceback_available():
        return "dumper"
    return "signal" if tkill_allowed else "none"


# Tests set this to try each way on any CPython.
force_stack_source: str | None = None


def _report(fd: int, stream, app_dir: str) -> None:
    # Wait for a first record before importing the reporting code: at
    # start-up this thread must not compete with the principal for the GIL.
    while True:
        try:
            first = os.read(fd, 65536)
            break
        except InterruptedError:
            continue
    if not first:
        return
    from . import seccomp
    seccomp.report(fd, stream, app_dir, first)


def learn() -> None:
    """pspy learn: every syscall of this process (and its future threads and
    children) is sent by seccomp user notification to a listener thread of
    the native helper, recorded in stderr (the principal's log) and let
    through. The listener starts before the filter, which is loaded without
    TSYNC, so the listener is not filtered and never waits on itself."""
    from ._native import ffi, lib
    if lib.pspy_learn_start(2) != 0:
        raise RuntimeError("starting the learning thread failed")
    arch = lib.seccomp_arch_native()
    ctx = lib.seccomp_init(lib.SCMP_ACT_ALLOW)
    if ctx == ffi.NULL:
        raise RuntimeError("seccomp_init failed")
    try:
        for attr, value in ((lib.SCMP_FLTATR_ACT_BADARCH, lib.SCMP_ACT_KILL_PROCESS), (lib.SCMP_FLTATR_CTL_NNP, 1)):
            if lib.seccomp_attr_set(ctx, attr, value) < 0:
                raise RuntimeError("seccomp_attr_set failed")
        for nr in range(1024):
            raw = lib.seccomp_syscall_resolve_num_arch(arch, nr)
            if raw == ffi.NULL:
                continue
            lib.free(raw)
            if lib.seccomp_rule_add_exact_array(ctx, lib.SCMP_ACT_NOTIFY, nr, 0, ffi.NULL) < 0:
                raise RuntimeError(f"adding the learning rule for syscall {nr} failed")
        if lib.pspy_learn_load(ctx) != 0:
            raise RuntimeError("loading the learning filter failed")
    finally:
        lib.seccomp_release(ctx)
