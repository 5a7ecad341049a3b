"""Run a command as a container runtime's defaults would let it run.

    python tests/container_env.py docker -- pspy bootstrap ...
    python tests/container_env.py kubernetes -- ...
    python tests/container_env.py keyctl-denied -- ...

``docker``: what `docker run` gives a container by default, as far as one
process can make it: the capability bounding set cut to Docker's default
list (so root's exec gets those and no more) and Docker's own default
seccomp profile (tests/data/seccomp/docker-default.json), resolved as
Docker resolves it for those capabilities: it denies among others the
keyring calls, unshare, setns, mount, umount2, pivot_root and clone with a
CLONE_NEW* flag (EPERM), and clone3 (ENOSYS). Like runc, the filter is
loaded with CAP_SYS_ADMIN still held and without no_new_privs.

``kubernetes``: a pod's container with the runtime's default capabilities
(the same list) and no seccomp profile (a pod is Unconfined unless it asks
for RuntimeDefault).

``docker-sys-admin``: `docker run --cap-add SYS_ADMIN`: Docker's profile
then allows unshare, setns, mount and umount2, but still denies the
keyring calls and pivot_root.

``docker-as-advised``: what namespace mode's error asks of a container:
--cap-add SYS_ADMIN --cap-add NET_ADMIN --security-opt seccomp=unconfined.

``keyctl-denied``: all capabilities, and a filter that denies keyctl
alone (add_key and request_key stay allowed): where pspy must refuse to
keep the inherited session keyring.

The kernel is real: the filter is compiled by pspy's own compiler and
loaded with seccomp(2); the capabilities are dropped with prctl(2).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys

# Docker's default capability list (moby's oci/caps/defaults.go; containerd's is the same).
DOCKER_CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
               "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
               "CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31}
ADDED = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}
DOCKER_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "seccomp", "docker-default.json")


def _version(text: str) -> tuple[int, int]:
    major, minor = (text.split("-")[0].split(".") + ["0"])[:2]
    return int(major), int(minor)


def docker_profile(held: set[str]) -> dict:
    """Docker's default profile as Docker applies it to a container holding
    the capabilities ``held``: an entry counts if it is for this
    architecture, holds all its includes.caps and none of its excludes.caps,
    and its minKernel is met (moby's profiles/seccomp setupSeccomp)."""
    from pspy.seccomp import is_syscall, native_arch
    go_arches = native_arch()[1]
    kernel = _version(platform.release())
    with open(DOCKER_PROFILE) as f:
        data = json.load(f)
    entries = []
    for entry in data["syscalls"]:
        inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
        if (inc.get("arches") and not set(inc["arches"]) & go_arches) \
                or (exc.get("arches") and set(exc["arches"]) & go_arches) \
                or not set(inc.get("caps", [])) <= held or set(exc.get("caps", [])) & held \
                or (inc.get("minKernel") and kernel < _version(inc["minKernel"])):
            continue
        names = [n for n in entry["names"] if is_syscall(n)]
        if names:
            entries.append({"names": names, "action": entry["action"], "args": entry.get("args") or [],
                            **({"errnoRet": entry["errnoRet"]} if "errnoRet" in entry else {})})
    return {"defaultAction": data["defaultAction"], "defaultErrnoRet": data.get("defaultErrnoRet", 1),
            "syscalls": entries}


def keyctl_denial() -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}


def compile_plain(profile: dict) -> bytes:
    """The profile compiled by pspy's compiler, denials answered with their
    errno as a container's filter answers them (pspy's compile_bpf traps
    them for its reporter, whose handler only a principal installs)."""
    from pspy import _native
    from pspy.seccomp.compile import _build
    ctx = _build(profile, trapping=False)
    try:
        fd = os.memfd_create("container-env-bpf")
        try:
            if _native.lib.seccomp_export_bpf(ctx, fd) != 0:
                raise OSError("seccomp_export_bpf failed")
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 1 << 20)
        finally:
            os.close(fd)
    finally:
        _native.lib.seccomp_release(ctx)


def load_filter(profile: dict) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER) with CAP_SYS_ADMIN and without no_new_privs, as runc does."""
    program = compile_plain(profile)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    nr_seccomp = {"x86_64": 317, "aarch64": 277}[os.uname().machine]
    if libc.syscall(nr_seccomp, 1, 0, ctypes.byref(fprog)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"loading the container-like seccomp filter: {os.strerror(err)}")


def limit_capabilities(keep: set[int]) -> None:
    """Only ``keep`` in the bounding set (and nothing inheritable): root's
    next exec holds exactly those."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    pr_capbset_drop = 24
    for cap in range(last + 1):
        if cap not in keep and libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"dropping capability {cap} from the bounding set: {os.strerror(err)}")


DOCKER = set(DOCKER_CAPS)
KINDS = {   # kind: (seccomp profile or None, capabilities kept or None for all)
    "docker": (lambda: docker_profile(DOCKER), DOCKER),
    "kubernetes": (None, DOCKER),
    "docker-sys-admin": (lambda: docker_profile(DOCKER | {"CAP_SYS_ADMIN"}), DOCKER | {"CAP_SYS_ADMIN"}),
    "docker-as-advised": (None, DOCKER | {"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}),
    "keyctl-denied": (keyctl_denial, None),
}


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] not in KINDS or argv[1] != "--":
        sys.exit(f"usage: container_env.py {'|'.join(KINDS)} -- COMMAND...")
    profile, caps = KINDS[argv[0]]
    if profile is not None:
        load_filter(profile())
    if caps is not None:
        limit_capabilities({({**DOCKER_CAPS, **ADDED})[name] for name in caps})
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
