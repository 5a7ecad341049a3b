"""Services of the test app `filtered`: each makes a system call its filter
allows or denies, and reports what happened."""

import ctypes
import errno
import os
import platform
import socket
import subprocess
import sys

import pspy

_libc = ctypes.CDLL(None, use_errno=True)


def _outcome(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _mount():
    if _libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# Guard: the 'default' profile (no seccomp= given).
@pspy.service(service_provider="Guard", perms={"data/guard/": 0o700})
def attempt(what):
    calls = {
        "mount": _mount,
        "inet socket": lambda: socket.socket(socket.AF_INET).close(),
        "unix socket": lambda: socket.socket(socket.AF_UNIX).close(),
        "write own data": lambda: open("data/guard/x", "w").close(),
        "unshare": lambda: _check(_libc.unshare(0x10000000)),   # CLONE_NEWUSER
        "clone newuser": lambda: _clone(0x10000000 | 0x40000000),  # CLONE_NEWUSER | CLONE_NEWNET
        "clone3": lambda: _check(_libc.syscall(435, None, 0)),
        "python child": _python_child,
    }
    return _outcome(calls[what])


def _clone(flags):
    nr = {"x86_64": 56, "aarch64": 220}[platform.machine()]
    pid = _libc.syscall(nr, flags | 17, None, None, None, None)   # | SIGCHLD
    if pid == 0:
        os._exit(0)   # the child: had the filter let it through, it would hold new namespaces
    _check(-1 if pid < 0 else 0)
    os.waitpid(pid, 0)


def _python_child():
    # A Python child of a filtered principal starts under the same filter.
    done = subprocess.run([sys.executable, "-c", "print(42)"], capture_output=True, text=True)
    if done.returncode != 0 or done.stdout.strip() != "42":
        raise OSError(errno.EIO, f"child exited with {done.returncode}: {done.stderr[-200:]}")


def _check(result):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pspy.service(service_provider="Guard")
def alive():
    return "yes"


# Killer: denied calls kill the process.
@pspy.service(service_provider="Killer", seccomp={"default_action": "kill"})
def mount_and_die():
    return _outcome(_mount)


@pspy.service(service_provider="Killer")
def killer_alive():
    return "yes"


# Sock: its profile allows socket() for every domain, but network=False
# (the default) still keeps it to Unix sockets.
@pspy.service(service_provider="Sock", seccomp={"allow": ["socket"]})
def make_socket(family):
    return _outcome(lambda: socket.socket(getattr(socket, family)).close())


# Open: no filter at all, the control for what the filters change.
@pspy.service(service_provider="Open", seccomp="none")
def open_alive():
    return "yes"


# Lax: a deny-list (everything allowed but unshare, and logged): other ABIs
# must still be refused.
@pspy.service(service_provider="Lax", seccomp={"default_action": "log", "deny": ["unshare"]})
def lax_alive():
    return "yes"
