"""Per-principal logs: bounded on disk, never written through a link, read
back across rotations, and shown by ``pspy logs``."""

import errno
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import pspy, write_app
from pspy import logs
from pspy.logs import LineBuffer, LogError, LogFollower, LogWriter, format_lines, log_files, tail_lines


def _lines(start, stop, width=40):
    """Lines like 'line 00012 xxxx...\\n', each ``width`` bytes."""
    return [f"line {i:05d} ".ljust(width - 1, "x").encode() + b"\n" for i in range(start, stop)]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _on_disk(path):
    return b"".join(_read(p) for p in log_files(path))


def _fingerprint(path):
    st = os.lstat(path)
    return st.st_uid, st.st_mode, st.st_nlink, _read(path)


@pytest.fixture
def victim(tmp_path):
    """A file outside the log folder, standing for /etc/shadow."""
    path = tmp_path / "host-secret"
    path.write_text("root:secret\n")
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture
def log(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    return str(folder / "Bank.log")


# --- writing: the bound ----------------------------------------------------------------

def test_rotation_bounds_what_a_principal_can_take_on_disk(log):
    with LogWriter(log, max_bytes=1000, keep=2) as w:
        for line in _lines(0, 5000):
            w.write(line)
    folder = os.path.dirname(log)
    assert sorted(os.listdir(folder)) == ["Bank.log", "Bank.log.1", "Bank.log.2"]
    sizes = [os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)]
    assert max(sizes) <= 1000 and sum(sizes) <= 3 * 1000   # writes of whole lines: no slack used
    assert _on_disk(log).endswith(_lines(4999, 5000)[0])   # the newest output is kept, the oldest went


def test_one_huge_write_is_bounded_too(log):
    with LogWriter(log, max_bytes=1000, keep=3) as w:
        w.write(b"".join(_lines(0, 10000)))
    assert sum(os.path.getsize(p) for p in log_files(log)) <= 4 * 1000
    assert len(log_files(log)) == 4


def test_rotation_cuts_at_a_line_end_even_when_writes_split_lines(log):
    data = b"".join(_lines(0, 300, width=37))
    with LogWriter(log, max_bytes=500, keep=3) as w:
        for i in range(0, len(data), 23):   # writes that start and end in the middle of lines
            w.write(data[i:i + 23])
    files = log_files(log)
    assert len(files) == 4
    for path in files:
        content = _read(path)
        assert content.endswith(b"\n") and content.startswith(b"line "), path
        assert len(content) <= 500 + w.line_slack
    assert data.endswith(_on_disk(log))   # nothing lost or reordered inside what is kept


def test_the_bound_holds_for_output_in_pieces_that_never_end_a_line(log):
    with LogWriter(log, max_bytes=1000, keep=2) as w:
        for _ in range(1000):
            w.write(b"y" * 37)
    assert sum(os.path.getsize(p) for p in log_files(log)) <= 3 * 1000
    assert all(os.path.getsize(p) == 1000 for p in log_files(log))


def test_a_line_longer_than_a_file_is_split_into_whole_files(log):
    long_line = b"a" * 250 + b"\n"
    with LogWriter(log, max_bytes=100, keep=5) as w:
        w.write(b"short\n")
        w.write(long_line)
    assert _read(log + ".3") == b"short\n"          # rotated before the long line began
    assert [len(_read(p)) for p in log_files(log)] == [6, 100, 100, 51]
    assert _on_disk(log) == b"short\n" + long_line


@pytest.mark.parametrize("keep", [0, 1, 3])
def test_only_keep_old_files_are_kept(log, keep):
    with LogWriter(log, max_bytes=100, keep=keep) as w:
        for line in _lines(0, 100):
            w.write(line)
    expected = ["Bank.log"] + [f"Bank.log.{i}" for i in range(1, keep + 1)]
    assert sorted(os.listdir(os.path.dirname(log))) == expected


def test_a_full_log_left_by_an_earlier_run_is_rotated_at_the_first_write(log):
    with open(log, "wb") as f:
        f.write(b"old\n" * 50)
    os.chmod(log, 0o600)
    with LogWriter(log, max_bytes=100, keep=1) as w:
        w.write(b"new\n")
    assert _read(log) == b"new\n"
    assert _read(log + ".1") == b"old\n" * 50


