"""Start one principal in namespace mode.

``launch()`` fills one spawn request and hands it to the native helper
(pspy/_native/spawn.c), which starts the principal with no Python between
clone and exec: a launcher that shares the supervisor's memory (as a vfork
child does) enters the principal's template mount namespace
(sandbox/template.py) and makes the new namespaces, mount (a copy of the
template), PID, IPC, UTS, cgroup and, unless the principal has the network, net,
made by host root so that they belong to the host's user namespace ->
loopback up (the request pyroute2 encoded, sandbox/net.py) -> PID 1, the
supervisor's child: fresh /proc, /tmp, /dev/shm -> the principal, which
waits until PID 1 has exec'd pspy-init (sandbox/pid.py) and that is no
longer dumpable -> joins the app's user namespace -> groups, gid, uid -> a
new session keyring -> no capability (bounding set too) -> no_new_privs ->
parent-death signal -> exec (its sitecustomize then makes it non-dumpable
again: exec resets that). PID 1 drops the same way before its own exec.

Rootless, the launcher joins the app's user namespace first: without root
only it can own the new namespaces.

Two processes per principal stay: PID 1 (what the supervisor waits on and
signals) and the principal. If the supervisor dies, PID 1's parent-death
signal kills it, and with it the whole PID namespace.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time

from .. import _native as n
from ..errors import SandboxError
from ..limits import RLIMIT_NAMES
from ..plan import APP_DIR, Plan
from . import caps, net, pid, steps, template


class Launched:
    """PID 1 of a principal's PID namespace (the supervisor's child), with the
    part of subprocess.Popen's interface pspy uses; it exits with the principal's status."""

    def __init__(self, pid: int, stdin=None, stdout=None, stderr=None, pidns: int = 0):
        self.pid = pid   # PID 1 of the principal's PID namespace
        self.returncode: int | None = None
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self._pidns = pidns

    def pidns(self) -> str | None:
        """The principal's PID namespace ("pid:[inode]"), as the launcher read it."""
        return f"pid:[{self._pidns}]" if self._pidns else None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                try:
                    _, status = os.waitpid(self.pid, 0)
                except ChildProcessError:
                    break
                self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"PID 1 of a principal ({self.pid})", timeout)
            time.sleep(0.001)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


def _std_fd(spec, index: int, pipes: list):
    """The child's end for a Popen-style stdio argument, and the parent's stream.
    Descriptors opened here for the child are listed in ``pipes`` (closed in the parent)."""
    if spec is None:
        return index, None
    if spec == subprocess.DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR)
        pipes.append(fd)
        return fd, None
    if spec == subprocess.PIPE:
        r, w = os.pipe()
        pipes.append(r if index == 0 else w)
        if index == 0:
            return r, os.fdopen(w, "wb", buffering=0)
        return w, os.fdopen(r, "rb", buffering=0)
    return (spec if isinstance(spec, int) else spec.fileno()), None


