"""Start one principal in namespace mode.

``launch()`` forks the launcher from the supervisor (or ``pspy exec``),
running as host root with the app's user namespace open on an fd: no new
interpreter starts before the principal's own. In order:
new mount, PID, IPC, UTS (and network) namespaces, made by host root so
they belong to the host's user namespace -> loopback -> fork PID 1 ->
fork the principal, which waits -> mounts (proc included) -> pivot_root
-> the principal checks its root moved, goes on -> join the
app's user namespace -> groups, gid, uid -> no capability (bounding set
too) -> no_new_privs -> parent-death signal -> exec.

Three processes per principal: this launcher (it waits and passes signals
on), PID 1 of the principal's PID namespace (it reaps), and the principal.
The first two drop to the principal's ids too once their work is done. If
the launcher dies, the chain of parent-death signals takes the rest down,
and the kernel kills a PID namespace whose PID 1 exits.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time

import prctl

from .. import _native as n
from ..plan import APP_DIR, Plan
from . import caps, ids, mount, net, pid, user


class Launched:
    """The forked launcher, with the part of subprocess.Popen's interface pspy uses."""

    def __init__(self, pid: int, stdin=None, stdout=None, stderr=None, pidns_fd: int | None = None):
        self.pid = pid
        self.returncode: int | None = None
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self._pidns_fd = pidns_fd
        self._pidns = b""

    def pidns(self) -> str | None:
        """The principal's PID namespace ("pid:[inode]"), once the launcher has
        made it and said so. The launcher is not dumpable once it drops, so
        its /proc entries are closed to a rootless supervisor: it tells."""
        if self._pidns_fd is None:
            return None
        try:
            data = os.read(self._pidns_fd, 64)
        except BlockingIOError:
            return None
        self._pidns += data
        if data and not self._pidns.endswith(b"\n"):
            return None
        os.close(self._pidns_fd)
        self._pidns_fd = None
        text = self._pidns.decode(errors="replace").strip()
        return text if text.startswith("pid:[") else None

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
                raise subprocess.TimeoutExpired(f"launcher {self.pid}", timeout)
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
           stdout=None, stderr=None, pass_fds: tuple[int, ...] = ()) -> Launched:
    """Fork the launcher for ``principal``; it runs ``command`` inside its namespaces."""
    pipes: list[int] = []
    child_fds, streams = zip(*(_std_fd(spec, i, pipes) for i, spec in enumerate((stdin, stdout, stderr))))
    pidns_r, pidns_w = os.pipe()
    os.set_blocking(pidns_r, False)
    pipes.append(pidns_w)
    supervisor = os.getpid()   # read before the fork: a child reading getppid() late could see 1
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            _scrub_inherited_environment()
            os.setsid()
            for i, fd in enumerate(child_fds):
                if fd != i:
                    os.dup2(fd, i)
            keep = sorted({0, 1, 2, userns_fd, pidns_w, *pass_fds})
            for low, high in zip(keep, keep[1:] + [os.sysconf("SC_OPEN_MAX")]):
                os.closerange(low + 1, high)   # nothing of the supervisor's but what the plan names
            for fd in keep[3:]:
                os.set_inheritable(fd, True)
            for sig in list(pid_signals()):
                signal.signal(sig, signal.SIG_DFL)
            os.environ.clear()
            os.environ.update(env)
            code = run(plan, principal, userns_fd, command, supervisor, pidns_w)
        except BaseException as e:  # noqa: BLE001 - the principal's log shows why it could not start
            try:
                if env.get("PSPY_DEBUG") == "1":
                    import traceback
                    traceback.print_exc()
                os.write(2, f"pspy: cannot start {principal.name}: {e}\n".encode())
            finally:
                os._exit(code)
        os._exit(code)
    for fd in pipes:
        os.close(fd)
    return Launched(pid, *streams, pidns_fd=pidns_r)


def _scrub_inherited_environment() -> None:
    """Zero the environment block and command line this forked child inherited.

    A fork keeps the supervisor's original environment in memory (what
    /proc/PID/environ shows), secrets of other principals included; the
    launcher and the principal's PID 1 run as the principal afterwards, so
    that copy is wiped. The principal itself is exec'd with its own clean env.
    """
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # Fields 50 and 51 of /proc/PID/stat (env_start, env_end); the split above
    # starts at field 3.
    # arg_start, arg_end, env_start, env_end: the command line goes too (it
    # may hold `pspy exec ... -c CODE`); ps then shows the process's name.
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        for start, end in ((arg_start, arg_end), (env_start, env_end)):
            if 0 < start < end:
                mem.seek(start)
                mem.write(b"\0" * (end - start))


def pid_signals():
    return (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE)


