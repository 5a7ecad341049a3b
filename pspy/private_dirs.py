"""Each principal's own HOME and TMPDIR in chroot mode, made at bootstrap.

In chroot mode every principal sees the same jail: a folder two of them may
write is a place where one plants a file or a symlink for the other to open
(and hosts may run with fs.protected_symlinks=0). So each principal has two
folders of its own, the plan's ``PrincipalPlan.home`` and ``.tmpdir``
(plan.private_dirs), its uid's and mode 0700, made afresh at every
bootstrap; the jail's /tmp is root's and 0755 (jail.prepare_root) unless
pspy.toml asks for a shared one (tmp.shared). None of this rests on
Landlock: it holds with Landlock off, and Landlock grants the same folders.

Namespace mode needs none of it: each principal's /tmp is a tmpfs of its own.
"""

from __future__ import annotations

import os
import shutil
import stat

from .errors import JailError
from .ownership import open_or_make_dir
from .plan import Plan, PrincipalPlan

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_private_dirs(plan: Plan) -> None:
    """chroot mode: every principal's HOME and TMPDIR, afresh. The folders
    holding them (/.pspy/home, /tmp) are emptied first, as a reboot empties a
    host's /tmp: what a principal left there (a link for another to follow,
    the folder of a principal no longer planned, whose uid a later one may
    get) does not outlive the bootstrap, which refuses a running app. Every
    step goes through folder descriptors and follows no symlink."""
    if plan.mode != "chroot":
        return
    wanted: dict[str, dict[str, PrincipalPlan]] = {}   # parent folder -> {name: principal}
    for p in plan.principals:
        for path in dict.fromkeys((p.home, p.tmpdir)):
            parent, name = os.path.split(path)
            wanted.setdefault(parent, {})[name] = p
    jail_fd = os.open(plan.jail, _DIR_FLAGS)
    try:
        for parent, entries in wanted.items():
            fd = _open_parent(jail_fd, parent, plan.host_path(parent))
            try:
                for name in os.listdir(fd):
                    if name not in entries:
                        _remove(fd, name)
                for name, principal in entries.items():
                    _remove(fd, name)
                    _make_own(fd, name, principal, plan.host_path(f"{parent}/{name}"))
            finally:
                os.close(fd)
    finally:
        os.close(jail_fd)


def _open_parent(jail_fd: int, parent: str, where: str) -> int:
    """The folder holding private folders (/.pspy/home, /tmp), opened beneath the
    jail without following a link; made root's 0755 where missing. It must
    be root's and writable by no one else unless sticky (a shared /tmp),
    or a principal could swap a folder of ours for a link between our steps."""
    fd = os.dup(jail_fd)
    try:
        for part in [x for x in parent.split("/") if x]:
            try:
                child = open_or_make_dir(fd, part)
            except OSError as e:
                raise JailError(f"{where}: cannot open it as a folder ({e.strerror}); a symlink or a file "
                                "stands where each principal's private folders go") from None
            os.close(fd)
            fd = child
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise JailError(f"{where} is owned by uid {st.st_uid} with mode {oct(st.st_mode & 0o7777)}; "
                            "principals' private folders need a parent only root can change "
                            "(or a sticky one, such as a shared /tmp)")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _remove(dir_fd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)   # descriptor-based: follows no link inside either
    else:
        os.unlink(name, dir_fd=dir_fd)


def _make_own(dir_fd: int, name: str, principal: PrincipalPlan, where: str) -> None:
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    try:
        # O_NOFOLLOW: had anyone swapped the new folder for a link, this fails.
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise JailError(f"{where}: the folder just made for {principal.name} cannot be opened "
                        f"({e.strerror}); was it replaced?") from None
    try:
        os.fchown(fd, principal.uid, principal.gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