def test_an_earlier_run_ending_mid_line_is_continued_on_a_line_of_its_own_by_note(log):
    with open(log, "wb") as f:
        f.write(b"half a line")
    with LogWriter(log) as w:
        w.note("--- pspy: starting Bank ---")
        w.write(b"hello\n")
    assert _read(log) == b"half a line\n--- pspy: starting Bank ---\nhello\n"


# --- writing: the file is the supervisor's own ---------------------------------------------

def test_log_files_are_created_0600_and_owned_by_the_writer(log):
    old_umask = os.umask(0)
    try:
        with LogWriter(log, max_bytes=10, keep=1) as w:
            w.write(b"1234567890\nabc\n")
    finally:
        os.umask(old_umask)
    for path in (log, log + ".1"):
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()


def test_a_symlink_in_place_of_the_log_is_replaced_and_its_target_untouched(log, victim):
    os.symlink(victim, log)
    before = _fingerprint(victim)
    with LogWriter(log) as w:
        w.write(b"hello\n")
    assert _fingerprint(victim) == before
    assert not os.path.islink(log) and _read(log) == b"hello\n"


def test_a_dangling_symlink_in_place_of_the_log_creates_nothing_at_its_target(log, tmp_path):
    target = tmp_path / "created-through-link"
    os.symlink(target, log)
    with LogWriter(log) as w:
        w.write(b"hello\n")
    assert not target.exists() and _read(log) == b"hello\n"


def test_a_symlink_in_place_of_a_rotated_file_is_replaced_not_followed(log, victim):
    os.symlink(victim, log + ".1")
    before = _fingerprint(victim)
    with LogWriter(log, max_bytes=10, keep=2) as w:
        for line in _lines(0, 5, width=8):
            w.write(line)
    assert _fingerprint(victim) == before
    assert not any(os.path.islink(p) for p in log_files(log))


def test_a_hard_link_in_place_of_the_log_is_replaced_and_the_other_file_untouched(log, victim):
    os.link(victim, log)
    before = _read(victim)
    with LogWriter(log) as w:
        w.write(b"hello\n")
    assert _read(victim) == before and os.stat(victim).st_nlink == 1
    assert _read(log) == b"hello\n"


def test_a_fifo_in_place_of_the_log_does_not_block_and_is_replaced(log):
    os.mkfifo(log)
    with LogWriter(log) as w:   # would hang if the FIFO were opened waiting for a reader
        w.write(b"hello\n")
    assert stat.S_ISREG(os.lstat(log).st_mode) and _read(log) == b"hello\n"


def test_a_folder_in_place_of_the_log_is_a_clear_error(log):
    os.mkdir(log)
    os.mkdir(os.path.join(log, "keep-me"))
    with pytest.raises(LogError, match=r"Bank\.log is a folder, not a log file; remove it"):
        LogWriter(log)
    assert os.path.isdir(os.path.join(log, "keep-me"))   # nothing of it removed


