"""Start a principal: clean environment, chroot, ids, lock-down, exec.

Order inside the child (between fork and exec): new session, cgroups,
chroot and chdir, groups/gid/uid, a session keyring, rlimits, no_new_privs
and parent-death signal. Only stdio and the descriptors the caller names
survive exec (close_fds). A step that fails is sent to the parent through a
pipe of its own (sandbox/steps.py) and raised there by name, with errno.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading

from .._landlock import rules_path
from ..plan import APP_DIR, LIB_DIR, Plan, PrincipalPlan, filter_path, plan_path, STATE_DIR
from ..runtime import ENV_CALLER_FDS, ENV_CONTROL_FD, ENV_DEBUG, ENV_LISTEN_FD, ENV_PLAN, ENV_PRINCIPAL, ENV_SECCOMP
from ..errors import JailError, SandboxError
from ..limits import RLIMIT_NAMES, rlimits as rlimits_of
from . import caps, cgroup, chroot, ids, steps

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def principal_env(plan: Plan, principal: PrincipalPlan, host_env: dict[str, str] | None = None) -> dict[str, str]:
    """Only pspy's own variables and those the principal's configuration names."""
    host_env = os.environ if host_env is None else host_env
    env = {
        "PATH": f"{os.path.dirname(plan.interpreter)}:{BASE_PATH}",
        # Its own folders (the plan's): in chroot mode no other principal can
        # write there, so nothing is planted where it looks for its files.
        "HOME": principal.home,
        "TMPDIR": principal.tmpdir,
        "LANG": "C.UTF-8",
        "PYTHONPATH": LIB_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",   # the app is read-only to principals anyway
        # No user site: its .pth files run before sitecustomize, so before the
        # filter (and a plan written before private HOMEs gives HOME=/tmp).
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",          # log lines reach the log file as they happen
        ENV_PRINCIPAL: principal.name,
        ENV_PLAN: f"{STATE_DIR}/plan.json",
    }
    if principal.kind == "provider" and not (principal.seccomp or {}).get("learn"):
        # A provider serves each connection in a thread; glibc would give up
        # to 8 malloc arenas per core to them, each keeping what its frames
        # freed, so the memory a caller's frames cost would not be bounded
        # by the decoder's budget (protocol.FRAME_MEMORY) alone. Not while
        # pspy learn records: its listener in the process then waits on an
        # arena's lock held by a thread whose syscall it is to answer.
        env["MALLOC_ARENA_MAX"] = "2"
    if not principal.seccomp:
        env[ENV_SECCOMP] = "none"
    elif not principal.seccomp.get("learn"):
        env[ENV_SECCOMP] = filter_path(principal.name)   # jail.write_filters
    if principal.landlock:
        env["PSPY_LANDLOCK"] = rules_path(principal.name)   # sandbox/landlock.py write_rules
    if host_env.get(ENV_DEBUG) == "1":
        env[ENV_DEBUG] = "1"
    for name in principal.env:
        if name in host_env:
            env[name] = host_env[name]
    return env


def resolve_argv(plan: Plan, argv: list[str]) -> list[str]:
    """``python``/``python3`` mean the interpreter copied into the jail."""
    if argv and argv[0] in ("python", "python3", os.path.basename(plan.interpreter)):
        return [plan.interpreter, *argv[1:]]
    return list(argv)


def provider_argv(plan: Plan) -> list[str]:
    return [plan.interpreter, "-s", "-m", "pspy.provider"]


def _preexec(plan: Plan, cwd: str, principal: PrincipalPlan | None, parent_pid: int | None,
             cgroup_procs: list[str] = (), rlimits: list[tuple[int, int, int]] = (), report_fd: int = -1):
    def child():
        try:
            # What a principal creates is its own unless it says otherwise; the
            # set-up script (principal None) lays out app files like a developer.
            os.umask(0o077 if principal is not None else 0o022)
            for procs in cgroup_procs:   # before the chroot hides the host's /sys
                with steps.step(f"joining the cgroup {os.path.dirname(procs)} (write to cgroup.procs)"):
                    cgroup.attach_self([procs])
            chroot.enter(plan.jail, cwd)
            if principal is not None and not ids.become(principal):
                try:
                    os.write(2, steps.keyring_warning(principal.name).encode())   # the principal's own log
                except OSError:
                    pass   # no stderr: nowhere to say it
            for resource_, soft, hard in rlimits:
                # only ever lowered: no privilege needed
                with steps.step(f"setting {RLIMIT_NAMES.get(resource_, resource_)} to {soft} (soft) and "
                                f"{hard} (hard) (setrlimit)"):
                    resource.setrlimit(resource_, (soft, hard))
            caps.lock_down(parent_pid)
        except steps.StepFailed as e:
            steps.send(report_fd, e)
            raise
        except BaseException as e:
            steps.send(report_fd, steps.StepFailed(f"setting up the child ({type(e).__name__}: {e})", 0))
            raise
    return child


def _popen(who: str, argv: list[str], run: bool = False, **kwargs):
    """subprocess.Popen (or run) with a preexec step that reports failures:
    a StepFailed raised in the child is raised here, naming the step."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    make = kwargs.pop("preexec")
    try:
        return (subprocess.run if run else subprocess.Popen)(argv, preexec_fn=make(report_w), **kwargs)
    except subprocess.SubprocessError:
        failure = steps.receive(report_r)   # written before the child gave up
        if failure is None:
            raise
        raise SandboxError(steps.describe(who, *failure) if failure[1] else f"{who}: {failure[0]}") from None
    finally:
        os.close(report_r)
        os.close(report_w)


