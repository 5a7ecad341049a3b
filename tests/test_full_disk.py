"""A full disk does not take the app down, in chroot and namespace mode.

The jail lives on a small tmpfs of its own. The Bank provider fills it from
inside, writing its own data until ENOSPC, as any principal that owns data
can; then its process is killed from the host. The supervisor, whose logs
and run state share that disk, must keep restarting Bank (the copy that
takes over was prepared on the full disk), keep Auth serving, leave what
was written before intact, keep ``pspy status`` working, and once space is
back, report the writes it lost and log again.
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import OUTCOME, probe, provider_pid, pspy, run_state, status_rows, write_app

APP = {
    "bank.py": """
        import os
        import sys

        import pspy

        @pspy.service(service_provider="Bank", perms={"db/bank/": 0o700})
        def balance(user):
            return 10

        @pspy.service(service_provider="Bank")
        def record(entry):
            with open("db/bank/ledger", "a") as f:
                f.write(entry + "\\n")

        @pspy.service(service_provider="Bank")
        def fill(name):
            # Its own data, which it may write: until the disk is full.
            written = 0
            with open(os.path.join("db/bank", name), "wb", buffering=0) as f:
                try:
                    while True:
                        written += f.write(b"\\0" * 65536)
                except OSError as e:
                    return [written, e.errno]

        @pspy.service(service_provider="Bank")
        def shout(size):
            # Output for its log, which the supervisor writes on the full disk.
            sys.stderr.write("shout " + "x" * size + "\\n")
            sys.stderr.flush()
        """,
    "auth.py": """
        import pspy

        @pspy.service(service_provider="Auth")
        def login(user, password):
            return password == "secret"
        """,
    "db/bank/ledger": "alice 10\nbob 10\n",
}
FILLER = "filler"
CALL = OUTCOME + "import bank, auth\n"
MARGIN = 8 << 20   # chroot mode: free space left on the tmpfs after bootstrap, for Bank to fill


def _wait(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _calls(jail, first=""):
    """One call to each provider from the front end (after ``first``, code
    run there too): [balance, login] outcomes."""
    return probe(jail, "web", CALL + first + "\nprint(json.dumps([outcome(lambda: bank.balance('alice')), "
                                             "outcome(lambda: auth.login('alice', 'secret'))]))")


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _kill_bank_and_wait(jail, restarts):
    """SIGKILL Bank's own process from the host; wait until the supervisor
    has put another copy in its place (``restarts`` restarts in all)."""
    old = run_state(jail)["principals"]["Bank"]["pid"]
    os.kill(provider_pid(jail, "Bank"), signal.SIGKILL)
    _wait(lambda: (bank := run_state(jail)["principals"]["Bank"])["restarts"] == restarts
          and bank["pid"] not in (None, old), f"Bank restarted ({restarts})")


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def app(request, tmp_path_factory):
    """The app bootstrapped (detached) into a jail on a tmpfs of its own;
    what each test saw is kept here for the next."""
    top = tmp_path_factory.mktemp(f"full-disk-{request.param}")
    source = write_app(top / "app", APP)
    disk = str(top / "disk")
    os.mkdir(disk, 0o700)
    # chroot mode copies the interpreter into the jail: room for it first, then the disk is cut to fit.
    size = "2g" if request.param == "chroot" else "16m"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", disk], check=True)
    jail = os.path.join(disk, "jail")
    try:
        flags = ["--namespaces"] if request.param == "namespaces" else []
        pspy("bootstrap", source, "--jail", jail, "--detach", *flags, check=True, timeout=300)
        if request.param == "chroot":
            st = os.statvfs(disk)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            subprocess.run(["mount", "-o", f"remount,size={used + MARGIN}", disk], check=True)
        yield {"jail": jail, "disk": disk, "mode": request.param}
    finally:
        pspy("stop", "--jail", jail)
        if subprocess.run(["umount", disk]).returncode != 0:
            subprocess.run(["umount", "--lazy", disk], check=True)


def _files(jail):
    """What was written before the disk filled: the app's data, the logs and the run state."""
    logs = os.path.join(jail, ".pspy", "logs")
    paths = [os.path.join(jail, "app", "db", "bank", "ledger")]
    paths += [os.path.join(logs, name) for name in sorted(os.listdir(logs))]
    return {path: _read(path) for path in paths}