def test_a_log_folder_that_is_a_symlink_is_refused(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    os.symlink(real, tmp_path / "logs")
    with pytest.raises(LogError, match="is a symlink"):
        LogWriter(str(tmp_path / "logs" / "Bank.log"))
    assert os.listdir(real) == []


# --- writing: a full disk ------------------------------------------------------------------

class _FullDisk:
    """Stands for the os module in pspy.logs: every write fails with ENOSPC while ``full``."""

    def __init__(self):
        self.full = False

    def write(self, fd, data):
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    def __getattr__(self, name):
        return getattr(os, name)


def test_a_full_disk_drops_output_without_raising_and_says_so_when_space_returns(log, monkeypatch):
    disk = _FullDisk()
    monkeypatch.setattr(logs, "os", disk)
    with LogWriter(log) as w:
        w.write(b"before\n")
        disk.full = True
        w.write(b"lost 1\n")
        w.write(b"lost 2\n")
        assert w.dropped == 14
        disk.full = False
        w.write(b"after\n")
    assert _read(log) == b"before\n--- pspy: 14 bytes of output dropped: No space left on device ---\nafter\n"


def test_bytes_dropped_at_the_end_are_noted_at_close_if_space_returned(log, monkeypatch):
    disk = _FullDisk()
    monkeypatch.setattr(logs, "os", disk)
    w = LogWriter(log)
    disk.full = True
    w.write(b"lost\n")
    disk.full = False
    w.close()
    assert b"5 bytes of output dropped" in _read(log)


@pytest.mark.root
def test_a_really_full_filesystem_is_survived(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(folder)], check=True)
    try:
        log = str(folder / "Bank.log")
        w = LogWriter(log, max_bytes=1 << 20, keep=0)
        try:
            filler = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while os.write(filler, b"\0" * 4096):
                    pass
            except OSError as e:
                assert e.errno == errno.ENOSPC
            finally:
                os.close(filler)
            for line in _lines(0, 100):
                w.write(line)   # never raises
            assert w.dropped > 0
            os.unlink(folder / "filler")
            w.write(b"back\n")
        finally:
            w.close()
        content = _read(log)
        assert b"bytes of output dropped: No space left on device ---\nback\n" in content
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# --- reading -----------------------------------------------------------------------------

def test_tail_reads_across_rotated_files_oldest_first(log):
    with LogWriter(log, max_bytes=100, keep=3) as w:
        for i in range(50):   # 12 lines a file: .3 .2 .1 full, the first 12 lines deleted
            w.write(f"line {i:02d}\n".encode())
    assert len(log_files(log)) == 4
    assert tail_lines(log, 15) == [f"line {i:02d}" for i in range(35, 50)]   # spans three files
    assert tail_lines(log, 1000) == [f"line {i:02d}" for i in range(12, 50)]


def test_tail_rejoins_a_line_that_rotation_split_and_shows_an_unfinished_last_line(log):
    with LogWriter(log, max_bytes=100, keep=3) as w:
        w.write(b"first\n" + b"b" * 150 + b"\nunfinished")
    assert tail_lines(log, 2) == ["b" * 150, "unfinished"]
    assert tail_lines(log, 0) == []


def test_tail_of_a_missing_log_is_empty_and_a_symlinked_log_is_not_followed(log, victim):
    assert tail_lines(log, 5) == []
    os.symlink(victim, log)
    assert tail_lines(log, 5) == []


def test_line_buffer_keeps_whole_lines_and_bounds_an_unfinished_one():
    buf = LineBuffer(max_line=10)
    assert buf.feed(b"one\ntw") == ["one"]
    assert buf.feed(b"o\n") == ["two"]
    assert buf.feed(b"x" * 25) == ["x" * 10, "x" * 10]
    assert buf.flush() == ["x" * 5] and buf.flush() == []


# --- following ---------------------------------------------------------------------------

def test_follower_starts_with_the_last_lines_then_gives_new_ones_across_rotations(log):
    w = LogWriter(log, max_bytes=60, keep=3)
    for i in range(5):
        w.write(f"old {i}\n".encode())
    follower = LogFollower(log, lines=2)
    try:
        assert follower.poll() == ["old 3", "old 4"]
        assert follower.poll() == []
        seen = []
        for i in range(40):   # a poll every few lines: rotations happen between them
            w.write(f"new {i:02d}\n".encode())
            if i % 3 == 0:
                seen += follower.poll()
        seen += follower.poll()
        assert seen == [f"new {i:02d}" for i in range(40)]
    finally:
        follower.close()
        w.close()


def test_follower_reads_files_rotated_past_it_between_two_polls(log):
    w = LogWriter(log, max_bytes=50, keep=5)
    follower = LogFollower(log)
    try:
        for i in range(20):   # 200 bytes: four rotations before the next poll
            w.write(f"line {i:03d}\n".encode())
        assert follower.poll() == [f"line {i:03d}" for i in range(20)]
    finally:
        follower.close()
        w.close()


