"""isolation="per_call": every call runs in a fresh process.

Once its modules are imported, and before it serves, a per_call provider
forks a *zygote*: a single-threaded copy of itself, with the app imported,
under the provider's ids, view, filter and limits. For each authorised call
the serving thread hands the zygote two sockets (SCM_RIGHTS over a
SOCK_SEQPACKET control socket); the zygote forks a *call process* that
reads the request from the first, runs the service, writes the response and
exits. The zygote watches every call process through a pidfd: past the
provider's ``call_timeout`` it kills it, and when it ends it reports how
on the second socket, so the caller learns ServiceTimeout or CallInterrupted
rather than waiting. Nothing one call changes (globals, threads, files in
its temporary folder) reaches the next: the next is a new fork.

Before the service runs, the call process shuts itself in further:
- Landlock: it may read every folder of its view but /tmp, and write only
  its own empty temporary folder (``TMPDIR``, removed when it ends), the
  provider's writable ``perms`` and /dev's files. Other calls' folders are
  out of reach though they run under the same uid.
- seccomp: the policy the decorator declared, stacked on the provider's
  own, which had to let the provider fork (pspy.seccomp.for_per_call).
  Under ``strict`` a call process can create no process, so a call leaves
  no descendant behind.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import resource
import select
import selectors
import shutil
import signal
import socket
import tempfile
import threading
import time

from . import _landlock, errors
from .errors import SandboxError
from .rpc import codec, protocol
from .rpc.server import flush_and_exit

log = logging.getLogger("pspy.percall")

# A call shuts itself in with Landlock (pspy/_landlock.py's rights), under
# the domain its provider already runs in. With no rule granting TCP or
# scopes, a call binds and connects no TCP port, connects to no abstract
# Unix socket and signals no process outside its own domain: not its
# zygote, not its provider, though they run under its uid.

EXIT_SETUP_FAILED = 70   # a call process that could not shut itself in: it never ran the call


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        why = {signal.SIGXCPU: " (its CPU time limit)", signal.SIGXFSZ: " (its file size limit)",
               signal.SIGKILL: " (a limit: memory or CPU time, or a kill)"}.get(sig, "")
        return f"was killed by {name}{why}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class Zygote:
    """The provider's side: starts the zygote, and runs calls through it."""

    def __init__(self, server, *, writable: list[str], call_timeout: float | None,
                 call_bpf: bytes | None, close_fds: list[int], rlimits: list[tuple[int, int, int]] = ()):
        self.server = server
        self.writable = writable          # absolute paths a call may write (the provider's perms)
        self.call_timeout = call_timeout
        self.call_bpf = call_bpf
        self.close_fds = close_fds        # the listening sockets: never the zygote's
        self.rlimits = list(rlimits)      # set by each call process for itself (its CPU time)
        self.control: socket.socket | None = None
        self.pid = 0
        self._lost = threading.Event()

    # --- provider side ------------------------------------------------------------
    def start(self) -> None:
        """Fork the zygote; call before any serving thread exists."""
        from ._native import lib
        abi = lib.pspy_landlock_abi()
        if abi < 1:
            raise SandboxError(f"isolation='per_call' for {self.server.provider} needs Landlock "
                               "(Linux 5.13 or later, enabled in the kernel's lsm= list); this kernel "
                               "answers: " + os.strerror(errno.ENOSYS if abi < 0 else errno.EOPNOTSUPP))
        if abi < 6:
            log.warning("Landlock ABI %d (Linux before 6.12): the calls of %s can signal its own processes "
                        "(same uid), so a call can end its provider, which is then started again", abi,
                        self.server.provider)
        base = _fresh_base(self.server.provider)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                parent.close()
                _Zygote(self, child, base, abi).loop()
            except BaseException as e:  # noqa: BLE001 - a zygote never returns into the provider
                _say(f"pspy: {self.server.provider}: its call zygote failed: {type(e).__name__}: {e}")
            os._exit(1)
        child.close()
        self.control, self.pid = parent, pid
        threading.Thread(target=self._watch, name="pspy-zygote-watch", daemon=True).start()

    def _watch(self) -> None:
        # A provider whose zygote is gone can run no call: it ends, and its
        # supervisor starts it (and a zygote) again.
        try:
            pidfd = os.pidfd_open(self.pid)
            select.select([pidfd], [], [])
            _, status = os.waitpid(self.pid, 0)
        except OSError:
            status = 0
        log.error("the call zygote of %s %s; ending this provider", self.server.provider,
                  describe_status(status))
        flush_and_exit(1)

    def run(self, caller: str | None, uid: int, pid: int, name: str, args: list, kwargs: dict) -> list:
        """One call in a fresh process: its response, or the error saying why there is none."""
        provider = self.server.provider
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                socket.send_fds(self.control, [codec.encode([caller, uid, pid])], [b.fileno(), s2.fileno()])
            except OSError as e:
                return self.server._error("pspy.CallInterrupted",
                                          f"{provider}.{name}: no call process could be started ({e}); "
                                          "the call did not run")
            finally:
                b.close()
                s2.close()
            conn = protocol.Connection(a, self.server.max_frame)
            try:
                conn.send_message([name, args, kwargs])
            except OSError:
                pass   # the call process ended before reading it: its status says how
            poller = select.poll()
            poller.register(a, select.POLLIN)
            poller.register(s1, select.POLLIN)
            reply_open = True
            while True:
                ready = dict(poller.poll())
                if reply_open and a.fileno() in ready:
                    try:
                        return conn.recv_message()
                    except (protocol.PeerClosed, errors.ProtocolError, OSError):
                        reply_open = False   # no reply: wait for the zygote to say why
                        poller.unregister(a)
                if s1.fileno() in ready:
                    report = s1.recv(256)
                    if reply_open and select.select([a], [], [], 0)[0]:
                        try:
                            return conn.recv_message()   # it replied, then ended
                        except (protocol.PeerClosed, errors.ProtocolError, OSError):
                            pass
                    return self._no_reply(name, report)
        finally:
            a.close()
            s1.close()

    def _no_reply(self, name: str, report: bytes) -> list:
        provider = self.server.provider
        if not report:
            return self.server._error("pspy.CallInterrupted", f"{provider}.{name}: the call zygote ended "
                                      "before the call did; the outcome is unknown")
        status, timed_out = codec.decode(report)
        if timed_out:
            log.error("service %s.%s passed its call_timeout of %ss; its call process was killed",
                      provider, name, self.call_timeout)
            return self.server._error("pspy.ServiceTimeout", f"{provider}.{name} passed its call_timeout "
                                      f"of {self.call_timeout}s; its call process was killed")
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_SETUP_FAILED:
            what = "could not shut itself in (see the provider's log); the call did not run"
        else:
            what = f"{describe_status(status)} before replying"
        log.error("service %s.%s: the call process %s", provider, name, what)
        return self.server._error("pspy.CallInterrupted", f"{provider}.{name}: the call process {what}")


