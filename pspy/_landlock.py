"""Landlock at a principal's start: it shuts itself in to its plan's grants.

Imported by every principal's sitecustomize before the app (and before its
seccomp filter, which need not allow Landlock's own calls). It reads the
rules bootstrap wrote for the principal (pspy/sandbox/landlock.py writes
them, from the plan's ``landlock`` value), opens each path, and restricts
the process: what no rule grants, the kernel refuses with EACCES, whatever
the file's owner and mode say. Landlock holds where uids do not separate
(rootless mode: one uid for every principal) and inside a chroot, where
Unix permissions are otherwise the only barrier.

Cheap on purpose: it runs at every principal start, imports os and the
native helper only, and parses a few lines of text.
"""

from __future__ import annotations

import os
import stat

# File system rights (linux/landlock.h), by the ABI that brought them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
ABI1_ALL = (1 << 13) - 1          # EXECUTE .. MAKE_SYM
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
READ = READ_FILE | READ_DIR
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV   # what a rule on a file may grant
# Beyond files: TCP (ABI 4) and scopes (ABI 6).
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

# The letters of a rules file: r read (files and listings), l list (a
# folder's names, and beneath it), x execute, w write (create, remove,
# rename, truncate: every right the ABI handles but execute and device
# ioctls), f write to files that exist (no creating, removing or renaming),
# d device ioctls.
LETTERS = "rlxwfd"
MAGIC = "pspy-landlock-1"
RULES_DIR = "/.pspy/landlock"


def rules_path(name: str) -> str:
    """Where a principal finds its rules, in its view (both modes)."""
    return f"{RULES_DIR}/{name}.rules"


def own_rules(name: str) -> list[tuple[str, str]] | None:
    """The principal's rules as bootstrap wrote them; None without Landlock."""
    try:
        with open(rules_path(name)) as f:
            return parse(f.read(), rules_path(name))[1]
    except FileNotFoundError:
        return None


def handled_fs(abi: int) -> int:
    handled = ABI1_ALL
    if abi >= 2:
        handled |= REFER
    if abi >= 3:
        handled |= TRUNCATE
    if abi >= 5:
        handled |= IOCTL_DEV
    return handled


def handled_net(abi: int) -> int:
    return NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0


def scopes(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


def rights(letters: str, handled: int) -> int:
    out = 0
    if "r" in letters:
        out |= READ
    if "l" in letters:
        out |= READ_DIR
    if "x" in letters:
        out |= EXECUTE
    if "w" in letters:
        out |= handled & ~(EXECUTE | IOCTL_DEV)
    if "f" in letters:
        out |= WRITE_FILE | TRUNCATE
    if "d" in letters:
        out |= IOCTL_DEV
    return out & handled


def abi() -> int:
    """The kernel's Landlock ABI: 0 when it has none or has it disabled."""
    from ._native import lib
    return max(lib.pspy_landlock_abi(), 0)


def parse(text: str, where: str) -> tuple[dict, list[tuple[str, str]]]:
    """A rules file: its header's settings and (letters, path) rules."""
    lines = text.rstrip("\n").split("\n")   # "\n" only: a path may hold any other character
    head = lines[0].split() if lines else []
    if not head or head[0] != MAGIC:
        raise RuntimeError(f"{where} is not a pspy Landlock rules file")
    settings = dict(field.split("=", 1) for field in head[1:])
    rules = []
    for number, line in enumerate(lines[1:], 2):
        letters, _, path = line.partition(" ")
        if not path.startswith("/") or not letters or set(letters) - set(LETTERS):
            raise RuntimeError(f"{where}:{number}: not a rule: {line!r}")
        rules.append((letters, path))
    return settings, rules


def restrict(settings: dict, rules: list[tuple[str, str]], kernel_abi: int) -> None:
    """Shut this process (and what it starts) in to ``rules``."""
    fs = handled_fs(kernel_abi)
    net = handled_net(kernel_abi) if settings.get("tcp") == "deny" else 0
    scoped = scopes(kernel_abi) if settings.get("scoped") == "1" else 0
    restrict_paths(fs, net, scoped, [(path, rights(letters, fs), letters) for letters, path in rules])


REQUIRED = "required"   # a grant's label: its path must exist


def restrict_paths(fs: int, net: int, scoped: int, grants: list[tuple]) -> None:
    """Restrict this process to ``grants`` ((path, rights, label) each).
    A path that does not exist in this view is skipped: it grants nothing
    (unless its label is REQUIRED); any other failure to open one raises.
    Paths are opened one at a time, so a small open_files limit holds."""
    from ._native import ffi, lib
    ruleset = lib.pspy_landlock_create(fs, net, scoped)
    if ruleset < 0:
        raise OSError(ffi.errno, f"Landlock: creating the ruleset: {os.strerror(ffi.errno)}")
    try:
        for path, mask, label in grants:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                if label == REQUIRED:
                    raise
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    mask &= FILE_ONLY
                if mask and lib.pspy_landlock_add(ruleset, fd, mask) != 0:
                    raise OSError(ffi.errno, f"Landlock: the rule {label} {path}: {os.strerror(ffi.errno)}")
            finally:
                os.close(fd)
        if lib.pspy_landlock_enforce(ruleset) != 0:
            raise OSError(ffi.errno, f"Landlock: {os.strerror(ffi.errno)}")
    finally:
        os.close(ruleset)


def install(path: str, stream) -> None:
    """Apply the rules file at ``path``. A kernel without Landlock is said on
    ``stream`` and left at what it has (ids, mounts, seccomp); any other
    failure raises, and the caller must not start the principal."""
    with open(path) as f:
        settings, rules = parse(f.read(), path)
    kernel_abi = abi()
    if kernel_abi < 1:
        stream.write("pspy: warning: this kernel has no Landlock (Linux 5.13 or later, with landlock in "
                     "lsm=); this principal runs without its file barrier\n")
        stream.flush()
        return
    try:
        restrict(settings, rules, kernel_abi)
    except OSError as e:
        # Over 16 layers: the process already runs under every layer it
        # inherited, none of which it can leave.
        import errno
        if e.errno != errno.E2BIG:
            raise
        stream.write("pspy: warning: Landlock refuses a 17th layer; this process keeps the 16 it inherited\n")
        stream.flush()
