"""Shared helpers. Integration tests are marked `root`: CI runs as root, so they
never skip there; a developer without root sees why they skip."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOOBANK = os.path.join(REPO, "examples", "zoobank")
IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: chroot, setuid and chown are real in this test")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pspy(*args, env=None, timeout=120, check=False, input=None):
    """Run the pspy CLI as a user would; returns CompletedProcess with text output."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "pspy", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"pspy {' '.join(args)} failed ({proc.returncode}):\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def probe(jail, principal, code):
    """Run Python `code` as `principal` inside the jail; it must print one JSON value."""
    proc = pspy("exec", "--jail", jail, principal, "--", "python", "-c", textwrap.dedent(code))
    assert proc.returncode == 0, f"probe as {principal} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Probe code: attempt(fn) runs fn and reports "ok" or the exception's type name.
ATTEMPT = """
import json, os
def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as e:
        return type(e).__name__
"""

ACCESS_PROBE = ATTEMPT + """
def read(p):
    with open(p, "rb") as f:
        f.read(1)
def append(p):
    with open(p, "ab") as f:
        pass
paths = %r
print(json.dumps({p: {"read": attempt(lambda: read(p)), "write": attempt(lambda: append(p))} for p in paths}))
"""


def access_of(jail, principal, paths):
    return probe(jail, principal, ACCESS_PROBE % (list(paths),))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_app(root, files):
    """Create an app folder from {relative path: source text}."""
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
    return str(root)
