"""Start the providers, wait until each answers, start the front end, keep
them running, stop them all.

Single-threaded on purpose: principals are forked with a preexec step, which
is only safe in a process without other threads. State for ``status`` and
``stop`` is written to ``<jail>/.pspy/run/state.json`` (root only).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field

from .errors import PspyError, SandboxError
from .plan import LOG_DIR, RUN_DIR, Plan, PrincipalPlan
from .registry import process_uids
from .rpc import protocol
from .rpc.client import Client
from .rpc.server import EXIT_CALL_TIMEOUT
from .sandbox import cgroup
from .sandbox.spawn import provider_argv, spawn_principal

READY_TIMEOUT = 20.0
STOP_GRACE = 5.0
FRONT_END_SETTLE = 1.0


def log_path(plan: Plan, name: str) -> str:
    return os.path.join(plan.host_path(LOG_DIR), f"{name}.log")


def state_path(plan: Plan) -> str:
    return os.path.join(plan.host_path(RUN_DIR), "state.json")


def _socket_dir_fd(plan: Plan, jail_socket: str) -> int:
    # Through a directory fd, so a long jail path does not hit the 108-byte
    # limit of socket paths. The folder is root's (see jail.prepare_root).
    return os.open(plan.host_path(os.path.dirname(jail_socket)),
                   os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def listen(plan: Plan, principal: PrincipalPlan) -> socket.socket:
    """Create the provider's listening socket; the provider gets it by fd."""
    return _listen_at(plan, principal.socket)


def caller_listeners(plan: Plan, principal: PrincipalPlan) -> dict[str, socket.socket]:
    """Rootless: one listening socket per caller, each mounted into that caller's view alone."""
    if not plan.rootless:
        return {}
    return {caller: _listen_at(plan, plan.caller_socket(principal, caller)) for caller in plan.callers_of(principal)}


def _listen_at(plan: Plan, jail_socket: str) -> socket.socket:
    dir_fd = _socket_dir_fd(plan, jail_socket)
    try:
        name = os.path.basename(jail_socket)
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"/proc/self/fd/{dir_fd}/{name}")
        # Anyone who can reach it may connect; the provider authorises each call by uid.
        os.chmod(name, 0o666, dir_fd=dir_fd)
        sock.listen(128)
        return sock
    finally:
        os.close(dir_fd)


def ping(plan: Plan, principal: PrincipalPlan, timeout: float = 1.0) -> bool:
    """Does the provider answer on its socket?"""
    dir_fd = _socket_dir_fd(plan, principal.socket)
    try:
        client = Client(principal.name, f"/proc/self/fd/{dir_fd}/{os.path.basename(principal.socket)}",
                        timeout=timeout)
        try:
            return client.call(protocol.PING) == principal.name
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False
        finally:
            client.close()
    finally:
        os.close(dir_fd)


@dataclass
class Child:
    principal: PrincipalPlan
    proc: object = None
    listeners: list[socket.socket] = field(default_factory=list)
    by_caller: dict[str, socket.socket] = field(default_factory=dict)   # rootless: the callers' own
    started: float = 0.0
    pidns: str | None = None     # namespace mode: the principal's PID namespace, "pid:[inode]"
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = 0.5