def spawn_principal(plan: Plan, principal: PrincipalPlan, argv: list[str], *, stdout=None, stderr=None,
                    stdin=subprocess.DEVNULL, supervised: bool = True, new_session: bool = True,
                    pass_fds: tuple[int, ...] = (), caller_fds: dict[str, int] | None = None,
                    userns_fd: int | None = None, control_fd: int | None = None) -> subprocess.Popen:
    """Start argv as the principal. ``pass_fds`` (the provider's listening
    sockets) keep their numbers; the first is announced in PSPY_LISTEN_FD,
    and ``caller_fds`` (rootless: a socket per caller) in PSPY_CALLER_FDS.
    ``control_fd`` makes a provider a ready copy that serves when told (PSPY_CONTROL_FD).
    Namespace mode goes through the launcher (sandbox/launch.py), which
    needs the app's user namespace as ``userns_fd``."""
    _check_plan_present(plan)
    env = principal_env(plan, principal)
    if pass_fds:
        env[ENV_LISTEN_FD] = str(pass_fds[0])
    if caller_fds:
        env[ENV_CALLER_FDS] = ",".join(f"{fd}={caller}" for caller, fd in sorted(caller_fds.items()))
    if control_fd is not None:
        env[ENV_CONTROL_FD] = str(control_fd)
        pass_fds = (*pass_fds, control_fd)
    argv = resolve_argv(plan, argv)
    procs = cgroup.prepare(plan, principal)
    limits = rlimits_of(principal.limits, plan.rootless, per_call=principal.isolation == "per_call")
    if plan.mode == "namespaces":
        if userns_fd is None:
            raise SandboxError("namespace mode needs the app's user namespace")
        from .launch import launch
        return launch(plan, principal, argv, env, userns_fd, stdin=stdin, stdout=stdout, stderr=stderr,
                      pass_fds=tuple(pass_fds), cgroup_procs=procs, rlimits=limits)
    parent = os.getpid() if supervised else None
    try:
        return _popen(principal.name, argv, env=env, stdin=stdin, stdout=stdout, stderr=stderr, close_fds=True,
                      pass_fds=pass_fds, start_new_session=new_session,
                      preexec=lambda fd: _preexec(plan, plan.app_dir, principal, parent, procs, limits, fd))
    except FileNotFoundError:
        raise SandboxError(f"cannot run {argv[0]!r} as {principal.name}: no such program in the jail "
                           f"{plan.jail} (it holds the app, the Python interpreter and its libraries, "
                           "no shell or system tools; try 'python -c ...')") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise SandboxError(f"cannot start {argv[0]!r} as {principal.name} in the jail {plan.jail}: {e}") from None


