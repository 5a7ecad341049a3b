"""OCI seccomp profiles: reading and checking them, the shipped ones, and
from a profile to the rules that apply on this machine.

Profiles are the format Docker, Podman and Kubernetes read: ``defaultAction``,
``defaultErrnoRet``, ``architectures``, ``syscalls[]`` with ``names``,
``action``, ``args`` (``index``, ``value``, ``valueTwo``, ``op``),
``errnoRet``, and Docker's ``includes``/``excludes`` by ``arches``. A name
libseccomp does not know on this architecture is an error, never skipped.
"""

from __future__ import annotations

import json
import os
import platform

from ..errors import PspyError

PROFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")
SHIPPED = ("default", "web", "strict")
NONE = "none"
DEFAULT_PROVIDER = "default"
DEFAULT_FRONT_END = "web"

ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
           "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG", "SCMP_ACT_TRAP")
REFUSED_ACTIONS = {"SCMP_ACT_TRACE": "needs a tracer, which pspy does not run",
                   "SCMP_ACT_NOTIFY": "needs a listener, which pspy does not run"}
OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
       "SCMP_CMP_MASKED_EQ")
PROFILE_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "flags", "comment"}
ENTRY_KEYS = {"names", "name", "action", "args", "errnoRet", "comment", "includes", "excludes"}
ARG_KEYS = {"index", "value", "valueTwo", "op"}

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
