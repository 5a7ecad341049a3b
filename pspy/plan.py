"""Turn a Manifest and the bootstrap options into a Plan.

The plan is the one source of truth for everything after discovery: ids,
groups, socket paths, the files each principal owns, who may call what. It
is plain data, saved as JSON in ``<jail>/.pspy/plan.json`` so that
``analyze``, ``status``, ``stop`` and ``exec`` need no repeat of the options.
Building it is pure; reading the host's account database is done by
``check_ids_free`` at the edge.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from dataclasses import asdict, dataclass, field

from .discover import FRONT_END_NAME, Manifest
from .errors import PlanError

PLAN_VERSION = 1
DEFAULT_UID_BASE = 40000
DEFAULT_GID_BASE = 40000
DEFAULT_JAIL = "/jail"
DEFAULT_RPC_TIMEOUT = 30.0       # seconds a caller waits for a reply
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024   # one log file's size before it is rotated (pspy/logs.py)
DEFAULT_LOG_KEEP = 3                       # rotated log files kept per principal
# Inside the jail (chroot mode these are absolute paths in the principal's view).
APP_DIR = "/app"
STATE_DIR = "/.pspy"
LIB_DIR = "/.pspy/lib"          # pspy's own package, importable by every principal
SOCKET_DIR = "/.pspy/sock"
HOME_DIR = "/.pspy/home"        # chroot mode: each principal's HOME, <name> (private_dirs)
FILTER_DIR = "/.pspy/seccomp"   # each principal's compiled filter, <name>.filter (jail.write_plan)


def filter_path(name: str) -> str:
    """Where a principal finds its compiled filter, in its view (both modes)."""
    return f"{FILTER_DIR}/{name}.filter"


def private_dirs(mode: str, name: str) -> tuple[str, str]:
    """A principal's HOME and TMPDIR, in its view. Namespace mode: its own
    /tmp, a tmpfs no other principal sees. chroot mode: folders of its own
    (0700, made afresh by bootstrap: pspy/private_dirs.py), so that no
    principal can plant a file or a link where another writes."""
    if mode == "namespaces":
        return "/tmp", "/tmp"
    # Homes under pspy's state folder: --files never copies there (jail.py).
    return f"{HOME_DIR}/{name}", f"/tmp/pspy-{name}"


LOG_DIR = "/.pspy/logs"          # root only: principals never read each other's logs
RUN_DIR = "/.pspy/run"           # root only: supervisor pid and state


@dataclass
class ServicePlan:
    name: str
    kind: str
    module: str
    file: str
    line: int
    callers: list[str]
    methods: list[str] = field(default_factory=list)
    timeout: float | None = None     # None: Plan.rpc_timeout


@dataclass
class PermPlan:
    pattern: str
    mode: int
    location: str


@dataclass
class PrincipalPlan:
    """One principal's whole policy, one plain value decided here, once.

    Every part is read, never re-derived, by what enforces, reports and
    exports it:

    ==============  =============================  =====================  ===========================
    part            enforced by                    reported by            exported by
    ==============  =============================  =====================  ===========================
    uid/gid/groups  sandbox/ids.py, user.py        analyze/report.py      export/systemd, kubernetes
    perms (files)   jail.py, sandbox/mount.py      analyze/access.py      export/systemd, kubernetes
    network         sandbox/net.py, seccomp        analyze/report.py      export/systemd, kubernetes
    seccomp         _filter.py (sitecustomize)     analyze (seccomp)      export/seccomp, systemd, k8s
    landlock        _landlock.py (sitecustomize)   analyze (landlock)     (not carried: docs say so)
    limits          sandbox/cgroup.py, limits.py   analyze (limits)       export/systemd, kubernetes
    services        rpc/server.py (callers)        analyze (may_call)     (the runtime, unchanged)
    ==============  =============================  =====================  ===========================
    """

    name: str
    kind: str                    # "provider" or "front_end"
    uid: int
    gid: int
    group: str
    extra_groups: list[str]
    groups: list[int]            # supplementary gids (the extra groups)
    env: list[str]               # names of variables passed from the bootstrap environment
    socket: str | None = None    # provider's listening socket, path inside the jail
    services: list[ServicePlan] = field(default_factory=list)
    perms: list[PermPlan] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)   # imported by the provider to serve
    argv: list[str] = field(default_factory=list)      # front end command
    network: bool = False        # host network (True) or an empty network namespace (namespace mode)
    seccomp: dict | None = None  # {"source", "derived", "profile"}: its filter (pspy.seccomp); None: none
    limits: dict = field(default_factory=dict)   # pspy/limits.py's keys, plain numbers; {}: none
    isolation: str = "process"   # "per_call": every call in a fresh process forked from a ready copy
    # The file barrier (pspy/sandbox/landlock.py): {"rules": [[letters, path], ...] in its view
    # (the app folder's are added from the jail at bootstrap), "tcp": "deny" or "allow",
    # "scoped": abstract Unix sockets and signals kept to its own processes, "tmpdir": chroot
    # mode's own /tmp folder}. None: off (pspy.toml landlock = false).
    landlock: dict | None = None
    # Its HOME and TMPDIR (private_dirs). The defaults are what a plan
    # written before these fields gave every principal.
    home: str = "/tmp"
    tmpdir: str = "/tmp"
    # Its rights inside shared databases (pspy/data/grants.py): database ->
    # {"tables": {table: {right: [columns] or ["*"]}}, "schema": bool}.
    # Enforced by the owner's SQLite authorizer (pspy/data/authorizer.py);
    # the owner itself has no entry: it holds the file.
    grants: dict = field(default_factory=dict)

    def service(self, name: str) -> ServicePlan | None:
        for s in self.services:
            if s.name == name:
                return s
        return None


@dataclass
class Plan:
    app_name: str
    app_source: str              # the app folder on the host that was copied
    jail: str
    mode: str                    # "chroot" or "namespaces"
    uid_base: int
    gid_base: int
    interpreter: str             # absolute path, the same inside and outside the jail
    groups: dict[str, int]
    principals: list[PrincipalPlan]
    script: str | None = None
    files: list[str] = field(default_factory=list)
    app_dir: str = APP_DIR
    rpc_timeout: float = DEFAULT_RPC_TIMEOUT
    max_frame: int = DEFAULT_MAX_FRAME
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_keep: int = DEFAULT_LOG_KEEP
    debug: bool = False              # remote tracebacks reach callers
    rootless: bool = False           # namespace mode without root: one host uid for every principal
    # cgroup controller -> "v1" or "v2": the hierarchy that holds it on this
    # host, for the controllers the principals' limits need (bootstrap finds
    # them: sandbox/cgroup.py); empty rootless, where limits are setrlimit only.
    cgroups: dict[str, str] = field(default_factory=dict)
    # chroot mode: the jail's /tmp is writable by every principal (1777)
    # only when pspy.toml asks (tmp.shared); otherwise it is root's, 0755.
    shared_tmp: bool = False
    # Databases shared with grants (pspy/data/grants.py): {"name", "engine",
    # "path" (in the app), "owner", "location", "tables": {table: [columns]}}.
    databases: list[dict] = field(default_factory=list)
    version: int = PLAN_VERSION

    # --- lookups -----------------------------------------------------------
    def principal(self, name: str) -> PrincipalPlan:
        for p in self.principals:
            if p.name == name:
                return p
        names = ", ".join(p.name for p in self.principals)
        raise PlanError(f"no principal named {name!r} in this jail (principals: {names})")

    def principal_by_uid(self, uid: int) -> PrincipalPlan | None:
        for p in self.principals:
            if p.uid == uid:
                return p
        return None

    def callers_of(self, provider: PrincipalPlan) -> list[str]:
        """Principals that may call at least one service of ``provider``."""
        return sorted({c for s in provider.services for c in s.callers if c != provider.name})

    def caller_socket(self, provider: PrincipalPlan, caller: str) -> str:
        """Rootless: the socket ``caller`` alone reaches ``provider`` through
        (mounted at ``provider.socket`` in its view); which socket a call comes
        in on says who made it, since every principal has the same uid."""
        return f"{os.path.dirname(provider.socket)}/by/{caller}/{os.path.basename(provider.socket)}"

    @property
    def providers(self) -> list[PrincipalPlan]:
        return [p for p in self.principals if p.kind == "provider"]

    @property
    def front_end(self) -> PrincipalPlan:
        return next(p for p in self.principals if p.kind == "front_end")

    def host_path(self, jail_path: str) -> str:
        """A path inside the jail (absolute) as seen from the host."""
        return os.path.join(self.jail, jail_path.lstrip("/"))

    # --- persistence -----------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version {data.get('version')!r} is not {PLAN_VERSION}; "
                            "bootstrap the app again")
        principals = []
        for p in data["principals"]:
            p = dict(p)
            p["services"] = [ServicePlan(**s) for s in p["services"]]
            p["perms"] = [PermPlan(**x) for x in p["perms"]]
            principals.append(PrincipalPlan(**p))
        data = dict(data, principals=principals)
        return cls(**data)

    @classmethod
    def load(cls, jail: str) -> "Plan":
        path = plan_path(jail)
        try:
            with open(path) as f:
                plan = cls.from_dict(json.load(f))
        except FileNotFoundError:
            raise PlanError(f"{path}: no plan found; is {jail} a jail made by 'pspy bootstrap'?") from None
        except (ValueError, TypeError, KeyError) as e:
            raise PlanError(f"{path}: unreadable plan ({e}); bootstrap the app again") from None
        except (PermissionError, NotADirectoryError, IsADirectoryError) as e:
            raise PlanError(f"{path}: cannot read the plan: {e.strerror}") from None
        # The plan names its jail, but the jail is where it was found: commands
        # such as stop kill what runs in plan.jail, so a copied plan must not
        # point them at another place.
        real = os.path.realpath(jail)
        if os.path.realpath(plan.jail) != real:
            raise PlanError(f"{path} belongs to the jail {plan.jail}, not {real}; refusing to use it")
        plan.jail = real
        return plan


def plan_path(jail: str) -> str:
    return os.path.join(jail, STATE_DIR.lstrip("/"), "plan.json")


@dataclass
class Options:
    jail: str = DEFAULT_JAIL
    uid_base: int = DEFAULT_UID_BASE
    gid_base: int = DEFAULT_GID_BASE
    front_end: list[str] = field(default_factory=list)
    env: dict[str, list[str]] = field(default_factory=dict)   # principal -> variable names
    script: str | None = None
    files: list[str] = field(default_factory=list)
    interpreter: str = ""
    app_name: str = ""
    auto_ids: bool = False     # bases not given: bootstrap may move them to a free block
    rpc_timeout: float = DEFAULT_RPC_TIMEOUT
    max_frame: int = DEFAULT_MAX_FRAME
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_keep: int = DEFAULT_LOG_KEEP
    debug: bool = False
    mode: str = "chroot"
    rootless: bool = False
    seccomp: dict = field(default_factory=dict)   # principal -> policy, from pspy.toml (over the decorator)
    # The front end's data and groups (pspy.toml's perms.web, group.web,
    # extra_groups.web): it has no decorator to declare them on.
    front_end_perms: dict[str, int] = field(default_factory=dict)
    front_end_group: str | None = None
    front_end_extra_groups: list[str] = field(default_factory=list)
    limits: dict = field(default_factory=dict)    # principal -> limits, from pspy.toml (over the decorator)
    learn: bool = False          # pspy learn: every principal records its syscalls instead
    exclude: list[str] = field(default_factory=list)   # pspy.toml globs discovery skips
    landlock: bool = True        # pspy.toml landlock.enabled = false: no Landlock layer for any principal
    landlock_execute: dict[str, list[str]] = field(default_factory=dict)   # principal -> programs it may run
    shared_tmp: bool = False     # pspy.toml tmp.shared = true: chroot mode's /tmp writable by every principal
    databases: list = field(default_factory=list)   # pspy.toml databases: [pspy.data.grants.Database]


MAX_ID = 2**31 - 2


def build_plan(manifest: Manifest, options: Options, previous: Plan | None = None,
               policies: dict | None = None) -> Plan:
    """Decide ids, groups, sockets and callers. Reuses ``previous`` ids when the bases match.

    Rootless, every principal and group gets the caller's own uid and gid
    (the bases): nothing else can be mapped without root.

    ``policies`` keeps the principals' seccomp policies between calls that
    differ only in ids (bootstrap tries id blocks until one is free): they
    are resolved and compiled once.
    """
    policies = {} if policies is None else policies

    def policy(name: str, decorated, location, network: bool, per_call: bool = False):
        if name not in policies:
            policies[name] = _policy(options, manifest, name, decorated, location, network=network,
                                     per_call=per_call)
        return policies[name]

    for label, base in (("uid", options.uid_base), ("gid", options.gid_base)):
        if not options.rootless and not 1000 <= base <= MAX_ID - 10000:
            raise PlanError(f"--{label}-base {base} is outside 1000..{MAX_ID - 10000}; "
                            "principals must not share ids with system accounts")
    manifest = _with_database_owners(manifest, options.databases)
    provider_names = sorted(manifest.providers)
    names = [FRONT_END_NAME] + provider_names
    if options.databases:
        from .data.grants import check_principals
        check_principals(options.databases, names)
    for setting in ("env", "seccomp", "limits", "landlock_execute"):
        for principal in getattr(options, setting):
            if principal not in names:
                raise PlanError(f"{setting.replace('_', '.')} is configured for {principal!r}, which is not a principal "
                                f"of this app ({', '.join(names)})")

    if options.shared_tmp and options.mode == "namespaces":
        raise PlanError("pspy.toml tmp.shared = true is for chroot mode: namespace mode gives each principal "
                        "a /tmp of its own; share files through perms instead")

    reuse = previous is not None and previous.uid_base == options.uid_base and not previous.rootless
    old_uids = {p.name: p.uid for p in previous.principals} if reuse else {}
    uids = _allocate(names, options.uid_base, old_uids)
    if options.rootless:
        uids = dict.fromkeys(names, options.uid_base)

    front_perms = _front_end_perms(manifest, options)
    front_group = options.front_end_group or FRONT_END_NAME
    group_names: list[str] = [front_group]
    primary: dict[str, str] = {FRONT_END_NAME: front_group}
    for name in provider_names:
        g = manifest.providers[name].group or name
        primary[name] = g
        group_names.append(g)
    group_names.extend(options.front_end_extra_groups)
    for name in provider_names:
        group_names.extend(manifest.providers[name].extra_groups)
    group_names = list(dict.fromkeys(group_names))
    reuse_g = previous is not None and previous.gid_base == options.gid_base and not previous.rootless
    gids = _allocate_groups(group_names, primary, uids, options, previous.groups if reuse_g else {})
    if options.rootless:
        gids = dict.fromkeys(group_names, options.gid_base)

    front_extra = list(dict.fromkeys(options.front_end_extra_groups))
    principals = [PrincipalPlan(
        name=FRONT_END_NAME, kind="front_end", uid=uids[FRONT_END_NAME], gid=gids[front_group],
        group=front_group, extra_groups=front_extra,
        groups=[] if options.rootless else [gids[g] for g in front_extra],
        env=list(options.env.get(FRONT_END_NAME, [])), perms=front_perms,
        argv=list(options.front_end), network=True, limits=_limits(options, FRONT_END_NAME, None, None),
        landlock=_landlock(options, FRONT_END_NAME, network=True),
        **_homes(options, FRONT_END_NAME),
        seccomp=policy(FRONT_END_NAME, None, None, network=True))]
    for name in provider_names:
        spec = manifest.providers[name]
        services = []
        for s in sorted(spec.services, key=lambda s: s.name):
            callers = list(s.callers) if s.callers is not None else [n for n in names if n != name]
            services.append(ServicePlan(name=s.name, kind=s.kind, module=s.module, file=s.file,
                                        line=s.line, callers=callers, methods=list(s.methods),
                                        timeout=s.timeout))
        principals.append(PrincipalPlan(
            name=name, kind="provider", uid=uids[name], gid=gids[primary[name]], group=primary[name],
            extra_groups=list(spec.extra_groups),
            groups=[] if options.rootless else [gids[g] for g in spec.extra_groups],
            env=list(options.env.get(name, [])),
            socket=f"{SOCKET_DIR}/{name}/rpc.sock",
            services=services,
            perms=[PermPlan(p.pattern, p.mode, p.location)
                   for p in sorted(spec.perms.values(), key=lambda p: p.pattern)],
            modules=sorted({s.module for s in spec.services}),
            network=bool(spec.network),
            limits=_limits(options, name, spec.limits, spec.limits_location),
            isolation=spec.isolation or "process",
            landlock=_landlock(options, name, network=bool(spec.network)),
            **_homes(options, name),
            seccomp=policy(name, spec.seccomp, spec.seccomp_location, network=bool(spec.network),
                           per_call=spec.isolation == "per_call")))
    _give_grants(principals, options.databases)
    return Plan(app_name=options.app_name or os.path.basename(manifest.app_root),
                app_source=manifest.app_root, jail=os.path.abspath(options.jail), mode=options.mode,
                rootless=options.rootless,
                uid_base=options.uid_base, gid_base=options.gid_base,
                interpreter=options.interpreter, groups=gids, principals=principals,
                script=options.script, files=list(options.files), rpc_timeout=options.rpc_timeout,
                max_frame=options.max_frame, debug=options.debug, log_max_bytes=options.log_max_bytes,
                log_keep=options.log_keep, shared_tmp=options.shared_tmp,
                databases=[db.to_plan() for db in options.databases])


DATABASE_SERVICE = "pspy.db"   # the endpoint of a database's owner (pspy/data/session.py)


def _with_database_owners(manifest: Manifest, databases: list) -> Manifest:
    """The manifest with each database's owner holding the database's folder:
    a provider no decorator names becomes a data-only provider (it imports
    no app code); a decorated one gets the folder added to its perms."""
    if not databases:
        return manifest
    import copy
    from .discover import NAME_RE, PermSpec, ProviderSpec
    providers = copy.deepcopy(manifest.providers)
    problems = []
    for db in databases:
        where = f"{db.location}.owner"
        if db.owner == FRONT_END_NAME:
            problems.append(f"{where}: the front end cannot own a database (it serves no calls); name a "
                            "provider, or a new name for a provider that only holds the data")
            continue
        if not NAME_RE.match(db.owner):
            problems.append(f"{where}: {db.owner!r} is not a principal name")
            continue
        owner = providers.setdefault(db.owner, ProviderSpec(db.owner))
        if owner.isolation == "per_call":
            problems.append(f"{where}: {db.owner!r} runs each call in a fresh process "
                            f"(isolation=\"per_call\", {owner.isolation_location}); a database session "
                            "lasts across calls, so its owner must be a provider of one process")
            continue
        folder = db.folder
        for other in providers.values():
            for perm in other.perms.values():
                pattern = perm.pattern.rstrip("/")
                inside = pattern == folder.rstrip("/") or pattern.startswith(folder)
                above = folder.startswith(pattern + "/")
                if other.name != db.owner and (inside or above):
                    problems.append(f"{db.location}: {perm.pattern} is {other.name!r}'s ({perm.location}), but "
                                    f"{folder} holds {db.path}, which {db.owner!r} owns; a path has one owner")
                elif other.name == db.owner and (inside or above) and (perm.mode & 0o700) != 0o700:
                    problems.append(f"{db.location}: {db.owner!r} gives {perm.pattern} mode {oct(perm.mode)} "
                                    f"({perm.location}); the owner of {db.path} needs 0o700 on {folder}")
        if not any(p.pattern.rstrip("/") == folder.rstrip("/") or folder.startswith(p.pattern.rstrip("/") + "/")
                   for p in owner.perms.values()):
            owner.perms[folder] = PermSpec(folder, 0o700, db.location)
    if problems:
        raise PlanError("\n".join(problems))
    return Manifest(manifest.app_root, providers, list(manifest.warnings))


def _give_grants(principals: list[PrincipalPlan], databases: list) -> None:
    """Each grantee's rights, and the owner's endpoint that serves them."""
    by_name = {p.name: p for p in principals}
    for db in databases:
        for name, grant in db.grants.items():
            by_name[name].grants[db.name] = grant
    for owner in sorted({db.owner for db in databases}):
        callers = sorted({name for db in databases if db.owner == owner for name in db.grants})
        where = next(db.location for db in databases if db.owner == owner)
        by_name[owner].services.append(ServicePlan(name=DATABASE_SERVICE, kind="database", module="pspy.data",
                                                   file=where, line=0, callers=callers))


FRONT_END_SETTINGS = "pspy.toml"


def _limits(options: Options, name: str, decorated: dict | None, location: str | None) -> dict:
    """The principal's limits: pspy.toml's limits.NAME if given, else its decorator's."""
    from .limits import normalize
    if name not in options.limits:
        return dict(decorated or {})
    where = f"{FRONT_END_SETTINGS} limits.{name}"
    limits, problems = normalize(options.limits[name], where)
    if name == FRONT_END_NAME and "call_timeout" in limits:
        problems.append(f"{where}: call_timeout is for providers; the front end serves no calls")
    if problems:
        raise PlanError("\n".join(problems))
    return limits


