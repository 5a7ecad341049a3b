"""``pspy learn``: a seccomp profile per principal, recorded from a real run.

The app is bootstrapped with every principal in learning mode (seccomp user
notification: the kernel sends each of its syscalls to a listener thread,
which records it and lets it through; see pspy.seccomp.learn), the workload
runs against it, the app stops, and each principal's record becomes a
minimal OCI profile in ``<app>/seccomp/<principal>.json``, each syscall
commented with the services that made it. Nothing is kept by hand: only
what the kernel saw.

The listener also notes the absolute paths a principal looked for (open,
stat, access) that its view lacked; those the host has are reported with
the pspy.toml ``files`` line that copies them in (chroot mode): a jail
without, say, the time-zone database fails in ways that hide the cause.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess

from . import bootstrap, seccomp
from .errors import JailError, PspyError
from .jail import check_extra_file
from .plan import Plan
from .running import stop
from .seccomp import learning
from .supervisor import log_path

PROFILE_DIR = "seccomp"
CALLS_FILE = "calls.json"    # who called what, beside the profiles
LEARN_CALL = re.compile(r"^pspy-learn-call (\S+) (\S+)$")


def run(app_dir: str, *, jail: str | None, namespaces: bool, workload: list[str], say=print) -> int:
    if not workload:
        raise PspyError("pspy learn needs a workload command after '--' (what exercises the app)")
    import shutil
    if shutil.which(workload[0]) is None:
        raise PspyError(f"workload {workload[0]!r}: no such program")
    req = bootstrap.Request(app_dir=app_dir, jail=jail, namespaces=namespaces, learn=True)
    plan = bootstrap.build(req, say=say)
    offsets = {p.name: _size(log_path(plan, p.name)) for p in plan.principals}
    bootstrap.run_detached(plan, say=say, announce=False)   # learn stops it itself
    try:
        say(f"pspy: learning; running the workload: {' '.join(workload)}")
        try:
            code = subprocess.run(workload).returncode
        except FileNotFoundError:
            raise PspyError(f"workload {workload[0]!r}: no such program") from None
    finally:
        stop(plan)
    if code != 0:
        raise PspyError(f"the workload exited with status {code}; no profile written (a profile learned "
                        "from a failed run would miss what the app needs)")
    return write_profiles(plan, offsets, workload, say)


def write_profiles(plan: Plan, offsets: dict[str, int], workload: list[str], say=print) -> int:
    owner = os.stat(plan.app_source)
    baseline = {name: seccomp.allowed_names(seccomp.effective(name, network=True, front_end=False, app_root="/",
                                                              where="pspy learn")["profile"])
                for name in ("default", "web")}
    written = {}
    calls_seen: dict[str, set[str]] = {}
    missing: dict[str, list[str]] = {}
    for p in plan.principals:
        if p.kind == "front_end" and not p.argv:
            continue   # no front end ran
        if not os.path.exists(log_path(plan, p.name)):
            say(f"pspy: warning: {p.name} has no log: it never ran; no profile written for it")
            continue
        with open(log_path(plan, p.name), "rb") as f:
            f.seek(offsets.get(p.name, 0))
            text = f.read().decode(errors="replace")
        calls = seccomp.learned(text)
        missing[p.name] = learning.missing_paths(text)
        if p.kind == "provider":
            for caller, service in recorded_calls(text, p.name):
                calls_seen.setdefault(service, set()).add(caller)
        if not calls:
            say(f"pspy: warning: nothing recorded for {p.name} (did it run?); no profile written for it")
            continue
        # The record is the principal's own log, so the app could have added
        # lines to it: dangerous calls are left out (and denied and reported
        # when they happen), never allowed because a log said so.
        dropped = sorted(set(calls) & seccomp.DANGEROUS)
        for name in dropped:
            del calls[name]
        if dropped:
            say(f"pspy: warning: {p.name} made (or its log claims) {', '.join(dropped)}: dangerous, "
                "left out of its profile; allow them by hand if it truly needs them")
        text = json.dumps(seccomp.learned_profile(p.name, calls, workload), indent=2) + "\n"
        path = _write_beside_app(plan.app_source, f"{p.name}.json", text.encode(), owner)
        written[p.name] = f"{PROFILE_DIR}/{p.name}.json"
        shipped = "web" if p.kind == "front_end" or p.network else "default"
        say(f"pspy: {p.name}: {len(calls)} syscalls ({shipped}, its profile unless told otherwise, allows "
            f"{len(baseline[shipped])}) -> {path}")
    if calls_seen:
        record = {"comment": f"calls pspy learn saw, by the caller the kernel named, from the workload: "
                             f"{' '.join(workload)}",
                  "calls": {service: sorted(callers) for service, callers in sorted(calls_seen.items())}}
        path = _write_beside_app(plan.app_source, CALLS_FILE, (json.dumps(record, indent=2) + "\n").encode(), owner)
        say(f"pspy: {len(calls_seen)} services called -> {path} (pspy analyze compares them with who may call)")
    if written:
        table = ", ".join(f'{name} = "{rel}"' for name, rel in written.items())
        say(f"pspy: to run under them, add to {os.path.join(plan.app_source, 'pspy.toml')}:\n"
            f"  seccomp = {{ {table} }}")
    report_missing_files(plan, missing, say)
    return 0


SHOWN_PER_PRINCIPAL = 20   # a longer list is cut: the first ones name the folder to look at


def report_missing_files(plan: Plan, missing: dict[str, list[str]], say=print) -> list[str]:
    """Say which paths each principal looked for in vain that the host has,
    and the ``files`` line that would copy them in. Returns the paths
    suggested. The paths come from the principal's own log: they are only
    ever said, never copied or granted without the developer's edit."""
    suggested: dict[str, None] = {}
    for name, paths in missing.items():
        found = [(path, _world_readable(path)) for path in host_files(paths)]
        for path, readable in found[:SHOWN_PER_PRINCIPAL]:
            note = "" if readable else " (readable only by its owner or group there: not suggested)"
            say(f"pspy: {name} looked for {path}, which is on the host but not in its view{note}")
        if len(found) > SHOWN_PER_PRINCIPAL:
            say(f"pspy: {name} looked for {len(found) - SHOWN_PER_PRINCIPAL} more such paths")
        suggested.update((path, None) for path, readable in found[:SHOWN_PER_PRINCIPAL] if readable)
    if not suggested:
        return []
    toml = os.path.join(plan.app_source, "pspy.toml")
    line = "files = " + json.dumps(list(dict.fromkeys([*plan.files, *suggested])))   # a TOML array too
    if plan.mode == "chroot":
        say(f"pspy: to copy them into the jail (read-only, at the same path), set in {toml}:\n  {line}")
    else:
        # plan.files is copied into chroot mode's jail only: no setting adds
        # a host file to a namespace-mode view (the /usr, /lib* folders and a
        # few /etc files of sandbox/mount.py).
        say(f"pspy: namespace mode shows a principal only the host's system folders and a few /etc files; "
            f"in chroot mode (without --namespaces) this line in {toml} copies them in:\n  {line}")
    return list(suggested)


