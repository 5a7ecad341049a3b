"""What each principal can read, write and call, from the plan and the jail.

Unix semantics: exactly one of owner, group or other bits applies (owner if
the uid matches, else group if any of the principal's gids matches, else
other), and a path is reachable only if every folder above it, from the
jail's root down, grants search (x). Symlinks are reported, never followed.
The walk is read-only and done with lstat, so analysing a jail cannot be
turned against the host.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

from .jail import data_paths
from .limits import RLIMIT_NAMES, call_rlimits, cgroup_controllers, rlimits
from .plan import Plan
from .sharing import view_of

R, W, X = 4, 2, 1


@dataclass(frozen=True)
class Identity:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def may(self, st: os.stat_result, bit: int) -> bool:
        if self.uid == 0:
            return True
        mode = st.st_mode
        if st.st_uid == self.uid:
            return bool((mode >> 6) & bit)
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return bool((mode >> 3) & bit)
        return bool(mode & bit)


def identity_of(plan: Plan, name: str) -> Identity:
    p = plan.principal(name)
    return Identity(p.name, p.uid, p.gid, tuple(p.groups))


def access(jail: str, app_dir: str, who: Identity) -> dict:
    """``{"readable": [...], "writable": [...], "symlinks": [...]}``, paths relative to the app root.

    Folders end with '/': readable means listable, writable means entries can
    be created or removed in it.
    """
    readable, writable, symlinks = [], [], []
    # Search permission along the path from the jail root to the app root.
    reachable = True
    current = jail
    for part in [""] + [p for p in app_dir.split("/") if p]:
        current = os.path.join(current, part) if part else current
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode):
            return {"readable": [], "writable": [], "symlinks": [app_dir]}
        reachable = reachable and who.may(st, X)
    app_root = os.path.join(jail, app_dir.lstrip("/"))
    if not reachable:
        return {"readable": [], "writable": [], "symlinks": []}
    root_st = os.lstat(app_root)
    if who.may(root_st, R):
        readable.append("./")
    if who.may(root_st, W) and who.may(root_st, X):
        writable.append("./")

    def walk(folder: str, rel: str):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            child = f"{rel}{name}"
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                symlinks.append(f"{child} -> {os.readlink(path)}")
                continue
            if stat.S_ISDIR(st.st_mode):
                if who.may(st, R):
                    readable.append(child + "/")
                if who.may(st, W) and who.may(st, X):
                    writable.append(child + "/")
                if who.may(st, X):
                    walk(path, child + "/")
                continue
            if who.may(st, R):
                readable.append(child)
            if who.may(st, W):
                writable.append(child)

    if who.may(root_st, X):
        walk(app_root, "")
    return {"readable": readable, "writable": writable, "symlinks": symlinks}


def _under(path: str, roots) -> bool:
    path = path.rstrip("/")
    return any(path == r or path.startswith(r + "/") for r in roots)


def _namespace_view(plan: Plan, name: str, seen: dict, owned: dict[str, set[str]]) -> dict:
    """In namespace mode what Unix permissions allow is narrowed by the view:
    other principals' data that their bits do not admit is not mounted, and
    only the principal's own data and the data others' bits let it write are
    mounted read-write (pspy/sharing.py, which the mounts read too)."""
    view = view_of(plan, plan.principal(name), plan.host_path(plan.app_dir), owned)
    return {"readable": [p for p in seen["readable"] if not _under(p, view.hidden)],
            "writable": [p for p in seen["writable"] if _under(p, view.writable)],
            "symlinks": [p for p in seen["symlinks"] if not _under(p.split(" -> ")[0], view.hidden)]}


def reached_data(name: str, seen: dict, owned: dict[str, set[str]]) -> list[dict]:
    """Other principals' data paths this principal can read or write, from what
    it was found to reach: ``{"path", "owner", "read", "write"}``."""
    readable, writable = set(seen["readable"]), set(seen["writable"])
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


def seccomp_report(principal) -> dict:
    """The principal's filter: profile and source, default action, what it allows, warnings."""
    from . import seccomp
    policy = principal.seccomp
    if not policy:
        return {"profile": "none", "source": "seccomp='none'", "derived": [], "default_action": None,
                "allowed": [], "warnings": ["no seccomp filter: every syscall is allowed"]}
    if policy.get("learn"):
        return {"profile": "learning", "source": policy["source"], "derived": [], "default_action": "SCMP_ACT_ALLOW",
                "allowed": [], "warnings": ["learning mode: every syscall is allowed (and recorded)"]}
    profile = policy["profile"]
    return {"profile": policy["source"], "source": policy["source"], "derived": list(policy["derived"]),
            "default_action": profile["defaultAction"] + (f" ({profile['defaultErrnoRet']})"
                                                          if "defaultErrnoRet" in profile else ""),
            "architectures": list(profile.get("architectures", [])),
            "allowed": seccomp.allowed(profile), "warnings": seccomp.warnings(profile)}