def _homes(options: Options, name: str) -> dict[str, str]:
    home, tmpdir = private_dirs(options.mode, name)
    return {"home": home, "tmpdir": tmpdir}


def _landlock(options: Options, name: str, *, network: bool) -> dict | None:
    if not options.landlock:
        return None
    from .sandbox.landlock import grants
    return grants(options.mode, name, network, list(options.files), options.landlock_execute.get(name, []),
                  shared_tmp=options.shared_tmp)


def _front_end_perms(manifest: Manifest, options: Options) -> list[PermPlan]:
    """The front end's perms from pspy.toml, checked as a decorator's are:
    safe paths, valid modes, and no path another principal already owns."""
    from .discover import NAME_RE, normalize_perm_path, perm_problem
    where = f"{FRONT_END_SETTINGS} perms.{FRONT_END_NAME}"
    problems = []
    for key, names in (("group", [options.front_end_group] if options.front_end_group else []),
                       ("extra_groups", options.front_end_extra_groups)):
        for g in names:
            if not isinstance(g, str) or not NAME_RE.match(g):
                problems.append(f"{FRONT_END_SETTINGS} {key}.{FRONT_END_NAME}: {g!r} is not a group name "
                                "(letters, digits, '_', '-' or '.', starting with a letter)")
    claimed = {perm.pattern.rstrip("/"): (prov.name, perm.location)
               for prov in manifest.providers.values() for perm in prov.perms.values()}
    out: dict[str, PermPlan] = {}
    for path, mode in options.front_end_perms.items():
        error = perm_problem(path, mode)
        if error:
            problems.append(f"{where}: {error}")
            continue
        norm = normalize_perm_path(path)
        owner = claimed.get(norm.rstrip("/"))
        if owner is not None:
            problems.append(f"{where}: {norm!r} is also claimed by provider {owner[0]!r} at {owner[1]}; "
                            "a path has one owner")
            continue
        if norm.rstrip("/") in {p.rstrip("/") for p in out}:
            problems.append(f"{where}: {norm!r} is given twice")
            continue
        out[norm] = PermPlan(norm, mode, where)
    if problems:
        raise PlanError("\n".join(problems))
    return [out[k] for k in sorted(out)]