def test_follower_waits_for_a_log_that_does_not_exist_yet(log):
    follower = LogFollower(log, lines=10)
    try:
        assert follower.poll() == []
        with LogWriter(log) as w:
            w.write(b"first\nsecond\n")
        assert follower.poll() == ["first", "second"]
    finally:
        follower.close()


def test_follower_reads_again_from_the_start_of_a_file_that_shrank(log):
    with open(log, "wb") as f:
        f.write(b"a long first line\n")
    follower = LogFollower(log)
    try:
        with open(log, "wb") as f:   # truncated and rewritten in place, same inode
            f.write(b"short\n")
        assert follower.poll() == ["short"]
    finally:
        follower.close()


def test_follower_shows_an_unfinished_line_once_it_stays_unfinished(log):
    with LogWriter(log) as w:
        follower = LogFollower(log, partial_after=0.2)
        try:
            w.write(b"Password: ")
            assert follower.poll() == []
            time.sleep(0.3)
            assert follower.poll() == ["Password: "]
            w.write(b"done\n")
            assert follower.poll() == ["done"]
        finally:
            follower.close()


def test_follow_generator_sees_every_line_a_writer_thread_writes_across_rotations(log):
    with LogWriter(log, max_bytes=200, keep=2):
        pass
    done = threading.Event()
    deadline = time.monotonic() + 20

    def writer():
        with LogWriter(log, max_bytes=200, keep=2) as w:
            for i in range(300):
                w.write(f"line {i:03d}\n".encode())
                if i % 10 == 0:
                    time.sleep(0.01)   # slower than the follower: it polls every 5 ms
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    # lines=300: whatever the writer wrote before following began comes first
    stop = lambda: done.is_set() or time.monotonic() > deadline   # noqa: E731
    got = list(logs.follow(log, lines=300, poll_interval=0.005, stop=stop))
    thread.join(timeout=20)
    assert got == [f"line {i:03d}" for i in range(300)]


# --- showing -----------------------------------------------------------------------------

def test_lines_are_prefixed_padded_and_cannot_forge_another_prefix():
    assert format_lines("Bank", ["hello", "a\rweb   | forged\x1b[2J"], width=6) == [
        "Bank   | hello",
        "Bank   | a\\x0dweb   | forged\\x1b[2J",
    ]
    assert logs.prefix_width(["web", "Bank", "supervisor"]) == 10


# --- pspy logs -------------------------------------------------------------------------------

BANK_AUTH = {
    "bank.py": """
        import pspy

        @pspy.service(service_provider="Bank")
        def balance(user):
            return 0
        """,
    "auth.py": """
        import pspy

        @pspy.service(service_provider="Auth")
        def login(user, password):
            return True
        """,
}


@pytest.fixture(scope="module")
def built_jail(tmp_path_factory):
    """A bootstrapped (not running) app with Auth, Bank and web; built once, it is slow."""
    top = tmp_path_factory.mktemp("logs-cli")
    app = write_app(top / "app", BANK_AUTH)
    path = str(top / "jail")
    pspy("bootstrap", app, "--jail", path, "--no-run", check=True)
    return path


@pytest.fixture
def jail(built_jail):
    """The app's jail with logs written by hand, and no run state."""
    folder = os.path.join(built_jail, ".pspy", "logs")
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    try:
        os.unlink(os.path.join(built_jail, ".pspy", "run", "state.json"))
    except FileNotFoundError:
        pass
    path = built_jail
    _write(folder, "Bank.log.1", "bank 1\nbank 2\nbank 3\n")
    _write(folder, "Bank.log", "bank 4\nbank 5\n")
    _write(folder, "Auth.log", "auth 1\n")
    _write(folder, "web.log", "web 1\nweb 2\n")
    return path


def _write(folder, name, text):
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)
    os.chmod(os.path.join(folder, name), 0o600)


@pytest.mark.root
def test_pspy_logs_shows_every_principal_prefixed_and_padded(jail):
    proc = pspy("logs", "--jail", jail, check=True)
    lines = proc.stdout.splitlines()
    assert sorted(lines) == sorted(["Auth | auth 1", "Bank | bank 1", "Bank | bank 2", "Bank | bank 3",
                                    "Bank | bank 4", "Bank | bank 5", "web  | web 1", "web  | web 2"])
    assert lines.index("Bank | bank 1") < lines.index("Bank | bank 5")   # each log in order


