"""The report: what each principal is, may call, and can touch, from the plan and the jail.

Built once as plain data (what ``--format json`` prints, complete);
text.py, dot.py, expect.py and live.py read it. Files are judged by
access.py (Unix semantics, narrowed by the mounts in namespace mode),
findings by findings.py, the score by exposure.py.
"""

from __future__ import annotations

import json
import os

from ..data.grants import ALL, RIGHTS
from ..jail import data_paths
from ..learn import CALLS_FILE, PROFILE_DIR
from ..limits import RLIMIT_NAMES, call_rlimits, cgroup_controllers, rlimits
from ..plan import Plan
from ..sharing import view_of
from . import access, exposure, findings

SCHEMA = "pspy-analyze/1"
LEARNED_DIR, CALLS_FILE = PROFILE_DIR, CALLS_FILE   # pspy learn's profiles and calls, in the app folder


def identity_of(plan: Plan, name: str) -> access.Identity:
    p = plan.principal(name)
    return access.Identity(p.name, p.uid, p.gid, tuple(p.groups))


def reached_data(name: str, readable: set[str], writable: set[str], owned: dict[str, set[str]]) -> list[dict]:
    """Other principals' data paths this principal can read or write:
    ``{"path", "owner", "read", "write"}``."""
    out = []
    for owner, paths in sorted(owned.items()):
        if owner == name:
            continue
        for rel in sorted(paths):
            keys = (rel, rel + "/")
            read, write = any(k in readable for k in keys), any(k in writable for k in keys)
            if read or write:
                out.append({"path": rel + ("/" if rel + "/" in readable | writable else ""), "owner": owner,
                            "read": read, "write": write})
    return out


def right_order(right: str) -> tuple[int, str]:
    """RIGHTS first, in their order (pspy.toml's); a right the plan holds
    that analyze does not know is still shown, after them."""
    return (RIGHTS.index(right) if right in RIGHTS else len(RIGHTS), right)


def data_rights(plan: Plan, p) -> list[dict]:
    """The principal's rights in each shared database it may use
    (pspy/data/grants.py): ``{"database", "engine", "path", "owner",
    "location", "is_owner", "schema", "tables", "readable"}``. ``tables`` is
    its grants as the plan holds them (table -> right -> columns, ``["*"]``
    for every column; empty for the owner, which needs none: it holds the
    file). ``readable`` is what it can read, table -> columns, a whole-table
    grant resolved to the table's real columns where the plan knows them
    (``["*"]`` where it does not); the owner reads every table."""
    out = []
    for db in plan.databases:
        known = db.get("tables") or {}
        entry = {"database": db["name"], "engine": db["engine"], "path": db["path"],
                 "owner": db["owner"]}
        if db["owner"] == p.name:
            out.append({**entry, "location": db["location"], "is_owner": True, "schema": True, "tables": {},
                        "readable": {t: list(cols) for t, cols in sorted(known.items())}})
            continue
        grant = p.grants.get(db["name"])
        if grant is None:
            continue
        tables = {t: {r: list(rights[r]) for r in sorted(rights, key=right_order)}
                  for t, rights in sorted(grant["tables"].items())}
        readable = {t: list(known[t]) if rights["select"] == [ALL] and t in known else list(rights["select"])
                    for t, rights in tables.items() if rights.get("select")}
        out.append({**entry, "location": f"{db['location']}.grants.{p.name}", "is_owner": False,
                    "schema": bool(grant.get("schema")), "tables": tables, "readable": readable})
    return out


