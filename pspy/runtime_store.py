"""One root-owned copy of each interpreter file, hard-linked into every chroot jail.

Chroot mode copies the interpreter, the site-packages on its path and the
libraries they load into each jail: about 13,000 files for a virtualenv
holding Flask and Django, and on a busy disk most of a bootstrap's time goes
to creating them. The store keeps one copy of each host file version under
``/var/cache/pspy/runtime`` and each jail gets a hard link to it.

Why sharing an inode between jails is safe here:
- an entry is written once, by root, in a folder only root can enter, and
  never changed: a host file that changes (its inode, size, mtime or ctime)
  gets a new entry, and jail.py replaces a jail's file rather than writing
  into it;
- a file that group or others may write, or that is setuid or setgid, is
  copied as before: a principal able to write it would otherwise write
  into every jail's copy;
- a jail on another filesystem than the store (hard links cannot cross one)
  gets plain copies.
Entries no jail links any more (link count 1) are removed at the next
bootstrap once an hour has passed since they were last linked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time

# PSPY_RUNTIME_STORE moves it (the test suite keeps one on the tmpfs its jails live on).
STORE_DIR = os.environ.get("PSPY_RUNTIME_STORE") or "/var/cache/pspy/runtime"
UNUSED_GRACE_S = 3600   # an entry just made is linked within seconds: never prune one that young

_NOT_SHARED = stat.S_IWGRP | stat.S_IWOTH | stat.S_ISUID | stat.S_ISGID
_stores: dict[int, str | None] = {}   # device of a jail -> the store usable there, if any


def place(src: str, src_stat: os.stat_result, dst: str) -> None:
    """Put a copy of the host file ``src`` (a regular file, not a link) at ``dst``,
    which must not exist: a link to its store entry where one can be shared."""
    store = _store_for(os.path.dirname(dst)) if _shareable(src_stat) else None
    if store is None:
        shutil.copy2(src, dst, follow_symlinks=False)
        return
    entry = os.path.join(store, _key(src, src_stat))
    try:
        os.link(entry, dst)
        return
    except FileNotFoundError:
        pass
    _add_entry(src, src_stat, entry)
    try:
        os.link(entry, dst)
    except FileNotFoundError:   # the host file changed while it was copied: no entry
        shutil.copy2(src, dst, follow_symlinks=False)


def prune(now: float | None = None) -> int:
    """Remove entries no jail has linked for an hour; returns how many."""
    removed = 0
    now = time.time() if now is None else now
    try:
        names = os.listdir(STORE_DIR)
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(STORE_DIR, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        # ctime moves at every link() and unlink() of the inode.
        if st.st_nlink == 1 and now - st.st_ctime > UNUSED_GRACE_S:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _shareable(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and not st.st_mode & _NOT_SHARED and os.geteuid() == 0


def _key(src: str, st: os.stat_result) -> str:
    version = f"{src}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_mode}"
    return hashlib.sha256(version.encode()).hexdigest()[:40]


def _store_for(jail_dir: str) -> str | None:
    device = os.stat(jail_dir).st_dev
    if device not in _stores:
        _stores[device] = _open_store(device)
    return _stores[device]


def _open_store(device: int) -> str | None:
    """The store folder, made root's and private if new; None if it is on another
    filesystem than the jail or if anyone but root could change what it holds."""
    try:
        os.makedirs(STORE_DIR, mode=0o700, exist_ok=True)
        path = "/"
        for part in [p for p in os.path.abspath(STORE_DIR).split("/") if p] + [""]:
            st = os.lstat(path)
            # A link, or a folder someone else could rename or write, could hand a
            # jail another file; sticky folders (/tmp) keep root's entries root's.
            others_write = st.st_mode & 0o022 and not (st.st_mode & stat.S_ISVTX and path != STORE_DIR)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or others_write:
                return None
            path = os.path.join(path, part)
    except OSError:
        return None
    return STORE_DIR if st.st_dev == device else None


def _add_entry(src: str, src_stat: os.stat_result, entry: str) -> None:
    """Copy src into the store under ``entry``, unless it changed during the copy."""
    partial = f"{entry}.{os.getpid()}.partial"
    try:
        shutil.copy2(src, partial, follow_symlinks=False)
        after = os.lstat(src)
        if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) != \
                (src_stat.st_ino, src_stat.st_size, src_stat.st_mtime_ns, src_stat.st_ctime_ns):
            return
        try:
            os.link(partial, entry)   # never replaces: two bootstraps at once agree on one entry
        except FileExistsError:
            pass
    finally:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
