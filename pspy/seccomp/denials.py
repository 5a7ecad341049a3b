"""Denial reports: the records pspy's SIGSYS handler writes for a denied
call, turned into one log line per distinct call site with the Python stack.
"""

from __future__ import annotations

import os
import re
import struct

_RECORD = struct.Struct("=IiiI6Q")
_MAGIC = 0x70737931
_FRAME = re.compile(r'^\s*File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>\S+)')


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
