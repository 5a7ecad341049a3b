"""A principal's effective policy: its profile (shipped, the app's, or an
inline policy layered on ``default``) with the rules pspy derives from its
decorator (DERIVATIONS), for this machine's architecture alone.
"""

from __future__ import annotations

import copy
import errno
import json
import os

from .profiles import (DEFAULT_FRONT_END, DEFAULT_PROVIDER, NONE, SHIPPED, SeccompError, errno_of, ignored_fields,
                       native_arch, read_profile, rules, shipped_path)

# Every rule pspy adds or changes, for the README and analyze.
DERIVATIONS = {
    "front end": "gets 'web' unless pspy.toml's seccomp names another",
    "provider": "gets 'default' unless its decorator (seccomp=) or pspy.toml names another",
    "network=True": "a provider that keeps the host's network gets 'web' unless seccomp= names another",
    "network=False": "socket() and socketpair() only for AF_UNIX: an allow of them for any other domain "
                     "(or for all) becomes AF_UNIX only; AF_INET, AF_INET6, AF_PACKET (and netlink) sockets fail, "
                     "and so does io_uring (it can make sockets without socket())",
    "inline policy": "starts from 'default'; 'allow' adds names, 'deny' removes them, "
                     "'default_action' replaces the default action",
    "other ABIs": "only this machine's native ABI is allowed: an i386 (int 0x80) or x32 call on "
                  "x86_64 kills the process before it runs, whatever the default action",
    "clone": "clone() never with CLONE_NEW* flags (no namespace made by clone where unshare is denied), "
             "and clone3() fails with ENOSYS (its flags are out of a filter's reach; glibc falls back "
             "to clone, which an allowed clone3 brings along)",
    "default action": "'errno' fails with EPERM (1), 'kill' kills the process, 'log' allows and logs",
    "other architectures": "a profile's entries for other architectures (includes/excludes arches) and names that "
                           "are syscalls of other architectures only apply only there: left out here",
    "conditions": "entries are applied as Docker and Podman would for a process without capabilities on this "
                  "kernel: those needing capabilities (includes.caps) are left out, those left out for holders "
                  "of capabilities (excludes.caps) apply, minKernel is compared with this kernel",
}

INLINE_ACTIONS = {"errno": "SCMP_ACT_ERRNO", "kill": "SCMP_ACT_KILL_PROCESS", "log": "SCMP_ACT_LOG"}

AF_UNIX, AF_INET, AF_INET6, AF_PACKET = 1, 2, 10, 17
CLONE_NEW_FLAGS = 0x7E020080   # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME


def effective(spec, *, network: bool, front_end: bool, app_root: str, where: str) -> dict | None:
    """The policy a principal runs under, as stored in the plan: ``None`` for
    "none", else ``{"source", "derived", "profile"}`` with an OCI profile for
    this machine alone. ``spec`` is what the decorator or pspy.toml said
    (None when nothing was)."""
    derived: list[str] = []
    if spec is None:
        if front_end or network:
            spec = DEFAULT_FRONT_END
            derived.append(DERIVATIONS["front end" if front_end else "network=True"])
        else:
            spec = DEFAULT_PROVIDER
            derived.append(DERIVATIONS["provider"])
    if spec == NONE:
        return None
    if isinstance(spec, dict):
        base = read_profile(shipped_path(DEFAULT_PROVIDER))
        profile, source = _layer_inline(base, spec, where), f"inline policy at {where}, layered on 'default'"
        label = f"inline policy at {where}"
    elif isinstance(spec, str) and spec in SHIPPED:
        profile, source, label = read_profile(shipped_path(spec)), f"shipped profile '{spec}'", f"'{spec}'"
    elif isinstance(spec, str) and (spec.endswith(".json") or "/" in spec):
        path = os.path.normpath(os.path.join(app_root, spec))
        if os.path.isabs(spec) or not path.startswith(os.path.normpath(app_root) + os.sep):
            raise SeccompError(f"seccomp={spec!r} at {where}: a profile file must be a path inside the app")
        profile, source, label = read_profile(path, where), f"file {spec} of the app", f"{spec} (named at {where})"
    else:
        raise SeccompError(f"seccomp={spec!r} at {where}: expected one of {', '.join(map(repr, SHIPPED))}, 'none', "
                           "a .json profile in the app, or a dict {allow, deny, default_action}")
    skipped: dict[str, set[str]] = {}
    resolved = rules(profile, label, skipped)
    for kind in ("other architectures", "conditions"):
        if skipped.get(kind):
            names = sorted(skipped[kind])
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            derived.append(f"{DERIVATIONS[kind]}: {shown}")
    ignored = ignored_fields(profile)
    if ignored:
        derived.append(f"fields of the profile pspy does not act on, ignored: {', '.join(f for f, _ in ignored)}")
    resolved, note = _no_namespace_clones(resolved)
    if note:
        derived.append(note)
    if not network:
        resolved, note = _no_inet_sockets(resolved, profile["defaultAction"])
        if note:
            derived.append(note)
    arch_name, _ = native_arch()
    out = {"defaultAction": profile["defaultAction"], "architectures": [arch_name], "syscalls": _group(resolved)}
    if profile["defaultAction"] == "SCMP_ACT_ERRNO":
        out["defaultErrnoRet"] = errno_of(profile, "defaultErrnoRet", "defaultErrno") or errno.EPERM
    derived.append(DERIVATIONS["other ABIs"])
    return {"source": source, "derived": derived, "profile": out}


