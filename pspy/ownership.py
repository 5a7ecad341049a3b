"""Who owns each file of the app, and with what mode.

The app is staged in a root-only folder (jail.stage_app), what principals
wrote in the previous run is moved into it (jail.carry_over_data), then
every owner and mode change is planned and checked in full
(plan_ownership) before the first is made (apply_ownership), through
descriptors opened without following any symlink.

Two kinds of files, two rules:
- the developer's app files: a symlink matched by perms, a file with
  several hard links or a special file is a mistake, and bootstrap refuses
  it before anything runs;
- a principal's own data, carried over from the previous run: whatever
  the principal made there (symlinks, hard links, FIFOs) is its own
  business and must never keep root from bootstrapping again, or one link
  would keep the app down. Such entries are left as they are (never
  followed, never changed through) and named in a warning.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass

from .errors import JailError
from .plan import Plan

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOFOLLOW_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _parents_within(root: str, path: str) -> list[str]:
    rel = os.path.relpath(path, root)
    if rel == ".":
        return []
    out, current = [], root
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        out.append(current)
    return out


def match_pattern(root: str, pattern: str) -> list[str]:
    """App paths (relative) matching a perms pattern, walking without following symlinks.

    A symlink can be matched (and is then refused by the caller) but is never
    walked through.
    """
    parts = [p for p in pattern.rstrip("/").split("/") if p]
    results = [""]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt = []
        for base in results:
            folder = os.path.join(root, base) if base else root
            if os.path.islink(folder) or not os.path.isdir(folder):
                continue
            if not any(ch in part for ch in "*?["):
                candidates = [part] if os.path.lexists(os.path.join(folder, part)) else []
            else:
                candidates = sorted(n for n in os.listdir(folder)
                                    if fnmatch.fnmatchcase(n, part) and not (n.startswith(".") and not part.startswith(".")))
            for name in candidates:
                rel = f"{base}/{name}" if base else name
                if not last and os.path.islink(os.path.join(root, rel)):
                    nxt.append(rel)   # kept so the caller can refuse it with its name
                    continue
                nxt.append(rel)
        results = nxt
    return results


def data_paths(plan: Plan, app_root: str) -> dict[str, set[str]]:
    """Each principal's data paths (app-relative), as its perms match them in
    the jail: the providers' from their decorators, the front end's from pspy.toml."""
    return {p.name: {rel for perm in p.perms for rel in match_pattern(app_root, perm.pattern)}
            for p in plan.principals if p.perms}


@dataclass
class Change:
    rel: str
    uid: int
    gid: int
    mode: int
    cause: str
    # Hard links the file may have when the change is made: 1, except for a
    # principal's own file whose every link is in its own data.
    links: int = 1


def app_mode(source_mode: int) -> int:
    """Mode of an app file not named by perms: root's, never writable by a principal,
    and readable by principals only if the source was readable by others."""
    if stat.S_ISDIR(source_mode):
        return 0o755 if source_mode & 0o001 else 0o700
    executable = source_mode & 0o100
    if source_mode & 0o004:
        return 0o755 if executable else 0o644
    return 0o700 if executable else 0o600


def _special_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def _within(rel: str, roots: Collection[str]) -> bool:
    return any(rel == root or rel.startswith(root + "/") for root in roots)


def plan_ownership(plan: Plan, app_root: str, carried: Collection[str] = ()) -> tuple[list[Change], list[str]]:
    """Every owner/mode change for the app, checked in full before any is made.

    ``carried`` are the app-relative paths of principals' data moved in from
    the previous run (jail.carry_over_data): a symlink, a hard link to a file
    outside that data, or a special file there is left as it is, with a
    warning, instead of refusing the bootstrap.

    Returns (changes, warnings). Raises JailError naming every refused path.
    """
    problems: list[str] = []
    warnings: list[str] = []
    owners: dict[str, Change] = {}
    left_alone: dict[str, str] = {}              # carried entry -> what was left and why
    linked: dict[str, tuple[int, int, int]] = {}   # carried file with several links -> (dev, ino, nlink)
    carried = set(carried)

    def leave(rel: str, cause: str, what: str, why: str) -> None:
        whose = cause.split(" (")[0]
        left_alone[rel] = f"{rel} ({whose}'s data): {what}; left as it is: {why}"

    def visit(rel: str, uid: int, gid: int, mode: int, cause: str, recursive: bool):
        if cause == "app" and rel in carried:
            return   # a principal's data: its perms plan it, with the leniency below
        path = os.path.join(app_root, rel) if rel else app_root
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        own_data = cause != "app" and _within(rel, carried)
        if stat.S_ISLNK(st.st_mode):
            if own_data:
                leave(rel, cause, f"a symlink to {os.readlink(path)!r}",
                      "pspy never follows, nor changes, a link a principal made")
            elif cause != "app":
                problems.append(f"{rel}: is a symlink to {os.readlink(path)}; perms from {cause} "
                                "would apply to its target, which may be outside the app: "
                                "refusing (remove the link or narrow the pattern)")
            return
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                if not own_data:
                    problems.append(f"{rel}: has {st.st_nlink} hard links; it may be a host file linked "
                                    "into the app: refusing to change its owner")
                    return
                linked[rel] = (st.st_dev, st.st_ino, st.st_nlink)   # decided once every link is known
            if cause != "app" and not st.st_mode & 0o100:
                mode &= ~0o111   # a data file does not become executable because its folder is searchable
            owners[rel] = Change(rel, uid, gid, mode, cause, links=st.st_nlink if own_data else 1)
        elif stat.S_ISDIR(st.st_mode):
            # A folder's read bit without its search bit is useless: read implies search.
            dmode = mode | ((mode & 0o444) >> 2) if cause != "app" else mode
            owners[rel] = Change(rel, uid, gid, dmode, cause)
            if recursive:
                for name in sorted(os.listdir(path)):
                    child = f"{rel}/{name}" if rel else name
                    child_mode = mode
                    if cause == "app":
                        child_mode = app_mode(os.lstat(os.path.join(path, name)).st_mode)
                    visit(child, uid, gid, child_mode, cause, True)
        elif own_data:
            leave(rel, cause, _special_kind(st.st_mode), "pspy changes owners and modes of files and folders only")
        else:
            problems.append(f"{rel}: special file in the app; refusing")

    # Everything starts owned by root and writable by no principal (rootless:
    # by the caller, whom every principal is; mounts keep the app read-only).
    owner = (plan.uid_base, plan.gid_base) if plan.rootless else (0, 0)
    visit("", owner[0], owner[1], 0o755, "app", True)
    ordered = []
    for principal in plan.principals:
        for perm in principal.perms:
            ordered.append((perm.pattern.rstrip("/").count("/"), principal, perm))
    # Shallow patterns first, so a deeper, more specific pattern wins.
    granted: list[tuple[object, str, str]] = []
    for _, principal, perm in sorted(ordered, key=lambda t: (t[0], t[2].pattern)):
        cause = f"{principal.name} ({perm.location})"
        matches = match_pattern(app_root, perm.pattern)
        if not matches and perm.pattern.endswith("/") and not any(c in perm.pattern for c in "*?["):
            blocked = _create_data_dir(app_root, perm.pattern.rstrip("/"))
            if blocked and _within(blocked, carried):
                leave(blocked, cause, f"not a folder, where perms {perm.pattern!r} need one",
                      "pspy makes nothing through a link or over a file a principal made")
            elif blocked:
                problems.append(f"{blocked}: symlink or file on the way to {perm.pattern}; refusing")
            matches = match_pattern(app_root, perm.pattern)
        if not matches:
            warnings.append(f"perms {perm.pattern!r} ({perm.location}) matches no file of the app")
        for rel in matches:
            parent_links = [p for p in _parents_within(app_root, os.path.dirname(os.path.join(app_root, rel)))
                            if os.path.islink(p)]
            if parent_links:
                link = os.path.relpath(parent_links[0], app_root)
                if _within(link, carried):
                    leave(rel, cause, f"reached through the symlink {link}", "pspy never follows it")
                else:
                    problems.append(f"{rel}: reached through the symlink {link}; refusing")
                continue
            visit(rel, principal.uid, principal.gid, perm.mode, cause, True)
            granted.append((principal, rel, perm.location))
    _leave_files_linked_outside(owners, linked, leave)
    # The app root is first on every principal's sys.path: a provider-owned
    # entry there that others can read and that is named like a module would
    # let that provider plant code other principals import.
    for principal, rel, location in granted:
        if "/" in rel:
            continue
        change = owners.get(rel)
        name = rel[:-3] if rel.endswith(".py") else rel
        if change is not None and name.isidentifier() and change.mode & 0o055:
            problems.append(f"{rel}: given to {principal.name} at {location} with mode {oct(change.mode)}, "
                            f"but a readable {rel!r} at the app root is importable by every principal, "
                            f"so {principal.name} could plant code in them; use 0o700 or a path below a "
                            "folder (e.g. 'data/" + rel + "/')")
    # Namespace mode mounts each principal's data paths as a whole; a path
    # inside another principal's would be mounted with it where it is not meant to be.
    if plan.mode == "namespaces":
        for principal, rel, location in granted:
            for other, other_rel, other_location in granted:
                if other is principal or not other_rel.startswith(rel + "/"):
                    continue
                problems.append(f"{other_rel}: given to {other.name} at {other_location} inside {rel}, "
                                f"given to {principal.name} at {location}; namespace mode mounts each "
                                "principal's data as a whole, so data paths of two principals must not nest")
    # A principal must be able to reach what it was given: every folder above
    # must let it search, after all changes (another principal's 0o700 folder
    # around it would make its perms useless, and its calls fail at run time).
    for principal, rel, location in granted:
        parts = rel.split("/")
        for depth in range(len(parts)):
            folder = "/".join(parts[:depth])
            change = owners.get(folder)
            if change is None:
                continue
            if change.uid == principal.uid:
                bit = 0o100
            elif change.gid == principal.gid or change.gid in principal.groups:
                bit = 0o010
            else:
                bit = 0o001
            if not change.mode & bit:
                problems.append(f"{rel}: given to {principal.name} at {location}, but {principal.name} "
                                f"cannot reach it: folder {folder or '.'} is {oct(change.mode)} "
                                f"for {change.cause}; let others search it (e.g. 0o711) or move the path")
                break
    if problems:
        raise JailError("refusing to bootstrap; nothing in the jail was changed:\n  " + "\n  ".join(problems))
    warnings.extend(left_alone[rel] for rel in sorted(left_alone))
    return sorted(owners.values(), key=lambda c: c.rel), warnings


def _leave_files_linked_outside(owners: dict[str, Change], linked: dict[str, tuple[int, int, int]],
                                leave) -> None:
    """Drop the change of each carried file that has a hard link outside its
    principal's data: its owner and mode are the inode's, so changing them
    would change the file behind the other link too (a host file, another
    principal's, one in the principal's /tmp). A file whose links all lie in
    the data of one principal, with one planned owner and mode, is changed."""
    by_inode: dict[tuple[int, int], list[str]] = {}
    for rel, (dev, ino, _) in linked.items():
        if rel in owners:
            by_inode.setdefault((dev, ino), []).append(rel)
    for rels in by_inode.values():
        nlink = linked[rels[0]][2]
        targets = {(owners[r].uid, owners[r].gid, owners[r].mode) for r in rels}
        if len(rels) >= nlink and len(targets) == 1:
            continue
        if len(rels) < nlink:
            where = f"{nlink - len(rels)} of them outside this data"
        else:
            where = "given different owners or modes by perms"
        for rel in rels:
            leave(rel, owners.pop(rel).cause, f"a file with {nlink} hard links, {where}",
                  "its owner and mode are those of every link, so changing them could change a file "
                  "outside the data (a host file, another principal's)")


def open_or_make_dir(dir_fd: int, name: str) -> int:
    """The folder ``name`` beneath ``dir_fd``, made root's 0755 if missing,
    opened without following a link: OSError (ELOOP, ENOTDIR) if a symlink
    or a file stands there."""
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
        made = True
    except FileExistsError:
        made = False
    fd = os.open(name, _NOFOLLOW_DIR, dir_fd=dir_fd)
    if made:
        os.fchmod(fd, 0o755)   # whatever the umask: principals pass through it
    return fd


def _create_data_dir(app_root: str, rel: str) -> str | None:
    """Make the missing folders of a perms path (0o755, root's: plan_ownership
    gives the last one to its principal), one component at a time from the
    app root's descriptor, never through a symlink.

    Returns the app-relative path of a symlink or file met on the way
    (nothing is made past it), or None.
    """
    fd = os.open(app_root, _NOFOLLOW_DIR)
    try:
        done: list[str] = []
        for part in rel.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                raise JailError(f"{rel}: unexpected path component {part!r}")
            done.append(part)
            try:
                nfd = open_or_make_dir(fd, part)
            except OSError:   # ELOOP (a symlink) or ENOTDIR (a file)
                return "/".join(done)
            os.close(fd)
            fd = nfd
        return None
    finally:
        os.close(fd)


def apply_ownership(app_root: str, changes: list[Change]) -> None:
    """Apply changes through O_NOFOLLOW descriptors opened from the app root's fd."""
    root_fd = os.open(app_root, _NOFOLLOW_DIR)
    try:
        for change in changes:
            fd = _open_beneath(root_fd, change.rel)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_nlink > change.links:
                    raise JailError(f"{change.rel}: gained hard links during bootstrap; refusing")
                os.fchown(fd, change.uid, change.gid)
                os.fchmod(fd, change.mode)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