class Supervisor:
    def __init__(self, plan: Plan, say=print):
        self.plan = plan
        self.say = say
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.userns_fd: int | None = None   # namespace mode: the app's user namespace
        self.cgroups: set[str] = set()       # the principals' cgroup folders, removed at the end

    # --- starting ---------------------------------------------------------------
    def _argv(self, principal: PrincipalPlan) -> list[str]:
        return provider_argv(self.plan) if principal.kind == "provider" else principal.argv

    def _start(self, child: Child) -> None:
        pass_fds: tuple[int, ...] = ()
        caller_fds: dict[str, int] = {}
        if child.principal.kind == "provider":
            if not child.listeners:
                main = listen(self.plan, child.principal)
                child.by_caller = caller_listeners(self.plan, child.principal)
                child.listeners = [main, *child.by_caller.values()]
            pass_fds = tuple(sock.fileno() for sock in child.listeners)
            caller_fds = {caller: sock.fileno() for caller, sock in child.by_caller.items()}
        log = open(log_path(self.plan, child.principal.name), "ab", buffering=0)
        try:
            log.write(f"--- pspy: starting {child.principal.name} at {time.ctime()} ---\n".encode())
            child.proc = spawn_principal(self.plan, child.principal, self._argv(child.principal),
                                         stdout=log, stderr=log, pass_fds=pass_fds, caller_fds=caller_fds,
                                         userns_fd=self.userns_fd)
        finally:
            log.close()
        child.started = time.monotonic()
        self.cgroups.update(cgroup.folders(self.plan, child.principal).values())
        child.pidns = None
        if self.plan.mode == "namespaces":
            self._note_pidns(child)
        self._write_state()

    def start_all(self) -> None:
        if self.plan.mode == "namespaces":
            from .sandbox import net
            from .sandbox.user import create_user_namespace
            net.warm_up()
            self.userns_fd = create_user_namespace(self.plan)
            # The spawn path's children share this process's memory until they
            # exec, and their id changes make that memory non-dumpable: said
            # here, once, rather than left to the first start. No other process
            # of the user (rootless) can ptrace the supervisor or read its
            # memory, which holds the app's listening sockets and environment.
            import prctl
            prctl.set_dumpable(False)
        for principal in self.plan.providers:
            child = self.children[principal.name] = Child(principal)
            self._start(child)
            self._wait_ready(child)
        front = self.plan.front_end
        if front.argv:
            child = self.children[front.name] = Child(front)
            self._start(child)
            # A front end that dies at once (a missing module, a port in use)
            # is reported now rather than restarted quietly in the background.
            deadline = time.monotonic() + FRONT_END_SETTLE
            while time.monotonic() < deadline and child.proc.poll() is None:
                time.sleep(0.05)
            if child.proc.poll() is None and front.seccomp and principal_seccomp_mode(self.plan, child) == 0:
                raise SandboxError(f"the front end ({' '.join(front.argv)}) runs without its seccomp filter "
                                   "(a command that skips pspy's sitecustomize, such as python -I or -S?); "
                                   "refusing to run it unfiltered")
            if child.proc.poll() is not None:
                raise SandboxError(f"the front end ({' '.join(front.argv)}) exited with status "
                                   f"{child.proc.returncode} at start; its log "
                                   f"{log_path(self.plan, front.name)} ends with:\n"
                                   + tail(log_path(self.plan, front.name)))
        self._write_state()

    def _wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise SandboxError(f"provider {child.principal.name} exited with status "
                                   f"{child.proc.returncode} before answering{_filter_hint(child.principal)}; "
                                   f"its log {log_path(self.plan, child.principal.name)} ends with:\n"
                                   + tail(log_path(self.plan, child.principal.name)))
            if ping(self.plan, child.principal):
                return
            time.sleep(0.05)
        raise SandboxError(f"provider {child.principal.name} did not answer on {child.principal.socket} "
                           f"within {READY_TIMEOUT:.0f}s; see {log_path(self.plan, child.principal.name)}")

    # --- running ------------------------------------------------------------------
    def _on_signal(self, signum, _frame):
        self.stopping = True

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def run(self) -> None:
        """Restart what dies (with backoff) until told to stop."""
        while not self.stopping:
            now = time.monotonic()
            for child in self.children.values():
                if child.proc is None:
                    if now >= child.next_start:
                        self._start(child)
                    continue
                code = child.proc.poll()
                if code is None:
                    if now - child.started > 30:
                        child.backoff = 0.5
                    continue
                child.restarts += 1
                child.proc = None
                if code == EXIT_CALL_TIMEOUT and child.principal.kind == "provider":
                    # It ended itself for a call past its call_timeout: a
                    # healthy provider, so no backoff (rpc/server.py), and its
                    # listening sockets are kept: callers who connected
                    # meanwhile wait in their queue for the new one.
                    child.next_start = now
                    self.say(f"pspy: {child.principal.name} ended a call past its call_timeout; restarting now")
                    continue
                self._close_listener(child)
                child.next_start = now + child.backoff
                self.say(f"pspy: {child.principal.name} exited with status {code}; "
                         f"restarting in {child.backoff:.1f}s (see {log_path(self.plan, child.principal.name)})")
                child.backoff = min(child.backoff * 2, 10.0)
            time.sleep(0.1)

    def _note_pidns(self, child: Child) -> None:
        """Record the principal's PID namespace (known once it has started):
        killing what runs in it stops the principal even if it broke out of
        its process group and the parent-death chain."""
        ns = child.proc.pidns() if hasattr(child.proc, "pidns") else None
        if ns is not None and ns != os.readlink("/proc/self/ns/pid"):
            child.pidns = ns

    def _close_listener(self, child: Child) -> None:
        # Closed while the provider is down, so callers get ServiceUnavailable
        # at once instead of waiting in the backlog of a socket nobody serves.
        for sock in child.listeners:
            sock.close()
        child.listeners = []
        child.by_caller = {}

    # --- stopping -----------------------------------------------------------------
    def stop_all(self) -> None:
        self.stopping = True
        procs = [c.proc for c in self.children.values() if c.proc is not None]
        # Front end first, so it stops taking requests before its providers go.
        for proc in reversed(procs):
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - timeout: killed below
                pass
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=2)
            except Exception:  # noqa: BLE001
                pass
        for child in self.children.values():
            self._close_listener(child)
        if self.userns_fd is not None:
            from .sandbox import template
            template.release(self.plan)
            os.close(self.userns_fd)
            self.userns_fd = None
        sweep_jail(self.plan)
        remove_cgroups(self.plan, self.cgroups)
        try:
            os.unlink(state_path(self.plan))
        except FileNotFoundError:
            pass

    def _write_state(self) -> None:
        pidns = sorted({c.pidns for c in self.children.values() if c.pidns})
        pidns += [ns for ns in (read_state(self.plan) or {}).get("pidns", []) if ns not in pidns]
        state = {"supervisor": os.getpid(), "jail": self.plan.jail, "pidns": pidns[-64:],
                 "cgroups": sorted(self.cgroups),
                 "userns": os.readlink(f"/proc/self/fd/{self.userns_fd}") if self.userns_fd is not None else None,
                 "principals": {name: {"pid": c.proc.pid if c.proc else None, "restarts": c.restarts}
                                for name, c in self.children.items()}}
        tmp = state_path(self.plan) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.rename(tmp, state_path(self.plan))


