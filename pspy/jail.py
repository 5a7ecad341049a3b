"""The only code that writes the jail's filesystem.

Rules every function here keeps:
- a symlink is never followed when writing: changes of owner and mode go
  through file descriptors opened with O_NOFOLLOW, walked from a directory
  fd, so a path cannot be redirected outside the jail;
- a regular file of the app source with more than one hard link is refused
  (it may be a link to a host file such as /etc/shadow); in a principal's
  own data, links are left as they are (pspy/ownership.py);
- the app is assembled in a root-only staging folder, checked in full, and
  only then swapped in, so a refused bootstrap leaves the old jail as it was.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field

from .errors import JailError
from .ownership import (  # noqa: F401 - app-file ownership lives there; these names were jail's
    Change, _parents_within, app_mode, apply_ownership, data_paths, match_pattern, plan_ownership)
from . import runtime_store
from .plan import APP_DIR, LIB_DIR, LOG_DIR, RUN_DIR, SOCKET_DIR, STATE_DIR, Plan, plan_path

# Parts of the standard library no service needs; leaving them out keeps the copy small.
STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}


# --- the jail root ---------------------------------------------------------------

def check_jail_path(jail: str, app_source: str) -> None:
    """Refuse jail locations that would damage the host or the app."""
    if not os.path.isabs(jail):
        raise JailError(f"jail {jail!r} must be an absolute path (pspy does not build a jail under the "
                        "current folder)")
    real = os.path.realpath(jail)
    if real == "/" or real in ("/usr", "/etc", "/bin", "/lib", "/var", "/home", "/root", "/boot", "/proc", "/sys", "/dev"):
        raise JailError(f"refusing to use {jail} as a jail: it is a system folder")
    if real != os.path.normpath(jail):
        raise JailError(f"jail {jail} is reached through a symlink (it resolves to {real}); "
                        "give the real path")
    if os.path.lexists(real) and not os.path.isdir(real):
        raise JailError(f"jail {jail} exists and is not a folder")
    src = os.path.realpath(app_source)
    if real == src or real.startswith(src + "/"):
        raise JailError(f"jail {jail} is inside the app folder {app_source}; put it elsewhere")
    if src.startswith(real + "/"):
        raise JailError(f"app folder {app_source} is inside the jail {jail}; put it elsewhere")
    if os.path.isdir(real) and os.listdir(real) and not os.path.exists(plan_path(real)) \
            and not os.path.exists(_marker(real)):
        raise JailError(f"{jail} exists, is not empty and is not a pspy jail (no {plan_path(real)}); "
                        "refusing to write into it")


def _marker(jail: str) -> str:
    # Written first: a bootstrap that fails later leaves a folder pspy still
    # recognises as its own, instead of one it refuses as a stranger's.
    return os.path.join(jail, STATE_DIR.lstrip("/"), "pspy-jail")


def check_trusted(jail: str) -> None:
    """Refuse a jail that someone other than root could tamper with.

    Every folder from / down to the jail (and its state folder) must be
    root's and writable by no one else, except sticky folders such as /tmp,
    where others cannot rename or remove root's entries. Rootless, folders
    of the caller are trusted too: the jail is theirs.
    """
    me = os.geteuid()
    real = os.path.realpath(jail)
    if real == "/":
        raise JailError("refusing to use / as a jail")
    paths = ["/"]
    for part in [p for p in real.split("/") if p]:
        paths.append(os.path.join(paths[-1], part))
    state = os.path.join(real, STATE_DIR.lstrip("/"))
    paths += [state, plan_path(real)]
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            break   # not created yet: bootstrap makes it root's
        who = "root" if me == 0 else f"root or you (uid {me})"
        if st.st_uid not in (0, me):
            raise JailError(f"{path} is owned by uid {st.st_uid}, not {who}; a jail must lie under "
                            f"folders only {who} can change")
        writable_by_others = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid not in (0, os.getegid()))
        if writable_by_others and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            raise JailError(f"{path} is writable by others ({oct(st.st_mode & 0o7777)}); a jail must lie "
                            f"under folders only {who} can change")


def prepare_root(plan: Plan) -> None:
    """State folders, and in chroot mode /tmp, /dev, the interpreter and pspy itself.

    Namespace mode copies nothing: each principal's root is a tmpfs with
    binds (sandbox/mount.py); the jail only holds the staged app and state.
    """
    jail = plan.jail
    _mkdir(jail, 0o755)
    _mkdir(plan.host_path(STATE_DIR), 0o755)
    with open(_marker(jail), "w") as f:
        f.write("this folder is a pspy jail\n")
    _mkdir(plan.host_path(LOG_DIR), 0o700)
    _mkdir(plan.host_path(RUN_DIR), 0o700)
    _mkdir(plan.host_path(SOCKET_DIR), 0o755)
    for p in plan.providers:
        # The supervisor creates each provider's listening socket and hands it
        # over, so these folders stay root's: no principal can swap a socket
        # (or a link to a host socket) under the supervisor's feet. Closed to
        # all: sockets.admit_only opens each to its provider's callers alone.
        _mkdir(plan.host_path(os.path.dirname(p.socket)), 0o700)
        if plan.rootless:
            for caller in plan.callers_of(p):
                _mkdir(plan.host_path(os.path.dirname(plan.caller_socket(p, caller))), 0o700)
    if plan.mode == "namespaces":
        _mkdir(plan.host_path(STATE_DIR + "/root"), 0o700)   # mount point of each principal's new root
        return
    tmp = os.path.join(jail, "tmp")
    # Root's, so no principal can plant a file or link there for another:
    # each writes its own TMPDIR (pspy/private_dirs.py), unless the app asks
    # for a shared /tmp (pspy.toml tmp.shared).
    _mkdir(tmp, 0o1777 if plan.shared_tmp else 0o755)
    dev = os.path.join(jail, "dev")
    _mkdir(dev, 0o755)
    for name, (major, minor) in DEVICES.items():
        path = os.path.join(dev, name)
        if not os.path.lexists(path):
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, 0o666, follow_symlinks=True) if not os.path.islink(path) else None
    runtime_store.prune()
    copy_interpreter(plan)
    copy_pspy(plan)
    for extra in plan.files:
        check_extra_file(extra)
        mirror_host_path(jail, extra, recursive=True, keep_modes=True)


# Host places --files may not copy into: the jail's own /tmp and /dev, pspy's
# state, and pseudo-filesystems.
_FORBIDDEN_FILES = ("/tmp", "/dev", "/proc", "/sys", "/run", "/app", "/.pspy", "/var/tmp")


def check_extra_file(path: str) -> None:
    real = os.path.realpath(path)
    for place in _FORBIDDEN_FILES:
        if real == place or real.startswith(place + "/"):
            raise JailError(f"--files {path}: cannot copy a path under {place} into the jail "
                            "(principals write there, or it is not a real file)")
    if real == "/":
        raise JailError("--files /: refusing to copy the whole host into the jail")


def _mkdir(path: str, mode: int) -> None:
    if os.path.islink(path):
        raise JailError(f"{path} is a symlink where pspy expects a folder; refusing to follow it")
    os.makedirs(path, exist_ok=True)
    os.chown(path, os.geteuid(), os.getegid(), follow_symlinks=False)   # root's; rootless, the caller's
    os.chmod(path, mode)


def interpreter_paths() -> list[str]:
    """Host paths the interpreter running pspy needs, copied into the jail at the same place."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths = [sys.executable, os.path.realpath(sys.executable)]
    venv_cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    if os.path.exists(venv_cfg):
        paths.append(venv_cfg)
        bindir = os.path.dirname(sys.executable)
        paths += [os.path.join(bindir, n) for n in os.listdir(bindir) if n.startswith("python")]
    for entry in sys.path[1:] if sys.path and not sys.flags.safe_path else sys.path:
        # sys.path[0] is the running script's folder (e.g. the venv's bin), not a library.
        if not entry or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        # Only the interpreter's own folders: never the current directory or a
        # source checkout that happens to be on sys.path.
        if any(real == p or real.startswith(p + "/") for p in prefixes):
            paths.append(entry)
    return list(dict.fromkeys(paths))


