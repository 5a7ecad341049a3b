"""Namespace and mount system calls Python 3.11's os module lacks.

Thin wrappers over the cffi-built helper; a failure raises NativeError
naming the step and the path, e.g. "bind-mount /usr onto /newroot/usr
failed: EPERM (Operation not permitted)".
"""

from __future__ import annotations

import errno
import os

from ..errors import SandboxError

try:
    from ._helper import ffi, lib
except ImportError as e:   # pragma: no cover - a broken install
    raise SandboxError(f"pspy's native helper is not built ({e}); reinstall pspy with a C compiler "
                       "available (pip install .)") from None

CLONE_NEWNS = lib.CLONE_NEWNS
CLONE_NEWUTS = lib.CLONE_NEWUTS
CLONE_NEWIPC = lib.CLONE_NEWIPC
CLONE_NEWUSER = lib.CLONE_NEWUSER
CLONE_NEWPID = lib.CLONE_NEWPID
CLONE_NEWNET = lib.CLONE_NEWNET
CLONE_NEWCGROUP = lib.CLONE_NEWCGROUP
MS_RDONLY = lib.MS_RDONLY
MS_NOSUID = lib.MS_NOSUID
MS_NODEV = lib.MS_NODEV
MS_NOEXEC = lib.MS_NOEXEC
MS_REMOUNT = lib.MS_REMOUNT
MS_BIND = lib.MS_BIND
MS_REC = lib.MS_REC
MS_PRIVATE = lib.MS_PRIVATE
MS_SLAVE = lib.MS_SLAVE
MNT_DETACH = lib.MNT_DETACH
MS_STRICTATIME = lib.MS_STRICTATIME
# The spawn path's mount steps (spawn.h)
OP_MOUNT = lib.PSPY_OP_MOUNT
OP_MKDIRS = lib.PSPY_OP_MKDIRS
OP_SAVE = lib.PSPY_OP_SAVE
OP_BIND_SAVED = lib.PSPY_OP_BIND_SAVED
MAX_SLOTS = lib.PSPY_MAX_SLOTS
# Stable Linux ABI values (<linux/mount.h>), for flags a remount must repeat.
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21


class NativeError(SandboxError, OSError):
    def __init__(self, step: str, err: int):
        self.errno = err
        super().__init__(f"{step} failed: {errno.errorcode.get(err, err)} ({os.strerror(err)})")


def _check(result: int, step: str) -> None:
    if result != 0:
        raise NativeError(step, ffi.errno)


def _c(path: str | None):
    return ffi.NULL if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(lib.pspy_unshare(flags), f"unshare({_flag_names(flags)})")


def setns(fd: int, nstype: int) -> None:
    _check(lib.pspy_setns(fd, nstype), f"setns({_flag_names(nstype)})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None,
          step: str | None = None) -> None:
    _check(lib.pspy_mount(_c(source), _c(target), _c(fstype), flags, _c(data)),
           step or f"mount {fstype or source} on {target}")


def bind_mount(source: str, target: str, readonly: bool, recursive: bool = True,
               device: bool = False, submounts: bool = True) -> None:
    """Bind source onto target, then remount it nosuid, nodev (unless it is a device
    node meant to be used) and, if asked, read-only: a first bind ignores those flags.
    ``submounts=False`` says the caller knows no mount lies below source: the
    recursive bind then brings none, and the mount table need not be searched."""
    flags = MS_BIND | (MS_REC if recursive else 0)
    mount(source, target, None, flags, step=f"bind-mount {source} onto {target}")
    remount = MS_BIND | MS_REMOUNT | MS_NOSUID | (0 if device else MS_NODEV) | (MS_RDONLY if readonly else 0)
    remount |= _kept_flags(os.statvfs(target).f_flag)
    mount(None, target, None, remount, step=f"remount {target} {'read-only' if readonly else 'nosuid,nodev'}")
    if recursive and submounts:
        remount_tree(target, readonly)


def umount2(target: str, flags: int = 0) -> None:
    _check(lib.pspy_umount2(_c(target), flags), f"unmount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(lib.pspy_pivot_root(_c(new_root), _c(put_old)), f"pivot_root into {new_root}")


def join_new_session_keyring() -> None:
    """Leave the inherited session keyring (root's keys) for a new, empty one."""
    if lib.pspy_join_new_session_keyring() < 0:
        raise NativeError("join a new session keyring", ffi.errno)


def remount_tree(target: str, readonly: bool) -> None:
    """Remount every mount below target too: a recursive bind's submounts keep their
    own flags, so a read-only /usr could still hold a writable /usr/local."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    prefix = target.rstrip("/") + "/"
    for fields in mounts:
        point = unescape(fields[4])
        if not point.startswith(prefix):
            continue
        options = set(fields[5].split(","))
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0)
        flags |= _kept_flags(sum(bit for name, bit in _ST_NAMES if name in options))
        mount(None, point, None, flags, step=f"remount {point} {'read-only' if readonly else ''}".strip())


_ST_NAMES = (("ro", os.ST_RDONLY), ("noexec", os.ST_NOEXEC), ("noatime", os.ST_NOATIME),
             ("nodiratime", os.ST_NODIRATIME), ("relatime", os.ST_RELATIME))


def _kept_flags(st_flags: int) -> int:
    """Flags of the source mount a bind's remount must repeat.

    A remount replaces the flags, and in a user namespace (rootless) the
    kernel refuses one that would clear a flag the source mount has locked:
    read-only, noexec, and the atime mode. Repeating them also keeps a
    read-only source read-only and a noexec one noexec.
    """
    flags = 0
    for st_bit, ms_bit in ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                           (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)):
        if st_flags & st_bit:
            flags |= ms_bit
    if not flags & (MS_NOATIME | MS_RELATIME):
        flags |= MS_STRICTATIME
    return flags


def mount_points() -> list[str]:
    """Every mount point in this process's mount namespace (/proc/self/mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        return [unescape(line.split()[4]) for line in f]


def unescape(field: str) -> str:
    """A mountinfo path: the kernel writes space, tab, newline and backslash as \\ooo."""
    import re   # only here: importing pspy._native is part of every principal's start-up
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def _flag_names(flags: int) -> str:
    names = [name for name, bit in (("CLONE_NEWUSER", CLONE_NEWUSER), ("CLONE_NEWNS", CLONE_NEWNS),
                                    ("CLONE_NEWPID", CLONE_NEWPID), ("CLONE_NEWNET", CLONE_NEWNET),
                                    ("CLONE_NEWIPC", CLONE_NEWIPC), ("CLONE_NEWUTS", CLONE_NEWUTS),
                                    ("CLONE_NEWCGROUP", CLONE_NEWCGROUP)) if flags & bit]
    return "|".join(names) or hex(flags)
