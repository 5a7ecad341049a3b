"""OCI seccomp profiles: reading and checking them, the shipped ones, and
from a profile to the rules that apply on this machine.

Profiles are the format Docker, Podman and Kubernetes read: ``defaultAction``,
``defaultErrnoRet``, ``architectures`` or ``archMap``, ``syscalls[]`` with
``names`` (or ``name``), ``action``, ``args`` (``index``, ``value``,
``valueTwo``, ``op``), ``errnoRet``, and ``includes``/``excludes`` by
``arches``, ``caps`` and ``minKernel``; Podman's ``defaultErrno`` and
``errno`` (errno names) too. A profile Docker or Podman reads loads as they
would apply it here (``rules``): entries for other architectures, and
names that are syscalls of other architectures only, apply only there. A
name libseccomp knows on no architecture (a typo) is an error naming the
file. Fields pspy does not act on are accepted with a warning naming the
field and the file, once.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import sys

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
PROFILE_KEYS = {"defaultAction", "defaultErrnoRet", "defaultErrno", "architectures", "archMap", "syscalls",
                "comment"}
ENTRY_KEYS = {"names", "name", "action", "args", "errnoRet", "errno", "comment", "includes", "excludes"}
ARG_KEYS = {"index", "value", "valueTwo", "op"}
CONDITION_KEYS = {"arches", "caps", "minKernel"}
ARCH_MAP_KEYS = {"architecture", "subArchitectures"}
# Fields runtimes know that pspy does not act on, and why; any other unknown
# field is ignored too, unless it looks like a known one misspelt (an error).
# Either way the warning names it: never silently.
IGNORED = {"flags": "pspy loads every filter with the flags it needs (TSYNC) and no others",
           "listenerPath": "pspy runs no seccomp listener (SCMP_ACT_NOTIFY is refused)",
           "listenerMetadata": "pspy runs no seccomp listener (SCMP_ACT_NOTIFY is refused)"}

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
    """A profile file, parsed and checked; errors name the file (and ``where`` it
    was asked for). Fields pspy does not act on are warned about, once each."""
    label = f"{path}" + (f" (named at {where})" if where else "")
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SeccompError(f"seccomp profile {label}: no such file") from None
    except ValueError as e:
        raise SeccompError(f"seccomp profile {label}: not valid JSON: {e}") from None
    for field, why in check_profile(data, label):
        _warn_once(os.path.realpath(path), field, f"seccomp profile {label}: {field} ignored: {why}")
    return data


_WARNED: set[tuple[str, str]] = set()


def _warn_once(path: str, field: str, text: str) -> None:
    # Once per file and field: a bootstrap reads a profile once per principal
    # naming it. On stderr: analyze's JSON on stdout stays parseable.
    if (path, field) not in _WARNED:
        _WARNED.add((path, field))
        sys.stderr.write(f"pspy: warning: {text}\n")


def ignored_fields(data: dict) -> list[tuple[str, str]]:
    """The fields of a (checked) profile pspy does not act on, with why:
    ``[("listenerPath", why), ("syscalls[].foo", why)]``, each field once."""
    out: dict[str, str] = {}
    unknown = "pspy does not know this field"
    for key in sorted(set(data) - PROFILE_KEYS):
        out[key] = IGNORED.get(key, unknown)
    for container, keys in (("archMap", ARCH_MAP_KEYS), ("syscalls", ENTRY_KEYS)):
        items = data.get(container) or []
        firsts: dict[str, int] = {}
        for i, item in enumerate(items):
            for key in set(item) - keys:
                firsts.setdefault(key, i)
        for key in sorted(firsts):
            count = sum(1 for item in items if key in item)
            out[f"{container}[].{key}"] = f"{unknown} (first at {container}[{firsts[key]}], {count} in all)"
    return list(out.items())


def _refuse_misspelt_fields(data: dict, bad) -> None:
    """An unknown field is warned about, but one that looks like a known
    field misspelt ("include", "sycalls") is an error: ignoring it would
    silently change what the profile allows."""
    import difflib

    def check(keys, known, where):
        for key in sorted(set(keys) - known - set(IGNORED)):
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
            if close:
                bad(f"unknown field {where}{key!r}: did you mean {close[0]!r}? (a misspelt field would be "
                    "ignored and change what the profile allows)")
    check(data, PROFILE_KEYS, "")
    for i, item in enumerate(data.get("syscalls") or []):
        check(item, ENTRY_KEYS, f"syscalls[{i}].")
    for i, item in enumerate(data.get("archMap") or []):
        check(item, ARCH_MAP_KEYS, f"archMap[{i}].")


def check_profile(data, label: str) -> list[tuple[str, str]]:
    """The OCI fields, their types and values; unknown names are checked by
    ``rules``. Returns the fields pspy will not act on (``ignored_fields``)."""
    def bad(msg):
        raise SeccompError(f"seccomp profile {label}: {msg}")
    if not isinstance(data, dict):
        bad("must be a JSON object")
    if "defaultAction" not in data:
        bad("missing defaultAction")
    _check_action(data["defaultAction"], bad, "defaultAction")
    _check_errno(data, "defaultErrnoRet", "defaultErrno", bad, "")
    archs = data.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) and a.startswith("SCMP_ARCH_") for a in archs):
        bad("architectures must be a list of SCMP_ARCH_* names")
    arch_map = data.get("archMap") or []
    if not isinstance(arch_map, list):
        bad("archMap must be a list of {architecture, subArchitectures}")
    for i, item in enumerate(arch_map):
        if not isinstance(item, dict):
            bad(f"archMap[{i}] must be an object")
        subs = item.get("subArchitectures") or []
        named = [item.get("architecture")] + (subs if isinstance(subs, list) else [None])
        if not all(isinstance(a, str) and a.startswith("SCMP_ARCH_") for a in named):
            bad(f"archMap[{i}]: architecture and subArchitectures must be SCMP_ARCH_* names")
    syscalls = data.get("syscalls") or []
    if not isinstance(syscalls, list):
        bad("syscalls must be a list")
    for i, entry in enumerate(syscalls):
        where = f"syscalls[{i}]"
        if not isinstance(entry, dict):
            bad(f"{where} must be an object")
        if entry.get("name") and entry.get("names"):
            bad(f"{where}: both name and names; use one (Docker and Podman refuse both too)")
        names = entry.get("names") or ([entry["name"]] if entry.get("name") else None)
        if not names or not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            bad(f"{where}: names must be a non-empty list of syscall names")
        if "action" not in entry:
            bad(f"{where}: missing action")
        _check_action(entry["action"], bad, f"{where}.action")
        _check_errno(entry, "errnoRet", "errno", bad, f"{where}: ")
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
            # An unknown condition is refused, not ignored: it decides whether the entry applies.
            if not isinstance(cond, dict) or set(cond) - CONDITION_KEYS:
                bad(f"{where}.{key}: only arches, caps and minKernel are understood")
            for list_key in ("arches", "caps"):
                values = cond.get(list_key) or []
                if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                    bad(f"{where}.{key}.{list_key} must be a list of names")
            if cond.get("minKernel") and _kernel_version(cond["minKernel"]) is None:
                bad(f"{where}.{key}.minKernel {cond['minKernel']!r}: expected \"<kernel>.<major>\", as \"4.8\"")
    _refuse_misspelt_fields(data, bad)
    return ignored_fields(data)


def _check_action(action, bad, where: str) -> None:
    if action in REFUSED_ACTIONS:
        bad(f"{where} {action}: {REFUSED_ACTIONS[action]}")
    if action not in ACTIONS:
        bad(f"{where} {action!r} is not one of {', '.join(ACTIONS)}")


def _is_errno(value) -> bool:
    return isinstance(value, int) and 0 < value < 4096


def _errno_name(value) -> int | None:
    """Podman's errno string: a name (``ENOSYS``) or a decimal number."""
    if isinstance(value, str) and value.isdigit():
        number = int(value)
    elif isinstance(value, str) and value.startswith("E") and isinstance(getattr(errno, value, None), int):
        number = getattr(errno, value)
    else:
        return None
    return number if _is_errno(number) else None


