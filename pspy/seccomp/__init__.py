"""Seccomp filters for principals: OCI profiles in, libseccomp filters out.

A principal's policy is worked out at bootstrap (``effective``): a shipped
profile (``profiles/*.json``: default, web, strict), a profile file of the
app, ``"none"``, or an inline policy layered on ``default``; then the rules
derived from the decorator (see DERIVATIONS). The result, an OCI profile for
this machine's architecture only, is stored in the plan; the principal
compiles and loads it at start-up (``load``), before any app code runs.

Profiles are the format Docker, Podman and Kubernetes read: ``defaultAction``,
``defaultErrnoRet``, ``architectures``, ``syscalls[]`` with ``names``,
``action``, ``args`` (``index``, ``value``, ``valueTwo``, ``op``),
``errnoRet``, and Docker's ``includes``/``excludes`` by ``arches``. A name
libseccomp does not know on this architecture is an error, never skipped.
"""

from __future__ import annotations

import base64
import copy
import errno
import json
import os
import platform
import re
import struct

from ..errors import PspyError

PROFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")
SHIPPED = ("default", "web", "strict")
NONE = "none"
DEFAULT_PROVIDER = "default"
DEFAULT_FRONT_END = "web"

# Families a policy should not allow; analyze warns for each one it does.
DANGEROUS = frozenset("""
mount umount umount2 pivot_root chroot move_mount open_tree fsopen fsconfig fsmount fspick mount_setattr
ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd bpf kexec_load kexec_file_load
init_module finit_module delete_module keyctl add_key request_key unshare setns userfaultfd
perf_event_open open_by_handle_at name_to_handle_at iopl ioperm reboot swapon swapoff
clock_settime clock_adjtime settimeofday adjtimex stime io_uring_setup io_uring_enter
io_uring_register personality acct quotactl quotactl_fd syslog vhangup lookup_dcookie
fanotify_init sethostname setdomainname modify_ldt uselib
""".split())

# Every rule pspy adds or changes, for the README and analyze.
DERIVATIONS = {
    "front end": "gets 'web' unless pspy.toml's seccomp names another",
    "provider": "gets 'default' unless its decorator (seccomp=) or pspy.toml names another",
    "network=True": "a provider that keeps the host's network gets 'web' unless seccomp= names another",
    "network=False": "socket() and socketpair() only for AF_UNIX: an allow of them for any other domain "
                     "(or for all) becomes AF_UNIX only; AF_INET, AF_INET6, AF_PACKET (and netlink) sockets fail",
    "inline policy": "starts from 'default'; 'allow' adds names, 'deny' removes them, "
                     "'default_action' replaces the default action",
    "other ABIs": "only this machine's native ABI is allowed: i386 (int 0x80) and x32 calls on "
                  "x86_64 fail with EPERM (or kill, with a kill default), whatever the default action",
    "clone": "clone() never with CLONE_NEW* flags (no namespace made by clone where unshare is denied), "
             "and clone3() fails with ENOSYS (its flags are out of a filter's reach; glibc falls back "
             "to clone, which an allowed clone3 brings along)",
    "default action": "'errno' fails with EPERM (1), 'kill' kills the process, 'log' allows and logs",
}

ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
           "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG", "SCMP_ACT_TRAP")
REFUSED_ACTIONS = {"SCMP_ACT_TRACE": "needs a tracer, which pspy does not run",
                   "SCMP_ACT_NOTIFY": "needs a listener, which pspy does not run"}
OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
       "SCMP_CMP_MASKED_EQ")
INLINE_ACTIONS = {"errno": "SCMP_ACT_ERRNO", "kill": "SCMP_ACT_KILL_PROCESS", "log": "SCMP_ACT_LOG"}
PROFILE_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "flags", "comment"}
ENTRY_KEYS = {"names", "name", "action", "args", "errnoRet", "comment", "includes", "excludes"}
ARG_KEYS = {"index", "value", "valueTwo", "op"}

AF_UNIX, AF_INET, AF_INET6, AF_PACKET = 1, 2, 10, 17

# platform.machine() -> (libseccomp arch name, Docker/Go arch names in includes.arches)
_ARCHES = {"x86_64": ("SCMP_ARCH_X86_64", {"amd64", "x86_64"}),
           "aarch64": ("SCMP_ARCH_AARCH64", {"arm64", "aarch64"})}


