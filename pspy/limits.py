"""Resource limits of a principal: what ``limits=`` may say, and what it becomes.

Pure: checking and normalising the decorator's (or pspy.toml's) value, and
turning it into setrlimit calls and cgroup files. Applying them is the
sandbox's (sandbox/spawn.py, sandbox/launch.py, sandbox/cgroup.py); the
provider enforces ``call_timeout`` (rpc/server.py's watchdog, or pspy/percall.py's
zygote with ``isolation="per_call"``).

Keys (all optional):
- ``cpu_seconds``: CPU time of the process (RLIMIT_CPU: SIGXCPU at the
  limit, SIGKILL a second later). For a provider that runs every call in
  one process this is the process's whole life; with
  ``isolation="per_call"`` it bounds each call's process, which starts
  from zero (the provider that forwards the calls is not bound by it).
- ``memory``: bytes (or "64M", "1G"); as root the principal's cgroup
  memory limit (what it really uses; swap included where the host counts
  it), and in every mode RLIMIT_DATA (writable private memory it maps,
  thread stacks included) as a backstop.
- ``processes``: processes and threads the principal may have at once
  (the kernel counts both): the cgroup's pids limit as root, and
  RLIMIT_NPROC, which counts the principal's uid (rootless: not set, the
  uid is the user's own).
- ``open_files``: RLIMIT_NOFILE.
- ``file_size``: bytes (or "1M"): the largest file it may write (RLIMIT_FSIZE).
- ``cpus``: share of CPUs, e.g. 0.5 (the cgroup's CPU quota; root only).
- ``call_timeout``: wall seconds a call of the provider may run; a call past
  it kills the process running it and the caller gets pspy.ServiceTimeout.
"""

from __future__ import annotations

import re
from resource import RLIMIT_CPU, RLIMIT_DATA, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC

KEYS = ("cpu_seconds", "memory", "processes", "open_files", "file_size", "cpus", "call_timeout")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_MEMORY = 16 << 20      # below this the interpreter cannot start
MIN_OPEN_FILES = 16        # stdio, the listening socket, the filter, a few modules
ISOLATIONS = ("process", "per_call")

RLIMIT_NAMES = {RLIMIT_CPU: "RLIMIT_CPU", RLIMIT_DATA: "RLIMIT_DATA", RLIMIT_NPROC: "RLIMIT_NPROC",
                RLIMIT_NOFILE: "RLIMIT_NOFILE", RLIMIT_FSIZE: "RLIMIT_FSIZE"}


def _size(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2).upper()]
    return None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def normalize(limits, where: str) -> tuple[dict, list[str]]:
    """(limits with plain numbers, problems naming ``where``)."""
    if not isinstance(limits, dict):
        return {}, [f"{where}: limits must be a dict of {', '.join(KEYS)}, got {limits!r}"]
    out: dict = {}
    problems = []
    for key, value in limits.items():
        if key not in KEYS:
            problems.append(f"{where}: unknown limit {key!r}; known: {', '.join(KEYS)}")
            continue
        if key in ("memory", "file_size"):
            n = _size(value)
            low = MIN_MEMORY if key == "memory" else 0
            if n is None or not low <= n <= 1 << 50:
                problems.append(f"{where}: limits {key} must be bytes (an integer, or a string such as "
                                f"'64M'), at least {low}, got {value!r}")
                continue
            out[key] = n
        elif key in ("processes", "open_files"):
            low = 1 if key == "processes" else MIN_OPEN_FILES
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 1 << 20:
                problems.append(f"{where}: limits {key} must be a whole number from {low}, got {value!r}")
                continue
            out[key] = value
        else:
            n = _number(value)
            top = 1024 if key == "cpus" else 86400
            if n is None or not 0 < n <= top:
                problems.append(f"{where}: limits {key} must be a number in (0, {top}], got {value!r}")
                continue
            out[key] = int(n) if key == "cpu_seconds" and float(n).is_integer() else n
    if "cpu_seconds" in out and out["cpu_seconds"] < 1:
        problems.append(f"{where}: limits cpu_seconds must be at least 1 (the kernel counts whole seconds)")
    return out, problems


def rlimits(limits: dict, rootless: bool, per_call: bool = False) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) to set with setrlimit before exec. With
    ``per_call`` the CPU limit is left to each call process (call_rlimits):
    CPU time adds up over a process's life, and a provider that forwards
    calls would otherwise die of its thousandth."""
    out = [] if per_call else call_rlimits(limits)
    if "memory" in limits:
        out.append((RLIMIT_DATA, limits["memory"], limits["memory"]))
    if "processes" in limits and not rootless:
        out.append((RLIMIT_NPROC, limits["processes"], limits["processes"]))
    if "open_files" in limits:
        out.append((RLIMIT_NOFILE, limits["open_files"], limits["open_files"]))
    if "file_size" in limits:
        out.append((RLIMIT_FSIZE, limits["file_size"], limits["file_size"]))
    return out


def call_rlimits(limits: dict) -> list[tuple[int, int, int]]:
    """What a per_call call process sets for itself after its fork (a fork
    starts its CPU time at zero): the CPU limit."""
    if "cpu_seconds" not in limits:
        return []
    seconds = int(-(-limits["cpu_seconds"] // 1))   # whole seconds, rounded up
    return [(RLIMIT_CPU, seconds, seconds + 1)]     # SIGXCPU, then SIGKILL


CPU_PERIOD_US = 100_000


def cgroup_controllers(limits: dict) -> list[str]:
    """The cgroup controllers a principal's limits need."""
    return [c for key, c in (("memory", "memory"), ("processes", "pids"), ("cpus", "cpu")) if key in limits]


def cgroup_files(limits: dict, controller: str, version: str) -> list[tuple[str, str]]:
    """(file, value) to write in the principal's cgroup of ``controller``,
    on a v1 hierarchy or the v2 one; in order (v1 wants the memory limit
    before the memory+swap one)."""
    if controller == "memory":
        n = str(limits["memory"])
        if version == "v1":
            return [("memory.limit_in_bytes", n), ("memory.memsw.limit_in_bytes", n)]
        return [("memory.max", n), ("memory.swap.max", "0")]
    if controller == "pids":
        return [("pids.max", str(limits["processes"]))]
    if controller == "cpu":
        quota = max(1000, int(limits["cpus"] * CPU_PERIOD_US))
        if version == "v1":
            return [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))]
        return [("cpu.max", f"{quota} {CPU_PERIOD_US}")]
    raise ValueError(controller)


# Files the host may lack (no swap accounting): skipped rather than failing.
OPTIONAL_FILES = ("memory.memsw.limit_in_bytes", "memory.swap.max")
