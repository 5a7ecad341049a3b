"""What a failed set-up step of a principal tells the person reading it.

Every step between fork (or clone) and exec that can fail is named by what
it does, the value it uses and the call that does it, e.g. "changing to
uid 40001 (setresuid)". Chroot mode's child (spawn.py) raises StepFailed
and sends it to the supervisor through a pipe; subprocess alone would say
only "Exception occurred in preexec_fn". Namespace mode's C path
(pspy/_native/spawn.c) writes the same kind of text, with errno, into its
request. ``describe`` makes the message, with a hint where the errno says
something about where pspy runs: most often a container's capabilities
or seccomp profile.

The step texts end with the call in parentheses: the hints are chosen by it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re

from ..errors import SandboxError

CAP_SYS_CHROOT = 18
CAP_SYS_ADMIN = 21
CAP_NET_ADMIN = 12
CAP_SETGID = 6
CAP_SETUID = 7

KEYRING_STEP = "joining a fresh session keyring (keyctl KEYCTL_JOIN_SESSION_KEYRING)"
# Making namespaces and mounting: what namespace mode needs and a container denies by default.
NAMESPACE_CALLS = ("unshare", "setns", "mount", "umount2", "pivot_root", "sethostname", "clone", "netlink")


class StepFailed(SandboxError):
    """A set-up step failed: ``step`` names it, ``errno`` says why."""

    def __init__(self, step: str, err: int):
        self.step, self.errno = step, err
        super().__init__(step, err)

    def __str__(self) -> str:
        # Made when read, in the parent: the child may be in its jail, without /proc.
        return describe(None, self.step, self.errno)


@contextlib.contextmanager
def step(text: str):
    """Run a block as the step ``text``: an OSError in it becomes StepFailed."""
    try:
        yield
    except OSError as e:
        raise StepFailed(text, e.errno or errno.EPERM) from None


def send(fd: int, failure: StepFailed) -> None:
    """The child's side: one record, "ERRNO STEP", for ``receive``."""
    try:
        os.write(fd, f"{failure.errno} {failure.step}".encode(errors="replace")[:4000])
    except OSError:
        pass   # the parent is gone: nobody to tell


def receive(fd: int) -> tuple[str, int] | None:
    """The parent's side, after the child failed: (step, errno), or None if it sent nothing."""
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return None
    number, _, text = data.decode(errors="replace").partition(" ")
    if not number.isdigit() or not text:
        return None
    return text, int(number)


def describe(who: str | None, step: str, err: int) -> str:
    """"Bank: changing to uid 40001 (setresuid) failed: Operation not permitted (EPERM) — hint"."""
    name = errno.errorcode.get(err, str(err))
    text = f"{who + ': ' if who else ''}{step} failed: {os.strerror(err)} ({name})"
    advice = hint(step, err)
    return f"{text} — {advice}" if advice else text


def _call(step: str) -> str:
    """The call a step text names last, in parentheses: "(setresuid)" -> "setresuid"."""
    found = re.findall(r"\((\w+)", step)
    return found[-1] if found else ""