def seccomp_report(plan: Plan, principal) -> dict:
    """The principal's filter: profile and source, default action, what it
    allows, the dangerous syscalls among them, and how it compares with the
    profile pspy learn wrote for it (if the app folder has one)."""
    from .. import seccomp
    policy = principal.seccomp
    if not policy:
        return {"profile": "none", "source": "seccomp='none'", "derived": [], "default_action": None,
                "allowed": [], "allows": 0, "dangerous": [], "warnings": ["no seccomp filter: every syscall is allowed"]}
    if policy.get("learn"):
        return {"profile": "learning", "source": policy["source"], "derived": [], "default_action": "SCMP_ACT_ALLOW",
                "allowed": [], "allows": 0, "dangerous": [],
                "warnings": ["learning mode: every syscall is allowed (and recorded)"]}
    profile = policy["profile"]
    names = seccomp.allowed_names(profile)
    out = {"profile": policy["source"], "source": policy["source"], "derived": list(policy["derived"]),
           "default_action": profile["defaultAction"] + (f" ({profile['defaultErrnoRet']})"
                                                         if "defaultErrnoRet" in profile else ""),
           "architectures": list(profile.get("architectures", [])),
           "allowed": seccomp.allowed(profile), "allows": len(names),
           "dangerous": sorted(names & seccomp.DANGEROUS), "warnings": seccomp.warnings(profile)}
    rel = f"{LEARNED_DIR}/{principal.name}.json"
    path = os.path.join(plan.host_path(plan.app_dir), rel)
    if os.path.isfile(path) and not os.path.islink(path):
        try:
            learned = seccomp.allowed_names(seccomp.read_profile(path))
        except Exception:  # noqa: BLE001 - a broken file there is not this report's to judge
            learned = None
        if learned is not None:
            out["learned"] = {"path": rel, "allows": len(learned), "extra": sorted(names - learned)}
    return out


NO_NETWORK = "none (loopback only)"
UNIX_ONLY = "unix sockets only (seccomp: no TCP/IP)"


def network_of(plan: Plan, p, sc: dict) -> str:
    """What network the principal reaches: "host", NO_NETWORK (a network
    namespace of its own, namespace mode), or UNIX_ONLY (the host's network
    namespace, but a filter that lets socket() make nothing but AF_UNIX)."""
    if plan.mode == "namespaces" and not p.network:
        return NO_NETWORK
    if findings.lets_everything_through(sc):
        return "host"
    sockets = [a for a in sc["allowed"] if a == "socket" or a.startswith("socket(")]
    if sockets and all(a == "socket(arg0 == AF_UNIX)" for a in sockets):
        return UNIX_ONLY
    return "host" if sockets else "none (no socket() at all)"


