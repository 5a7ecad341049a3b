"""``pspy export systemd APP_DIR``: the app's principals as systemd units.

systemd runs the app instead of pspy's supervisor: one service per
principal, one socket unit per provider, a target for the whole app. Every
directive is a translation of the principal's plan (the plan bootstrap
would make, export/common.py); docs/systemd.md lists which comes from what,
and what pspy's supervisor does that the units do not.

Written into OUT (default ./pspy-systemd-APP):

- ``pspy-APP-NAME.service``, ``pspy-APP-PROVIDER.socket``, ``pspy-APP.target``;
- ``pspy-APP.sysusers.conf``: an account per principal and group, with the
  plan's ids (fixed numbers: data keeps its owner across installs, which
  DynamicUser= would not give), and a group per provider for the principals
  allowed to connect to its socket;
- ``pspy-APP.tmpfiles.conf``: owners and modes of the principals' data;
- ``runtime/``, installed at --install-dir: the plan the principals read,
  pspy's sitecustomize, each principal's compiled seccomp filter and an
  environment file per principal that pspy.toml's ``env`` gives variables;
- ``install.sh`` and ``README.md``: how to install and start it.

Seccomp is two layers. The unit's SystemCallFilter= is the policy as far as
systemd can say it; the principal then loads its exact filter (the plan's,
argument checks included) at start-up through pspy's sitecustomize, as it
does under pspy, and refuses to start without it. A process runs under both.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import grp
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass, field

from .. import config
from ..bootstrap import ID_BLOCK
from ..errors import ConfigError, PspyError
from ..plan import DEFAULT_GID_BASE, DEFAULT_UID_BASE, PLAN_VERSION, Plan, PrincipalPlan, plan_path

DEFAULT_INSTALL_ROOT = "/etc/pspy"
SOCKET_ROOT = "/run"
# Hidden from every unit (ProtectHome=, PrivateTmp=): the app and the runtime
# files cannot live there; the interpreter may (it is bound in, read-only).
HOME_DIRS = ("/home", "/root", "/run/user")
PRIVATE_TMP = ("/tmp", "/var/tmp")
RESTART_SEC = "250ms"
STOP_TIMEOUT_SEC = 5            # as pspy stop: SIGTERM, then SIGKILL after 5 s
UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
ACCOUNT_MAX = 31                # what useradd and sysusers accept everywhere
THROUGH = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
# What pspy's own start-up needs of the unit's filter: loading the exact
# filter on top (seccomp; stacking only ever narrows), and its SIGSYS
# reporter (pspy.seccomp.compile adds the same three to a trapping filter).
FILTER_LOADER = ("seccomp",)
REPORTER_NEEDS = ("gettid", "rt_sigreturn", "write")


def add_parser(sub) -> None:
    p = sub.add_parser("systemd", help="the app's principals as systemd units (services, sockets, users)",
                       usage="pspy export systemd APP_DIR [--out DIR] [--app-root DIR] [--install-dir DIR] "
                             "[--python PATH] [--name NAME] [--uid-base N --gid-base N]")
    p.add_argument("app_dir", metavar="APP_DIR")
    p.add_argument("--out", help="folder to write into (default: ./pspy-systemd-NAME)")
    p.add_argument("--app-root", help="where the app is on the machine that runs the units (default: APP_DIR "
                                      "itself)")
    p.add_argument("--install-dir", help="where install.sh puts runtime/: the plan, filters, environment "
                                         f"files (default: {DEFAULT_INSTALL_ROOT}/NAME)")
    p.add_argument("--python", help="the interpreter the units run; pspy must be installed in it "
                                    "(default: the one running pspy)")
    p.add_argument("--name", help="the app's name in unit and account names (default: APP_DIR's name)")
    p.add_argument("--uid-base", type=int, help="first uid (default: pspy.toml's, else 40000 or the next free "
                                                "block, else the ids of an earlier export into OUT)")
    p.add_argument("--gid-base", type=int, help="first gid (as --uid-base)")


def run(args) -> int:
    app_dir = os.path.abspath(args.app_dir)
    if not os.path.isdir(app_dir):
        raise ConfigError(f"{args.app_dir}: app folder not found (pspy export systemd APP_DIR)")
    name = args.name or os.path.basename(app_dir)
    if not UNIT_NAME_RE.match(name):
        raise ConfigError(f"app name {name!r} cannot be part of a unit name (letters, digits, '_' and '-', at "
                          "most 40); give --name")
    out = os.path.abspath(args.out or f"pspy-systemd-{name}")
    app_root = _run_path(args.app_root or app_dir, "--app-root")
    install_dir = _run_path(args.install_dir or f"{DEFAULT_INSTALL_ROOT}/{name}", "--install-dir")
    python = _interpreter(args.python)
    export = build(app_dir, name=name, app_root=app_root, install_dir=install_dir, python=python,
                   uid_base=args.uid_base, gid_base=args.gid_base, previous=_previous(out))
    write(export, out)
    units = [f for f in sorted(export.files) if f.endswith((".service", ".socket", ".target"))]
    print(f"pspy: wrote {len(units)} units for {name} into {out}: {', '.join(units)}")
    print(f"pspy: install as root with 'sh {os.path.join(out, 'install.sh')}' (see {out}/README.md), then "
          f"'systemctl start pspy-{name}.target'")
    return 0


# --- where things are at run time ------------------------------------------------------

def _run_path(path: str, flag: str) -> str:
    """An absolute folder the units may name: not hidden by ProtectHome= or PrivateTmp=."""
    path = posixpath.normpath(os.path.abspath(path))
    for top in HOME_DIRS + PRIVATE_TMP:
        if path == top or path.startswith(top + "/"):
            hidden = "ProtectHome=" if top in HOME_DIRS else "PrivateTmp="
            raise ConfigError(f"{flag} {path}: the units hide {top} from every principal ({hidden}); "
                              f"put it elsewhere (for example /srv or /opt) and give {flag}")
    if any(c in path for c in "\n\r\0"):
        raise ConfigError(f"{flag} {path!r}: a line break in a path cannot go into a unit file")
    return path


@dataclass
class Interpreter:
    path: str                     # what ExecStart runs (a venv's bin/python is kept as it is)
    read_paths: list[str]         # folders it needs: its prefixes and pspy's own


PROBE = ("import json, os, sys, pspy, pspy._native, pspy.plan as p; print(json.dumps({'version': p.PLAN_VERSION, "
         "'paths': [sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.abspath(pspy.__file__)))]}))")


def _interpreter(given: str | None) -> Interpreter:
    """The interpreter the units run, asked where its files are; pspy must import in it."""
    path = os.path.abspath(given or sys.executable)
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise ConfigError(f"--python {path}: not an executable file")
    try:
        # From /, so that a pspy folder in the current one is not what imports.
        proc = subprocess.run([path, "-s", "-c", PROBE], capture_output=True, text=True, timeout=60, cwd="/",
                              env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    except OSError as e:
        raise ConfigError(f"--python {path}: cannot run it: {e.strerror}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"--python {path}: cannot import pspy ({last}); install pspy into that interpreter")
    info = json.loads(proc.stdout)
    if info["version"] != PLAN_VERSION:
        raise ConfigError(f"--python {path}: its pspy reads plans of version {info['version']}, this one writes "
                          f"version {PLAN_VERSION}; install the same pspy in both")
    real = sorted({os.path.realpath(p) for p in info["paths"]})
    for p in real:
        if any(p == t or p.startswith(t + "/") for t in PRIVATE_TMP):
            raise ConfigError(f"--python {path}: its files are under {p}, which every unit hides (PrivateTmp=); "
                              "use an interpreter installed elsewhere")
    outer = [p for p in real if not any(p.startswith(o + "/") for o in real if o != p)]
    return Interpreter(path, outer)


def _previous(out: str) -> Plan | None:
    """The plan of an earlier export into the same folder: its ids are kept."""
    path = os.path.join(out, "runtime", "plan.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return Plan.from_dict(json.load(f))
    except (OSError, ValueError, TypeError, KeyError, PspyError) as e:
        raise PspyError(f"{path}: an earlier export's plan that cannot be read ({e}); its ids would be lost: "
                        "remove the folder or give another --out") from None


# --- accounts --------------------------------------------------------------------------

def account(app: str, name: str) -> str:
    """The account (user or group) name of a principal or group of the plan."""
    return re.sub(r"[^a-z0-9_-]", "-", f"pspy-{app}-{name}".lower())


@dataclass
class Accounts:
    users: dict[str, tuple[str, int, str]]   # principal -> (account, uid, primary group's account)
    groups: dict[str, int]                    # group account -> gid
    callers_group: dict[str, str]             # provider -> the group that may connect to its socket
    calls: dict[str, list[str]]               # principal -> providers whose sockets it may connect to


def accounts_of(plan: Plan, app: str) -> Accounts:
    """Accounts for the plan's ids, and a group per provider for its callers:
    its socket is root's, mode 0660, of that group, so only principals the
    plan lets call it can connect (the provider still checks each call's
    caller from the kernel's peer credentials)."""
    groups: dict[str, int] = {}
    for gname, gid in plan.groups.items():
        groups[account(app, gname)] = gid
    next_gid = max([*plan.groups.values(), *(p.uid for p in plan.principals)]) + 1
    callers_group, calls = {}, {p.name: [] for p in plan.principals}
    for provider in plan.providers:
        callers = plan.callers_of(provider)
        if not callers:
            continue
        g = account(app, f"{provider.name}-callers")
        callers_group[provider.name] = g
        groups[g] = next_gid
        next_gid += 1
        for c in callers:
            calls[c].append(provider.name)
    users = {p.name: (account(app, p.name), p.uid, account(app, p.group)) for p in plan.principals}
    names: dict[str, tuple[str, int]] = {}
    for kind, entries in (("user", [(u, uid) for u, uid, _ in users.values()]), ("group", list(groups.items()))):
        for acct, number in entries:
            if len(acct) > ACCOUNT_MAX:
                raise ConfigError(f"account name {acct!r} is longer than {ACCOUNT_MAX} characters; give a "
                                  "shorter --name")
            other = names.get(acct)
            if other is not None and other[1] != number:
                raise ConfigError(f"the {kind} {acct} would have id {number} and the {other[0]} of the same "
                                  f"name {other[1]}; rename one of the principals or groups")
            names[acct] = (kind, number)
    return Accounts(users, groups, callers_group, calls)


def host_conflicts(accts: Accounts) -> list[str]:
    """Ids or names of this machine's accounts that the export's would collide with
    (an account of the export's own name and id, from an earlier install, is fine)."""
    problems = []
    for acct, uid, _ in accts.users.values():
        for entry, how in ((_getpw(uid=uid), f"uid {uid}"), (_getpw(name=acct), f"user {acct}")):
            if entry is not None and (entry.pw_name, entry.pw_uid) != (acct, uid):
                problems.append(f"{how} is the host's user {entry.pw_name} (uid {entry.pw_uid})")
    for acct, gid in accts.groups.items():
        for entry, how in ((_getgr(gid=gid), f"gid {gid}"), (_getgr(name=acct), f"group {acct}")):
            if entry is not None and (entry.gr_name, entry.gr_gid) != (acct, gid):
                problems.append(f"{how} is the host's group {entry.gr_name} (gid {entry.gr_gid})")
    return problems


def _getpw(uid=None, name=None):
    try:
        return pwd.getpwuid(uid) if name is None else pwd.getpwnam(name)
    except KeyError:
        return None


def _getgr(gid=None, name=None):
    try:
        return grp.getgrgid(gid) if name is None else grp.getgrnam(name)
    except KeyError:
        return None


def jail_conflicts(plan: Plan, extra_gids: list[int]) -> list[str]:
    """pspy jails of this host (root's registry, when readable) whose ids overlap."""
    from ..registry import REGISTRY
    try:
        with open(REGISTRY) as f:
            jails = json.load(f).get("jails", {})
    except (OSError, ValueError):
        return []
    uids = [p.uid for p in plan.principals]
    gids = [*plan.groups.values(), *extra_gids]
    out = []
    for jail, ranges in jails.items():
        if not os.path.exists(plan_path(jail)):
            continue   # gone: its ids are free again (bootstrap forgets it the same way)
        for kind, mine in (("uids", uids), ("gids", gids)):
            low, high = ranges[kind]
            if any(low <= i <= high for i in mine):
                out.append(f"{kind} overlap those of the pspy jail {jail} ({low}-{high})")
    return out


# --- the plan -----------------------------------------------------------------------------

@dataclass
class Export:
    app: str
    plan: Plan
    accounts: Accounts
    app_root: str
    install_dir: str
    interpreter: Interpreter
    source: str                                  # the app folder the export was made from
    files: dict[str, str] = field(default_factory=dict)   # path in OUT -> text
    binaries: dict[str, bytes] = field(default_factory=dict)


def build(app_dir: str, *, name: str, app_root: str, install_dir: str, python: Interpreter,
          uid_base: int | None = None, gid_base: int | None = None, previous: Plan | None = None,
          say=print) -> Export:
    """Everything the export writes, decided; nothing written yet."""
    from .common import plan_for_export
    explicit = uid_base is not None or gid_base is not None
    if not explicit and previous is not None:
        uid_base, gid_base = previous.uid_base, previous.gid_base
    overrides = dict(jail=install_dir, interpreter=python.path)
    plan = plan_for_export(app_dir, uid_base=uid_base, gid_base=gid_base, say=say, **overrides)
    settings = config.load(app_dir)
    # As bootstrap: ids nobody chose move up a block at a time until free.
    auto = not explicit and previous is None and "uid_base" not in settings and "gid_base" not in settings
    for k in range(1, 200 if auto else 1):
        problems = _id_problems(plan, name)
        if not problems:
            break
        plan = plan_for_export(app_dir, uid_base=DEFAULT_UID_BASE + k * ID_BLOCK,
                               gid_base=DEFAULT_GID_BASE + k * ID_BLOCK,
                               say=lambda _: None, **overrides)
    problems = _id_problems(plan, name)
    if problems:
        raise ConfigError("the ids of this export are taken: " + "; ".join(problems) + "; give --uid-base and "
                          "--gid-base")
    if previous is not None:
        before = {q.name: (q.uid, q.gid) for q in previous.principals}
        moved = [f"{p.name} (uid/gid {'/'.join(map(str, before[p.name]))} -> {p.uid}/{p.gid})"
                 for p in plan.principals if p.name in before and before[p.name] != (p.uid, p.gid)]
        if moved:
            raise PspyError(f"exporting again would change the ids of {', '.join(moved)}, and the data they own "
                            "would no longer be theirs; export into a new --out and move the data's owners "
                            "yourself, or keep the principals as they were")
    # Where the exported app runs: its folder, the sockets systemd makes, no jail.
    plan.app_dir = app_root
    plan.mode = "systemd"
    for p in plan.providers:
        p.socket = f"{SOCKET_ROOT}/pspy-{name}/{p.name}.sock"
    export = Export(name, plan, accounts_of(plan, name), app_root, install_dir, python, os.path.abspath(app_dir))
    _render(export)
    return export


def _id_problems(plan: Plan, name: str) -> list[str]:
    accts = accounts_of(plan, name)
    return host_conflicts(accts) + jail_conflicts(plan, [accts.groups[g] for g in accts.callers_group.values()])


# --- seccomp -------------------------------------------------------------------------------

@dataclass
class SyscallFilter:
    """A principal's seccomp policy as systemd directives."""
    allow: list[str] | None = None      # SystemCallFilter= (an allow list), or None
    deny: list[str] | None = None       # SystemCallFilter=~ (a deny list), or None
    error: str | None = None            # SystemCallErrorNumber=; None: systemd kills (SIGSYS)
    families: list[str] | None = None   # RestrictAddressFamilies=; None: not restricted by the policy
    notes: list[str] = field(default_factory=list)   # what systemd cannot say, and how it is kept


def _family(number: int) -> str:
    try:
        return socket.AddressFamily(number).name
    except ValueError:
        return str(number)


def syscall_filter(policy: dict | None) -> SyscallFilter:
    """The plan's policy (its ``profile``, an OCI profile for this machine) as
    SystemCallFilter= and friends. Argument checks systemd has directives for
    become them (socket families: RestrictAddressFamilies=; clone without
    CLONE_NEW*: RestrictNamespaces=); the rest stay with pspy's own filter,
    loaded by the principal at start-up, and each is named in a note."""
    from ..seccomp.derive import CLONE_NEW_FLAGS
    if not policy:
        return SyscallFilter(notes=["the plan gives this principal no seccomp filter (seccomp='none')"])
    profile = policy["profile"]
    default = profile["defaultAction"]
    default_errno = profile.get("defaultErrnoRet", errno.EPERM)
    out = SyscallFilter()
    if default in THROUGH:
        # A deny list: a call denied only for some arguments stays allowed here.
        denied = set()
        for entry in profile["syscalls"]:
            if entry["action"] in THROUGH:
                continue
            if entry.get("args"):
                out.notes.append(f"{', '.join(entry['names'])}: denied only for some arguments; pspy's own "
                                 "filter checks them")
            else:
                denied.update(entry["names"])
        out.deny = sorted(denied)
        out.error = errno.errorcode.get(default_errno, "EPERM")
        out.notes.append(f"the policy's default action is {default}: everything not listed is allowed")
        return out
    allow: set[str] = set()
    families: set[int] = set()
    conditional: dict[str, list] = {}
    for entry in profile["syscalls"]:
        args = entry.get("args") or []
        for call in entry["names"]:
            if entry["action"] in THROUGH:
                allow.add(call)
                if call in ("socket", "socketpair") and len(args) == 1 and args[0]["index"] == 0 \
                        and args[0]["op"] == "SCMP_CMP_EQ":
                    families.add(args[0]["value"])
                elif call == "socket" and args and args[0]["index"] == 0 and args[0]["op"] == "SCMP_CMP_EQ":
                    # A family allowed only with more conditions (netlink of one protocol):
                    # on the safe side, systemd does not allow the family at all.
                    out.notes.append(f"socket({_family(args[0]['value'])}) is allowed by the policy only with "
                                     "more argument checks than RestrictAddressFamilies= can make: that family "
                                     "is left out here")
                elif call == "clone" and len(args) == 1 and args[0]["op"] == "SCMP_CMP_MASKED_EQ" \
                        and args[0]["value"] == CLONE_NEW_FLAGS and args[0].get("valueTwo", 0) == 0:
                    pass   # no CLONE_NEW* flags: RestrictNamespaces=yes says the same
                elif args:
                    conditional.setdefault(call, []).append(entry)
                elif call in ("socket", "socketpair"):
                    families = {-1}   # any family
            elif entry["action"] == "SCMP_ACT_ERRNO" and not args \
                    and entry.get("errnoRet", default_errno) != default_errno:
                # An allow list denies with one errno; this call fails with its own
                # (clone3: ENOSYS, so that glibc falls back to clone), which pspy's
                # filter returns: this one lets it through to that one.
                allow.add(call)
                out.notes.append(f"{call}: the policy fails it with "
                                 f"{errno.errorcode.get(entry['errnoRet'], entry['errnoRet'])}, which an allow "
                                 "list cannot say; it passes here and pspy's own filter fails it so")
            elif args:
                conditional.setdefault(call, []).append(entry)
    for call in sorted(conditional):
        if call in allow:
            out.notes.append(f"{call}: allowed by the policy only for some arguments, which systemd cannot "
                             "check; pspy's own filter checks them")
    allow.update(FILTER_LOADER)
    if default == "SCMP_ACT_ERRNO":
        allow.update(REPORTER_NEEDS)
    out.allow = sorted(allow)
    if default == "SCMP_ACT_ERRNO":
        out.error = errno.errorcode.get(default_errno, "EPERM")
    if -1 not in families:
        out.families = sorted({_family(f) for f in families} | {"AF_UNIX"})
    return out


# --- the principals' files ------------------------------------------------------------------

@dataclass
class Paths:
    read_write: list[str] = field(default_factory=list)
    read_only: list[str] = field(default_factory=list)
    inaccessible: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _matches(export: Export, pattern: str) -> tuple[list[str], bool]:
    """App-relative paths a perms pattern names, and whether each must exist
    (a literal folder does: tmpfiles creates it); globs as matched in the
    app folder at export time."""
    from ..jail import match_pattern
    if not any(c in pattern for c in "*?["):
        return [pattern.rstrip("/")], pattern.endswith("/")
    return match_pattern(export.source, pattern), False


def paths_of(export: Export, principal: PrincipalPlan) -> Paths:
    """ReadWritePaths=, ReadOnlyPaths=, InaccessiblePaths= of a principal: its
    own data read-write, other principals' data as their modes admit it (as
    namespace mode mounts it: pspy/sharing.py), the rest of the app read-only."""
    from ..sharing import READ_WRITE, access_of
    plan, out = export.plan, Paths()

    def host(rel: str, optional: bool) -> str:
        return ("-" if optional else "") + posixpath.join(export.app_root, rel)

    own = []
    for perm in principal.perms:
        rels, must = _matches(export, perm.pattern)
        if not rels:
            out.notes.append(f"perms {perm.pattern!r} matched nothing in the app at export time: nothing of "
                             "it is writable here; export again once it exists")
        own.extend(rels)
        out.read_write.extend(host(r, not must) for r in rels)
    out.read_only = [export.app_root, export.install_dir]
    for other in plan.principals:
        if other.name == principal.name:
            continue
        for perm in other.perms:
            rels, _ = _matches(export, perm.pattern)
            folder = perm.pattern.endswith("/") or any(os.path.isdir(os.path.join(export.source, r)) for r in rels)
            kind = stat.S_IFDIR if folder else stat.S_IFREG
            how = access_of(plan, principal, other, os.stat_result((kind | perm.mode, 0, 0, 0, 0, 0, 0, 0, 0, 0)))
            for rel in rels:
                if how is None:
                    if any(o == rel or o.startswith(rel + "/") for o in own):
                        out.notes.append(f"{rel} ({other.name}'s) holds data of {principal.name}'s own: not made "
                                         "inaccessible as a whole; its modes keep it out")
                        continue
                    out.inaccessible.append(host(rel, True))
                elif how == READ_WRITE:
                    out.read_write.append(host(rel, True))
                else:
                    out.read_only.append(host(rel, True))
    out.inaccessible.append(posixpath.join(export.install_dir, "env"))   # other principals' secrets
    return out


# --- unit files --------------------------------------------------------------------------------

def quote(value: str, exec_line: bool = False) -> str:
    """One word of a unit file setting: C-style quoted when it must be, specifiers
    (%) escaped, and in ExecStart= variable expansion ($) too."""
    if any(c in value for c in "\n\r\0"):
        raise ConfigError(f"{value!r}: a line break cannot go into a unit file")
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if exec_line:
        text = text.replace("$", "$$")
    if text == value and value and not any(c.isspace() or c in "'\";" for c in value):
        return text
    return f'"{text}"'


def _words(values, exec_line=False) -> str:
    return " ".join(quote(v, exec_line) for v in values)


def unit_name(app: str, principal: str, kind: str = "service") -> str:
    return f"pspy-{app}-{principal}.{kind}"


HARDENING = """\
# Lock-down, as pspy's spawn does it and beyond: no privilege, no capability,
# no new namespace, the system read-only and the kernel's knobs out of reach.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
{protect_home}
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
PrivateMounts=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
UMask=0077
# PrivateUsers= is left off: a provider's user namespace would show its callers'
# uids as nobody, and it tells callers apart by uid (SO_PEERCRED).
"""


def service_unit(export: Export, principal: PrincipalPlan) -> str:
    from ..runtime import ENV_PLAN, ENV_SECCOMP
    from ..sandbox.spawn import principal_env, provider_argv, resolve_argv
    plan, app, accts = export.plan, export.app, export.accounts
    provider = principal.kind == "provider"
    user, uid, group = accts.users[principal.name]
    extra = [account(app, g) for g in principal.extra_groups] + \
        [accts.callers_group[p] for p in accts.calls[principal.name]]
    argv = provider_argv(plan) if provider else resolve_argv(plan, principal.argv)
    if not os.path.isabs(argv[0]):
        found = shutil.which(argv[0], path=f"{os.path.dirname(plan.interpreter)}:/usr/local/bin:/usr/bin:/bin")
        if found is None:
            raise ConfigError(f"front end {' '.join(principal.argv)!r}: {argv[0]} is not a program on the "
                              "principal's PATH; give its absolute path in pspy.toml's front_end")
        argv = [found, *argv[1:]]
    env = principal_env(plan, principal, host_env={})
    env.pop("PSPY_LANDLOCK", None)   # Landlock's rules are paths in a jail's view: not carried over
    env["PYTHONPATH"] = posixpath.join(export.install_dir, "lib")
    env[ENV_PLAN] = posixpath.join(export.install_dir, "plan.json")
    if principal.seccomp:
        env[ENV_SECCOMP] = posixpath.join(export.install_dir, "seccomp", f"{principal.name}.filter")
    calls = [unit_name(app, p, "socket") for p in accts.calls[principal.name]]
    if not provider:
        # The front end starts after the providers it calls, so it is stopped
        # before them (pspy stops it first). Providers are not ordered among
        # themselves (they may call each other): their sockets take calls early.
        calls += [unit_name(app, p) for p in accts.calls[principal.name]]
    own_socket = unit_name(app, principal.name, "socket") if provider and principal.name in accts.callers_group \
        else None
    lines = [f"# Written by pspy export systemd from the plan of {app}: principal {principal.name}.",
             "# docs/systemd.md says which directive comes from which part of the plan.",
             "[Unit]"]
    if provider:
        services = ", ".join(s.name for s in principal.services)
        lines.append(f"Description=pspy {app}: provider {principal.name} ({services})")
    else:
        lines.append(f"Description=pspy {app}: front end {principal.name}")
    lines.append(f"PartOf=pspy-{app}.target")
    if own_socket:
        lines += [f"Requires={own_socket}", f"After={own_socket}"]
    if calls:
        lines += [f"Wants={' '.join(calls)}", f"After={' '.join(calls)}"]
    lines += ["StartLimitIntervalSec=0", "", "[Service]", "Type=exec",
              f"ExecStart={_words(argv, exec_line=True)}",
              f"WorkingDirectory={quote(export.app_root)}",
              f"# uid {uid}, gid {plan.groups[principal.group]}: pspy-{app}.sysusers.conf pins the numbers.",
              f"User={user}", f"Group={group}"]
    if extra:
        lines.append(f"SupplementaryGroups={' '.join(extra)}")
    lines += [f"Environment={quote(f'{k}={v}')}" for k, v in env.items()]
    if principal.env:
        lines.append(f"# {', '.join(principal.env)}: from this file (pspy.toml's env), root's only.")
        lines.append(f"EnvironmentFile={quote(posixpath.join(export.install_dir, 'env', principal.name + '.env'))}")
    lines += ["Restart=always", f"RestartSec={RESTART_SEC}", f"TimeoutStopSec={STOP_TIMEOUT_SEC}", ""]
    lines += _limit_lines(principal)
    home_binds = [p for p in export.interpreter.read_paths if any(p == t or p.startswith(t + "/") for t in HOME_DIRS)]
    protect_home = "ProtectHome=yes"
    if home_binds:
        protect_home = ("# The interpreter lives under a home folder: an empty one, with it bound in read-only.\n"
                        f"ProtectHome=tmpfs\nBindReadOnlyPaths={_words(home_binds)}")
    lines.append(HARDENING.format(protect_home=protect_home))
    paths = paths_of(export, principal)
    lines += [f"# {n}" for n in paths.notes]
    lines.append("# The app read-only, the principal's own data read-write, other principals' data as their "
                 "modes admit it.")
    lines.append(f"ReadOnlyPaths={_words(paths.read_only)}")
    if paths.read_write:
        lines.append(f"ReadWritePaths={_words(paths.read_write)}")
    lines.append(f"InaccessiblePaths={_words(('-' + p) if not p.startswith('-') else p for p in paths.inaccessible)}")
    lines.append("")
    lines += _network_lines(principal, syscall_filter(principal.seccomp))
    return "\n".join(lines).rstrip("\n") + "\n"


def _limit_lines(principal: PrincipalPlan) -> list[str]:
    """pspy/limits.py's keys: the cgroup limits pspy sets as root, and its rlimits."""
    from ..limits import call_rlimits
    limits = principal.limits
    if not limits:
        return []
    out = ["# Limits (the plan's limits=): cgroup limits, and the rlimits pspy sets too."]
    if "cpu_seconds" in limits:
        if principal.isolation == "per_call":
            out.append("# cpu_seconds bounds each call's process: pspy's runtime sets it after each fork.")
        else:
            (_, soft, hard), = call_rlimits(limits)
            out.append(f"LimitCPU={soft}:{hard}")
    if "memory" in limits:
        out += [f"MemoryMax={limits['memory']}", "MemorySwapMax=0", f"LimitDATA={limits['memory']}"]
    if "processes" in limits:
        out += [f"TasksMax={limits['processes']}", f"LimitNPROC={limits['processes']}"]
    if "open_files" in limits:
        out.append(f"LimitNOFILE={limits['open_files']}")
    if "file_size" in limits:
        out.append(f"LimitFSIZE={limits['file_size']}")
    if "cpus" in limits:
        out.append(f"CPUQuota={limits['cpus'] * 100:g}%")
    if "call_timeout" in limits:
        out.append(f"# call_timeout={limits['call_timeout']:g}s: pspy's runtime ends a call past it (from the plan).")
    return out + [""]


def _network_lines(principal: PrincipalPlan, sf: SyscallFilter) -> list[str]:
    out = []
    if principal.kind == "provider" and not principal.network:
        out += ["# network=False: no network but loopback, no IP traffic.", "PrivateNetwork=yes", "IPAddressDeny=any"]
    out.append("# Seccomp: the plan's policy as far as systemd can say it; the principal loads its exact")
    out.append("# filter on top at start-up (pspy's sitecustomize, PSPY_SECCOMP) and refuses to run without it.")
    out += [f"# {n}" for n in sf.notes]
    if sf.allow is not None:
        out.append("# systemd adds its @default group to any allow list (execve, exit...): what the policy")
        out.append("# denies of it, pspy's filter denies.")
    out.append("SystemCallArchitectures=native")
    if sf.allow is not None:
        out.append(f"SystemCallFilter={' '.join(sf.allow)}")
    elif sf.deny is not None:
        out.append(f"SystemCallFilter=~{' '.join(sf.deny)}" if sf.deny else "# (nothing denied unconditionally)")
    if sf.error:
        out.append(f"SystemCallErrorNumber={sf.error}")
    out.append(f"RestrictAddressFamilies={' '.join(sf.families)}" if sf.families is not None
               else "# RestrictAddressFamilies= left unset: the policy allows sockets of any family.")
    return out


def socket_unit(export: Export, provider: PrincipalPlan) -> str:
    app, accts, plan = export.app, export.accounts, export.plan
    callers = plan.callers_of(provider)
    return "\n".join([
        f"# Written by pspy export systemd from the plan of {app}: {provider.name}'s RPC socket.",
        "[Unit]",
        f"Description=pspy {app}: {provider.name}'s socket (callers: {', '.join(callers)})",
        f"PartOf=pspy-{app}.target",
        "",
        "[Socket]",
        f"ListenStream={quote(provider.socket)}",
        "# Root's, and connectable by the callers' group alone; the provider checks each call's",
        "# caller again from its peer credentials (uid, against the plan).",
        "SocketUser=root",
        f"SocketGroup={accts.callers_group[provider.name]}",
        "SocketMode=0660",
        "DirectoryMode=0755",
        "RemoveOnStop=yes",
        "",
        "[Install]",
        f"WantedBy=pspy-{app}.target",
    ]) + "\n"


def target_unit(export: Export) -> str:
    app = export.app
    units = [unit_name(app, p, "socket") for p in export.accounts.callers_group]
    units += [unit_name(app, p.name) for p in export.plan.principals if _has_service(p)]
    return "\n".join([
        f"# Written by pspy export systemd: every principal of {app}.",
        "[Unit]",
        f"Description=pspy {app}: every principal",
        f"Wants={' '.join(units)}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]) + "\n"


def _has_service(principal: PrincipalPlan) -> bool:
    return principal.kind == "provider" or bool(principal.argv)


# --- users and data ------------------------------------------------------------------------------

def sysusers(export: Export) -> str:
    accts = export.accounts
    lines = [f"# Written by pspy export systemd: the accounts of {export.app}'s principals, with the plan's",
             "# ids. Fixed numbers, so that data keeps its owner; install.sh checks that they were given.",
             "# Groups first (each user's primary group is one of them).", ""]
    lines += [f"g {g} {gid}" for g, gid in sorted(accts.groups.items(), key=lambda kv: kv[1])]
    lines.append("")
    for principal, (user, uid, group) in sorted(accts.users.items(), key=lambda kv: kv[1][1]):
        lines.append(f'u {user} {uid}:{group} "pspy {export.app} principal {principal}" / -')
    return "\n".join(lines) + "\n"


def tmpfiles(export: Export) -> str:
    """Owners and modes of the principals' data, as bootstrap gives them: a
    literal folder is created; what a pattern matches is owned recursively,
    its folders get the mode (read implies search) and its files the mode
    without execute bits unless they had them ("~": tmpfiles masks by the
    file's existing bits)."""
    lines = [f"# Written by pspy export systemd: owners and modes of {export.app}'s data (perms=).",
             "# systemd-tmpfiles --create applies them; run it after the app's set-up script.", ""]
    for principal in export.plan.principals:
        for perm in principal.perms:
            mode = perm.mode | ((perm.mode & 0o444) >> 2)
            target = posixpath.join(export.app_root, perm.pattern.rstrip("/"))
            lines.append(f"# {principal.name}: {perm.pattern} {oct(perm.mode)} ({perm.location})")
            if perm.pattern.endswith("/") and not any(c in perm.pattern for c in "*?["):
                lines.append(f"d {_tmpfiles_path(target)} {mode:04o} {principal.uid} {principal.gid} -")
            lines.append(f"Z {_tmpfiles_path(target)} ~{mode:04o} {principal.uid} {principal.gid} -")
    return "\n".join(lines) + "\n"


def _tmpfiles_path(path: str) -> str:
    if any(c.isspace() for c in path) or '"' in path:
        raise ConfigError(f"{path!r}: a data path with spaces or quotes cannot go into a tmpfiles.d line")
    return path.replace("%", "%%")


# --- the rest of OUT --------------------------------------------------------------------------

def _render(export: Export) -> None:
    from .._filter import file_bytes
    app, plan = export.app, export.plan
    files, binaries = export.files, export.binaries
    for principal in plan.principals:
        if principal.seccomp and principal.seccomp.get("learn"):
            raise PspyError("learning policies cannot be exported")
        if _has_service(principal):
            files[unit_name(app, principal.name)] = service_unit(export, principal)
        if principal.seccomp:
            binaries[f"runtime/seccomp/{principal.name}.filter"] = file_bytes(principal.seccomp, plan.app_dir)
        if principal.env:
            files[f"runtime/env/{principal.name}.env"] = (
                f"# Variables for {principal.name} (pspy.toml's env), one NAME=value a line; only these pass:\n"
                + "".join(f"#{n}=\n" for n in principal.env))
    for provider in plan.providers:
        if provider.name in export.accounts.callers_group:
            files[unit_name(app, provider.name, "socket")] = socket_unit(export, provider)
    files[f"pspy-{app}.target"] = target_unit(export)
    files[f"pspy-{app}.sysusers.conf"] = sysusers(export)
    files[f"pspy-{app}.tmpfiles.conf"] = tmpfiles(export)
    files["runtime/plan.json"] = plan.to_json()
    sitecustomize = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_sitecustomize.py")
    with open(sitecustomize) as f:
        files["runtime/lib/sitecustomize.py"] = f.read()
    files["install.sh"] = install_script(export)
    files["README.md"] = readme(export)


def install_script(export: Export) -> str:
    app, plan, accts = export.app, export.plan, export.accounts
    q = shlex.quote
    dest = export.install_dir
    checks = [f'check_id user {q(u)} {uid}' for u, uid, _ in accts.users.values()]
    checks += [f'check_id group {q(g)} {gid}' for g, gid in sorted(accts.groups.items())]
    script = []
    if plan.script:
        script = ["# The app's set-up script, as root in the app folder, as pspy bootstrap runs it.",
                  f"(cd {q(export.app_root)} && umask 022 && env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 "
                  f"PYTHONDONTWRITEBYTECODE=1 {q(plan.interpreter)} -s {q(plan.script)})"]
    return "\n".join([
        "#!/bin/sh",
        f"# Installs {app}'s units (written by pspy export systemd). Run as root: sh install.sh",
        "set -eu",
        'cd "$(dirname "$0")"',
        f"install -d -m 0755 {q(dest)} {q(dest + '/lib')} {q(dest + '/seccomp')}",
        f"install -d -m 0700 {q(dest + '/env')}",
        f"install -m 0644 runtime/plan.json {q(dest + '/plan.json')}",
        f"install -m 0644 runtime/lib/sitecustomize.py {q(dest + '/lib/sitecustomize.py')}",
        f"for f in runtime/seccomp/*.filter; do [ -e \"$f\" ] || continue; install -m 0644 \"$f\" "
        f"{q(dest + '/seccomp/')}; done",
        "# Environment files hold secrets once filled in: never overwritten.",
        f"for f in runtime/env/*.env; do [ -e \"$f\" ] || continue; t={q(dest + '/env/')}\"$(basename \"$f\")\"; "
        "[ -e \"$t\" ] || install -m 0600 \"$f\" \"$t\"; done",
        "install -d -m 0755 /etc/sysusers.d /etc/tmpfiles.d /etc/systemd/system",
        f"install -m 0644 pspy-{app}.sysusers.conf /etc/sysusers.d/pspy-{app}.conf",
        f"install -m 0644 pspy-{app}.tmpfiles.conf /etc/tmpfiles.d/pspy-{app}.conf",
        f"systemd-sysusers /etc/sysusers.d/pspy-{app}.conf",
        "# The units name accounts; the plan names their ids: they must agree.",
        "check_id() {",
        '    got=$(getent "$(if [ "$1" = user ]; then echo passwd; else echo group; fi)" "$2" | cut -d: -f3)',
        '    [ "$got" = "$3" ] || { echo "install.sh: the $1 $2 has id ${got:-none}, the plan says $3;'
        ' remove the account or export with other ids" >&2; exit 1; }',
        "}",
        *checks,
        *script,
        f"systemd-tmpfiles --create /etc/tmpfiles.d/pspy-{app}.conf",
        f"install -m 0644 pspy-{app}-*.service pspy-{app}-*.socket pspy-{app}.target /etc/systemd/system/",
        "systemctl daemon-reload",
        f"echo 'installed; start with: systemctl enable --now pspy-{app}.target'",
    ]) + "\n"


def readme(export: Export) -> str:
    app, plan = export.app, export.plan
    rows = []
    for p in plan.principals:
        user, uid, _ = export.accounts.users[p.name]
        unit = unit_name(app, p.name) if _has_service(p) else "(no front_end in pspy.toml: no unit)"
        rows.append(f"| {p.name} | {p.kind} | {user} ({uid}) | {unit} |")
    env_files = [p.name for p in plan.principals if p.env]
    return "\n".join([
        f"# {app} as systemd units",
        "",
        f"Written by `pspy export systemd` from {export.source}. The units run the app from "
        f"`{export.app_root}` with the interpreter `{plan.interpreter}` (pspy must be installed in it), "
        f"and read pspy's files from `{export.install_dir}`.",
        "",
        "| principal | kind | account (uid) | unit |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        "## Install (as root)",
        "",
        f"- Put the app at `{export.app_root}`, readable by others (principals run as the accounts above).",
        *([f"- Fill in the variables of `runtime/env/NAME.env` ({', '.join(env_files)}; once installed, "
           f"`{export.install_dir}/env/`): pspy.toml's `env`, which only they receive."] if env_files else []),
        f"- `sh install.sh`: copies `runtime/` to `{export.install_dir}`, creates the accounts (systemd-sysusers) "
        "and checks their ids, runs the app's set-up script, gives the data to its owners (systemd-tmpfiles), "
        "installs the units.",
        f"- `systemctl enable --now pspy-{app}.target`; logs: `journalctl -u 'pspy-{app}-*'`.",
        "",
        "Providers are socket-activated: their sockets accept calls from the start, and a provider that dies "
        "is started again (`Restart=always`) while calls wait in its socket's queue.",
        "`systemd-analyze security UNIT` rates each unit; docs/systemd.md in pspy gives the target and what "
        "the units do not carry over from pspy's supervisor.",
    ]) + "\n"


def write(export: Export, out: str) -> None:
    """Write OUT; files of an earlier export that this one no longer has are left alone."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    for rel, text in export.files.items():
        _write_file(out, rel, text.encode(), 0o755 if rel == "install.sh" else
                    0o600 if rel.startswith("runtime/env/") else 0o644)
    for rel, data in export.binaries.items():
        _write_file(out, rel, data, 0o644)


def _write_file(out: str, rel: str, data: bytes, mode: int) -> None:
    from .common import write_file
    # runtime/env/ files may hold filled-in secrets: kept
    write_file(out, rel, data, mode, keep_existing=rel.startswith("runtime/env/"))


__all__ = ["add_parser", "run", "build", "write", "syscall_filter", "quote", "account"]