def _policy(options: Options, manifest: Manifest, name: str, decorated, location: str | None, *,
            network: bool, per_call: bool = False) -> dict | None:
    """The principal's seccomp policy: pspy.toml's, else its decorator's, else the default."""
    from . import seccomp
    if options.learn:
        return dict(seccomp.LEARN)
    if name in options.seccomp:
        spec, where = options.seccomp[name], f"pspy.toml seccomp.{name}"
    else:
        spec, where = decorated, location or f"principal {name}"
    policy = seccomp.effective(spec, network=network, front_end=name == FRONT_END_NAME,
                               app_root=manifest.app_root, where=where)
    if policy is None:
        return None
    if name in options.seccomp and decorated is not None:
        policy["derived"].insert(0, f"pspy.toml's seccomp.{name} is used instead of seccomp={decorated!r} "
                                    f"at {location}")
    if per_call:
        policy = seccomp.for_per_call(policy)
    return seccomp.compiled(policy)   # what the principal loads, compiled once, here


def _allocate_groups(group_names: list[str], primary: dict[str, str], uids: dict[str, int], options: Options,
                     previous: dict[str, int]) -> dict[str, int]:
    """Gids for the plan's groups. A principal's own group (its primary group,
    when no other principal has it as primary) takes the number of its uid, as
    Unix accounts do (with different bases, the same offset), so a gid never
    reads as another principal's uid. Other groups take free ids above every
    principal's. Earlier gids are kept, so data keeps its group across
    bootstraps."""
    out = {n: previous[n] for n in group_names if n in previous}
    used = set(out.values())
    primaries = list(primary.values())
    for name, group in primary.items():
        wanted = options.gid_base + (uids[name] - options.uid_base)
        if primaries.count(group) == 1 and group not in out and wanted not in used:
            out[group] = wanted
            used.add(wanted)
    rest = [n for n in sorted(group_names) if n not in out]
    above = options.gid_base + (max(uids.values()) - options.uid_base) + 1
    out.update(_allocate(rest, above, {}, used))
    return out


def _allocate(names: list[str], base: int, previous: dict[str, int], taken: set[int] = frozenset()) -> dict[str, int]:
    """Ids for names: previous ids kept, new names take the lowest free id from base."""
    out = {n: previous[n] for n in names if n in previous}
    used = set(out.values()) | set(taken)
    next_id = base
    for n in names:
        if n in out:
            continue
        while next_id in used:
            next_id += 1
        out[n] = next_id
        used.add(next_id)
    return out


def check_ids_free(plan: Plan) -> None:
    """Refuse ids that belong to an account of the host: a principal must not be somebody."""
    for p in plan.principals:
        try:
            account = pwd.getpwuid(p.uid).pw_name
        except KeyError:
            continue
        raise PlanError(f"uid {p.uid} planned for principal {p.name!r} is the host account "
                        f"{account!r}; choose another --uid-base")
    for name, gid in plan.groups.items():
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            continue
        raise PlanError(f"gid {gid} planned for group {name!r} is the host group {group!r}; "
                        "choose another --gid-base")
