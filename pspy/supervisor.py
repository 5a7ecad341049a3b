"""Start the providers, start the front end, keep them running, stop them all.

Each provider has a ready copy beside the one that serves: a process
started like it (same ids, view, filter and limits), with the app imported
and the listening sockets in hand, that says "ready" on a control channel
and then waits. When the serving copy dies, the supervisor says "go" to the
ready one, which starts accepting on the same listening sockets: callers
that connected meanwhile wait in the socket's queue for a few milliseconds
instead of failing, and no fixed delay comes before a restart. A new ready
copy is then started in the background. Only repeated failures (copies that
die before they are ready, or soon after they start serving) bring in a
growing delay, capped; while no copy is serving or starting, the listening
sockets are closed so callers get ServiceUnavailable at once.

One thread, one event loop: children are started with a preexec step (chroot
mode) or through the native launcher, which is only safe in a process
without other threads. The loop waits on a pidfd per process, the copies'
control channels and a wake-up descriptor for signals, so a death is seen
when it happens, not at the next poll.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from .errors import SandboxError
from .logs import LineBuffer, LogWriter, log_file_name, printable, tail_lines
from .plan import LOG_DIR, Plan, PrincipalPlan
from .rpc import protocol
from .rpc.server import EXIT_CALL_TIMEOUT, refuse
from .running import children_of, remove_cgroups, status_field, sweep_jail
from .runtime import CONTROL_GO, CONTROL_READY
from .sandbox import cgroup
from .sandbox.spawn import provider_argv, spawn_principal
from .sockets import caller_listeners, listen, remove
from .supervisor_writes import LostWrites, StateFile, append_log, open_log

READY_TIMEOUT = 20.0     # a provider's first copy must be ready by then, or bootstrap fails
STOP_GRACE = 5.0         # SIGTERM, then this long, then SIGKILL
FRONT_END_SETTLE = 1.0   # a front end that dies this soon after its first start fails the bootstrap
STABLE_AFTER = 1.0       # a copy serving this long ended a run of failures
FREE_FAILURES = 3        # failures in a row restarted without delay
BACKOFF_FIRST = 0.25     # the delay after FREE_FAILURES failures in a row, doubled per failure ...
BACKOFF_CAP = 10.0       # ... up to this
REFUSE_PER_TURN = 64     # callers the supervisor answers itself per turn of its loop


def log_path(plan: Plan, name: str) -> str:
    return os.path.join(plan.host_path(LOG_DIR), log_file_name(name))


@dataclass
class Copy:
    """One process of a principal: the one serving, or a provider's ready copy."""
    proc: object                          # subprocess.Popen (chroot) or launch.Launched (PID 1)
    pidfd: int
    control: socket.socket | None         # providers: the supervisor's end of the control channel
    started: float                        # monotonic
    ready: bool = False
    ready_at: float | None = None         # monotonic
    serving_since: float | None = None    # monotonic; None until told "go"
    serving_since_wall: float | None = None
    oom_kills: int | None = None          # its memory cgroup's OOM kill count when it started
    memory_cgroup: str | None = None      # that cgroup's folder
    log_fd: int = -1                      # the read end of its stdout and stderr
    name: str = ""                        # the principal's
    echo_lines: LineBuffer | None = None  # foreground: its output cut into lines
    pidns: str | None = None              # namespace mode: its PID namespace, "pid:[inode]"


@dataclass
class Child:
    principal: PrincipalPlan
    active: Copy | None = None            # the copy that serves (providers) or runs (front end)
    spare: Copy | None = None             # providers: the copy started ahead
    listeners: list[socket.socket] = field(default_factory=list)
    by_caller: dict[str, socket.socket] = field(default_factory=dict)   # rootless: the callers' own
    restarts: int = 0
    failures: int = 0                     # in a row: copies that died before they were ready, or soon after
    last_failure: float = 0.0             # monotonic
    next_start: float = 0.0               # monotonic: when the next copy may start
    refusing: bool = False                # no copy serves or starts: the supervisor answers callers
    last_exit: dict | None = None         # {"reason", "code", "at"}