# What a provider with isolation="per_call" needs beyond the policy its calls
# run under: it forks a process per call, which restricts its file system
# (Landlock) and stacks the declared policy (seccomp) before the call runs.
PER_CALL_NEEDS = ("wait4", "waitid", "pidfd_open", "pidfd_send_signal", "seccomp",
                  "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self")


def for_per_call(policy: dict) -> dict:
    """``policy`` (from ``effective``) for a per_call provider: its own filter
    also lets it create processes (clone without CLONE_NEW*, as every policy)
    and set up call processes; each call process loads the declared policy,
    unchanged, on top (``call_profile``)."""
    declared = policy["profile"]
    syscalls = []
    for entry in declared["syscalls"]:
        names = [n for n in entry["names"] if n not in ("clone",) + PER_CALL_NEEDS]
        if names:
            syscalls.append(dict(entry, names=names))
    syscalls.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": CLONE_NEW_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
    syscalls.append({"names": list(PER_CALL_NEEDS), "action": "SCMP_ACT_ALLOW"})
    widened = dict(declared, syscalls=syscalls)
    note = ("isolation='per_call': the provider itself may also create processes and load filters "
            f"({', '.join(PER_CALL_NEEDS[:5])}, landlock_*); every call runs in a process of its own "
            "under the declared policy, stacked on top")
    return dict(policy, profile=widened, call_profile=declared, derived=list(policy["derived"]) + [note])


def _layer_inline(base: dict, policy: dict, where: str) -> dict:
    unknown = set(policy) - {"allow", "deny", "default_action"}
    if unknown:
        raise SeccompError(f"seccomp policy at {where}: unknown key(s) {', '.join(sorted(unknown))} "
                           "(known: allow, deny, default_action)")
    for key in ("allow", "deny"):
        names = policy.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise SeccompError(f"seccomp policy at {where}: {key} must be a list of syscall names")
    profile = copy.deepcopy(base)
    deny = set(policy.get("deny", []))
    if deny:   # a typo here would leave a call allowed that the developer believes denied
        rules({"syscalls": [{"names": sorted(deny), "action": "SCMP_ACT_ERRNO"}]}, f"inline policy at {where} (deny)")
    kept = []
    for entry in profile["syscalls"]:
        names = [n for n in entry.get("names", []) if n not in deny]
        if names:
            kept.append(dict(entry, names=names))
    if policy.get("allow"):
        kept.append({"names": list(policy["allow"]), "action": "SCMP_ACT_ALLOW"})
    profile["syscalls"] = kept
    action = policy.get("default_action")
    if action is not None:
        if action not in INLINE_ACTIONS:
            raise SeccompError(f"seccomp policy at {where}: default_action {action!r} is not one of "
                               f"{', '.join(INLINE_ACTIONS)}")
        profile["defaultAction"] = INLINE_ACTIONS[action]
        if action == "log" and deny:
            # With a default that allows, a denied name needs a rule of its own.
            profile["syscalls"].append({"names": sorted(deny), "action": "SCMP_ACT_ERRNO"})
    return profile