def report(plan: Plan, include_seccomp: bool = False) -> dict:
    principals = []
    owned = data_paths(plan, plan.host_path(plan.app_dir))
    for p in plan.principals:
        who = identity_of(plan, p.name)
        seen = access(plan.jail, plan.app_dir, who)
        if plan.mode == "namespaces":
            seen = _namespace_view(plan, p.name, seen, owned)
        may_call = [name for q in plan.providers if q.name != p.name
                    for s in q.services if p.name in s.callers
                    for name in ([f"{q.name}.{s.name}.{m}" for m in s.methods] if s.kind == "class"
                                 else [f"{q.name}.{s.name}"])]
        principals.append({
            "name": p.name, "kind": p.kind, "uid": p.uid, "gid": p.gid, "group": p.group,
            "groups": list(p.groups), "extra_groups": list(p.extra_groups),
            "serves": [s.name for s in p.services],
            "may_call": may_call,
            "readable": seen["readable"], "writable": seen["writable"], "symlinks": seen["symlinks"],
            "owns": sorted(rel + ("/" if os.path.isdir(os.path.join(plan.host_path(plan.app_dir), rel)) else "")
                           for rel in owned.get(p.name, ())),
            "reaches": reached_data(p.name, seen, owned),
            "namespaces": (["user", "mount", "pid", "ipc", "uts", "cgroup"] + ([] if p.network else ["network"]))
            if plan.mode == "namespaces" else [],
            "network": ("host" if p.network or plan.mode != "namespaces" else "none (loopback only)"),
            "isolation": p.isolation,
            **limits_report(plan, p),
        })
        if include_seccomp:
            principals[-1]["seccomp"] = seccomp_report(p)
    findings = [f for p in principals for f in folder_findings(p)]
    if plan.rootless:
        isolation = {
            "uid_separation": False,
            "warning": f"rootless: uid separation is NOT in effect. Every principal runs as your own uid "
                       f"{plan.uid_base} (gid {plan.gid_base}); principals are kept apart only by "
                       "namespaces and mounts, and hold no capability. Unix permissions do not separate "
                       "them, so anything of yours mounted into a principal's view is open to it as "
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
    return {"app": plan.app_name, "jail": plan.jail, "mode": plan.mode + (" (rootless)" if plan.rootless else ""),
            "rootless": plan.rootless, "isolation": isolation, "findings": findings, "principals": principals}



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


def folder_findings(principal: dict) -> list[dict]:
    """A file the principal may write in a folder it may not: SQLite and other
    journaling databases create their journal next to the file, so every
    write fails ("attempt to write a readonly database")."""
    writable = set(principal["writable"])
    out = []
    for path in principal["writable"]:
        if path.endswith("/"):
            continue
        folder = os.path.dirname(path) + "/" if "/" in path else "./"
        if folder in writable:
            continue
        fix = (f"give {principal['name']} the folder instead (perms {{{folder!r}: 0o700}})" if folder != "./"
               else f"move it into a folder of {principal['name']}'s own (perms {{'data/': 0o700}})")
        out.append({"severity": "warning", "principal": principal["name"], "path": path,
                    "finding": "file writable in a folder that is not",
                    "reason": f"{principal['name']} may write {path} but not its folder {folder}: a journaling "
                              f"database there (SQLite) cannot create its journal and fails every write; {fix}"})
    return out


def report_for_ids(jail: str, app_dir: str, uid: int, gid: int, groups: tuple[int, ...]) -> dict:
    """The paper's form: what a given uid/gid can touch in a jail, without a plan."""
    who = Identity(f"uid {uid}", uid, gid, groups)
    seen = access(jail, app_dir, who)
    return {"jail": jail, "principals": [{"name": who.name, "uid": uid, "gid": gid, "groups": list(groups),
                                          **seen}]}


def format_text(data: dict) -> str:
    out = []
    if "app" in data:
        out.append(f"pspy analyze: {data['app']} in {data['jail']} ({data['mode']} mode)")
        for f in data.get("findings", ()):
            out.append(f"  {f['severity'].upper()}: {f['reason']}")
        if "warning" in data["isolation"]:
            out.append(f"  WARNING: {data['isolation']['warning']}")
        for key, value in data["isolation"].items():
            if key == "warning":
                continue
            if key == "uid_separation":
                value = "yes" if value else "NO (every principal has the same uid)"
            out.append(f"  {key.replace('_', ' ')}: {value}")
    for p in data["principals"]:
        out.append("")
        names = p.get("extra_groups") or []
        groups = ", ".join(f"{n} ({g})" for n, g in zip(names, p["groups"])) if len(names) == len(p["groups"]) \
            else ", ".join(str(g) for g in p["groups"])
        groups = groups or "none"
        head = f"{p['name']}: uid {p['uid']}, gid {p['gid']}"
        if data.get("rootless"):
            head += " (yours: rootless)"   # the plan's group names map to no group of their own
        elif "group" in p:
            head += f" ({p['group']})"
        out.append(f"{head}, extra groups: {groups}")
        if p.get("serves"):
            out.append(f"  serves:    {', '.join(p['serves'])}")
        if "may_call" in p:
            out.append(f"  may call:  {', '.join(p['may_call']) or 'nothing'}")
        if p.get("namespaces"):
            out.append(f"  namespaces: {', '.join(p['namespaces'])}; network: {p['network']}")
        if p.get("owns"):
            out.append(f"  owns:      {', '.join(p['owns'])}")
        for r in p.get("reaches", ()):
            how = "read-write" if r["write"] and r["read"] else "write" if r["write"] else "read-only"
            out.append(f"  reaches:   {r['path']} of {r['owner']} ({how})")
        if p.get("limits"):
            shown = ", ".join(f"{k} {v}" for k, v in sorted(p["limits"].items()))
            out.append(f"  limits:    {shown} (by {p['limits_enforced_by']})")
        if p.get("isolation") == "per_call":
            out.append("  isolation: per_call (a fresh process forked from a ready copy for every call)")
        out.append(f"  can write: {', '.join(p['writable']) or 'nothing in the app'}")
        out.append(f"  can read:  {', '.join(p['readable']) or 'nothing in the app'}")
        if p.get("symlinks"):
            out.append(f"  symlinks (not followed): {', '.join(p['symlinks'])}")
        if "seccomp" in p:
            sc = p["seccomp"]
            out.append(f"  seccomp:   {sc['source']}; default action {sc['default_action'] or 'none'}")
            for note in sc["derived"]:
                out.append(f"    derived: {note}")
            out.append(f"    allows {len(sc['allowed'])}: {', '.join(sc['allowed']) or 'everything'}")
            for warning in sc["warnings"]:
                out.append(f"    WARNING: {warning}")
    return "\n".join(out) + "\n"


def format_json(data: dict) -> str:
    return json.dumps(data, indent=2) + "\n"