def _check_errno(obj: dict, number_key: str, name_key: str, bad, where: str) -> None:
    if number_key in obj and not _is_errno(obj[number_key]):
        bad(f"{where}{number_key} {obj[number_key]!r} is not an errno number")
    if obj.get(name_key) is None:
        return
    number = _errno_name(obj[name_key])
    if number is None:
        bad(f"{where}{name_key} {obj[name_key]!r} is not an errno name (as ENOSYS) or number")
    if number_key in obj and obj[number_key] != number:
        # Podman would use the name and Docker the number: which one this
        # profile means is not for pspy to guess.
        bad(f"{where}{name_key} {obj[name_key]} ({number}) and {number_key} {obj[number_key]} disagree")


def errno_of(obj: dict, number_key: str, name_key: str) -> int | None:
    """The errno a (checked) profile or entry asks for: Podman's name, else the number."""
    if obj.get(name_key) is not None:
        return _errno_name(obj[name_key])
    return obj.get(number_key)


# --- from a profile to this machine's rules -----------------------------------------

def _kernel_version(text, release: bool = False) -> tuple[int, int] | None:
    """Docker's minKernel, exactly "<kernel>.<major>" (as "4.8"); with
    ``release``, a kernel's release ("6.18.0-1-amd64"), the rest ignored."""
    pattern = r"^(\d{1,3})\.(\d{1,3})" + (r"(?:$|[.+-])" if release else "$")
    m = re.match(pattern, text) if isinstance(text, str) else None
    version = (int(m.group(1)), int(m.group(2))) if m else None
    return version if version != (0, 0) else None