def _still_running(pid: int) -> bool:
    """Alive and not a zombie; a supervisor that is our own child (pspy learn
    forks it and stays) is reaped here, or it would stay a zombie."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _filter_hint(principal: PrincipalPlan) -> str:
    policy = principal.seccomp
    if not policy or policy.get("learn") or policy["source"].startswith("shipped profile"):
        return ""
    return (f" (it runs under {policy['source']}: a profile too narrow for Python's start-up kills or "
            "crashes it before it can report; compare with 'pspy analyze --include-seccomp' or learn one "
            "with 'pspy learn')")


def principal_seccomp_mode(plan: Plan, child: Child) -> int | None:
    """The kernel's Seccomp mode of the principal's own process (0: no filter),
    or None if it cannot be told. Namespace mode: the child of its PID 1."""
    pid = child.proc.pid
    if plan.mode == "namespaces":
        kids = _children(pid)
        if not kids:
            return None
        pid = kids[0]
    return _status_field(pid, "Seccomp")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _signal_group(pid: int, sig: int) -> None:
    for target in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass


def tail(path: str, lines: int = 15) -> str:
    """The end of a principal's log, from its latest start only."""
    try:
        with open(path, "rb") as f:
            data = f.read()[-8192:].decode(errors="replace")
    except OSError:
        return "  (no log)"
    start = data.rfind("--- pspy: starting ")
    if start > 0:
        data = data[start:]
    return "\n".join("  " + line for line in data.splitlines()[-lines:])


