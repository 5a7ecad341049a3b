"""Landlock: a principal's file barrier, from its plan.

The plan holds each principal's grants as one value (``PrincipalPlan.landlock``,
built by ``grants`` below): paths in the principal's own view, each with the
letters of pspy/_landlock.py (r read, l list, x execute, w write, d device
ioctls), whether TCP is denied, and whether abstract Unix sockets and signals
are scoped to the principal's own processes (Landlock ABI 6 or later: the
seccomp filter cannot see a socket's address, so this is the only layer
that keeps a principal from a host service on an abstract socket, D-Bus or
X11 say, or from signalling a host process of its uid). ``write_rules`` turns it into
one small rules file per principal at bootstrap, resolving the app folder
against the jail as built: the app read-only and executable, the
principal's own data read-write, another principal's data only as its mode
bits share it (pspy/sharing.py, the same answer namespace mode mounts), and
the rest of their data not granted at all. The principal applies its file
at start-up (pspy/_landlock.py), before any app code.

What a principal is granted, in its view:
- read and execute: the interpreter's prefixes, pspy (/.pspy/lib), the app;
  execute also on the interpreter's ELF loader (a principal may start Python);
- read: the system library folders, the time-zone database (mount.SYSTEM_DATA),
  the few /etc files the interpreter reads (and for principals with network,
  name resolution and CA certificates), the
  plan, its own seccomp filter, its /proc and its own cgroups (namespace mode);
- read-write: its own data, its HOME and TMPDIR (namespace mode: its private
  /tmp; chroot mode: folders of its own, and the jail's /tmp if pspy.toml
  says tmp.shared), /dev/shm; reading and writing the devices of /dev
  (null, zero, full, random, urandom), creating nothing there;
- nothing else: no other program to execute, no other principal's data,
  no log, no socket folder to write in.
"""

from __future__ import annotations

import os
import stat
import sys

from .. import _landlock
from . import mount
from ..errors import JailError
from ..plan import APP_DIR, LIB_DIR, STATE_DIR, Plan, PrincipalPlan, filter_path, private_dirs

RULES_DIR = _landlock.RULES_DIR
rules_path = _landlock.rules_path
SYSTEM_PREFIXES = ("/", "/usr", "/usr/local")
ETC_EVERYONE = tuple(f"/etc/{name}" for name in mount.ETC_EVERYONE)
ETC_NETWORK = tuple(f"/etc/{name}" for name in mount.ETC_NETWORK)


def interpreter_prefixes() -> list[str]:
    return sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)})


def elf_loader(path: str) -> str | None:
    """The program interpreter (PT_INTERP) of an ELF executable: the kernel
    opens it for execution too, so starting Python needs execute on it."""
    import struct
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:   # 64-bit ELF only
                return None
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
                if p_type == 3:   # PT_INTERP
                    f.seek(p_offset)
                    return f.read(p_filesz).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def grants(plan_mode: str, name: str, network: bool, files: list[str], programs: list[str] = (),
           shared_tmp: bool = False) -> dict:
    """A principal's Landlock value for the plan (paths in its view).
    ``programs``: pspy.toml's landlock.execute for it, the host programs it may run;
    ``shared_tmp``: chroot mode's /tmp is writable by every principal (pspy.toml tmp.shared)."""
    rules: list[list[str]] = [["r", p] for p in mount.SYSTEM_PATHS + mount.SYSTEM_DATA]
    for prefix in interpreter_prefixes():
        # A system Python's prefix is /usr (or /usr/local): readable, but
        # executable only for the interpreter itself, not every program there.
        rules.append(["r" if prefix in SYSTEM_PREFIXES else "rx", prefix])
    rules.append(["x", os.path.realpath(sys.executable)])
    loader = elf_loader(os.path.realpath(sys.executable))
    if loader:
        rules.append(["x", os.path.realpath(loader)])
        rules.append(["x", loader])
    for program in programs:
        rules.append(["rx", program])
        loader = elf_loader(os.path.realpath(program))
        if loader:
            rules.append(["x", os.path.realpath(loader)])
    rules += [["r", p] for p in ETC_EVERYONE + (ETC_NETWORK if network else ())]
    # Its own rules too: a Python it starts applies them again (a layer more).
    rules += [["rx", LIB_DIR], ["r", f"{STATE_DIR}/plan.json"], ["r", filter_path(name)], ["r", rules_path(name)]]
    rules += [["rfd", "/dev"], ["rw", "/dev/shm"]]
    # Its HOME and TMPDIR, as the plan gives them (namespace mode: its private /tmp).
    rules += [["rw", path] for path in dict.fromkeys(private_dirs(plan_mode, name))]
    if plan_mode == "namespaces":
        rules += [["r", "/proc"], ["r", "/sys/fs/cgroup"]]
    else:
        if shared_tmp:
            rules.append(["rw", "/tmp"])
        rules += [["r", f] for f in files]   # --files: host files the app asked for
    return {"rules": rules, "tcp": "allow" if network else "deny", "scoped": True}


def app_rules(plan: Plan, principal: PrincipalPlan, app_root: str) -> list[tuple[str, str]]:
    """The app folder's rules for ``principal``: what namespace mode would
    mount for it, as grants (sandbox/mount.py reads the same view)."""
    from ..sharing import READ_ONLY, view_of
    view = view_of(plan, principal, app_root)
    hidden, writable = set(view.hidden), set(view.writable)
    shared_ro = {rel for rel, (_, how) in view.shared.items() if how == READ_ONLY}
    special = hidden | writable | shared_ro
    out = [("l", APP_DIR)]

    def walk(src: str, rel: str, default: str) -> None:
        for entry in sorted(os.listdir(src)):
            r = f"{rel}{entry}"
            s = os.path.join(src, entry)
            st = os.lstat(s)
            target = f"{APP_DIR}/{r}"
            if r in hidden or stat.S_ISLNK(st.st_mode):
                continue   # a link is checked where it leads
            if r in writable:
                out.append(("rw", target))
            elif stat.S_ISDIR(st.st_mode) and any(p.startswith(r + "/") for p in special):
                # Folders on the way to data are listed (names only): the
                # import system lists every folder on sys.path. What lies
                # in them gets rules of its own, as sandbox/mount.py mounts it
                # (another principal's data nested in a shared folder too).
                out.append(("l", target))
                walk(s, r + "/", "r" if r in shared_ro else default)
            elif r in shared_ro:
                out.append(("r", target))
            else:
                out.append((default, target))

    walk(app_root, "", "rx")
    return out


def rules_text(plan: Plan, principal: PrincipalPlan, app_root: str) -> str:
    value = principal.landlock
    head = [_landlock.MAGIC, f"tcp={value['tcp']}", f"scoped={int(bool(value['scoped']))}"]
    rules = [tuple(rule) for rule in value["rules"]] + app_rules(plan, principal, app_root)
    for _, path in rules:
        if any(c in path for c in "\n\r\0"):
            raise JailError(f"{path!r}: a path with a line break cannot be a Landlock rule of {principal.name}; "
                            "rename it")
    return "\n".join([" ".join(head)] + [f"{letters} {path}" for letters, path in rules]) + "\n"


def write_rules(plan: Plan) -> None:
    """Each principal's rules file, written as its filter is (jail.py):
    files of principals without Landlock (or no longer in the plan) are removed."""
    from ..jail import write_principal_files
    app_root = plan.host_path(APP_DIR)
    wanted = {os.path.basename(rules_path(p.name)): rules_text(plan, p, app_root).encode()
              for p in plan.principals if p.landlock}
    write_principal_files(plan.host_path(RULES_DIR), wanted, "Landlock rules")