def _open_beneath(root_fd: int, rel: str) -> int:
    """Open the file or folder rel under root_fd one component at a time,
    refusing symlinks anywhere, and anything but a file or folder at the
    end (opening a device or a FIFO, even to read, can have effects)."""
    if not rel:
        return os.dup(root_fd)
    *folders, name = rel.split("/")
    fd = os.dup(root_fd)
    try:
        for part in folders + [name]:
            if part in ("", ".", ".."):
                raise JailError(f"{rel}: unexpected path component {part!r}")
        for part in folders:
            try:
                nfd = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            except OSError as e:
                raise JailError(f"{rel}: cannot open without following links: {e.strerror}") from None
            os.close(fd)
            fd = nfd
        try:
            before = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not (stat.S_ISREG(before.st_mode) or stat.S_ISDIR(before.st_mode)):
                raise JailError(f"{rel}: is no longer a file or folder; refusing")
            nfd = os.open(name, _NOFOLLOW_FILE, dir_fd=fd)
        except OSError as e:
            raise JailError(f"{rel}: cannot open without following links: {e.strerror}") from None
        os.close(fd)
        fd = nfd
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise JailError(f"{rel}: was replaced while bootstrap changed its owner; refusing")
        return fd
    except BaseException:
        os.close(fd)
        raise