def copy_interpreter(plan: Plan) -> None:
    copied = []
    for path in interpreter_paths():
        base = os.path.basename(path.rstrip("/"))
        stdlib = base == f"python{sys.version_info.major}.{sys.version_info.minor}" and os.path.isdir(path)
        copied.extend(mirror_host_path(plan.jail, path, recursive=True,
                                       skip=STDLIB_SKIP if stdlib else set()))
    for lib in shared_libraries([p for p in copied if _is_elf(p)]):
        mirror_host_path(plan.jail, lib, recursive=False)
    from .sandbox.mount import SYSTEM_DATA   # here: sandbox.mount imports this module
    for path in SYSTEM_DATA:
        if os.path.exists(path):   # a host without it: see SYSTEM_DATA
            mirror_host_path(plan.jail, path, recursive=True)


def copy_pspy(plan: Plan) -> None:
    """pspy's own package, fresh each time, first on every principal's PYTHONPATH."""
    src = os.path.dirname(os.path.abspath(__file__))
    lib = plan.host_path(LIB_DIR)
    _mkdir(lib, 0o755)
    dst = os.path.join(lib, "pspy")
    if os.path.lexists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copyfile(os.path.join(src, "_sitecustomize.py"), os.path.join(lib, "sitecustomize.py"))
    # Compiled here, once: principals cannot write bytecode into the jail, and
    # every start (each loads its seccomp filter first) would compile again.
    import compileall
    compileall.compile_dir(lib, quiet=1)
    # The native helper links libseccomp: the libraries it loads come along.
    helpers = [os.path.join(d, f) for d, _, files in os.walk(src) for f in files if f.endswith(".so")]
    for path in shared_libraries([h for h in helpers if _is_elf(h)]):
        mirror_host_path(plan.jail, path, recursive=False)