@pytest.mark.root
def test_a_principal_that_fills_the_disk_cannot_stop_the_supervisor(app):
    jail = app["jail"]
    # control: both answer before; Bank records data of its own
    assert _calls(jail, first="bank.record('carol 10')") == [["ok", 10], ["ok", True]]
    app["before"] = _files(jail)
    app["ledger"] = _sha(os.path.join(jail, "app", "db", "bank", "ledger"))
    supervisor = run_state(jail)["supervisor"]
    # The forbidden attempt, from inside: Bank fills the disk with its own
    # data, and logs more than the supervisor can append then.
    written, code, shout = probe(jail, "web", CALL + f"filled = bank.fill({FILLER!r})\n"
                                 "print(json.dumps([*filled, outcome(lambda: bank.shout(300000))]))")
    assert code == errno.ENOSPC and written > 0 and shout == ["ok", None]
    assert os.statvfs(app["disk"]).f_bavail == 0
    app["full_since"] = time.time()
    # Bank dies: the supervisor lives, puts its ready copy in its place,
    # prepares the next one on the full disk, and that one takes over at
    # the next death.
    _kill_bank_and_wait(jail, 1)
    _wait(lambda: run_state(jail)["principals"]["Bank"]["spare_ready"], "a ready copy prepared on the full disk")
    _kill_bank_and_wait(jail, 2)
    assert _alive(supervisor) and run_state(jail)["supervisor"] == supervisor
    assert _calls(jail) == [["ok", 10], ["ok", True]]   # Bank answers again; Auth never stopped
    assert os.statvfs(app["disk"]).f_bavail == 0        # and the disk is still full


@pytest.mark.root
def test_status_works_on_the_full_disk_and_counts_the_lost_writes(app):
    jail = app["jail"]
    assert os.statvfs(app["disk"]).f_bavail == 0
    rows = status_rows(jail)
    assert rows["Bank"]["running"] and rows["Bank"]["restarts"] == 2 and rows["Bank"]["answers"]
    assert rows["Auth"]["running"] and rows["Auth"]["answers"]
    lost = json.loads(pspy("status", "--jail", jail, "--format", "json", check=True).stdout)["lost_writes"]
    assert lost["logs"]["writes"] >= 1 and lost["logs"]["errno"] == "ENOSPC" and lost["logs"]["failing"], lost
    assert lost["logs"]["since"] <= app["full_since"]


@pytest.mark.root
def test_what_was_written_before_the_disk_filled_is_intact(app):
    jail = app["jail"]
    assert _sha(os.path.join(jail, "app", "db", "bank", "ledger")) == app["ledger"]
    assert _read(os.path.join(jail, "app", "db", "bank", "ledger")).endswith(b"carol 10\n")
    for path, before in app["before"].items():
        assert _read(path).startswith(before), f"{path} lost what it held before the disk filled"
    assert run_state(jail)["principals"]["Bank"]["restarts"] == 2   # the state is whole JSON, and current


@pytest.mark.root
def test_once_space_is_back_status_reports_the_lost_writes_and_logging_resumes(app):
    jail = app["jail"]
    os.unlink(os.path.join(jail, "app", "db", "bank", FILLER))
    assert os.statvfs(app["disk"]).f_bavail > 0
    _kill_bank_and_wait(jail, 3)   # a death to log, and a start
    assert _calls(jail) == [["ok", 10], ["ok", True]]
    logs = os.path.join(jail, ".pspy", "logs")
    bank_log = _read(os.path.join(logs, "Bank.log")).decode(errors="replace")
    notice = bank_log.rfind("bytes of output dropped: No space left on device ---")
    assert notice >= 0 and bank_log.find("--- pspy: starting Bank", notice) > notice, bank_log[-2000:]
    _wait(lambda: "can be written again" in _read(os.path.join(logs, "supervisor.log")).decode(),
          "the supervisor's note that its writes work again")
    out = pspy("status", "--jail", jail, check=True).stdout
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("logs: ")]
    assert len(lines) == 1 and " writes lost to a full disk since " in lines[0], out
    assert "still failing" not in lines[0], out
    # Detached, the supervisor's messages went to supervisor.log on the full disk too.
    assert "messages: " in out and "lost to a full disk" in out, out


