"""Run a command as a container runtime's defaults would let it run.

    python tests/container_env.py docker -- pspy bootstrap ...
    python tests/container_env.py kubernetes -- ...
    python tests/container_env.py keyctl-denied -- ...

``docker``: what `docker run` gives a container by default, as far as one
process can make it: the capability bounding set cut to Docker's default
list (so root's exec gets those and no more) and a seccomp filter that
denies what Docker's default profile denies to a container without
CAP_SYS_ADMIN and that matters to pspy: the keyring calls, unshare,
setns, mount, umount2, pivot_root, clone with a CLONE_NEW* flag (EPERM)
and clone3 (ENOSYS, so that glibc falls back to clone). Like runc, the
filter is loaded with CAP_SYS_ADMIN still held and without no_new_privs.

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
import os
import sys

# Docker's default capability list (moby's oci/caps/defaults.go; containerd's is the same).
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
DOCKER_CAPS = {"chown": 0, "dac_override": 1, "fowner": 3, "fsetid": 4, "kill": 5, "setgid": 6, "setuid": 7,
               "setpcap": 8, "net_bind_service": 10, "net_raw": 13, "sys_chroot": 18, "mknod": 27,
               "audit_write": 29, "setfcap": 31}

NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


def docker_denials() -> dict:
    """An OCI profile: everything allowed but what Docker's default profile
    denies without CAP_SYS_ADMIN (the calls pspy's set-up uses)."""
    eperm = {"action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    rules = [dict(eperm, names=["keyctl", "add_key", "request_key", "unshare", "setns", "mount", "umount2",
                                "pivot_root"]),
             {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    # Docker allows clone only when arg0 & 0x7E020000 == 0: denied here for each flag.
    for flag in NAMESPACE_FLAGS:
        rules.append(dict(eperm, names=["clone"], args=[{"index": 0, "value": flag, "valueTwo": flag,
                                                           "op": "SCMP_CMP_MASKED_EQ"}]))
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}


def docker_sys_admin_denials() -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["keyctl", "add_key", "request_key", "pivot_root"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 1}]}


def keyctl_denial() -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}


def load_filter(profile: dict) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER) with CAP_SYS_ADMIN and without no_new_privs, as runc does."""
    from pspy.seccomp import compile_bpf
    program = compile_bpf(profile)

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


KINDS = {   # kind: (seccomp profile or None, capabilities kept or None for all)
    "docker": (docker_denials, set(DOCKER_CAPS.values())),
    "kubernetes": (None, set(DOCKER_CAPS.values())),
    "docker-sys-admin": (docker_sys_admin_denials, set(DOCKER_CAPS.values()) | {CAP_SYS_ADMIN}),
    "docker-as-advised": (None, set(DOCKER_CAPS.values()) | {CAP_SYS_ADMIN, CAP_NET_ADMIN}),
    "keyctl-denied": (keyctl_denial, None),
}


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] not in KINDS or argv[1] != "--":
        sys.exit(f"usage: container_env.py {'|'.join(KINDS)} -- COMMAND...")
    profile, caps = KINDS[argv[0]]
    if profile is not None:
        load_filter(profile())
    if caps is not None:
        limit_capabilities(caps)
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
