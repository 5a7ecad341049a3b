"""From an OCI profile to the BPF program a principal loads (pspy._filter),
through libseccomp in pspy's native helper.
"""

from __future__ import annotations

import base64
import errno
import os
import platform

from .profiles import SeccompError, native_arch


def compiled(policy: dict) -> dict:
    """``policy`` (from ``effective``) with what a principal loads at start-up
    (pspy._filter): the BPF program, whether it traps denials, and their errno."""
    profile = policy["profile"]
    out = dict(policy, bpf=base64.b64encode(compile_bpf(profile)).decode(), trapping=traps(profile),
               errno=profile.get("defaultErrnoRet", errno.EPERM), tkill=allows_outright(profile, "tkill"))
    if "call_profile" in policy:
        out["call_bpf"] = base64.b64encode(compile_bpf(policy["call_profile"])).decode()
    return out


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
    # A call of another ABI (i386's int 0x80, x32) kills the process, whatever
    # the default: no Python code makes one, and a process that does is
    # probing for a syscall number the native rules do not cover.
    foreign = lib.SCMP_ACT_KILL_PROCESS
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