# --- the pieces, on their own ---------------------------------------------------------------

def _state_file(folder):
    from types import SimpleNamespace

    from pspy.supervisor_writes import StateFile
    run = os.path.join(folder, ".pspy", "run")
    os.makedirs(run)
    return StateFile(SimpleNamespace(host_path=lambda p: os.path.join(folder, p.lstrip("/"))))


@pytest.mark.root
def test_the_state_is_replaced_on_a_full_disk_and_a_write_that_cannot_fit_leaves_it_whole(tmp_path):
    disk = str(tmp_path / "small")
    os.mkdir(disk, 0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", disk], check=True)
    try:
        state = _state_file(disk)
        state.write({"n": 1})
        state.write({"n": 2})   # both files hold their reserve now
        with open(os.path.join(disk, "filler"), "wb", buffering=0) as f:
            with pytest.raises(OSError) as full:
                while True:
                    f.write(b"\0" * 65536)
        assert full.value.errno == errno.ENOSPC
        state.write({"n": 3})   # into blocks it already holds
        assert json.load(open(state.path)) == {"n": 3}
        with pytest.raises(OSError) as grown:
            state.write({"n": 4, "pad": "x" * 200000})   # past the reserve: needs space there is not
        assert grown.value.errno == errno.ENOSPC
        assert json.load(open(state.path)) == {"n": 3}   # the state is still the last whole one
        state.write({"n": 5})
        assert json.load(open(state.path)) == {"n": 5}
        state.remove()
        assert os.listdir(os.path.dirname(state.path)) == []
    finally:
        subprocess.run(["umount", disk], check=True)


def test_lost_writes_are_counted_per_kind_and_said_once_per_run_of_failures():
    from pspy.supervisor_writes import LostWrites
    said = []
    lost = LostWrites(said.append)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    for _ in range(3):
        lost.lost("logs", full)
    lost.lost("state", OSError(errno.EIO, os.strerror(errno.EIO)))
    assert len(said) == 2 and "principals' logs" in said[0] and "No space left" in said[0]
    lost.ok("logs")
    lost.ok("logs")
    assert len(said) == 3 and "3 write(s) lost" in said[2]
    summary = lost.summary()
    assert summary["logs"]["writes"] == 3 and summary["logs"]["errno"] == "ENOSPC"
    assert not summary["logs"]["failing"] and summary["state"]["failing"]


def test_a_log_that_cannot_be_opened_is_a_counted_loss_not_an_error(tmp_path):
    from pspy.supervisor_writes import LostWrites, open_log
    os.symlink(tmp_path, tmp_path / "logs")   # refused, as ever: nothing is written through it
    lost = LostWrites(lambda _text: None)
    assert open_log(str(tmp_path / "logs" / "Bank.log"), 1 << 20, 1, lost) is None
    assert lost.summary()["logs"]["writes"] == 1
    assert not os.path.exists(tmp_path / "Bank.log")


def test_status_says_how_many_writes_were_lost_to_what_and_since_when():
    from pspy.running import describe_lost_writes
    since = time.mktime((2026, 1, 2, 18, 40, 0, 0, 0, -1))
    lines = describe_lost_writes({
        "logs": {"writes": 12, "since": since, "errno": "ENOSPC", "error": "No space left on device"},
        "state": {"writes": 1, "since": since, "errno": "EIO", "error": "Input/output error", "failing": True}})
    assert lines == ["logs: 12 writes lost to a full disk since 2026-01-02 18:40",
                     "state: 1 write lost to input/output error since 2026-01-02 18:40 (still failing)"]