def recorded_calls(plan: Plan) -> dict | None:
    """What pspy learn saw: ``{"Provider.service": [callers]}``, or None."""
    path = os.path.join(plan.host_path(plan.app_dir), LEARNED_DIR, CALLS_FILE)
    if not os.path.isfile(path) or os.path.islink(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
        calls = data["calls"]
        if isinstance(calls, dict) and all(isinstance(v, list) for v in calls.values()):
            return calls
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _services(plan: Plan, q) -> list[dict]:
    return [{"name": s.name, "kind": s.kind, "methods": list(s.methods), "callers": sorted(s.callers),
             "where": f"{s.file}:{s.line}"} for s in q.services]


def _ids(plan: Plan, p) -> dict:
    """The ids the principal has inside its user namespace and the host ids
    they map to (namespace mode maps the app's block onto itself; rootless
    maps the one id of the user; chroot mode has no user namespace)."""
    inside = {"uid": p.uid, "gid": p.gid, "groups": list(p.groups)}
    if plan.mode != "namespaces":
        return {"user_namespace": False, "inside": inside, "host": inside, "uid_separation": True}
    return {"user_namespace": True, "inside": inside, "host": dict(inside), "uid_separation": not plan.rootless}


def report(plan: Plan, include_seccomp: bool = True) -> dict:
    """The whole report. ``include_seccomp`` is kept for callers of the
    earlier form; the seccomp part is always there (findings need it)."""
    principals = []
    app_root = plan.host_path(plan.app_dir)
    owned = data_paths(plan, app_root)
    modes: dict[str, int] = {}
    callers_of = {q.name: sorted({c for s in q.services for c in s.callers}) for q in plan.providers}
    for p in plan.principals:
        w = access.walk(plan.jail, plan.app_dir, identity_of(plan, p.name))
        modes = modes or w.modes
        mounts = None
        if plan.mode == "namespaces":
            view = view_of(plan, p, app_root, owned)
            w = access.narrow_to_view(w, view.hidden, view.writable)
            mounts = {"app": "read-only", "own": sorted(view.own),
                      "shared": [{"path": rel, "owner": owner, "how": how}
                                 for rel, (owner, how) in sorted(view.shared.items())],
                      "hidden": sorted(view.hidden)}
        readable, writable = w.having("r"), w.having("w")
        may_call = [name for q in plan.providers if q.name != p.name
                    for s in q.services if p.name in s.callers
                    for name in ([f"{q.name}.{s.name}.{m}" for m in s.methods] if s.kind == "class"
                                 else [f"{q.name}.{s.name}"])]
        principals.append({
            "name": p.name, "kind": p.kind, "uid": p.uid, "gid": p.gid, "group": p.group,
            "groups": list(p.groups), "extra_groups": list(p.extra_groups),
            "ids": _ids(plan, p),
            "serves": [s.name for s in p.services],
            "services": _services(plan, p) if p.kind == "provider" else [],
            "may_call": may_call,
            "may_call_providers": sorted({name.split(".")[0] for name in may_call}),
            "called_by": callers_of.get(p.name, []),
            "files": dict(w.verdicts),
            "readable": readable, "writable": writable, "executable": w.having("x"), "symlinks": w.symlinks,
            "owns": sorted(rel + ("/" if os.path.isdir(os.path.join(app_root, rel)) else "")
                           for rel in owned.get(p.name, ())),
            "reaches": reached_data(p.name, set(readable), set(writable), owned),
            "data": data_rights(plan, p),
            "mounts": mounts,
            "namespaces": (["user", "mount", "pid", "ipc", "uts", "cgroup"] + ([] if p.network else ["network"]))
            if plan.mode == "namespaces" else [],
            "isolation": p.isolation,
            **limits_report(plan, p),
            "seccomp": seccomp_report(plan, p),
            "landlock": landlock_report(plan, p),
        })
        principals[-1]["network"] = network_of(plan, p, principals[-1]["seccomp"])
    for entry in principals:
        entry["exposure"] = exposure.score(entry, plan.mode, plan.rootless)
    if plan.rootless:
        isolation = {
            "uid_separation": False,
            "warning": f"rootless: uid separation is NOT in effect. Every principal runs as your own uid "
                       f"{plan.uid_base} (gid {plan.gid_base}); principals are kept apart only by "
                       "namespaces, mounts and Landlock (each principal's landlock: line), and hold no "
                       "capability. Unix permissions do not separate them, so anything of yours "
                       "mounted into a principal's view and granted is open to it as "
                       "it is to you (app files that are 0600 included), and principals on the host "
                       "network (the front end, network=True) are you to local services that trust "
                       "your uid. Bootstrap as root for separate uids.",
            "callers": "known by the socket each caller alone is given (uids cannot tell principals apart)",
            "filesystem": "a tmpfs root per principal: system and Python read-only, the app read-only, "
                          "its own data read-write, other principals' data not mounted",
            "network": "providers without network=True get an empty network namespace (loopback only)",
            "processes": "each principal sees only its own PID namespace",
        }
    elif plan.mode == "namespaces":
        isolation = {
            "uid_separation": True,
            "filesystem": "a tmpfs root per principal: system and Python read-only, the app read-only, "
                          "its own data read-write, other principals' data not mounted",
            "network": "providers without network=True get an empty network namespace (loopback only)",
            "processes": "each principal sees only its own PID namespace",
        }
    else:
        isolation = {
            "uid_separation": True,
            "filesystem": "chroot into the jail; Unix permissions are the only barrier between principals",
            "network": "shared with the host (chroot mode isolates no network)",
            "processes": "no PID namespace: the jail has no /proc, but principals can signal host "
                         "processes of their own uid",
        }
    data = {"schema": SCHEMA, "app": plan.app_name, "jail": plan.jail,
            "mode": plan.mode + (" (rootless)" if plan.rootless else ""), "rootless": plan.rootless,
            "uid_base": plan.uid_base, "isolation": isolation, "findings": [], "principals": principals}
    data["findings"] = findings.all_findings(data, modes, recorded_calls(plan), owned)
    return data


def landlock_report(plan: Plan, p) -> dict:
    """The Landlock layer as it holds on this kernel: its ABI, and the
    principal's rules as bootstrap wrote them (pspy/sandbox/landlock.py)."""
    from .. import _landlock
    from ..sandbox.landlock import rules_path
    abi = _landlock.abi()
    if not p.landlock:
        return {"in_force": False, "abi": abi,
                "summary": "off (pspy.toml's landlock.enabled = false, or a jail bootstrapped before pspy "
                           "had Landlock: bootstrap it again)"}
    if abi < 1:
        return {"in_force": False, "abi": 0,
                "summary": "not in force: this kernel has no Landlock (Linux 5.13 or later, landlock in lsm=)"}
    try:
        with open(plan.host_path(rules_path(p.name))) as f:
            settings, rules = _landlock.parse(f.read(), rules_path(p.name))
    except OSError:
        return {"in_force": False, "abi": abi, "summary": "not in force: no rules file (bootstrap again)"}
    tcp = ("not enforced" if abi < 4 else "denied") if settings.get("tcp") == "deny" else "allowed"
    scoped = settings.get("scoped") == "1" and abi >= 6
    parts = [f"ABI {abi}: files ({len(rules)} rules)", f"TCP {tcp}"]
    parts.append("abstract Unix sockets and signals scoped to its own processes" if scoped
                 else "no scoping (ABI 6)" if abi < 6 else "no scoping")
    return {"in_force": True, "abi": abi, "summary": "; ".join(parts), "tcp": tcp, "scoped": scoped,
            "rules": [[letters, path] for letters, path in rules]}


def limits_report(plan: Plan, p) -> dict:
    """The principal's limits and what enforces each: setrlimit, and which
    cgroup hierarchy (v1 or v2) holds each controller used."""
    controllers = {c: plan.cgroups[c] for c in cgroup_controllers(p.limits) if c in plan.cgroups}
    per_call = p.isolation == "per_call"
    if not p.limits:
        enforced = "no limits"
    elif plan.rootless:
        enforced = "setrlimit only (rootless: cgroups need root)"
    else:
        enforced = "setrlimit" + ("".join(f", cgroup {v} {c}" for c, v in sorted(controllers.items())))
    if "call_timeout" in p.limits:
        killer = ("its call zygote, which kills the call's process" if p.isolation == "per_call"
                  else "its watchdog, which ends and restarts the provider")
        enforced += f"; call_timeout by {killer}"
        if set(p.limits) == {"call_timeout"}:
            enforced = enforced.split("; ", 1)[1]
    return {"limits": dict(p.limits),
            "rlimits": [{"resource": RLIMIT_NAMES[r], "soft": soft, "hard": hard}
                        for r, soft, hard in rlimits(p.limits, plan.rootless, per_call)]
                       + [{"resource": RLIMIT_NAMES[r], "soft": soft, "hard": hard, "per_call": True}
                          for r, soft, hard in (call_rlimits(p.limits) if per_call else [])],
            "cgroups": controllers, "limits_enforced_by": enforced}


def report_for_ids(jail: str, app_dir: str, uid: int, gid: int, groups: tuple[int, ...]) -> dict:
    """The paper's form: what a given uid/gid can touch in a jail, without a plan."""
    who = access.Identity(f"uid {uid}", uid, gid, groups)
    w = access.walk(jail, app_dir, who)
    entry = {"name": who.name, "uid": uid, "gid": gid, "groups": list(groups), "files": dict(w.verdicts),
             "readable": w.having("r"), "writable": w.having("w"), "executable": w.having("x"),
             "symlinks": w.symlinks}
    return {"schema": SCHEMA, "jail": jail, "findings": findings.ordered(
        findings.uid_zero([entry]) + findings.world_writable(w.modes)), "principals": [entry]}