def jail_processes(jail: str) -> list[int]:
    """Every process whose root directory is the jail: all principals and their children."""
    jail = os.path.realpath(jail)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/root") == jail:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def app_processes(plan: Plan) -> list[int]:
    """Every process of the app: rooted in the jail (chroot mode), running as
    one of its uids (both modes; the id registry gives each jail its own), or
    in the app's user namespace (namespace mode).

    Rootless, the uid is the caller's, shared with their shell and everything
    else they run, so only the user namespace the supervisor recorded counts;
    once the supervisor is gone, the parent-death signals have taken the
    principals down with it.
    """
    found = set(jail_processes(plan.jail))
    if not plan.rootless:
        uids = {p.uid for p in plan.principals}
        found |= {pid for pid, uid in process_uids() if uid in uids}
    # Trusted only while the supervisor that recorded it lives and holds the
    # namespace open: a dead namespace's inode number can be reused by another.
    state = (read_state(plan) or {}) if plan.mode == "namespaces" else {}
    userns = state.get("userns")
    if isinstance(userns, str) and userns.startswith("user:[") and supervisor_alive(plan):
        found |= set(userns_processes(userns))
    # Each principal's PID namespace: whatever runs in one is the app's, even
    # once the supervisor is gone (a principal that slipped its parent-death
    # signal). Matched with the app's uids too, against a reused inode number.
    own = os.readlink("/proc/self/ns/pid")
    pidns = {ns for ns in state.get("pidns", []) if isinstance(ns, str) and ns.startswith("pid:[") and ns != own}
    if pidns:
        uids = {p.uid for p in plan.principals}
        found |= {pid for pid in _processes_in(pidns, "pid") if _uid_of(pid) in uids}
    found.discard(os.getpid())
    return sorted(found)


def userns_processes(userns: str) -> list[int]:
    """Processes whose user namespace is ``userns`` ("user:[inode]")."""
    return _processes_in({userns}, "user")


def _processes_in(namespaces: set[str], kind: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/{kind}") in namespaces:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _uid_of(pid: int) -> int | None:
    return _status_field(pid, "Uid")


def _status_field(pid: int, name: str) -> int | None:
    """The first number of a field of /proc/PID/status (Uid: the real uid)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{name}:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def sweep_jail(plan: Plan) -> None:
    """Kill whatever of the app still runs: nothing of it is left behind."""
    if os.path.realpath(plan.jail) == "/":
        raise PspyError("refusing to sweep processes of /: that is every process")
    for _ in range(50):
        pids = app_processes(plan)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    raise PspyError(f"processes of the app in {plan.jail} still running after SIGKILL: {app_processes(plan)}")


def read_state(plan: Plan) -> dict | None:
    try:
        with open(state_path(plan)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    except PermissionError:
        raise PspyError(f"{state_path(plan)}: permission denied; the app's run state is root only") from None


def supervisor_alive(plan: Plan) -> int | None:
    state = read_state(plan)
    if not state:
        return None
    pid = state.get("supervisor")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"pspy" not in f.read():
                return None   # the pid was reused by something else
    except OSError:
        return None
    return pid


def remove_cgroups(plan: Plan, folders) -> None:
    """Remove the principals' cgroup folders, once empty. Only folders named
    for this jail are touched (they come from the root-only run state)."""
    name = cgroup.app_folder_name(plan)
    for folder in folders:
        if isinstance(folder, str) and os.path.basename(os.path.dirname(folder)) == name \
                and folder.startswith("/sys/fs/cgroup/"):
            cgroup.remove_folder(folder)


def stop(plan: Plan, timeout: float = 15.0) -> bool:
    """Stop a running app; True if something was running."""
    recorded = (read_state(plan) or {}).get("cgroups") or []
    pid = supervisor_alive(plan)
    was_running = pid is not None or bool(app_processes(plan))
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _still_running(pid):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
    sweep_jail(plan)
    remove_cgroups(plan, recorded if isinstance(recorded, list) else [])
    try:
        os.unlink(state_path(plan))
    except FileNotFoundError:
        pass
    return was_running


def status(plan: Plan) -> list[dict]:
    state = read_state(plan) or {}
    alive = set(app_processes(plan))
    supervisor = supervisor_alive(plan)
    rows = []
    for p in plan.principals:
        pid = (state.get("principals", {}).get(p.name) or {}).get("pid")
        # Or the live supervisor's child: rootless, the app's processes are not
        # dumpable, so their namespaces are closed to the user, but not their ppid.
        running = pid in alive or (supervisor is not None and isinstance(pid, int)
                                   and _status_field(pid, "PPid") == supervisor)
        row = {"name": p.name, "kind": p.kind, "uid": p.uid, "pid": pid if running else None,
               "running": running}
        if p.kind == "provider":
            row["answers"] = running and ping(plan, p)
        rows.append(row)
    return rows
