"""What one identity can read, write and execute in a jail's app folder.

Unix semantics: exactly one of owner, group or other bits applies (owner if
the uid matches, else group if the gid or any supplementary gid matches,
else other), and an entry is reachable only if every folder above it, from
the jail's root down, grants search (x). uid 0 may do anything (the
paper's form can be asked about root). Symlinks are reported, never
followed. The walk is read-only and uses lstat, so analysing a jail cannot
be turned against the host.

Every entry gets a verdict, a string like ``ls`` shows: ``rwx``, ``r-x``,
``---``. For a folder, r is listing, w is creating or removing entries
(which needs x too) and x is searching. Paths are app-relative; folders
end with '/', the app folder itself is './'.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

R, W, X = 4, 2, 1
NONE = "---"


@dataclass(frozen=True)
class Identity:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def bits(self, st: os.stat_result) -> int:
        """The rwx bits of st's mode that apply to this identity."""
        if self.uid == 0:
            return 7
        mode = st.st_mode
        if st.st_uid == self.uid:
            return (mode >> 6) & 7
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return (mode >> 3) & 7
        return mode & 7

    def may(self, st: os.stat_result, bit: int) -> bool:
        return bool(self.bits(st) & bit)


def verdict(bits: int, folder: bool, reachable: bool) -> str:
    if not reachable:
        return NONE
    r, w, x = bits & R, bits & W, bits & X
    if folder:
        w = w and x   # entries are created in a folder one can search
    return ("r" if r else "-") + ("w" if w else "-") + ("x" if x else "-")


@dataclass
class Walk:
    """Every entry of the app folder with its verdict, in walk order."""
    verdicts: dict[str, str]
    symlinks: list[str]        # "path -> target", never followed
    modes: dict[str, int]      # path -> st_mode, for findings about the files themselves

    def having(self, letter: str) -> list[str]:
        i = "rwx".index(letter)
        return [p for p, v in self.verdicts.items() if v[i] == letter]


def walk(jail: str, app_dir: str, who: Identity) -> Walk:
    """The verdict of every entry under the app folder for ``who``."""
    reachable = True
    current = jail
    for part in [""] + [p for p in app_dir.split("/") if p]:
        current = os.path.join(current, part) if part else current
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode):
            return Walk({}, [app_dir], {})
        reachable = reachable and who.may(st, X)
    app_root = os.path.join(jail, app_dir.lstrip("/"))
    verdicts: dict[str, str] = {}
    symlinks: list[str] = []
    modes: dict[str, int] = {}
    root_st = os.lstat(app_root)
    verdicts["./"] = verdict(who.bits(root_st), True, reachable)
    modes["./"] = root_st.st_mode

    def visit(folder: str, rel: str, searchable: bool):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            child = f"{rel}{name}"
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                symlinks.append(f"{child} -> {os.readlink(path)}")
                continue
            bits = who.bits(st)
            if stat.S_ISDIR(st.st_mode):
                verdicts[child + "/"] = verdict(bits, True, searchable)
                modes[child + "/"] = st.st_mode
                visit(path, child + "/", searchable and bool(bits & X))
                continue
            verdicts[child] = verdict(bits, False, searchable)
            modes[child] = st.st_mode

    visit(app_root, "", reachable and who.may(root_st, X))
    return Walk(verdicts, symlinks, modes)


def under(path: str, roots) -> bool:
    """Whether the app-relative path is one of roots or inside one."""
    path = path.rstrip("/")
    return any(path == r or path.startswith(r + "/") for r in roots)


def narrow_to_view(w: Walk, hidden, writable) -> Walk:
    """Namespace mode: what Unix allows, narrowed by the principal's mounts.
    Other principals' data it is not admitted to is not mounted (nothing);
    everything else of the app is mounted read-only except its own data and
    the data others' bits let it write (pspy/sharing.py decides, and the
    mounts read the same answer)."""
    out = {}
    for path, v in w.verdicts.items():
        if under(path, hidden):
            v = NONE
        elif v[1] == "w" and not under(path, writable):
            v = v[0] + "-" + v[2]
        out[path] = v
    return Walk(out, [s for s in w.symlinks if not under(s.split(" -> ")[0], hidden)], w.modes)