def _is_elf(path: str) -> bool:
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def shared_libraries(binaries: list[str]) -> list[str]:
    """Libraries the given ELF files load, as the host's dynamic loader resolves them."""
    libs: set[str] = set()
    for i in range(0, len(binaries), 200):
        chunk = binaries[i:i + 200]
        out = subprocess.run(["ldd", *chunk], capture_output=True, text=True).stdout
        for line in out.splitlines():
            line = line.strip()
            if "=>" in line:
                target = line.split("=>", 1)[1].strip().split(" (")[0]
            elif line.startswith("/"):
                target = line.split(" (")[0]
            else:
                continue
            if target.startswith("/") and os.path.exists(target):
                libs.add(target)
    return sorted(libs)


def mirror_host_path(jail: str, host_path: str, recursive: bool, skip: set[str] = frozenset(),
                     _depth: int = 0, keep_modes: bool = False) -> list[str]:
    """Copy a host path into the jail at the same absolute path.

    Symlinks along the way are recreated as symlinks (every link of a chain)
    and resolved on the host side, so every write happens under a real
    folder of the jail and never through a link. Returns the host files
    copied (for ldd).
    """
    if _depth > 40:
        raise JailError(f"{host_path}: too many levels of symlinks")
    host_path = os.path.abspath(host_path)
    if not os.path.lexists(host_path):
        raise JailError(f"{host_path}: no such file to copy into the jail")
    resolved = "/"
    parts = [p for p in host_path.split("/") if p]
    for i, part in enumerate(parts):
        host_here = os.path.join(resolved, part)
        if not os.path.islink(host_here):
            resolved = host_here
            continue
        target = os.readlink(host_here)
        jail_here = _jail_join(jail, host_here)
        if not os.path.lexists(jail_here):
            _ensure_dirs(jail, resolved)
            os.symlink(target, jail_here)
        target_abs = os.path.normpath(os.path.join(resolved, target))
        if i == len(parts) - 1:
            if not os.path.lexists(target_abs):
                return []
            return mirror_host_path(jail, target_abs, recursive, skip, _depth + 1, keep_modes)
        mirror_host_path(jail, target_abs, False, frozenset(), _depth + 1, keep_modes)   # the rest of the chain
        resolved = os.path.realpath(host_here)
    if os.path.isdir(resolved):
        _ensure_dirs(jail, resolved, keep_modes)
        return _copy_tree(jail, resolved, skip, keep_modes) if recursive else []
    _ensure_dirs(jail, os.path.dirname(resolved), keep_modes)
    _copy_file(resolved, _jail_join(jail, resolved))
    return [resolved]


def _jail_join(jail: str, host_path: str) -> str:
    return os.path.join(jail, host_path.lstrip("/"))


