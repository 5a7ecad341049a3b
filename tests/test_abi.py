"""Every system call ABI of the machine goes through the filter.

A 64-bit x86 process can still make i386 system calls (``int 0x80``, i386
numbers, seen by seccomp as AUDIT_ARCH_I386) and x32 ones (``syscall`` with
bit 30 set in the number, seen as AUDIT_ARCH_X86_64). A filter built for the
x86_64 numbers only would let ``mount`` (21 on i386) and ``unshare`` (310)
through that way; pspy's filter holds only the native ABI and kills the
process at any call of another one, before the kernel runs it (libseccomp's
bad-arch action, SCMP_ACT_KILL_PROCESS; README, "Derived rules").

The calls are made from inside real principals of tests/apps/filtered
(namespace mode, where the kernel would let an unprivileged process make a
user namespace), by machine code in an executable page mapped below 4 GiB so
that i386 pointer arguments reach their strings. Each denial sits next to the
same machine code in ``Open``, the app's principal without a filter, where it
does reach the kernel.
"""

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from conftest import REPO, probe, pspy

FILTERED = os.path.join(REPO, "tests", "apps", "filtered")

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(platform.machine() != "x86_64", reason="i386 and x32 ABIs exist on x86_64 only")]

# Probe code: i386(nr, *args) and x32(nr, *args) make one system call through
# that ABI and return the raw result (-errno on failure); low(s) puts a
# string where an i386 pointer (32 bits) can reach it.
ABI = """
import ctypes, json, mmap, os, sys
MAP_32BIT = 0x40
_page = mmap.mmap(-1, 8192, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_32BIT,
                  prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
_base = ctypes.addressof(ctypes.c_char.from_buffer(_page))
_next = [4096]

def _imm(v):
    return (v & 0xffffffff).to_bytes(4, "little")

def low(s):
    at = _next[0]
    _page[at:at + len(s) + 1] = s + b"\\0"
    _next[0] += len(s) + 1
    return _base + at

def _run(code):
    _page[0:len(code)] = code
    return ctypes.CFUNCTYPE(ctypes.c_int)(_base)()

def i386(nr, *args):
    a = list(args) + [0] * (5 - len(args))
    # push rbx; mov eax, nr; mov ebx/ecx/edx/esi/edi, args; int 0x80; pop rbx; ret
    return _run(b"\\x53\\xb8" + _imm(nr) + b"\\xbb" + _imm(a[0]) + b"\\xb9" + _imm(a[1]) + b"\\xba" + _imm(a[2])
                + b"\\xbe" + _imm(a[3]) + b"\\xbf" + _imm(a[4]) + b"\\xcd\\x80\\x5b\\xc3")

def x32(nr, *args):
    a = list(args) + [0] * (5 - len(args))
    # mov eax, nr | X32_SYSCALL_BIT; mov edi/esi/edx/r10d/r8d, args; syscall; ret
    return _run(b"\\xb8" + _imm(nr | 0x40000000) + b"\\xbf" + _imm(a[0]) + b"\\xbe" + _imm(a[1])
                + b"\\xba" + _imm(a[2]) + b"\\x41\\xba" + _imm(a[3]) + b"\\x41\\xb8" + _imm(a[4]) + b"\\x0f\\x05\\xc3")

def ns():
    return {k: os.readlink(f"/proc/self/ns/{k}") for k in ("user", "mnt", "uts")}

def mounts():
    with open("/proc/self/mountinfo") as f:
        return f.read()

def say(value):
    print(json.dumps(value), flush=True)
"""

CLONE_NEWUSER = 0x10000000
I386_GETPID, I386_MOUNT, I386_UNSHARE = 20, 21, 310
X32_GETPID, X32_MOUNT, X32_UNSHARE = 39, 165, 272
BAD_POINTER = 1   # an fstype the kernel copies first: a mount that runs fails EFAULT


@pytest.fixture(scope="module")
def jail(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("abi") / "jail")
    pspy("bootstrap", FILTERED, "--jail", path, "--namespaces", "--detach", check=True)
    yield path
    pspy("stop", "--jail", path)


def _host_pid(marker):
    """The host pid of the probe whose command line holds ``marker``: the one
    in another PID namespace than this test (not `pspy exec` itself)."""
    ours = os.readlink("/proc/self/ns/pid")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            if os.readlink(f"/proc/{pid}/ns/pid") != ours:
                return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no probe process with {marker}")