def launch(plan: Plan, principal, command: list[str], env: dict, userns_fd: int, *, stdin=None,
           stdout=None, stderr=None, pass_fds: tuple[int, ...] = (), cgroup_procs: list[str] = (),
           rlimits: list[tuple[int, int, int]] = ()) -> Launched:
    """Start ``command`` as ``principal`` in its namespaces; ``pass_fds`` keep
    their numbers. The launcher moves itself into ``cgroup_procs`` (the
    principal's cgroups) first; the principal sets ``rlimits`` just before exec."""
    if not command or not command[0]:
        raise SandboxError(f"cannot start {principal.name}: no command given")
    if any(fd < 3 for fd in pass_fds):
        raise SandboxError(f"cannot start {principal.name}: a descriptor to hand over ({sorted(pass_fds)}) "
                           "is below 3, where the principal's stdio goes (was pspy started with stdio closed?)")
    ffi = n.ffi
    keepalive: list = []   # cffi buffers the request points into

    def c_str(text: str | bytes | None):
        if text is None:
            return ffi.NULL
        buf = ffi.new("char[]", os.fsencode(text))
        keepalive.append(buf)
        return buf

    def c_strv(items):
        array = ffi.new("char *[]", [c_str(x) for x in items] + [ffi.NULL])
        keepalive.append(array)
        return array

    spec = ffi.new("struct pspy_spawn *")
    spec.rootless = int(plan.rootless)
    spec.userns_fd = userns_fd
    spec.template_fd = template.template_fd(plan, principal, userns_fd)
    # A cgroup namespace too: /proc/self/cgroup then shows "/", not the host's cgroup path.
    flags = n.CLONE_NEWNS | n.CLONE_NEWPID | n.CLONE_NEWIPC | n.CLONE_NEWUTS | n.CLONE_NEWCGROUP
    if not principal.network:
        flags |= n.CLONE_NEWNET
        request = net.loopback_request()
        buf = ffi.from_buffer("unsigned char[]", request)
        keepalive.append(buf)
        spec.netlink, spec.netlink_len = buf, len(request)
    spec.ns_flags = flags
    spec.hostname = c_str(f"pspy-{principal.name}"[:63])
    ops = template.start_ops(plan)
    op_array = ffi.new("struct pspy_op[]", len(ops))
    keepalive.append(op_array)
    for i, (kind, slot, source, target, fstype, data, mflags, mode) in enumerate(ops):
        op = op_array[i]
        op.kind, op.slot, op.flags, op.mode = kind, slot, mflags, mode
        op.source, op.target, op.fstype, op.data = c_str(source), c_str(target), c_str(fstype), c_str(data)
    spec.ops, spec.n_ops = op_array, len(ops)
    spec.uid, spec.gid = principal.uid, principal.gid
    groups = ffi.new("unsigned int[]", list(principal.groups) or [0])
    keepalive.append(groups)
    spec.groups, spec.n_groups = groups, len(principal.groups)
    spec.last_cap = caps.last_cap()
    spec.cwd = c_str(APP_DIR)
    spec.init_name = c_str(f"pspy-init:{principal.name}")
    spec.argv = c_strv(command)
    spec.envp = c_strv(f"{k}={v}" for k, v in env.items())
    spec.path = c_str(env.get("PATH"))   # NULL: /usr/bin:/bin
    keep = ffi.new("int[]", sorted(pass_fds) or [0])
    keepalive.append(keep)
    spec.keep, spec.n_keep = keep, len(pass_fds)
    spec.init_exe_fd = pid.init_program_fd()
    limits = ffi.new("struct pspy_rlimit[]", max(1, len(rlimits)))
    keepalive.append(limits)
    for i, (resource, soft, hard) in enumerate(rlimits):
        limits[i].resource, limits[i].soft, limits[i].hard = resource, soft, hard
        limits[i].name = c_str(RLIMIT_NAMES.get(resource, f"resource limit {resource}"))
    spec.rlimits, spec.n_rlimits = limits, len(rlimits)
    spec.keyring_warning = c_str(steps.keyring_warning(principal.name))

    pipes: list[int] = []
    own: list[int] = []
    try:
        child_fds, streams = zip(*(_std_fd(spec_, i, pipes) for i, spec_ in enumerate((stdin, stdout, stderr))))
        for i, fd in enumerate(child_fds):
            spec.stdio[i] = fd if _is_open(fd) else -1
        cgroup_fds = [_own(own, os.open(path, os.O_WRONLY | os.O_CLOEXEC)) for path in cgroup_procs]
        fds = ffi.new("int[]", cgroup_fds or [0])
        keepalive.append(fds)
        spec.cgroup_fds, spec.n_cgroup_fds = fds, len(cgroup_fds)
        spec.proc_fd = _own(own, os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        spec.supervisor_pidfd = _own(own, os.pidfd_open(os.getpid()))
        rc = n.lib.pspy_spawn(spec)
    finally:
        for fd in pipes + own:
            os.close(fd)
    if rc != 0:
        if spec.init_pid > 0:
            _reap(spec.init_pid)
        for stream in streams:
            if stream is not None:
                stream.close()
        if spec.exec_err == errno.ENOENT:
            raise SandboxError(f"cannot run {command[0]!r} as {principal.name}: no such program in its view "
                               "(the app, the Python installation and the system's /usr, /bin and /lib; "
                               "try 'python -c ...')")
        if spec.exec_err == errno.EACCES:
            raise SandboxError(f"cannot run {command[0]!r} as {principal.name}: permission denied in its view "
                               "(not executable by the principal, or on a mount without exec; an app script "
                               f"runs as 'python {command[0]}')")
        failed, err = (spec.p_step, spec.p_err) if spec.p_err else (spec.step, spec.err)
        step = ffi.string(failed).decode(errors="replace")
        raise SandboxError(steps.describe(principal.name, step, err))
    if spec.init_pid <= 0:   # never: the launcher reports a start without PID 1 as a failure
        raise SandboxError(f"cannot start {principal.name}: the launcher reported no PID 1")
    return Launched(spec.init_pid, *streams, pidns=spec.pidns)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _own(own: list[int], fd: int) -> int:
    own.append(fd)
    return fd


def _reap(pid_: int) -> None:
    """PID 1 of a start that failed exits at once; wait for it briefly."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid_, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.001)