def _ensure_dirs(jail: str, host_dir: str, keep_modes: bool = False) -> None:
    """Create host_dir's real components in the jail, refusing symlinks there."""
    current, host = jail, "/"
    for part in [p for p in host_dir.split("/") if p]:
        current = os.path.join(current, part)
        host = os.path.join(host, part)
        if os.path.islink(current):
            raise JailError(f"{current} is a symlink inside the jail where a folder is expected; "
                            "refusing to write through it")
        if not os.path.isdir(current):
            os.mkdir(current, 0o700)
            mode = (os.stat(host).st_mode & 0o755) if keep_modes else 0o755
            os.chmod(current, mode)


def _copy_file(src: str, dst: str) -> None:
    st = os.lstat(src)
    try:
        dst_st = os.lstat(dst)
        if stat.S_ISREG(dst_st.st_mode) and dst_st.st_size == st.st_size and \
                int(dst_st.st_mtime) == int(st.st_mtime):
            return   # unchanged since the last bootstrap
        if stat.S_ISLNK(dst_st.st_mode) or not stat.S_ISREG(dst_st.st_mode):
            raise JailError(f"{dst} in the jail is not a regular file; refusing to overwrite it")
        os.unlink(dst)   # replaced, never written into: it may be a link to the runtime store
    except FileNotFoundError:
        pass
    runtime_store.place(src, st, dst)


def _copy_tree(jail: str, root: str, skip: set[str], keep_modes: bool = False) -> list[str]:
    copied = []
    for dirpath, dirnames, filenames in os.walk(root):   # does not descend into symlinked folders
        dirnames[:] = [d for d in dirnames if not (dirpath == root and d in skip)]
        jail_dir = _jail_join(jail, dirpath)
        _ensure_dirs(jail, dirpath, keep_modes)
        for name in dirnames + filenames:
            src = os.path.join(dirpath, name)
            dst = os.path.join(jail_dir, name)
            if os.path.islink(src):
                if not os.path.lexists(dst):
                    os.symlink(os.readlink(src), dst)
            elif name in filenames and stat.S_ISREG(os.lstat(src).st_mode):
                _copy_file(src, dst)
                copied.append(src)
    return copied


# --- the app --------------------------------------------------------------------

@dataclass
class Staging:
    path: str          # host path of the staging app folder
    jail_path: str     # the same folder seen from inside the jail
    carried: list[tuple[str, str]] = field(default_factory=list)   # (old, new) provider data moved in

    def carried_rels(self) -> list[str]:
        """App-relative paths of the principals' data moved in (for plan_ownership)."""
        return [os.path.relpath(new, self.path) for _, new in self.carried]


def stage_app(plan: Plan) -> Staging:
    """Copy the app into a root-only staging folder (no provider data yet).

    The set-up script runs on this copy, before ``carry_over_data``: so the
    script, which runs as root, only ever sees the developer's files and
    nothing a provider wrote.
    """
    final = plan.host_path(APP_DIR)
    staging = final + ".new"
    if os.path.lexists(staging):
        shutil.rmtree(staging)
    os.mkdir(staging, 0o700)     # root only until it is checked and swapped in
    result = Staging(path=staging, jail_path=APP_DIR + ".new")
    try:
        _copy_app(plan.app_source, staging)
    except BaseException:
        discard(result)
        raise
    return result


def _copy_app(src: str, dst: str) -> None:
    """Copy files, folders and symlinks (as links); keep the source's permission bits.

    A file with several hard links is refused: it may be a host file (such
    as /etc/shadow) linked into the app folder.
    """
    problems = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        dirnames[:] = [d for d in dirnames if not (rel == "." and d in (".pspy", ".git"))
                       and d != "__pycache__"]
        target_dir = os.path.normpath(os.path.join(dst, rel))
        for name in dirnames + filenames:
            s = os.path.join(dirpath, name)
            d = os.path.join(target_dir, name)
            st = os.lstat(s)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)   # copied as a link, never followed
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(d, 0o700)
                os.chmod(d, st.st_mode & 0o777)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    problems.append(f"{s}: has {st.st_nlink} hard links; it may be a host file linked "
                                    "into the app (copy it instead of linking it)")
                    continue
                shutil.copyfile(s, d, follow_symlinks=False)
                os.chmod(d, st.st_mode & 0o777)
            else:
                problems.append(f"{s}: special file (fifo, socket or device) in the app; "
                                "pspy copies only files, folders and symlinks")
    if problems:
        raise JailError("refusing to bootstrap; nothing in the jail was changed:\n  " + "\n  ".join(problems))