def run_as_principal(plan: Plan, principal: PrincipalPlan, argv: list[str]) -> int:
    """``pspy exec``: run a command as the principal.

    The principal never holds root's terminal: it runs in a session of its
    own, and stdio that is a terminal is relayed through pipes. Otherwise it
    could push keystrokes into root's shell (TIOCSTI) or read them.
    """
    relayed = {fd: os.isatty(fd) for fd in (0, 1, 2)}
    pipe = subprocess.PIPE
    userns_fd = None
    if plan.mode == "namespaces":
        from .user import create_user_namespace
        userns_fd = create_user_namespace(plan)   # the same id maps as the running app's
    try:
        proc = spawn_principal(plan, principal, argv, supervised=True, new_session=True,
                               stdin=pipe if relayed[0] else None,
                               stdout=pipe if relayed[1] else None,
                               stderr=pipe if relayed[2] else None, userns_fd=userns_fd)
    finally:
        if userns_fd is not None:
            os.close(userns_fd)
    threads = []
    if relayed[0]:
        threading.Thread(target=_relay, args=(0, proc.stdin.fileno(), proc.stdin), daemon=True).start()
    for fd, stream in ((1, proc.stdout), (2, proc.stderr)):
        if relayed[fd]:
            t = threading.Thread(target=_relay, args=(stream.fileno(), fd, stream), daemon=True)
            t.start()
            threads.append(t)
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            # Ctrl-C reaches pspy exec, not the principal's own session: pass it on.
            proc.send_signal(signal.SIGINT)
    for t in threads:
        t.join(5)
    cgroup.remove(plan, principal, wait=0)   # one try: the running app's principal may still use it
    return code


def _relay(src: int, dst: int, owner) -> None:
    try:
        while True:
            data = os.read(src, 65536)
            if not data:
                break
            os.write(dst, data)
    except OSError:
        pass
    finally:
        if dst > 2:
            owner.close()


def run_script(plan: Plan, script: str, cwd: str) -> None:
    """The app's set-up script (e.g. create databases), as root inside the jail."""
    env = {"PATH": BASE_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": LIB_DIR}
    if plan.mode == "namespaces":
        # No interpreter in the jail to chroot into: the script runs in the
        # fresh staged copy on the host (it is the developer's code, and it
        # never sees provider data, see bootstrap).
        host_cwd = plan.host_path(cwd)
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run([plan.interpreter, "-s", script], env=env, stdin=subprocess.DEVNULL,
                              close_fds=True, cwd=host_cwd, preexec_fn=lambda: os.umask(0o022))
    else:
        proc = _popen(f"the set-up script {script}", [plan.interpreter, "-s", script], run=True, env=env,
                      stdin=subprocess.DEVNULL, close_fds=True,
                      preexec=lambda fd: _preexec(plan, cwd, None, os.getpid(), report_fd=fd))
    if proc.returncode != 0:
        raise JailError(f"--script {script} exited with status {proc.returncode}; "
                        "nothing was changed in the jail's app folder")


def _check_plan_present(plan: Plan) -> None:
    if not os.path.exists(plan_path(plan.jail)):
        raise SandboxError(f"{plan_path(plan.jail)} is missing; bootstrap the app first")


__all__ = ["APP_DIR", "principal_env", "resolve_argv", "provider_argv", "spawn_principal",
           "run_as_principal", "run_script"]