class _Zygote:
    """The zygote process: forks a call process per request, reaps them, kills late ones."""

    def __init__(self, owner: Zygote, control: socket.socket, base: str, abi: int):
        self.owner = owner
        self.control = control
        self.base = base
        self.handled = _landlock.handled_fs(abi)
        self.handled_net, self.scoped = _landlock.handled_net(abi), _landlock.scopes(abi)
        self.calls: dict[int, list] = {}   # pid -> [pidfd, status socket, deadline, timed out]
        for fd in owner.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        _die_with_parent()
        self.rules = self._rules()

    def _rules(self) -> list[tuple[str, int, str]]:
        """(path, rights, label) of every Landlock rule but the call's own folder."""
        wanted: list[tuple[str, int]] = []
        granted = _landlock.own_rules(self.owner.server.provider)
        if granted is None:   # the provider runs without Landlock: the call reads its whole view but /tmp
            for entry in sorted(os.listdir("/")):
                if entry != "tmp":
                    wanted.append(("/" + entry, _landlock.READ | _landlock.EXECUTE))
        else:
            # What the provider may read (its own Landlock rules), never its
            # writes: a call writes its own folder and the provider's perms.
            for letters, path in granted:
                reads = letters.replace("w", "").replace("f", "")
                if reads and path != "/tmp" and not path.startswith("/tmp/"):
                    wanted.append((path, _landlock.rights(reads, self.handled)))
        wanted.append(("/dev", _landlock.rights("rfd", self.handled)))
        wanted += [(path, self.handled) for path in self.owner.writable]
        # chroot mode has no /proc; a perm not created yet grants nothing:
        # restrict_paths skips what does not exist.
        return [(path, rights & self.handled, "call") for path, rights in wanted]

    def loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, None)
        while True:
            deadlines = [c[2] for c in self.calls.values() if c[2] is not None and not c[3]]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _ in selector.select(timeout):
                if key.data is None:
                    if not self._fork_call(selector):
                        return   # the provider closed its end: it is gone
                else:
                    self._reap(selector, key.data)
            now = time.monotonic()
            for pid, call in self.calls.items():
                if call[2] is not None and not call[3] and call[2] <= now:
                    call[3] = True
                    try:
                        signal.pidfd_send_signal(call[0], signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _fork_call(self, selector) -> bool:
        try:
            message, fds, _, _ = socket.recv_fds(self.control, 4096, 2)
        except InterruptedError:
            return True
        if not message:
            return False
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return True
        data_fd, status_fd = fds
        caller, uid, peer = codec.decode(message)
        pid = os.fork()
        if pid == 0:
            self._call_process(data_fd, status_fd, caller, uid, peer)   # never returns
        os.close(data_fd)
        pidfd = os.pidfd_open(pid)
        timeout = self.owner.call_timeout
        self.calls[pid] = [pidfd, status_fd, time.monotonic() + timeout if timeout else None, False]
        selector.register(pidfd, selectors.EVENT_READ, pid)
        return True

    def _reap(self, selector, pid: int) -> None:
        pidfd, status_fd, _, timed_out = self.calls.pop(pid)
        selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        try:
            os.write(status_fd, codec.encode([status, timed_out]))
        except OSError:
            pass
        os.close(status_fd)
        shutil.rmtree(os.path.join(self.base, str(pid)), ignore_errors=True)

    # --- the call process ---------------------------------------------------------
    def _call_process(self, data_fd: int, status_fd: int, caller, uid: int, peer: int) -> None:
        server = self.owner.server
        try:
            try:
                _die_with_parent()
                for resource_, soft, hard in self.owner.rlimits:
                    resource.setrlimit(resource_, (soft, hard))
                os.close(status_fd)
                self.control.close()
                for call in self.calls.values():
                    os.close(call[0])
                    os.close(call[1])
                folder = os.path.join(self.base, str(os.getpid()))
                os.mkdir(folder, 0o700)
                os.environ["TMPDIR"] = folder
                tempfile.tempdir = folder
                self._shut_in(folder)
            except BaseException as e:  # noqa: BLE001
                _say(f"pspy: {server.provider}: a call process could not shut itself in, the call did not "
                     f"run: {type(e).__name__}: {e}")
                os._exit(EXIT_SETUP_FAILED)
            conn = protocol.Connection(socket.socket(fileno=data_fd), server.max_frame)
            name, args, kwargs = conn.recv_message()
            endpoint = server.endpoints[name]
            server.send_response(conn, name, server.invoke(endpoint, args, kwargs))
        except BaseException as e:  # noqa: BLE001 - SystemExit too: a call process never unwinds
            _say(f"pspy: {server.provider}: call process failed: {type(e).__name__}: {e}")
            flush_and_exit(1)
        flush_and_exit(0)

    def _shut_in(self, folder: str) -> None:
        from ._native import ffi, lib
        _landlock.restrict_paths(self.handled, self.handled_net, self.scoped,
                                 self.rules + [(folder, self.handled, _landlock.REQUIRED)])
        if self.owner.call_bpf is not None:
            program = ffi.from_buffer(self.owner.call_bpf)
            if lib.pspy_load_bpf(program, len(self.owner.call_bpf), 0) != 0:
                raise OSError(ffi.errno, f"loading the call's seccomp filter: {os.strerror(ffi.errno)}")


def _fresh_base(provider: str) -> str:
    """The folder holding the call processes' own folders, named for the
    process that made it. Stale ones of this provider (same uid) whose maker
    is gone are removed first; in chroot mode /tmp is shared by the copy that
    serves and its ready copy, and each one's folder must outlive the other's start."""
    prefix = f"pspy-calls-{provider}-"
    for entry in os.listdir(tempfile.gettempdir()):
        path = os.path.join(tempfile.gettempdir(), entry)
        if entry.startswith(prefix):
            maker = entry[len(prefix):].split("-", 1)[0]
            try:
                # isascii: "²".isdigit() is true too. A name another
                # principal planted (chroot mode's /tmp is shared) must
                # never stop this provider from starting.
                if maker.isascii() and maker.isdigit() and len(maker) <= 10:
                    os.kill(int(maker), 0)
                    continue   # its maker lives
            except ProcessLookupError:
                pass
            except (OSError, ValueError, OverflowError):
                continue
            try:
                if os.lstat(path).st_uid == os.getuid():
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def _die_with_parent() -> None:
    import _prctl
    parent = os.getppid()
    _prctl.prctl(_prctl.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _say(text: str) -> None:
    try:
        os.write(2, (text.replace("\n", "\\n") + "\n").encode())
    except OSError:
        pass


def call_filter(seccomp: dict | None) -> bytes | None:
    """The program a call process stacks, from the plan's policy (None: none)."""
    if not seccomp or not seccomp.get("call_bpf"):
        return None
    return base64.b64decode(seccomp["call_bpf"])
