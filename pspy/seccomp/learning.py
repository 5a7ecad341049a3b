"""Learning mode (pspy learn): a principal's log of the syscalls it made,
turned into a minimal OCI profile that allows exactly those, and the paths
it looked for in vain.
"""

from __future__ import annotations

import errno
import re

from .profiles import native_arch

LEARN = {"learn": True, "source": "learning (pspy learn): every syscall allowed and recorded",
         "derived": [], "profile": None}
LEARN_LINE = re.compile(r"^pspy-learn (\d+) (\d+) (\d+)$")
LEARN_SERVICE = re.compile(r"^pspy-learn-service (\d+) (\S+)$")
# A path the principal looked for (open, stat, access) that its view lacked
# when it asked; written by the native listener (pspy/_native/build.py).
LEARN_MISSING = re.compile(r"^pspy-learn-missing (/.*)$")


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


def missing_paths(log_text: str) -> list[str]:
    """From a principal's log: the absolute paths it looked for that did
    not exist in its view, in the order first seen. The log is the
    principal's own: a path it names is only ever reported."""
    seen: dict[str, None] = {}
    for line in log_text.splitlines():
        m = LEARN_MISSING.match(line)
        if m:
            seen[m.group(1)] = None
    return list(seen)


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
