"""pspy exec: the principal's identity and jail, and none of root's terminal."""

import os
import pty
import select
import sys

import pytest

from conftest import ZOOBANK, probe, pspy

pytestmark = pytest.mark.root

TIOCSTI_PROBE = """
import fcntl, os, termios
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"x")
    print("injected")
except OSError as e:
    print("refused", e.errno)
print("tty", os.isatty(0), os.isatty(1))
"""


@pytest.fixture(scope="module")
def jail(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("exec") / "jail")
    pspy("bootstrap", ZOOBANK, "--jail", path, "--no-run", check=True)
    return path


def _run_on_a_terminal(argv, timeout=30):
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, *argv])
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            break
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_principal_cannot_type_into_roots_terminal(jail):
    code, out = _run_on_a_terminal(["-m", "pspy", "exec", "--jail", jail, "web", "--", "python", "-c", TIOCSTI_PROBE])
    assert code == 0, out
    assert "refused" in out and "injected" not in out
    assert "tty False False" in out   # control: its output still reached the terminal


def test_exec_runs_with_the_principals_ids_in_the_app_root(jail):
    seen = probe(jail, "Bank", "import json, os; print(json.dumps([os.getuid(), os.getgid(), os.getcwd()]))")
    plan = pspy("analyze", "--jail", jail, "--format", "json", check=True).stdout
    import json
    bank = next(p for p in json.loads(plan)["principals"] if p["name"] == "Bank")
    assert seen == [bank["uid"], bank["gid"], "/app"]


def test_exec_of_a_missing_program_is_a_clear_error(jail):
    proc = pspy("exec", "--jail", jail, "web", "--", "id")
    assert proc.returncode == 1
    assert "id" in proc.stderr and "Traceback" not in proc.stderr