def host_files(paths: list[str]) -> list[str]:
    """Of the paths a principal looked for in its view, those the host has,
    outside the places whose contents are the principal's own or no real
    files (its app, pspy's state, /tmp, /proc ...: the places ``files``
    refuses, pspy/jail.py)."""
    out = []
    for path in paths:
        try:
            check_extra_file(path)
        except JailError:
            continue
        if os.path.exists(path):
            out.append(path)
    return out


def _world_readable(path: str) -> bool:
    """Whether a principal, an account of its own on the host, could read
    the host's copy: copied with its mode, a file only its owner or group
    may read would stay closed to it (and suggesting to copy /etc/shadow
    into a jail is no help)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
    return st.st_mode & need == need


def recorded_calls(log_text: str, provider: str):
    """(caller, "Provider.service") pairs a provider's log records. The log is
    the provider's own, so it could claim calls that never were: they only
    ever silence a finding about callers, never widen a right."""
    for line in log_text.splitlines():
        m = LEARN_CALL.match(line)
        if m and m.group(2).split(".")[0] == provider:
            yield m.group(1), m.group(2)


def _write_beside_app(app: str, name: str, data: bytes, owner: os.stat_result) -> str:
    """Write <app>/seccomp/<name> for the app's owner, following no symlink:
    pspy learn runs as root in a folder the developer (or a cloned repository)
    controls."""
    app_fd = os.open(app, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            os.mkdir(PROFILE_DIR, 0o755, dir_fd=app_fd)
            os.chown(PROFILE_DIR, owner.st_uid, owner.st_gid, dir_fd=app_fd, follow_symlinks=False)
        except FileExistsError:
            pass
        try:
            dir_fd = os.open(PROFILE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=app_fd)
        except OSError as e:
            raise PspyError(f"{os.path.join(app, PROFILE_DIR)}: not a folder pspy can write into "
                            f"({e.strerror}); a symlink there is refused") from None
        try:
            tmp = f".{name}.tmp"
            try:
                os.unlink(tmp, dir_fd=dir_fd)   # removes a link itself, never its target
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
            try:
                os.write(fd, data)
                os.fchown(fd, owner.st_uid, owner.st_gid)   # the developer's, like the app
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)   # replaces a link, never follows it
        finally:
            os.close(dir_fd)
    finally:
        os.close(app_fd)
    return os.path.join(app, PROFILE_DIR, name)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