def running_kernel() -> tuple[int, int]:
    return _kernel_version(platform.release(), release=True) or (0, 0)


def _for_this_arch(entry: dict, go_arches: set[str]) -> bool:
    inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
    if inc.get("arches") and not set(inc["arches"]) & go_arches:
        return False
    return not (exc.get("arches") and set(exc["arches"]) & go_arches)


def _holds(entry: dict, kernel: tuple[int, int]) -> bool:
    """The entry's other conditions, as Docker and Podman judge them for a
    process without capabilities (a principal holds none) on this kernel."""
    inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
    if inc.get("caps"):
        return False     # needs capabilities a principal does not hold
    # excludes.caps: left out for a process holding one of them; a principal holds none.
    if inc.get("minKernel") and kernel < _kernel_version(inc["minKernel"]):
        return False
    return not (exc.get("minKernel") and kernel >= _kernel_version(exc["minKernel"]))


def _applies(entry: dict, go_arches: set[str], kernel: tuple[int, int] | None = None) -> bool:
    """Whether Docker or Podman would apply the entry to a principal here."""
    return _for_this_arch(entry, go_arches) and _holds(entry, running_kernel() if kernel is None else kernel)


def names_of(entry: dict) -> list[str]:
    return entry.get("names") or [entry["name"]]


def is_syscall(name: str) -> bool:
    """Whether libseccomp knows ``name`` as a syscall of this machine's architecture."""
    from .. import _native
    lib = _native.lib
    nr = lib.seccomp_syscall_resolve_name_arch(getattr(lib, native_arch()[0]), name.encode())
    return nr != lib.__NR_SCMP_ERROR and nr >= 0


def rules(profile: dict, label: str, skipped: dict[str, set[str]] | None = None) -> list[dict]:
    """The entries that apply here, one rule per name: ``{name, action, args, errnoRet}``.

    Entries for other architectures are left out whole. In the others, a name
    that is a syscall of other architectures only is left out (``skipped``
    ["other architectures"] collects them; entries that do not apply for
    want of capabilities or kernel go to ``skipped["conditions"]``); a name
    libseccomp knows on no architecture is an error."""
    from .. import _native
    lib = _native.lib
    arch_name, go_arches = native_arch()
    arch = getattr(lib, arch_name)
    kernel = running_kernel()
    skipped = {} if skipped is None else skipped
    out, unknown = [], []
    for entry in profile.get("syscalls") or []:
        if not _for_this_arch(entry, go_arches):
            continue   # its names are another architecture's, checked there
        holds = _holds(entry, kernel)
        errno_ret = errno_of(entry, "errnoRet", "errno")
        for name in names_of(entry):
            nr = lib.seccomp_syscall_resolve_name_arch(arch, name.encode())
            if nr == lib.__NR_SCMP_ERROR:
                unknown.append(name)
            elif nr < 0:
                skipped.setdefault("other architectures", set()).add(name)
            elif not holds:
                skipped.setdefault("conditions", set()).add(name)
            else:
                rule = {"name": name, "action": entry["action"], "args": [dict(a) for a in entry.get("args") or []]}
                if errno_ret is not None:
                    rule["errnoRet"] = errno_ret
                out.append(rule)
    if unknown:
        version = lib.seccomp_version()
        raise SeccompError(f"seccomp profile {label}: unknown syscall name(s): {', '.join(sorted(set(unknown)))} "
                           f"(libseccomp {version.major}.{version.minor}.{version.micro} knows no such syscall on "
                           "any architecture: a typo, or a syscall newer than it)")
    return out