def _no_namespace_clones(resolved: list[dict]) -> tuple[list[dict], str | None]:
    """Any policy: clone() without CLONE_NEW* flags, clone3() ENOSYS."""
    out, changed = [], False
    for rule in resolved:
        if rule["action"] not in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG"):
            out.append(rule)
        elif rule["name"] == "clone3":
            out.append({"name": "clone3", "action": "SCMP_ACT_ERRNO", "args": [], "errnoRet": errno.ENOSYS})
            changed = True
        elif rule["name"] == "clone" and not any(a["index"] == 0 and a["op"] == "SCMP_CMP_MASKED_EQ"
                                                 and a.get("value", 0) & CLONE_NEW_FLAGS == CLONE_NEW_FLAGS
                                                 and a.get("valueTwo", 0) & CLONE_NEW_FLAGS == 0
                                                 for a in rule["args"]):
            args = [a for a in rule["args"] if a["index"] != 0]
            args.append({"index": 0, "value": CLONE_NEW_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"})
            out.append(dict(rule, args=args))
            changed = True
        else:
            out.append(rule)
    if any(r["name"] == "clone3" for r in out) and not any(r["name"] == "clone" and r["action"] == "SCMP_ACT_ALLOW"
                                                           for r in out):
        # clone3 was allowed (a learned profile sees only clone3: glibc tries it
        # first); now that it fails, glibc's fallback needs clone.
        out.append({"name": "clone", "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": CLONE_NEW_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
    return out, (DERIVATIONS["clone"] if changed else None)


IO_URING = ("io_uring_setup", "io_uring_enter", "io_uring_register")
PERMISSIVE = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")


def _no_inet_sockets(resolved: list[dict], default_action: str = "SCMP_ACT_ERRNO") -> tuple[list[dict], str | None]:
    """network=False: socket() and socketpair() may create Unix sockets only,
    and io_uring (whose IORING_OP_SOCKET makes sockets without socket()) is
    refused. Under a permissive default action both are refused explicitly."""
    out, changed, allowed = [], False, set()
    for rule in resolved:
        if rule["name"] in IO_URING and rule["action"] in PERMISSIVE:
            changed = True
            continue
        if rule["name"] not in ("socket", "socketpair") or rule["action"] not in PERMISSIVE:
            out.append(rule)
            continue
        allowed.add(rule["name"])
        if rule["args"] != [{"index": 0, "value": AF_UNIX, "op": "SCMP_CMP_EQ"}]:
            changed = changed or rule["name"] == "socket" or rule["args"] != []
    if default_action in PERMISSIVE:
        allowed |= {"socket", "socketpair"}
        changed = True
        out = [r for r in out if r["name"] not in ("socket", "socketpair") + IO_URING]
        for name in ("socket", "socketpair"):
            out.append({"name": name, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
                        "args": [{"index": 0, "value": AF_UNIX, "op": "SCMP_CMP_NE"}]})
        out += [{"name": name, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM, "args": []} for name in IO_URING]
        return out, DERIVATIONS["network=False"]
    for name in sorted(allowed):
        out.append({"name": name, "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": AF_UNIX, "op": "SCMP_CMP_EQ"}]})
    return out, (DERIVATIONS["network=False"] if changed else None)


def _group(resolved: list[dict]) -> list[dict]:
    """Rules back into OCI entries: one entry per (action, args, errnoRet), names sorted."""
    groups: dict[str, dict] = {}
    for rule in resolved:
        key = json.dumps([rule["action"], rule["args"], rule.get("errnoRet")], sort_keys=True)
        entry = groups.setdefault(key, {"names": [], "action": rule["action"]})
        if rule["args"]:
            entry["args"] = rule["args"]
        if "errnoRet" in rule:
            entry["errnoRet"] = rule["errnoRet"]
        if rule["name"] not in entry["names"]:
            entry["names"].append(rule["name"])
    out = []
    for entry in groups.values():
        entry["names"].sort()
        out.append(entry)
    return sorted(out, key=lambda e: (e["action"] != "SCMP_ACT_ALLOW", bool(e.get("args")), e["names"][0]))