@pytest.mark.root
def test_pspy_logs_shows_the_supervisor_log_when_there_is_one(jail):
    _write(os.path.join(jail, ".pspy", "logs"), "supervisor.log", "pspy: Bank exited\n")
    lines = pspy("logs", "--jail", jail, "--lines", "1", check=True).stdout.splitlines()
    assert "supervisor | pspy: Bank exited" in lines
    assert "Bank       | bank 5" in lines and "web        | web 2" in lines


@pytest.mark.root
def test_pspy_logs_of_one_principal_is_its_last_lines_bare_across_rotation(jail):
    proc = pspy("logs", "Bank", "--jail", jail, "--lines", "3", check=True)
    assert proc.stdout == "bank 3\nbank 4\nbank 5\n"
    assert pspy("logs", "Auth", "--jail", jail, "-n", "50", check=True).stdout == "auth 1\n"


@pytest.mark.root
def test_pspy_logs_of_an_unknown_principal_names_the_known_ones(jail):
    proc = pspy("logs", "Nobody", "--jail", jail)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "'Nobody'" in proc.stderr and all(n in proc.stderr for n in ("Auth", "Bank", "web", "supervisor"))


@pytest.mark.root
def test_pspy_logs_refuses_a_negative_line_count(jail):
    proc = pspy("logs", "--jail", jail, "--lines", "-1")
    assert proc.returncode == 1 and "--lines -1" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.root
def test_pspy_logs_refuses_an_untrusted_jail(jail):
    os.chmod(os.path.join(jail, ".pspy"), 0o777)
    try:
        proc = pspy("logs", "--jail", jail)
    finally:
        os.chmod(os.path.join(jail, ".pspy"), 0o755)
    assert proc.returncode == 1 and "writable by others" in proc.stderr and proc.stdout == ""


class _Output:
    """A process's stdout read line by line, each read bounded by a timeout."""

    def __init__(self, proc):
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def lines(self, count, timeout=10.0):
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while self.buffer.count(b"\n") < count:
            assert sel.select(max(0.0, deadline - time.monotonic())), f"timed out with {self.buffer!r}"
            chunk = os.read(self.fd, 4096)
            assert chunk, f"stdout ended with {self.buffer!r}"
            self.buffer += chunk
        *got, self.buffer = self.buffer.split(b"\n", count)
        return [line.decode() for line in got]


def _logs_process(*args):
    return subprocess.Popen([sys.executable, "-m", "pspy", "logs", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.mark.root
def test_pspy_logs_follow_prints_new_lines_and_ends_on_ctrl_c(jail):
    proc = _logs_process("Bank", "--jail", jail, "--follow", "--lines", "1")
    out = _Output(proc)
    try:
        assert out.lines(1) == ["bank 5"]
        with LogWriter(os.path.join(jail, ".pspy", "logs", "Bank.log"), max_bytes=20, keep=3) as w:
            w.write(b"bank 6\nbank 7\nbank 8\n")   # rotates on the way
        assert out.lines(3) == ["bank 6", "bank 7", "bank 8"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert b"not running" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.root
def test_pspy_logs_follow_of_several_principals_is_prefixed_and_ends_with_the_supervisor(jail):
    # A stand-in supervisor: a live process with "pspy" in its command line, named in the run state.
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "pspy"])
    try:
        with open(os.path.join(jail, ".pspy", "run", "state.json"), "w") as f:
            json.dump({"supervisor": fake.pid}, f)
        proc = _logs_process("--jail", jail, "-f", "-n", "0")
        out = _Output(proc)
        try:
            time.sleep(1.0)   # following has started
            with open(os.path.join(jail, ".pspy", "logs", "Auth.log"), "a") as f:
                f.write("auth 2\n")
            assert out.lines(1) == ["Auth       | auth 2"]   # padded to "supervisor"
            fake.kill()
            fake.wait()
            assert proc.wait(timeout=10) == 0
            assert b"has exited" in proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()
    finally:
        fake.kill()
        fake.wait()