def hint(step: str, err: int) -> str | None:
    call = _call(step)
    facts = environment()
    if call == "keyctl" and err in (errno.EPERM, errno.ENOSYS):
        return ("a container's seccomp profile may deny keyctl (Docker's default denies keyctl, add_key and "
                "request_key). pspy goes on without a fresh keyring only where all three are denied, so that "
                "the principal cannot reach the keyring it keeps; here add_key or request_key is allowed. "
                "Deny all three, or allow keyctl")
    if call == "keyctl" and err == errno.EDQUOT:
        return "root's key quota is used up (/proc/sys/kernel/keys/root_maxkeys)"
    if call in NAMESPACE_CALLS and err in (errno.EPERM, errno.EACCES, errno.ENOSYS):
        return namespace_advice(facts, proc="proc" in step and call == "mount")
    if call == "chroot" and err == errno.EPERM:
        return _lacking(CAP_SYS_CHROOT, "SYS_CHROOT", facts)
    if call in ("setgroups", "setresgid") and err == errno.EPERM:
        return _lacking(CAP_SETGID, "SETGID", facts)
    if call == "setresuid" and err == errno.EPERM:
        return _lacking(CAP_SETUID, "SETUID", facts)
    if call in ("setgroups", "setresgid", "setresuid") and err == errno.EINVAL:
        return ("the id is not mapped in the user namespace this runs in (see /proc/self/uid_map and "
                "gid_map): a container with remapped ids (userns-remap, rootless Docker or Podman) maps "
                "only a range; give --uid-base and --gid-base inside it")
    if call == "write" and "cgroup" in step and err in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ("the cgroup file system is not writable here (a container's is read-only unless its cgroup "
                "is delegated to it); remove the limits that need cgroups (memory, processes, cpu) from "
                "pspy.toml, or run pspy where it may manage cgroups")
    if call == "chdir" and err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
        return "the jail's copy of the app is missing or damaged; run pspy bootstrap again"
    if call == "setrlimit" and err == errno.EPERM:
        return ("the limit is above the hard limit pspy itself runs under (ulimit -H; a container's "
                "--ulimit); lower it in pspy.toml or raise pspy's")
    if err in (errno.EPERM, errno.ENOSYS) and facts:
        return "; ".join(facts) + " (a container's seccomp profile may deny this call)"
    return None


def namespace_advice(facts: list[str] | None = None, proc: bool = False) -> str:
    """What a container must allow for namespace mode, after what this process lacks."""
    facts = environment() if facts is None else facts
    said = f"{'; '.join(facts)}. " if facts else ""
    masked = ("A container masks parts of its /proc, and the kernel then refuses a new proc mount to "
              "a user namespace: add --security-opt systempaths=unconfined. " if proc else "")
    return ("namespace mode makes namespaces (unshare, setns), mounts file systems (mount, umount2, "
            "pivot_root) and brings up lo in each principal's network namespace, which needs CAP_SYS_ADMIN, "
            "CAP_NET_ADMIN and a seccomp profile that allows those calls (Docker's default denies pivot_root "
            f"even with CAP_SYS_ADMIN); {said}{masked}In Docker allow it with --cap-add SYS_ADMIN --cap-add "
            "NET_ADMIN --security-opt seccomp=unconfined (or a profile of yours that also allows unshare, "
            "setns, mount, umount2 and pivot_root), plus --security-opt apparmor=unconfined where AppArmor "
            "is on, or with --privileged; in Kubernetes with securityContext.capabilities.add [SYS_ADMIN, "
            "NET_ADMIN] and seccompProfile.type Unconfined, or privileged: true. Or leave out --namespaces: "
            "chroot mode needs only a container's default capabilities")


def _lacking(cap: int, name: str, facts: list[str]) -> str:
    if not has_capability(cap):
        return (f"this process lacks CAP_{name} (a container started with --cap-drop {name}, or a pod whose "
                f"securityContext drops it: add it back with --cap-add {name} or capabilities.add)")
    return "; ".join(facts) + " (a seccomp profile may deny this call)" if facts else ""


def _status() -> dict[str, str]:
    try:
        with open("/proc/self/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def has_capability(cap: int) -> bool:
    value = _status().get("CapEff")
    return value is None or bool(int(value, 16) >> cap & 1)


def environment() -> list[str]:
    """What about this process explains a denial: missing capabilities, a seccomp filter."""
    status = _status()
    facts = []
    lacking = [name for cap, name in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
               if not has_capability(cap)]
    if lacking:
        facts.append(f"this process lacks {' and '.join(lacking)}")
    if status.get("Seccomp", "0").strip() == "2":
        facts.append("a seccomp filter is loaded on it (Seccomp: 2 in /proc/self/status)")
    return facts


def keyring_warning(name: str) -> str:
    """What a principal that keeps the inherited session keyring loses (and does not)."""
    return (f"pspy: warning: {name} keeps the session keyring of whoever started pspy: keyctl is denied "
            "here (a container's seccomp profile?), and so are add_key and request_key, to it as well, so it "
            "can neither read nor change a key there (docs/containers.md)\n")