UNSHARE_PROBE = ABI + """
before = ns(), mounts()
out = {"before": before[0], "i386 unshare": i386(310, 0x10000000),
       "i386 mount": i386(21, low(b"none"), low(b"/tmp"), low(b"tmpfs")),
       "i386 mount, bad fstype": i386(21, low(b"none"), low(b"/tmp"), 1)}
out["after"] = ns()
out["mounts unchanged"] = mounts() == before[1]
say(out)
sys.stdin.readline()   # the test looks at this process from outside meanwhile
"""


def _unshare_and_mount(jail, principal):
    """UNSHARE_PROBE as ``principal``, and this process's namespaces as the
    host sees them after its attempts."""
    marker = f"abi-probe-{uuid.uuid4().hex}"
    code = textwrap.dedent(f"# {marker}\n" + UNSHARE_PROBE)
    proc = subprocess.Popen([sys.executable, "-m", "pspy", "exec", "--jail", jail, principal, "--",
                             "python", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        out = json.loads(line)
        pid = _host_pid(marker)
        outside = {k: os.readlink(f"/proc/{pid}/ns/{k}") for k in ("user", "mnt", "uts")}
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        return out, outside
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_without_a_filter_i386_mount_and_unshare_reach_the_kernel(jail):
    # The control for the next test: the same machine code, in the principal
    # without a filter, makes the user namespace (seen from the host too)
    # and the kernel copies the mount's arguments (EFAULT on the bad one).
    bare, outside = _unshare_and_mount(jail, "Open")
    assert bare["i386 unshare"] == 0
    assert bare["after"]["user"] != bare["before"]["user"] and outside["user"] == bare["after"]["user"]
    assert bare["i386 mount, bad fstype"] == -errno.EFAULT


# Each foreign call in a child of its own: the filter kills the process that
# makes one. A child that gets its call's result back exits 100.
FOREIGN = ABI + """
import signal
calls = {"i386 getpid": lambda: i386(20), "i386 unshare": lambda: i386(310, 0x10000000),
         "i386 mount": lambda: i386(21, low(b"none"), low(b"/tmp"), low(b"tmpfs")),
         "i386 mount, bad fstype": lambda: i386(21, low(b"none"), low(b"/tmp"), 1),
         "x32 getpid": lambda: x32(39), "x32 unshare": lambda: x32(272, 0x10000000),
         "x32 mount, bad fstype": lambda: x32(165, low(b"none"), low(b"/tmp"), 1)}
ended, before = {}, (mounts(), ns())
for name, call in calls.items():
    pid = os.fork()
    if pid == 0:
        call()
        os._exit(100)
    _, status = os.waitpid(pid, 0)
    ended[name] = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
libc = ctypes.CDLL(None, use_errno=True)
native_mount = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)
say({"getpid": os.getpid(), "native mount": [native_mount, ctypes.get_errno()], "ended": ended,
     "unchanged": (mounts(), ns()) == before})
"""


def test_any_i386_or_x32_call_kills_the_process_before_it_runs_and_native_ones_are_filtered_as_usual(jail):
    bare = probe(jail, "Open", FOREIGN)
    assert set(bare["ended"].values()) == {100}   # control: every call came back, unfiltered
    for principal in ("Guard", "Lax"):   # the default profile, and a deny-list that allows (and logs) the rest
        out = probe(jail, principal, FOREIGN)
        assert out["getpid"] > 1, principal                                    # native: allowed
        assert out["native mount"] == [-1, errno.EPERM], principal             # native: denied as usual
        # Killed at the call, even a harmless one: no result ever came back,
        # so no mount was made and no namespace entered.
        assert out["ended"] == {name: "SIGSYS" for name in bare["ended"]}, principal
        assert out["unchanged"], principal   # the children shared these mounts and namespaces


KILLED = ABI + """
say({"getpid": os.getpid()})
say({"{abi} getpid": {abi}(20 if "{abi}" == "i386" else 39)})
"""


@pytest.mark.parametrize("abi", ["i386", "x32"])
def test_with_default_action_kill_a_call_of_another_abi_kills_the_process(jail, abi):
    proc = pspy("exec", "--jail", jail, "Killer", "--", "python", "-c",
                textwrap.dedent(KILLED.replace("{abi}", abi)))
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["getpid"] > 1, proc.stdout + proc.stderr   # native: ran
    assert proc.returncode == 128 + signal.SIGSYS, proc.stdout + proc.stderr   # killed at the foreign call
