"""Start a principal: clean environment, chroot, ids, lock-down, exec.

Order inside the child (between fork and exec): new session, chroot and
chdir, groups/gid/uid, no_new_privs and parent-death signal. Only stdio and
the descriptors the caller names survive exec (close_fds).
"""

from __future__ import annotations

import os
import subprocess

from ..plan import APP_DIR, LIB_DIR, Plan, PrincipalPlan, plan_path, STATE_DIR
from ..runtime import ENV_DEBUG, ENV_LISTEN_FD, ENV_PLAN, ENV_PRINCIPAL
from . import caps, chroot, ids

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def principal_env(plan: Plan, principal: PrincipalPlan, host_env: dict[str, str] | None = None) -> dict[str, str]:
    """Only pspy's own variables and those the principal's configuration names."""
    host_env = os.environ if host_env is None else host_env
    env = {
        "PATH": f"{os.path.dirname(plan.interpreter)}:{BASE_PATH}",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": LIB_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",   # the app is read-only to principals anyway
        "PYTHONUNBUFFERED": "1",          # log lines reach the log file as they happen
        ENV_PRINCIPAL: principal.name,
        ENV_PLAN: f"{STATE_DIR}/plan.json",
    }
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


def _preexec(plan: Plan, cwd: str, principal: PrincipalPlan | None, parent_pid: int | None):
    def child():
        # What a principal creates is its own unless it says otherwise; the
        # set-up script (principal None) lays out app files like a developer.
        os.umask(0o077 if principal is not None else 0o022)
        chroot.enter(plan.jail, cwd)
        if principal is not None:
            ids.drop_to(principal.uid, principal.gid, principal.groups)
        caps.lock_down(parent_pid)
    return child


def spawn_principal(plan: Plan, principal: PrincipalPlan, argv: list[str], *, stdout=None, stderr=None,
                    stdin=subprocess.DEVNULL, supervised: bool = True, new_session: bool = True,
                    pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start argv as the principal. ``pass_fds`` (the provider's listening
    socket) keep their numbers; the first is announced in PSPY_LISTEN_FD."""
    _check_plan_present(plan)
    env = principal_env(plan, principal)
    if pass_fds:
        env[ENV_LISTEN_FD] = str(pass_fds[0])
    return subprocess.Popen(
        resolve_argv(plan, argv), env=env, stdin=stdin, stdout=stdout,
        stderr=stderr, close_fds=True, pass_fds=pass_fds, start_new_session=new_session,
        preexec_fn=_preexec(plan, plan.app_dir, principal, os.getpid() if supervised else None))


def run_as_principal(plan: Plan, principal: PrincipalPlan, argv: list[str]) -> int:
    """``pspy exec``: run a command as the principal, with the terminal's stdio."""
    proc = spawn_principal(plan, principal, argv, stdin=None, supervised=True, new_session=False)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        return 130


def run_script(plan: Plan, script: str, cwd: str) -> None:
    """The app's set-up script (e.g. create databases), as root inside the jail."""
    from ..errors import JailError
    env = {"PATH": BASE_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": LIB_DIR}
    proc = subprocess.run([plan.interpreter, "-s", script], env=env, stdin=subprocess.DEVNULL,
                          close_fds=True, preexec_fn=_preexec(plan, cwd, None, os.getpid()))
    if proc.returncode != 0:
        raise JailError(f"--script {script} exited with status {proc.returncode}; "
                        "nothing was changed in the jail's app folder")


def _check_plan_present(plan: Plan) -> None:
    if not os.path.exists(plan_path(plan.jail)):
        from ..errors import SandboxError
        raise SandboxError(f"{plan_path(plan.jail)} is missing; bootstrap the app first")


__all__ = ["APP_DIR", "principal_env", "resolve_argv", "provider_argv", "spawn_principal",
           "run_as_principal", "run_script"]