class Supervisor:
    def __init__(self, plan: Plan, say=print, ready_copies: bool = True, echo=None):
        self.plan = plan
        self.say = say
        # Foreground: echo(principal, line) shows each line a principal logs.
        self.echo = echo
        self.logs: dict[str, LogWriter] = {}
        # Its writes to disk (logs, messages, run state) fail soft: counted
        # here, never raised into the loop (supervisor_writes).
        self.lost = LostWrites(say)
        self.state_file = StateFile(plan)
        self._keeper, self._keeper_w = 0, -1   # the keeper's pid, and the pipe it waits on
        # False only in bench/restart.py: a fresh fork+exec at each death, the
        # systemd-style restart that ready copies are measured against.
        self.ready_copies = ready_copies
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.userns_fd: int | None = None   # namespace mode: the app's user namespace
        self.cgroups: set[str] = set()       # the principals' cgroup folders, removed at the end
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None, None))

    # --- starting a copy --------------------------------------------------------
    def _argv(self, principal: PrincipalPlan) -> list[str]:
        return provider_argv(self.plan) if principal.kind == "provider" else principal.argv

    def _spawn(self, child: Child) -> Copy:
        """Start one copy of the principal; a provider's waits for "go"."""
        principal = child.principal
        pass_fds: tuple[int, ...] = ()
        caller_fds: dict[str, int] = {}
        ours = theirs = None
        if principal.kind == "provider":
            self._stop_refusing(child)
            if not child.listeners:
                main = listen(self.plan, principal)
                child.by_caller = caller_listeners(self.plan, principal)
                child.listeners = [main, *child.by_caller.values()]
            pass_fds = tuple(sock.fileno() for sock in child.listeners)
            caller_fds = {caller: sock.fileno() for caller, sock in child.by_caller.items()}
            # SEQPACKET: "ready" and "go" arrive whole; EOF tells either side the other is gone.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The principal writes into a pipe and the supervisor appends to the
        # log file: a principal never holds its log, so it can neither
        # truncate nor rewrite what it logged, and rotation bounds its size.
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        self._note_log(principal.name, f"--- pspy: starting {principal.name} at {time.ctime()} ---")
        try:
            proc = spawn_principal(self.plan, principal, self._argv(principal), stdout=log_w, stderr=log_w,
                                   pass_fds=pass_fds, caller_fds=caller_fds, userns_fd=self.userns_fd,
                                   control_fd=theirs.fileno() if theirs is not None else None)
        except BaseException:
            if ours is not None:
                ours.close()
            os.close(log_r)
            raise
        finally:
            os.close(log_w)
            if theirs is not None:
                theirs.close()
        copy = Copy(proc, -1, ours, time.monotonic(), log_fd=log_r, name=principal.name)
        try:
            os.set_blocking(log_r, False)
            copy.pidfd = os.pidfd_open(proc.pid)
            folders = cgroup.folders(self.plan, principal)   # read once per start, kept on the copy
            copy.memory_cgroup = folders.get("memory")
            copy.oom_kills = cgroup.oom_kills(self.plan, copy.memory_cgroup)
            self.cgroups.update(folders.values())
            self.selector.register(copy.pidfd, selectors.EVENT_READ, ("exit", child, copy))
            self.selector.register(log_r, selectors.EVENT_READ, ("log", child, copy))
            if ours is not None:
                self.selector.register(ours, selectors.EVENT_READ, ("control", child, copy))
        except BaseException:
            # Started but not tracked: it must not run on unwatched.
            self._drop(copy)
            raise
        if self.plan.mode == "namespaces" and hasattr(proc, "pidns"):
            # Killing what runs in it stops the copy even if it broke out of
            # its process group and the parent-death chain. Only live copies'
            # are recorded: a dead namespace's number may be reused by another.
            ns = proc.pidns()
            if ns is not None and ns != os.readlink("/proc/self/ns/pid"):
                copy.pidns = ns
        return copy

    def _log(self, name: str) -> LogWriter | None:
        """The principal's log writer; None (counted) while its file cannot be opened."""
        writer = self.logs.get(name)
        if writer is None:
            writer = open_log(log_path(self.plan, name), self.plan.log_max_bytes, self.plan.log_keep, self.lost)
            if writer is not None:
                self.logs[name] = writer
        return writer

    def _write_log(self, name: str, data: bytes) -> None:
        writer = self._log(name)
        if writer is not None:
            append_log(writer, self.lost, data)

    def _note_log(self, name: str, text: str) -> None:
        """A line of the supervisor's own in a principal's log, on a line of its own."""
        writer = self._log(name)
        if writer is not None:
            append_log(writer, self.lost, note=text)

    def _drain_log(self, copy: Copy, reads: int = 1) -> None:
        """Move what the copy wrote into its log: at most ``reads`` reads of
        64 KiB, so a principal that floods its output gets its share of the
        loop and no more (the pipe is readable again next turn, and the
        flooder blocks on its own full pipe). At EOF (the copy and whatever
        inherited its output are gone) forget the pipe."""
        for _ in range(reads):
            if copy.log_fd < 0:
                return
            try:
                data = os.read(copy.log_fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close_log(copy)
                return
            self._write_log(copy.name, data)
            if self.echo is not None:
                if copy.echo_lines is None:
                    copy.echo_lines = LineBuffer()
                for line in copy.echo_lines.feed(data):
                    self._echo(copy.name, line)

    def _close_log(self, copy: Copy) -> None:
        if copy.log_fd >= 0:
            try:
                self.selector.unregister(copy.log_fd)
            except (KeyError, ValueError):
                pass   # a start that failed before it was registered
            os.close(copy.log_fd)
            copy.log_fd = -1
        if self.echo is not None and copy.echo_lines is not None:
            for line in copy.echo_lines.flush():
                self._echo(copy.name, line)

    def _echo(self, name: str, line: str) -> None:
        """Foreground: show a principal's line, unless the terminal would make
        the supervisor wait (paused, or a slow pipe): then it is dropped,
        it is in the log anyway. Nothing here may raise into the loop."""
        try:
            if not select.select([], [sys.stdout], [], 0)[1]:
                return
            self.echo(name, line[:4096])
        except (OSError, ValueError, UnicodeError):
            pass

    def _say(self, text: str) -> None:
        """The supervisor's own message; a full disk or a closed terminal is no reason to stop the app."""
        try:
            self.say(text)
        except (OSError, ValueError, UnicodeError) as e:
            self.lost.lost("messages", e)
        else:
            self.lost.ok("messages")

    def _go(self, child: Child, copy: Copy) -> None:
        """Make ``copy`` the one that serves."""
        if copy.control is not None:
            try:
                copy.control.send(CONTROL_GO)
            except OSError:
                pass   # it died meanwhile: its pidfd reports that next
            self._forget_control(copy)
        child.active = copy
        if not copy.ready:   # a front end: no "ready" of its own
            copy.ready, copy.ready_at = True, time.monotonic()
        copy.serving_since = time.monotonic()
        copy.serving_since_wall = time.time()

    def _forget_control(self, copy: Copy) -> None:
        if copy.control is not None:
            try:
                self.selector.unregister(copy.control)
            except (KeyError, ValueError):
                pass
            copy.control.close()
            copy.control = None

    # --- the first start ------------------------------------------------------
    def _start_keeper(self) -> None:
        """Fork the keeper: a process that outlives this one only to clean up
        after it. If the supervisor dies without saying "done" (SIGKILL, a
        crash), the keeper stops whatever of the app is left, as 'pspy stop'
        would: in chroot mode a principal's descendants that left its
        session (a daemon) have no parent-death signal, and no PID namespace
        ends them. Forked before anything else, so it holds no socket or
        namespace of the app."""
        read_end, self._keeper_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid:
            os.close(read_end)
            self._keeper = pid
            return
        code = 0
        try:
            os.close(self._keeper_w)
            # Nothing of the supervisor's but stdio (its log): a pipe its
            # parent waits on must not stay open because of the keeper.
            os.closerange(3, read_end)
            os.closerange(read_end + 1, os.sysconf("SC_OPEN_MAX"))
            signal.set_wakeup_fd(-1)
            os.setsid()   # Ctrl-C at the foreground's terminal is the supervisor's to handle
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            try:
                with open("/proc/self/comm", "w") as comm:
                    comm.write("pspy-keeper")
            except OSError:
                pass
            said = b""
            while chunk := os.read(read_end, 16):   # EOF: every write end is closed, the supervisor is gone
                said += chunk
            if said != b"done":
                from .running import stop
                stop(self.plan)
        except BaseException:  # noqa: BLE001 - a keeper never returns into the supervisor's code
            code = 1
        finally:
            os._exit(code)

    def _dismiss_keeper(self) -> None:
        if self._keeper_w < 0:
            return
        try:
            os.write(self._keeper_w, b"done")
        finally:
            os.close(self._keeper_w)
            self._keeper_w = -1
        try:
            os.waitpid(self._keeper, 0)
        except ChildProcessError:
            pass

    def start_all(self) -> None:
        if self.plan.mode == "namespaces":
            from .sandbox import net
            from .sandbox.user import create_user_namespace
            net.warm_up()
            self.userns_fd = create_user_namespace(self.plan)   # while still dumpable: rootless needs it
        # In namespace mode the spawn path's children share this process's
        # memory until they exec, and their id changes make that memory
        # non-dumpable: said here, once, rather than left to the first start.
        # No other process of the user (rootless) can ptrace the supervisor
        # (or the keeper, forked next) or read its memory, which holds the
        # app's listening sockets and environment.
        import prctl
        prctl.set_dumpable(False)
        self._start_keeper()
        for principal in self.plan.providers:
            child = self.children[principal.name] = Child(principal)
            copy = self._spawn(child)
            self._wait_ready(child, copy)
            self._go(child, copy)
            self._write_state()
        front = self.plan.front_end
        if front.argv:
            child = self.children[front.name] = Child(front)
            self._go(child, self._spawn(child))
            self._write_state()
            # A front end that dies at once (a missing module, a port in use)
            # is reported now rather than restarted quietly in the background.
            proc = child.active.proc
            deadline = time.monotonic() + FRONT_END_SETTLE
            while time.monotonic() < deadline and proc.poll() is None:
                self._pump(0.05, logs_only=True)
            self._drain_log(child.active)
            if proc.poll() is None and front.seccomp and principal_seccomp_mode(self.plan, proc) == 0:
                raise SandboxError(f"the front end {front.name} ({' '.join(front.argv)}) runs without its "
                                   "seccomp filter (a command that skips pspy's sitecustomize, such as python -I or -S?); "
                                   "refusing to run it unfiltered")
            if proc.poll() is not None:
                raise SandboxError(f"the front end {front.name} ({' '.join(front.argv)}) "
                                   f"{describe_exit(proc.returncode, self.plan)} at start; its log "
                                   f"{log_path(self.plan, front.name)} ends with:\n"
                                   + tail(log_path(self.plan, front.name)))
        self._write_state()

    def _wait_ready(self, child: Child, copy: Copy) -> None:
        """Wait for a provider's first copy to say "ready"; its failure to fails the bootstrap."""
        name = child.principal.name
        deadline = time.monotonic() + READY_TIMEOUT
        while (left := deadline - time.monotonic()) > 0 and not copy.ready and copy.pidfd >= 0 \
                and not self.stopping:
            self._pump(left)
        if copy.ready:
            return
        code = copy.proc.poll()
        self._drop(copy)
        if code is not None:
            raise SandboxError(f"provider {name} {describe_exit(code, self.plan)} before it was ready"
                               f"{_filter_hint(child.principal)}; its log {log_path(self.plan, name)} "
                               "ends with:\n" + tail(log_path(self.plan, name)))
        raise SandboxError(f"provider {name} was not ready within {READY_TIMEOUT:.0f}s (importing the app "
                           f"takes that long?); see {log_path(self.plan, name)}")

    def _take_ready(self, copy: Copy) -> bool:
        """Read the copy's control channel: True once it said "ready"."""
        try:
            message = copy.control.recv(16)
        except BlockingIOError:
            return False
        except OSError:
            message = b""
        if message == CONTROL_READY:
            copy.ready, copy.ready_at = True, time.monotonic()
            self.selector.unregister(copy.control)   # the channel stays open, to say "go"
            return True
        return False

    def _drop(self, copy: Copy) -> None:
        """Kill a copy and forget it (it failed, or the app is stopping)."""
        self._forget_control(copy)
        _signal_group(copy.proc.pid, signal.SIGKILL, reaped=copy.proc.returncode is not None)
        try:
            copy.proc.wait(timeout=2)
        except Exception:  # noqa: BLE001 - reaped by the sweep at stop otherwise
            pass
        self._close_pidfd(copy)
        self._drain_log(copy, reads=16)
        self._close_log(copy)   # a descendant that still holds the pipe writes into nothing now

    def _close_pidfd(self, copy: Copy) -> None:
        if copy.pidfd >= 0:
            try:
                self.selector.unregister(copy.pidfd)
            except (KeyError, ValueError):
                pass
            os.close(copy.pidfd)
            copy.pidfd = -1

    # --- running ------------------------------------------------------------------
    def _on_signal(self, signum, _frame):
        self.stopping = True

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # The handler runs between two steps of the loop; this makes the
        # loop's wait return at once instead of at its next timeout.
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

    def run(self) -> None:
        """Keep every principal running until told to stop."""
        while not self.stopping:
            self._start_due()
            self._pump(self._next_timeout())
            self._note_stable()

    def _pump(self, timeout: float, logs_only: bool = False) -> None:
        """Wait up to ``timeout`` and handle what happened: output to log,
        copies that are ready or died, callers to refuse, signals."""
        for key, _ in self.selector.select(timeout):
            kind, child, copy = key.data
            if kind == "log":
                self._drain_log(copy)
            elif logs_only:
                continue
            elif kind == "wake":
                try:
                    while self._wake_r.recv(64):
                        pass
                except BlockingIOError:
                    pass
            elif kind == "control" and copy.control is not None:
                if self._take_ready(copy):
                    if child.active is None and child.spare is copy:
                        child.spare = None
                        self._go(child, copy)
                    self._write_state()
                else:
                    self._forget_control(copy)   # EOF: it is dying; its pidfd says so
            elif kind == "exit" and copy.pidfd >= 0 and copy.proc.poll() is not None:
                self._on_exit(child, copy)
            elif kind == "refuse" and child.refusing:
                self._refuse(child, key.fileobj)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        waits = [1.0]
        for child in self.children.values():
            if self._wants_copy(child):
                waits.append(child.next_start - now)
        return max(0.0, min(waits))

    def _wants_copy(self, child: Child) -> bool:
        if child.principal.kind == "provider":
            return child.spare is None and (self.ready_copies or child.active is None)
        return child.active is None

    def _start_due(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if self.stopping or not self._wants_copy(child) or now < child.next_start:
                continue
            try:
                copy = self._spawn(child)
            except Exception as e:  # noqa: BLE001 - out of descriptors, say: a failed start, not the app's end
                self._failed(child)
                child.next_start = time.monotonic() + self._delay(child)
                if child.principal.kind == "provider" and child.active is None:
                    self._no_copy_left(child)   # callers are answered, not left in the queue
                self._say(f"pspy: cannot start {child.principal.name}: {e}; trying again in "
                         f"{self._delay(child):.2f}s")
                continue
            if child.principal.kind == "provider":
                child.spare = copy
            else:
                self._go(child, copy)
                self._write_state()

    def _on_exit(self, child: Child, copy: Copy) -> None:
        code = copy.proc.returncode
        now = time.monotonic()
        took_over = None
        if copy is child.active and child.spare is not None and child.spare.ready:
            # First of all: the ready copy serves. Logs, messages and state
            # come after, off the callers' time.
            took_over, child.spare = child.spare, None
            self._go(child, took_over)
        # Its last words (bounded), before any message quotes them; then the
        # pipe is closed even if a descendant that left its session holds
        # it: one leaked descriptor per restart would add up.
        self._drain_log(copy, reads=16)
        self._close_log(copy)
        self._forget_control(copy)
        self._close_pidfd(copy)
        # What the copy left in its process group goes with it (chroot mode;
        # in namespace mode its PID namespace ended with its PID 1).
        _signal_group(copy.proc.pid, signal.SIGKILL, reaped=True)
        name = child.principal.name
        oom = copy.oom_kills is not None and (cgroup.oom_kills(self.plan, copy.memory_cgroup) or 0) > copy.oom_kills
        reason = describe_exit(code, self.plan, oom)
        if copy is child.active or took_over is not None:
            if took_over is None:
                child.active = None
            child.restarts += 1
            child.last_exit = {"reason": reason, "code": code, "at": time.time()}
            served = now - (copy.serving_since or now)
            if code != EXIT_CALL_TIMEOUT and served < STABLE_AFTER:
                self._failed(child)   # a call past its call_timeout is a healthy provider's doing
            if child.principal.kind != "provider":
                child.next_start = now + self._delay(child)
                self._say(f"pspy: {name} {reason}; starting it again"
                         + (f" in {self._delay(child):.2f}s" if self._delay(child) else ""))
            elif took_over is not None:
                child.next_start = now + self._delay(child)
                self._say(f"pspy: {name} {reason}; its ready copy took over")
            elif child.spare is not None:
                self._say(f"pspy: {name} {reason}; its next copy serves as soon as it is ready")
            else:
                self._no_copy_left(child)
                self._say(f"pspy: {name} {reason}; starting it again"
                         + (f" in {self._delay(child):.2f}s" if self._delay(child) else ""))
        elif copy is child.spare:
            child.spare = None
            self._failed(child)
            child.next_start = now + self._delay(child)
            self._say(f"pspy: {name}'s ready copy {reason}{' before it was ready' if not copy.ready else ''}; "
                     f"starting another in {self._delay(child):.2f}s; its log "
                     f"{log_path(self.plan, name)} ends with:\n" + tail(log_path(self.plan, name)))
            if child.active is None:
                self._no_copy_left(child)
        self._write_state()

    def _no_copy_left(self, child: Child) -> None:
        """No copy serves or is starting: until one starts, the supervisor
        answers every connection on the provider's sockets itself with
        ServiceUnavailable, queued ones included, so callers neither hang nor
        mistake a request nobody read for one that may have run."""
        child.next_start = time.monotonic() + self._delay(child)
        if not child.refusing and self._delay(child) > 0:   # with no delay the next copy starts at once
            # Non-blocking: the flag is on the socket shared with the copies,
            # but no copy lives while this lasts, and _stop_refusing undoes it
            # before the next one starts.
            for sock in child.listeners:
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ, ("refuse", child, None))
            child.refusing = True

    def _stop_refusing(self, child: Child) -> None:
        """A copy is starting: connections wait in the queue for it again."""
        if child.refusing:
            for sock in child.listeners:
                self.selector.unregister(sock)
                sock.setblocking(True)
            child.refusing = False

    def _refuse(self, child: Child, listener: socket.socket) -> None:
        # A bounded number per turn: callers connecting in a loop cannot keep
        # the supervisor from everything else.
        for _ in range(REFUSE_PER_TURN):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                time.sleep(0.01)   # out of descriptors, say: the callers wait; no busy loop
                return
            refuse_connection(conn, child.principal.name)

    def _delay(self, child: Child) -> float:
        if child.failures < FREE_FAILURES:
            return 0.0
        return min(BACKOFF_FIRST * 2 ** min(child.failures - FREE_FAILURES, 16), BACKOFF_CAP)

    def _failed(self, child: Child) -> None:
        child.failures += 1
        child.last_failure = time.monotonic()

    def _note_stable(self) -> None:
        """A run of failures ends once a copy started after the last one has
        been ready for STABLE_AFTER: a copy that cannot start keeps the delay
        growing however long the serving one lives. A ready copy that is not
        ready within READY_TIMEOUT (an import that hangs, a channel that said
        something else) is a failed start: killed, and another started."""
        now = time.monotonic()
        for child in self.children.values():
            spare = child.spare
            if spare is not None and not spare.ready and now - spare.started > READY_TIMEOUT:
                self._say(f"pspy: {child.principal.name}'s next copy was not ready within "
                          f"{READY_TIMEOUT:.0f}s; killing it and starting another")
                child.spare = None
                self._drop(spare)
                self._failed(child)
                child.next_start = now + self._delay(child)
                if child.active is None:
                    self._no_copy_left(child)
                self._write_state()
            if child.failures and any(
                    copy is not None and copy.ready and copy.started > child.last_failure
                    and now - copy.ready_at >= STABLE_AFTER for copy in (child.active, child.spare)):
                child.failures = 0

    def _close_listener(self, child: Child) -> None:
        self._stop_refusing(child)
        for sock in child.listeners:
            sock.close()
        child.listeners = []
        child.by_caller = {}

    # --- stopping -----------------------------------------------------------------
    def stop_all(self) -> None:
        """Front end first (it stops taking requests while its providers still
        answer), then the providers; SIGKILL whatever is left after the grace."""
        self.stopping = True
        front = [c for c in self.children.values() if c.principal.kind != "provider"]
        providers = [c for c in self.children.values() if c.principal.kind == "provider"]
        for child in providers:
            if child.spare is not None:   # idle: nothing to finish
                self._drop(child.spare)
                child.spare = None
        for group in (front, providers):
            copies = [c.active for c in group if c.active is not None]
            for copy in copies:
                if self.plan.mode == "namespaces":
                    # PID 1 passes it on to the principal, which shares its
                    # process group: signalling the group would deliver it twice.
                    _signal_pid(copy.proc.pid, signal.SIGTERM)
                else:
                    _signal_group(copy.proc.pid, signal.SIGTERM, reaped=copy.proc.returncode is not None)
            deadline = time.monotonic() + STOP_GRACE
            # What they write while ending still reaches their logs (a full
            # pipe would hold them up until SIGKILL).
            while time.monotonic() < deadline and any(c.proc.poll() is None for c in copies):
                self._pump(0.02, logs_only=True)
            for copy in copies:
                self._drop(copy)
            for c in group:
                c.active = None
        for child in providers:
            self._close_listener(child)
            remove(self.plan, child.principal.socket)
            for caller in self.plan.callers_of(child.principal) if self.plan.rootless else ():
                remove(self.plan, self.plan.caller_socket(child.principal, caller))
        if self.userns_fd is not None:
            from .sandbox import template
            template.release(self.plan)
            os.close(self.userns_fd)
            self.userns_fd = None
        sweep_jail(self.plan)
        remove_cgroups(self.plan, self.cgroups)
        self.state_file.remove()
        for writer in self.logs.values():
            writer.close()
        self.logs.clear()
        signal.set_wakeup_fd(-1)
        self._dismiss_keeper()

    def _write_state(self) -> None:
        pidns = sorted({c.pidns for child in self.children.values() for c in (child.active, child.spare)
                        if c is not None and c.pidns})
        principals = {}
        for name, c in self.children.items():
            active = c.active
            principals[name] = {
                "pid": active.proc.pid if active else None,
                "spare_pid": c.spare.proc.pid if c.spare else None,
                "spare_ready": bool(c.spare and c.spare.ready),
                "serving_since": active.serving_since_wall if active else None,
                "restarts": c.restarts, "failures": c.failures, "last_exit": c.last_exit}
        state = {
            "supervisor": os.getpid(), "keeper": self._keeper or None, "jail": self.plan.jail, "pidns": pidns[-64:],
            "cgroups": sorted(self.cgroups),
            "userns": os.readlink(f"/proc/self/fd/{self.userns_fd}") if self.userns_fd is not None else None,
            "principals": principals, "lost_writes": self.lost.summary()}
        try:
            self.state_file.write(state)
        except OSError as e:   # status is stale until a write works again; the app runs on
            self.lost.lost("state", e)
        else:
            self.lost.ok("state")


def refuse_connection(conn: socket.socket, provider: str) -> None:
    """Answer one caller that no copy of ``provider`` can serve now; nothing
    here waits on the caller."""
    refuse(conn, protocol.NOT_SERVED, f"no copy of provider {provider!r} is running (it failed to start and is "
                                      "being started again); the request was not delivered")


def describe_exit(code: int | None, plan: Plan, oom: bool = False) -> str:
    """Why a copy ended, in words: its status, its signal, and which limit or
    filter a signal usually means (``oom``: the OOM killer ran in its memory
    cgroup meanwhile). Namespace mode reports a principal killed by signal N
    as status 128+N (pspy-init's exit status)."""
    if code is None:
        return "is running"
    if code == EXIT_CALL_TIMEOUT:
        return "ended itself for a call past its call_timeout"
    signum = -code if code < 0 else (code - 128 if plan.mode == "namespaces" and 128 < code < 128 + 65 else None)
    if signum is None:
        return f"exited with status {code}"
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    meaning = {signal.SIGSYS: " (its seccomp filter)", signal.SIGXCPU: " (its cpu_seconds limit)",
               signal.SIGXFSZ: " (its file_size limit)"}.get(signum, "")
    if signum == signal.SIGKILL and oom:
        meaning = " (its memory limit: the kernel's OOM killer ran in its cgroup)"
    return f"was killed by {name}{meaning}"


def _filter_hint(principal: PrincipalPlan) -> str:
    policy = principal.seccomp
    if not policy or policy.get("learn") or policy["source"].startswith("shipped profile"):
        return ""
    return (f" (it runs under {policy['source']}: a profile too narrow for Python's start-up kills or "
            "crashes it before it can report; compare with 'pspy analyze --include-seccomp' or learn one "
            "with 'pspy learn')")


def principal_seccomp_mode(plan: Plan, proc) -> int | None:
    """The kernel's Seccomp mode of the principal's own process (0: no filter),
    or None if it cannot be told. Namespace mode: the child of its PID 1."""
    pid = proc.pid
    if plan.mode == "namespaces":
        kids = children_of(pid)
        if not kids:
            return None
        pid = kids[0]
    return status_field(pid, "Seccomp")


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pid: int, sig: int, reaped: bool = False) -> None:
    """Signal the process group a copy leads, else the copy itself. Once
    the copy is reaped its number may be reused, so only the group is
    signalled then: the number stays taken while any member of the group lives."""
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError):
        if reaped:
            return
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: str, lines: int = 15) -> str:
    """The end of a principal's log (rotated files too), from its latest start only."""
    got = tail_lines(path, 200)
    if not got:
        return "  (no log)"
    starts = [i for i, line in enumerate(got) if line.startswith("--- pspy: starting ")]
    if starts:
        got = got[starts[-1]:]
    # Escaped and cut: the lines are the principal's, and they reach a terminal.
    return "\n".join("  " + printable(line[:500]) for line in got[-lines:])