def run(plan: Plan, principal, userns_fd: int, command: list[str], supervisor: int, pidns_w: int) -> int:
    name = principal.name
    caps.arm_parent_death(supervisor)
    pspy_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    if plan.rootless:
        # Without root, namespaces can only be made inside a user namespace
        # of one's own: join the app's first, so it owns the new ones. The
        # principal still holds no capability in any of them (dropped below).
        user.enter(userns_fd)
    flags = n.CLONE_NEWNS | n.CLONE_NEWPID | n.CLONE_NEWIPC | n.CLONE_NEWUTS
    if not principal.network:
        flags |= n.CLONE_NEWNET
    n.unshare(flags)
    # Nothing mounted from here on may propagate back to the host.
    n.mount(None, "/", None, n.MS_REC | n.MS_PRIVATE, step="make / private")
    if not principal.network:
        net.loopback_up()
    socket.sethostname(f"pspy-{name}"[:63])

    # PID 1's parent is outside its PID namespace (getppid() is 0 there), so
    # it learns whether the launcher still lives from this pipe: the launcher
    # holds the write end until it exits.
    alive_r, alive_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(alive_w)
        # Tell the supervisor which PID namespace the principal lives in, while
        # /proc is still the host's (the kernel names it only once PID 1 exists).
        os.write(pidns_w, os.readlink("/proc/self/ns/pid").encode() + b"\n")
        os.close(pidns_w)
        _init(plan, principal, command, pspy_dir, alive_r, userns_fd)
    os.close(alive_r)
    os.close(pidns_w)   # PID 1 tells
    _close_listener()   # only the principal serves on it
    drop_privileges(principal, userns_fd, f"pspy-run:{name}", plan.rootless)
    caps.arm_parent_death(supervisor)   # again: the id change cleared it
    return _wait(init)


def _init(plan: Plan, principal, command: list[str], pspy_dir: str, alive_r: int, userns_fd: int):
    """PID 1 of the principal's namespace."""
    _arm_pdeathsig_for_init(alive_r)
    me = os.getpid()
    # The principal is forked first and waits until its root is ready: the
    # fork's cost then overlaps the mounts. pivot_root moves its root with
    # PID 1's (both are the host's "/" until then); it checks that it did.
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(alive_r)
        os.close(go_w)
        new_root = os.read(go_r, 64)
        os.close(go_r)
        if not new_root or new_root != _root_id():
            os._exit(125)   # PID 1 failed (its error is in the log), or the root did not move
        os.chdir(APP_DIR)
        drop_privileges(principal, userns_fd, f"pspy:{principal.name}", plan.rootless)
        caps.arm_parent_death(me)   # after the id change, which clears it
        os.execvpe(command[0], command, os.environ)   # by PATH, as chroot mode's Popen does
    os.close(go_r)
    root = mount.build_root(plan, principal, pspy_dir)
    mount.enter(root)
    os.write(go_w, _root_id())
    os.close(go_w)
    _close_listener()
    drop_privileges(principal, userns_fd, f"pspy-init:{principal.name}", plan.rootless)
    _arm_pdeathsig_for_init(alive_r)   # again: the id change cleared it
    os.close(alive_r)
    pid.run_init(child)


def _root_id() -> bytes:
    st = os.stat("/")
    return f"{st.st_dev}:{st.st_ino}".encode()


def _arm_pdeathsig_for_init(alive_r: int) -> None:
    prctl.set_pdeathsig(signal.SIGKILL)
    readable, _, _ = select.select([alive_r], [], [], 0)
    if readable:   # end of file: the launcher is gone
        os._exit(1)


def _close_listener() -> None:
    from ..runtime import listening_fds
    for fd, _ in listening_fds(os.environ):
        try:
            os.close(fd)
        except OSError:
            pass


def drop_privileges(principal, userns_fd: int, name: str, joined: bool) -> None:
    """Join the app's user namespace (unless ``joined``: rootless, the launcher
    joined it first), become the principal, keep nothing. Never reads /proc:
    PID 1's pivot_root moves the launcher's root too (they share the mount
    namespace), and /proc there is the principal's."""
    if not joined:
        user.enter(userns_fd)
    os.close(userns_fd)
    # Joining a user namespace refills the bounding set, so it is emptied
    # here, with the CAP_SETPCAP the join gives, before the uid drop.
    caps.drop_bounding_set()
    ids.become(principal)
    os.umask(0o077)                # what a principal creates is its own
    caps.clear_all()
    prctl.set_no_new_privs(1)
    # Rootless the id change above changes nothing, so the kernel leaves the
    # process dumpable: the principal (same uid) could ptrace its launcher
    # or PID 1 and free them from the parent-death chain. Not any more.
    # (The principal's own exec makes it dumpable again; its sitecustomize
    # undoes that before the app runs.)
    prctl.set_dumpable(False)
    caps.set_name(name)


def _wait(child: int) -> int:
    """The launcher: pass signals on to PID 1, exit with the principal's status."""
    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass
    for sig in pid.FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