class SeccompError(PspyError):
    pass


def native_arch() -> tuple[str, set[str]]:
    machine = platform.machine()
    if machine not in _ARCHES:
        raise SeccompError(f"seccomp profiles are supported on x86_64 and aarch64, not {machine}")
    return _ARCHES[machine]


def shipped_path(name: str) -> str:
    return os.path.join(PROFILE_DIR, f"{name}.json")


# --- reading profiles ------------------------------------------------------------

def read_profile(path: str, where: str | None = None) -> dict:
    """A profile file, parsed and checked; errors name the file (and ``where`` it was asked for)."""
    label = f"{path}" + (f" (named at {where})" if where else "")
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SeccompError(f"seccomp profile {label}: no such file") from None
    except ValueError as e:
        raise SeccompError(f"seccomp profile {label}: not valid JSON: {e}") from None
    check_profile(data, label)
    return data


def check_profile(data, label: str) -> None:
    """The OCI fields, their types and values; unknown names are checked by ``rules``."""
    def bad(msg):
        raise SeccompError(f"seccomp profile {label}: {msg}")
    if not isinstance(data, dict):
        bad("must be a JSON object")
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        bad(f"unknown field(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(PROFILE_KEYS))})")
    if "defaultAction" not in data:
        bad("missing defaultAction")
    _check_action(data["defaultAction"], bad, "defaultAction")
    if "defaultErrnoRet" in data and not _is_errno(data["defaultErrnoRet"]):
        bad(f"defaultErrnoRet {data['defaultErrnoRet']!r} is not an errno number")
    archs = data.get("architectures", [])
    if not isinstance(archs, list) or not all(isinstance(a, str) and a.startswith("SCMP_ARCH_") for a in archs):
        bad("architectures must be a list of SCMP_ARCH_* names")
    syscalls = data.get("syscalls", [])
    if not isinstance(syscalls, list):
        bad("syscalls must be a list")
    for i, entry in enumerate(syscalls):
        where = f"syscalls[{i}]"
        if not isinstance(entry, dict):
            bad(f"{where} must be an object")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            bad(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        names = entry.get("names", [entry["name"]] if "name" in entry else None)
        if not names or not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            bad(f"{where}: names must be a non-empty list of syscall names")
        if "action" not in entry:
            bad(f"{where}: missing action")
        _check_action(entry["action"], bad, f"{where}.action")
        if "errnoRet" in entry and not _is_errno(entry["errnoRet"]):
            bad(f"{where}: errnoRet {entry['errnoRet']!r} is not an errno number")
        args = entry.get("args") or []
        if not isinstance(args, list) or len(args) > 6:
            bad(f"{where}: args must be a list of at most 6 comparisons")
        for j, arg in enumerate(args):
            if not isinstance(arg, dict) or set(arg) - ARG_KEYS or "index" not in arg or "op" not in arg:
                bad(f"{where}.args[{j}]: expected {{index, value, valueTwo, op}}")
            if not isinstance(arg["index"], int) or not 0 <= arg["index"] <= 5:
                bad(f"{where}.args[{j}]: index must be 0..5")
            if arg["op"] not in OPS:
                bad(f"{where}.args[{j}]: op {arg['op']!r} is not one of {', '.join(OPS)}")
            for key in ("value", "valueTwo"):
                if not isinstance(arg.get(key, 0), int) or not 0 <= arg.get(key, 0) < 2**64:
                    bad(f"{where}.args[{j}]: {key} must be an unsigned 64-bit integer")
        for key in ("includes", "excludes"):
            cond = entry.get(key)
            if cond is None:
                continue
            if not isinstance(cond, dict) or set(cond) - {"arches", "caps", "minKernel"}:
                bad(f"{where}.{key}: only arches, caps and minKernel are understood")


def _check_action(action, bad, where: str) -> None:
    if action in REFUSED_ACTIONS:
        bad(f"{where} {action}: {REFUSED_ACTIONS[action]}")
    if action not in ACTIONS:
        bad(f"{where} {action!r} is not one of {', '.join(ACTIONS)}")


def _is_errno(value) -> bool:
    return isinstance(value, int) and 0 < value < 4096


# --- from a profile to this machine's rules -----------------------------------------

def _applies(entry: dict, go_arches: set[str]) -> bool:
    inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
    if inc.get("arches") and not set(inc["arches"]) & go_arches:
        return False
    if inc.get("caps"):
        return False    # principals hold no capability
    if exc.get("arches") and set(exc["arches"]) & go_arches:
        return False
    return True


def is_syscall(name: str) -> bool:
    """Whether libseccomp knows ``name`` as a syscall of this machine's architecture."""
    from .. import _native
    lib = _native.lib
    nr = lib.seccomp_syscall_resolve_name_arch(getattr(lib, native_arch()[0]), name.encode())
    return nr != lib.__NR_SCMP_ERROR and nr >= 0


def rules(profile: dict, label: str) -> list[dict]:
    """The entries that apply here, one rule per name: ``{name, action, args, errnoRet}``.
    Every name must be a syscall of this architecture."""
    from .. import _native
    lib = _native.lib
    arch_name, go_arches = native_arch()
    arch = getattr(lib, arch_name)
    out, unknown, foreign = [], [], []
    for entry in profile.get("syscalls", []):
        if not _applies(entry, go_arches):
            continue
        for name in entry.get("names", [entry.get("name")]):
            nr = lib.seccomp_syscall_resolve_name_arch(arch, name.encode())
            if nr == lib.__NR_SCMP_ERROR:
                unknown.append(name)
                continue
            if nr < 0:
                foreign.append(name)
                continue
            rule = {"name": name, "action": entry["action"], "args": [dict(a) for a in entry.get("args") or []]}
            if "errnoRet" in entry:
                rule["errnoRet"] = entry["errnoRet"]
            out.append(rule)
    problems = []
    if unknown:
        problems.append(f"unknown syscall name(s): {', '.join(sorted(set(unknown)))}")
    if foreign:
        problems.append(f"not syscalls of {platform.machine()}: {', '.join(sorted(set(foreign)))} "
                        "(put them in an entry with \"includes\": {\"arches\": [...]})")
    if problems:
        raise SeccompError(f"seccomp profile {label}: " + "; ".join(problems))
    return out


# --- the effective policy of a principal --------------------------------------------

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
    resolved = rules(profile, label)
    resolved, note = _no_namespace_clones(resolved)
    if note:
        derived.append(note)
    if not network:
        resolved, note = _no_inet_sockets(resolved)
        if note:
            derived.append(note)
    arch_name, _ = native_arch()
    out = {"defaultAction": profile["defaultAction"], "architectures": [arch_name], "syscalls": _group(resolved)}
    if profile["defaultAction"] == "SCMP_ACT_ERRNO":
        out["defaultErrnoRet"] = profile.get("defaultErrnoRet", errno.EPERM)
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


def compiled(policy: dict) -> dict:
    """``policy`` (from ``effective``) with what a principal loads at start-up
    (pspy._filter): the BPF program, whether it traps denials, and their errno."""
    profile = policy["profile"]
    out = dict(policy, bpf=base64.b64encode(compile_bpf(profile)).decode(), trapping=traps(profile),
               errno=profile.get("defaultErrnoRet", errno.EPERM), tkill=allows_outright(profile, "tkill"))
    if "call_profile" in policy:
        out["call_bpf"] = base64.b64encode(compile_bpf(policy["call_profile"])).decode()
    return out


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


CLONE_NEW_FLAGS = 0x7E020080   # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME


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


def _no_inet_sockets(resolved: list[dict]) -> tuple[list[dict], str | None]:
    """network=False: socket() and socketpair() may create Unix sockets only."""
    out, changed, allowed = [], False, set()
    for rule in resolved:
        if rule["name"] not in ("socket", "socketpair") or rule["action"] not in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG"):
            out.append(rule)
            continue
        allowed.add(rule["name"])
        if rule["args"] != [{"index": 0, "value": AF_UNIX, "op": "SCMP_CMP_EQ"}]:
            changed = changed or rule["name"] == "socket" or rule["args"] != []
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


# --- what a policy allows ----------------------------------------------------------

def allowed(profile: dict) -> list[str]:
    """Syscall names the policy lets through (with arguments shown where it checks them)."""
    out = []
    for entry in profile["syscalls"]:
        if entry["action"] not in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG"):
            continue
        cond = ", ".join(_describe_arg(a) for a in entry.get("args", []))
        out.extend(f"{n}({cond})" if cond else n for n in entry["names"])
    return sorted(set(out))


def allowed_names(profile: dict) -> set[str]:
    return {entry_name for entry in profile["syscalls"] if entry["action"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
            for entry_name in entry["names"]}


def warnings(profile: dict) -> list[str]:
    out = []
    if profile["defaultAction"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG"):
        out.append(f"the default action {profile['defaultAction']} lets every unlisted syscall through, "
                   "dangerous ones included")
    for name in sorted(allowed_names(profile) & DANGEROUS):
        out.append(f"allows {name}, a dangerous syscall")
    for entry in profile["syscalls"]:
        if entry["action"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG") and "clone" in entry["names"] \
                and not entry.get("args"):
            out.append("allows clone with any flags: new namespaces included")
    return out


def _describe_arg(arg: dict) -> str:
    op = arg["op"].replace("SCMP_CMP_", "")
    value = arg.get("value", 0)
    if arg["index"] == 0 and op == "EQ":
        names = {AF_UNIX: "AF_UNIX", AF_INET: "AF_INET", AF_INET6: "AF_INET6", AF_PACKET: "AF_PACKET",
                 16: "AF_NETLINK"}
        if value in names:
            return f"arg0 == {names[value]}"
    if op == "MASKED_EQ":
        return f"arg{arg['index']} & {hex(value)} == {hex(arg.get('valueTwo', 0))}"
    symbol = {"EQ": "==", "NE": "!=", "LT": "<", "LE": "<=", "GT": ">", "GE": ">="}[op]
    return f"arg{arg['index']} {symbol} {value}"


# --- compiling (principals load the result: pspy._filter) ---------------------------


def _action(lib, action: str, errno_ret: int | None) -> int:
    if action == "SCMP_ACT_ALLOW":
        return lib.SCMP_ACT_ALLOW
    if action == "SCMP_ACT_ERRNO":
        return lib.pspy_act_errno(errno_ret or errno.EPERM)
    if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return lib.SCMP_ACT_KILL_THREAD
    if action == "SCMP_ACT_KILL_PROCESS":
        return lib.SCMP_ACT_KILL_PROCESS
    if action == "SCMP_ACT_LOG":
        return lib.SCMP_ACT_LOG
    if action == "SCMP_ACT_TRAP":
        return lib.SCMP_ACT_TRAP
    raise SeccompError(f"unsupported action {action}")


def _build(profile: dict, trapping: bool):
    """A libseccomp context for ``profile``; the caller releases it. Trapping,
    the default action is SCMP_ACT_TRAP (pspy's reporter fails the call with
    the profile's errno)."""
    from .. import _native
    ffi, lib = _native.ffi, _native.lib
    default = _action(lib, profile["defaultAction"], profile.get("defaultErrnoRet"))
    # Other ABIs are refused even when the default lets calls through (a deny-list).
    foreign = default if profile["defaultAction"] not in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG") \
        else lib.pspy_act_errno(errno.EPERM)
    ctx = lib.seccomp_init(lib.SCMP_ACT_TRAP if trapping else default)
    if ctx == ffi.NULL:
        raise SeccompError("seccomp_init failed")
    try:
        for attr, value in ((lib.SCMP_FLTATR_ACT_BADARCH, foreign), (lib.SCMP_FLTATR_CTL_NNP, 1),
                            (lib.SCMP_FLTATR_CTL_TSYNC, 1)):
            _check(lib.seccomp_attr_set(ctx, attr, value), "seccomp_attr_set")
        arch = getattr(lib, native_arch()[0])
        entries = _with_trap_handler_needs(profile["syscalls"]) if trapping else profile["syscalls"]
        for entry in entries:
            action = _action(lib, entry["action"], entry.get("errnoRet"))
            args = entry.get("args") or []
            cmp = ffi.new("struct scmp_arg_cmp[]", max(1, len(args)))
            for i, a in enumerate(args):
                cmp[i].arg = a["index"]
                cmp[i].op = getattr(lib, a["op"])
                cmp[i].datum_a = a.get("value", 0)
                cmp[i].datum_b = a.get("valueTwo", 0)
            for name in entry["names"]:
                nr = lib.seccomp_syscall_resolve_name_arch(arch, name.encode())
                if nr < 0:
                    raise SeccompError(f"{name} is not a syscall of {platform.machine()}")
                _check(lib.seccomp_rule_add_exact_array(ctx, action, nr, len(args), cmp),
                       f"adding the rule for {name}")
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx


def allows_outright(profile: dict, name: str) -> bool:
    """The profile lets ``name`` through whatever its arguments (and denies it nowhere)."""
    through = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
    entries = [e for e in profile.get("syscalls", []) if name in e.get("names", [])]
    allowed = any(e.get("action") in through and not e.get("args") for e in entries)
    denied = any(e.get("action") not in through for e in entries)
    return (allowed or profile["defaultAction"] in through) and not denied


def traps(profile: dict) -> bool:
    """Denials are trapped and reported when the default action is EPERM (errno)."""
    return profile["defaultAction"] == "SCMP_ACT_ERRNO"


def compile_bpf(profile: dict) -> bytes:
    """The BPF program the kernel will run for ``profile`` (bootstrap stores it
    in the plan; the principal loads it as it is, see pspy._filter)."""
    from .. import _native
    lib = _native.lib
    ctx = _build(profile, traps(profile))
    try:
        fd = os.memfd_create("pspy-seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def _check(result: int, step: str) -> None:
    if result < 0:
        raise SeccompError(f"{step} failed: {errno.errorcode.get(-result, -result)} ({os.strerror(-result)})")


# --- reporting denials --------------------------------------------------------------

_RECORD = struct.Struct("=IiiI6Q")
_MAGIC = 0x70737931
_FRAME = re.compile(r'^\s*File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>\S+)')



def _with_trap_handler_needs(entries: list[dict]) -> list[dict]:
    """The trap handler's own needs: it may return (rt_sigreturn) and write
    its record (gettid, write), whatever the profile says; a learned profile
    may never have seen a signal. Its SIGSYS disposition is not pinned: the
    app (and subprocess, which resets every handler before exec) may change
    it; a call the filter refuses is never executed either way, and with the
    default disposition it kills instead of failing with EPERM."""
    out = [{"names": ["gettid", "rt_sigreturn", "write"], "action": "SCMP_ACT_ALLOW"}]
    for entry in entries:
        if entry["action"] == "SCMP_ACT_ALLOW" and not entry.get("args"):
            entry = dict(entry, names=[n for n in entry["names"] if n not in ("gettid", "rt_sigreturn", "write")])
        if entry["names"]:
            out.append(entry)
    return out


def report(fd: int, stream, app_dir: str = "/app", first: bytes = b"") -> None:
    """Read denial records from ``fd`` (after ``first``, already read) and
    write one line per distinct call site."""
    seen: set = set()
    buf = b""
    while True:
        if first:
            chunk, first = first, b""
        else:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
        if not chunk:
            return
        buf += chunk
        while True:
            start = buf.find(struct.pack("=I", _MAGIC))
            if start < 0:
                buf = buf[-3:]
                break
            end = buf.find(b"\0\n", start + _RECORD.size)
            if end < 0:
                buf = buf[start:]
                break
            record, buf = buf[start:end], buf[end + 2:]
            _, tid, nr, arch, *args = _RECORD.unpack_from(record)
            frames = [m.groupdict() for m in map(_FRAME.match, record[_RECORD.size:].decode(errors="replace")
                                                 .splitlines()) if m]
            key = (nr, tuple((f["file"], f["line"]) for f in frames))
            if key in seen:
                continue
            seen.add(key)
            try:
                stream.write(describe_denial(tid, nr, arch, args, frames, app_dir) + "\n")
                stream.flush()
            except Exception:  # noqa: BLE001 - the log is gone; keep draining the pipe
                pass


def describe_denial(tid: int, nr: int, arch: int, args: list[int], frames: list[dict],
                    app_dir: str = "/app") -> str:
    """'seccomp denied: Bank.transfer -> bank.py:42 (transfer) -> socket(AF_INET, ...)' and the stack."""
    from .. import _native
    lib, ffi = _native.lib, _native.ffi
    raw = lib.seccomp_syscall_resolve_num_arch(arch, nr)
    if raw != ffi.NULL:
        name = ffi.string(raw).decode()
        lib.free(raw)
    else:
        name = f"syscall {nr}"
    call = f"{name}({', '.join(_describe_args(name, args))})"
    app = app_dir.rstrip("/") + "/"
    inner_first = list(frames)   # faulthandler prints the most recent call first
    chain = [f"{f['file'][len(app):]}:{f['line']} ({f['func']})" for f in reversed(inner_first)
             if f["file"].startswith(app)]
    import sys
    # Which service the thread was running: the server notes the last one per
    # thread; it counts only if the stack shows the call came from serving.
    server = sys.modules.get("pspy.rpc.server")
    serving = any(f["func"] == "_handle" and f["file"].endswith("rpc/server.py") for f in frames)
    service = server.ACTIVE.get(tid) if server is not None and serving else None
    head = " -> ".join(([service] if service else []) + chain + [call])
    lines = [f"pspy: seccomp denied: {head} (EPERM; reported once per call site)"]
    lines += [f"    {f['file']}:{f['line']} in {f['func']}" for f in reversed(inner_first)]
    if not frames:
        lines.append(f"    (thread {tid} has no Python stack)")
    return "\n".join(lines)


_SOCKET_DOMAINS = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET"}
_SOCKET_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}


def _describe_args(name: str, args: list[int]) -> list[str]:
    if name in ("socket", "socketpair"):
        kind = _SOCKET_TYPES.get(args[1] & 0xF, str(args[1] & 0xF))
        flags = [f for bit, f in ((0o2000000, "SOCK_CLOEXEC"), (0o4000, "SOCK_NONBLOCK")) if args[1] & bit]
        return [_SOCKET_DOMAINS.get(args[0], str(args[0])), "|".join([kind, *flags]), str(args[2])]
    count = {"mount": 5, "umount2": 2, "unshare": 1, "setns": 2, "ptrace": 4, "pivot_root": 2, "chroot": 1,
             "execve": 3, "kill": 2, "clone": 5, "connect": 3, "bind": 3, "keyctl": 5}.get(name, 6)
    return [hex(a) if a > 0xFFFF else str(a) for a in args[:count]]


# --- learning (pspy learn) -----------------------------------------------------------

LEARN = {"learn": True, "source": "learning (pspy learn): every syscall allowed and recorded",
         "derived": [], "profile": None}
LEARN_LINE = re.compile(r"^pspy-learn (\d+) (\d+) (\d+)$")
LEARN_SERVICE = re.compile(r"^pspy-learn-service (\d+) (\S+)$")


def learned(log_text: str) -> dict[str, set[str]]:
    """From a principal's log: syscall name -> the services that made it
    ("" for calls outside any service: start-up, the front end's own work)."""
    from .. import _native
    lib, ffi = _native.lib, _native.ffi
    services = {0: ""}
    out: dict[str, set[str]] = {}
    for line in log_text.splitlines():
        m = LEARN_SERVICE.match(line)
        if m:
            services[int(m.group(1))] = m.group(2)
            continue
        m = LEARN_LINE.match(line)
        if not m:
            continue
        nr, service, arch = (int(g) for g in m.groups())
        raw = lib.seccomp_syscall_resolve_num_arch(arch, nr)
        if raw == ffi.NULL:
            continue
        name = ffi.string(raw).decode()
        lib.free(raw)
        out.setdefault(name, set()).add(services.get(service, f"service #{service}"))
    return out


def learned_profile(principal: str, calls: dict[str, set[str]], workload: list[str]) -> dict:
    """A minimal OCI profile allowing exactly ``calls``, each attributed."""
    arch_name, _ = native_arch()
    entries = []
    for name in sorted(calls):
        users = sorted(calls[name])
        who = ", ".join(u or f"{principal} (outside any service)" for u in users)
        entries.append({"names": [name], "action": "SCMP_ACT_ALLOW", "comment": f"used by: {who}"})
    return {"comment": f"learned by pspy learn for {principal} from the workload: {' '.join(workload)}",
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EPERM,
            "architectures": [arch_name], "syscalls": entries}