def carry_over_data(plan: Plan, result: Staging) -> None:
    """Keep what principals wrote: paths their perms name move into the new copy.

    Only the outermost matches move (a match inside another moves with it).
    Each move is recorded so that a refused bootstrap can put it back.
    """
    old_app = plan.host_path(APP_DIR)
    if not os.path.isdir(old_app) or os.path.islink(old_app):
        return
    staging = result.path
    matches = {rel for principal in plan.principals for perm in principal.perms
               for rel in match_pattern(old_app, perm.pattern)}
    outermost = [rel for rel in sorted(matches, key=lambda r: (r.count("/"), r))
                 if not any(rel.startswith(other + "/") for other in matches if other != rel)]
    for rel in outermost:
        old = os.path.join(old_app, rel)
        new = os.path.join(staging, rel)
        for part_dir in _parents_within(staging, os.path.dirname(new)):
            if os.path.islink(part_dir):
                raise JailError(f"{part_dir}: symlink on the way to provider data {rel}; refusing")
            if not os.path.isdir(part_dir):
                os.mkdir(part_dir, 0o755)   # as _create_data_dir makes it: providers must reach their data
        if os.path.lexists(new):
            if os.path.isdir(new) and not os.path.islink(new):
                shutil.rmtree(new)
            else:
                os.unlink(new)
        os.rename(old, new)   # rename moves the entry itself, links included
        result.carried.append((old, new))


def commit_app(plan: Plan, staging: Staging) -> None:
    """Swap the checked staging folder in place of the app, then drop the old copy."""
    final = plan.host_path(APP_DIR)
    old = final + ".old"
    if os.path.lexists(old):
        shutil.rmtree(old)
    if os.path.lexists(final):
        os.rename(final, old)
    os.rename(staging.path, final)
    if os.path.lexists(old):
        shutil.rmtree(old)   # rmtree removes links, it does not follow them


def discard(staging: Staging) -> None:
    """Drop a refused staging copy, first moving provider data back where it was."""
    for old, new in reversed(staging.carried):
        if os.path.lexists(new) and not os.path.lexists(old):
            os.rename(new, old)
    shutil.rmtree(staging.path, ignore_errors=True)


def write_plan(plan: Plan) -> None:
    path = plan_path(plan.jail)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(plan.to_json())
    os.chmod(tmp, 0o644)   # principals read it for stubs and socket paths; it holds no secret
    os.rename(tmp, path)
    write_filters(plan)


def write_filters(plan: Plan) -> None:
    """Each principal's compiled seccomp filter as a file of its own, which
    its start-up loads without parsing the plan (pspy/_filter.py); a
    principal without a filter, or learning, has none. Written through a
    descriptor on the folder, which must be pspy's own; anything in it but
    regular files is refused, files of principals the plan no longer has
    are removed."""
    from ._filter import file_bytes
    from .plan import FILTER_DIR, filter_path
    wanted = {os.path.basename(filter_path(p.name)): file_bytes(p.seccomp, plan.app_dir)
              for p in plan.principals if p.seccomp and not p.seccomp.get("learn")}
    write_principal_files(os.path.join(plan.jail, FILTER_DIR.lstrip("/")), wanted, "filter")


def write_principal_files(folder: str, wanted: dict[str, bytes], what: str) -> None:
    """Files principals read at start-up (their filters, their Landlock
    rules), one per principal, in a folder that must be pspy's own. Written
    through a descriptor on the folder; anything in it but regular files is
    refused, files of principals the plan no longer has are removed."""
    _mkdir(folder, 0o755)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(dfd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise JailError(f"{folder} is not pspy's own folder (owner uid {st.st_uid}, mode "
                            f"{oct(st.st_mode & 0o7777)}); refusing to write {what}s there")
        for name in os.listdir(dfd):
            entry = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(entry.st_mode):
                raise JailError(f"{folder}/{name} is not a {what} file of pspy's; remove it and bootstrap again")
            if name not in wanted:
                os.unlink(name, dir_fd=dfd)
        for name, data in wanted.items():
            tmp = f".{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dfd)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(fd, 0o644)   # whatever the umask: every principal reads its own
                f.write(data)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)