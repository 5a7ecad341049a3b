"""Per-principal logs: the supervisor's writer, and the readers behind ``pspy logs``.

A principal never holds its log file. Its stdout and stderr are a pipe the
supervisor reads, and the supervisor appends what comes out through a
``LogWriter``: so a principal can neither truncate nor rewrite what it has
logged, and what it can take on disk is bounded. The live file
``<name>.log`` grows to ``max_bytes``; then it becomes ``<name>.log.1``
(``.1`` becomes ``.2``, and so on up to ``keep`` old files, the oldest
deleted), so one principal's logs take about ``(keep + 1) * max_bytes``:
with the defaults, 40 MiB. (Exactly: a file may pass ``max_bytes`` by
``line_slack`` bytes, at most 64 KiB, to finish a line it began.)

The log folder (``<jail>/.pspy/logs``) is root's (rootless: the user's).
Nothing in it is ever followed through a symlink, and anything found at a
log's name that is not the supervisor's own regular file with one link (a
symlink, a FIFO, a hard link to a host file) is removed and replaced, never
written through.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from .errors import PspyError
from .plan import DEFAULT_LOG_KEEP, DEFAULT_LOG_MAX_BYTES, LOG_DIR, Plan
from .running import supervisor_alive

MAX_BYTES = DEFAULT_LOG_MAX_BYTES   # size of one log file before it is rotated (pspy.toml log_max_bytes)
KEEP = DEFAULT_LOG_KEEP             # rotated files kept (<name>.log.1 .. .3): 40 MiB per principal (log_keep)
DEFAULT_LINES = 50             # pspy logs without --lines
MAX_LINE = 64 * 1024           # a longer unfinished line is shown in pieces: readers' memory stays bounded
                               # (and at most this, or a quarter of max_bytes, a file passes max_bytes by)
SUPERVISOR = "supervisor"      # supervisor.log, the supervisor's own messages, if it keeps one

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_RDWR, not O_WRONLY: the writer reads the last byte back to know whether
# the file ends a line. O_NONBLOCK: a FIFO put in its place cannot block us.
_WRITE_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_BLOCK = 64 * 1024


class LogError(PspyError):
    """A log file cannot be kept where the plan puts it."""


def log_file_name(name: str) -> str:
    """The file name of a principal's log (in the plan's LOG_DIR)."""
    return f"{name}.log"


# --- writing -------------------------------------------------------------------------

class LogWriter:
    """Appends one principal's output to its log, rotating at ``max_bytes``.

    ``write`` never raises for a write that fails (disk full, quota, I/O
    error) and never blocks on anything but the file itself: the bytes are
    dropped and counted (``dropped``), and the first write that succeeds
    afterwards is preceded by a line saying how many bytes were lost and why.
    Rotation cuts at a line end: a line that does not fit starts the next
    file, and a line already begun in a file (output arrives in pieces that
    need not end lines) is finished there, the file passing ``max_bytes`` by
    at most ``line_slack`` bytes. Only a line longer than that is split.
    """

    def __init__(self, path: str, max_bytes: int = MAX_BYTES, keep: int = KEEP):
        if max_bytes < 1 or keep < 0:
            raise ValueError(f"max_bytes must be at least 1 and keep at least 0 (got {max_bytes}, {keep})")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.line_slack = min(MAX_LINE, max_bytes // 4)
        self.dropped = 0             # bytes lost to failed writes, in all
        self._unreported = 0         # of those, bytes not yet noted in the log
        self._reason = ""
        self.last_error: Exception | None = None   # the latest failure, for the supervisor's count of lost writes
        self._fd: int | None = None
        self._size = 0
        self._at_line_start = True
        self._line_began: int | None = 0   # offset in the file of the unfinished line; None: an earlier file
        folder, self._name = os.path.split(os.path.abspath(path))
        try:
            self._dir_fd = os.open(folder, _DIR_FLAGS)
        except OSError as e:
            what = "is a symlink" if os.path.islink(folder) else f"cannot be opened: {e.strerror}"
            raise LogError(f"log folder {folder} {what}; refusing to keep logs there") from None
        try:
            self._open_current()
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                os.close(self._dir_fd)
                raise LogError(f"cannot open the log {path}: {e.strerror}") from None
            self._reason, self.last_error = e.strerror, e   # disk full: start by dropping, the next writes try again
        except LogError:
            os.close(self._dir_fd)
            raise

    def write(self, data: bytes) -> None:
        """Append ``data``; on failure drop it and count it (see the class)."""
        if self._dir_fd < 0:
            raise ValueError(f"write to the closed log {self.path}")
        if not data:
            return
        if self._unreported:
            if self._append(self._drop_notice()):
                self._drop(len(data))
                return
            self._unreported = 0
        self._drop(self._append(bytes(data)))

    def note(self, text: str) -> None:
        """Write a line of the supervisor's own (a start marker) on a line of its own."""
        if not self._at_line_start:
            self.write(b"\n")
        self.write(text.rstrip("\n").encode(errors="replace") + b"\n")

    def close(self) -> None:
        """Close the file, first noting bytes dropped and not yet reported, if possible."""
        if self._dir_fd < 0:
            return
        if self._unreported and not self._append(self._drop_notice()):
            self._unreported = 0
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.close(self._dir_fd)
        self._dir_fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # --- inside ----------------------------------------------------------------------
    def _open_current(self) -> None:
        """Open <name>.log for appending: the supervisor's own regular file, created if need be."""
        name, d = self._name, self._dir_fd
        for _ in range(3):
            try:
                st = os.stat(name, dir_fd=d, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise LogError(f"{self.path} is a folder, not a log file; remove it so that pspy can log there")
            if st is not None and not stat.S_ISREG(st.st_mode):
                # A symlink, FIFO, socket or device: removed, never opened.
                os.unlink(name, dir_fd=d)
            try:
                fd = os.open(name, _WRITE_FLAGS, 0o600, dir_fd=d)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    continue   # replaced under us since the stat: look again
                raise
            st = os.fstat(fd)
            # Another owner's file, or a hard link (perhaps to a host file such
            # as /etc/shadow): appending would write into someone else's file.
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1:
                if stat.S_IMODE(st.st_mode) != 0o600:
                    os.fchmod(fd, 0o600)
                self._fd, self._size = fd, st.st_size
                self._at_line_start = st.st_size == 0 or os.pread(fd, 1, st.st_size - 1) == b"\n"
                self._line_began = st.st_size if self._at_line_start else None
                return
            os.close(fd)
            os.unlink(name, dir_fd=d)
        raise LogError(f"{self.path} keeps being replaced by something that is not a regular file")

    def _append(self, data: bytes) -> int:
        """Write all of ``data``, rotating as needed; the count of bytes that could not be written."""
        view = memoryview(data)
        pos = 0
        try:
            while pos < len(data):
                if self._fd is None:
                    self._open_current()
                room = self.max_bytes - self._size
                end = len(data) if len(data) - pos <= room else self._cut(data, pos, room)
                if end == pos:
                    self._rotate()
                    continue
                written = os.write(self._fd, view[pos:end])
                newline = data.rfind(b"\n", pos, pos + written)
                if newline >= 0:
                    self._line_began = self._size + newline - pos + 1
                self._size += written
                pos += written
                self._at_line_start = data[pos - 1] == 0x0A
        except (OSError, LogError) as e:
            self._reason = getattr(e, "strerror", None) or str(e)
            self.last_error = e
            return len(data) - pos
        return 0

    def _cut(self, data: bytes, pos: int, room: int) -> int:
        """Where to end this write of ``data[pos:]``, which does not fit in
        ``room``; the file is rotated there, unless all of it was taken."""
        if self._size == 0:
            return pos + room      # a line longer than a whole file: split
        newline = data.rfind(b"\n", pos, pos + max(room, 0))
        if newline >= 0:
            return newline + 1     # whole lines fit: the rest starts the next file
        if self._at_line_start:
            return pos             # the line starts the next file
        if not self._line_began:
            return pos + max(room, 0)   # the file is all this one line: it is too long to keep whole
        # The file ends in a line begun after others: finish it here if it ends within the slack.
        slack = max(self.max_bytes + self.line_slack - self._size, 0)
        newline = data.find(b"\n", pos, pos + slack)
        if newline >= 0:
            return newline + 1
        return min(len(data), pos + slack)   # not ended yet: continue it (or split it, past the slack)

    def _rotate(self) -> None:
        """<name>.log -> .1 -> ... -> .keep (the oldest replaced), then a fresh <name>.log."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        name, d = self._name, self._dir_fd
        if self.keep:
            for i in range(self.keep - 1, 0, -1):
                try:
                    os.rename(f"{name}.{i}", f"{name}.{i + 1}", src_dir_fd=d, dst_dir_fd=d)
                except OSError:
                    pass   # missing, or something odd in the way: .i is overwritten below, the bound holds
            try:
                os.rename(name, f"{name}.1", src_dir_fd=d, dst_dir_fd=d)
            except FileNotFoundError:
                pass
            except OSError:
                os.unlink(name, dir_fd=d)   # it cannot be kept; it must not grow past the bound
        else:
            try:
                os.unlink(name, dir_fd=d)
            except FileNotFoundError:
                pass
        was_at_line_start = self._at_line_start
        self._open_current()
        if not was_at_line_start:
            self._at_line_start, self._line_began = False, None   # the line goes on from the old file

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._unreported += count

    def _drop_notice(self) -> bytes:
        line = f"--- pspy: {self._unreported} bytes of output dropped: {self._reason or 'write failed'} ---\n"
        return line.encode() if self._at_line_start else b"\n" + line.encode()


# --- reading -------------------------------------------------------------------------

def log_files(path: str) -> list[str]:
    """The files of one principal's log that exist, oldest first: path.N .. path.1, path."""
    return [*reversed(_rotated(path)), *([path] if os.path.lexists(path) else [])]


def _rotated(path: str) -> list[str]:
    """The rotated files, newest first: path.1, path.2, ... up to the first missing."""
    found = []
    while os.path.lexists(f"{path}.{len(found) + 1}"):
        found.append(f"{path}.{len(found) + 1}")
    return found


def _open_log(path: str) -> int | None:
    """A log file opened for reading; None if it is missing or not a regular file (never followed)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _tail_bytes(sources: Iterable[tuple[int, int]], lines: int) -> bytes:
    """The end of the stream made of ``sources`` ((fd, end), newest first),
    holding at least ``lines`` whole lines when the stream has them."""
    chunks: list[bytes] = []
    newlines = 0
    for fd, end in sources:
        while end > 0 and newlines <= lines:
            start = max(0, end - _BLOCK)
            block = os.pread(fd, end - start, start)
            chunks.append(block)
            newlines += block.count(b"\n")
            end = start
        if newlines > lines:
            break
    return b"".join(reversed(chunks))


def _split(data: bytes) -> tuple[list[str], bytes]:
    """Whole lines (decoded, without their newline) and the unfinished rest."""
    *whole, rest = data.split(b"\n")
    return [line.decode(errors="replace") for line in whole], rest


def tail_lines(path: str, lines: int = DEFAULT_LINES) -> list[str]:
    """The last ``lines`` lines of a principal's log, read across its rotated
    files (a line that rotation split is whole again); an unfinished last
    line counts as a line."""
    if lines <= 0:
        return []
    fds = [fd for fd in (_open_log(p) for p in reversed(log_files(path))) if fd is not None]
    try:
        data = _tail_bytes(((fd, os.fstat(fd).st_size) for fd in fds), lines)
    finally:
        for fd in fds:
            os.close(fd)
    whole, rest = _split(data)
    if rest:
        whole.append(rest.decode(errors="replace"))
    return whole[-lines:]


class LineBuffer:
    """Bytes in, whole lines out; a line that grows past ``max_line`` bytes
    without ending comes out in pieces, so a principal cannot make its
    reader hold unbounded output."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self.pending = b""

    def feed(self, data: bytes) -> list[str]:
        whole, self.pending = _split(self.pending + data)
        while len(self.pending) > self.max_line:
            whole.append(self.pending[:self.max_line].decode(errors="replace"))
            self.pending = self.pending[self.max_line:]
        return whole

    def flush(self) -> list[str]:
        """The unfinished line, if any, as a line of its own."""
        rest, self.pending = self.pending, b""
        return [rest.decode(errors="replace")] if rest else []


class LogFollower:
    """The lines of one principal's log as they are written, across rotations.

    ``poll()`` never blocks: it returns the lines added since the last call
    (the first call: also the last ``lines`` lines from before). The file at
    ``path`` being replaced (another inode: the writer rotated) is read to
    its end first, then the files rotated in between, then the new one from
    its start; a file that shrank is read again from its start. A line not
    finished for ``partial_after`` seconds is shown as it is.
    """

    def __init__(self, path: str, lines: int = 0, partial_after: float = 1.0):
        self.path = path
        self.partial_after = partial_after
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._buffer = LineBuffer()
        self._pending_since = 0.0
        self._backlog: list[str] = []
        if self._open_current():
            # The backlog ends where following starts: no line is lost or shown twice in between.
            # Older files: the lines wanted, and (lines=0) the start of an unfinished last line.
            older = [fd for fd in (_open_log(p) for p in _rotated(path)) if fd is not None]
            try:
                sources = [(self._fd, self._pos)]
                sources += [(fd, os.fstat(fd).st_size) for fd in older if not self._same_file(fd)]
                whole, rest = _split(_tail_bytes(sources, max(lines, 0)))
            finally:
                for fd in older:
                    os.close(fd)
            self._backlog = whole[-lines:] if lines > 0 else []
            self._buffer.pending = rest
            self._pending_since = time.monotonic()

    def poll(self) -> list[str]:
        """The lines added since the last poll (see the class)."""
        out, self._backlog = self._backlog, []
        data = b""
        if self._fd is None:
            self._open_current()
            self._pos = 0
        if self._fd is not None:
            if os.fstat(self._fd).st_size < self._pos:
                self._pos = 0   # truncated: what is there now is new
            data += self._read_rest()
            try:
                st = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                st = None   # renamed away, the new one not created yet: look again next time
            if st is not None and (st.st_dev, st.st_ino) != self._ino:
                data += self._read_rest()   # the writer has moved on: nothing more comes here
                data += self._read_rotated_since()
                os.close(self._fd)
                self._fd = None
                if self._open_current():
                    self._pos = 0
                    data += self._read_rest()
        out += self._buffer.feed(data)
        if data:
            self._pending_since = time.monotonic()
        elif self._buffer.pending and time.monotonic() - self._pending_since >= self.partial_after:
            out += self._buffer.flush()
        return out

    def flush(self) -> list[str]:
        """The unfinished last line, if any (at the end of following)."""
        return self._buffer.flush()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- inside ----------------------------------------------------------------------
    def _open_current(self) -> bool:
        fd = _open_log(self.path)
        if fd is None:
            return False
        st = os.fstat(fd)
        self._fd, self._ino, self._pos = fd, (st.st_dev, st.st_ino), st.st_size
        return True

    def _same_file(self, fd: int) -> bool:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == self._ino

    def _read_rest(self) -> bytes:
        chunks = []
        while True:
            block = os.pread(self._fd, _BLOCK, self._pos)
            if not block:
                return b"".join(chunks)
            chunks.append(block)
            self._pos += len(block)

    def _read_rotated_since(self) -> bytes:
        """Files rotated after ours (.k-1 .. .1 if ours is now .k), in full: the
        writer may have rotated more than once since the last poll."""
        newer: list[str] = []
        for name in _rotated(self.path):   # .1, .2, ...
            try:
                st = os.stat(name, follow_symlinks=False)
            except FileNotFoundError:
                return b""
            if (st.st_dev, st.st_ino) == self._ino:
                break
            newer.append(name)
        else:
            return b""   # ours is gone (keep=0, or rotated past keep): which files are newer is unknown
        data = b""
        for name in reversed(newer):   # oldest first
            fd = _open_log(name)
            if fd is not None:
                try:
                    data += os.pread(fd, os.fstat(fd).st_size, 0)
                finally:
                    os.close(fd)
        return data


def follow(path: str, lines: int = 0, poll_interval: float = 0.2,
           stop: Callable[[], bool] | None = None) -> Iterator[str]:
    """Yield the last ``lines`` lines of a principal's log, then each new line
    as it is written, across rotations, until ``stop()`` is true (then what
    is left is yielded) or forever."""
    follower = LogFollower(path, lines)
    try:
        while True:
            got = follower.poll()
            yield from got
            if stop is not None and stop():
                yield from follower.poll()
                yield from follower.flush()
                return
            if not got:
                time.sleep(poll_interval)
    finally:
        follower.close()


# --- showing -------------------------------------------------------------------------

# C0 controls but tab, DEL and C1 controls: a principal's line must not move
# the cursor, clear the screen or overwrite the prefix that names it (\r).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(line: str) -> str:
    r"""``line`` with control characters shown escaped (``\x1b``)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


def prefix_width(names: Iterable[str]) -> int:
    """The width of the prefix column for these principals: the widest name."""
    return max((len(n) for n in names), default=0)


def format_lines(name: str, lines: Iterable[str], width: int = 0) -> list[str]:
    """Lines of principal ``name`` as shown next to others': ``Bank | line``,
    the name padded to ``width``, control characters escaped."""
    return [f"{name:<{width}} | {printable(line)}" for line in lines]


def show(plan: Plan, principal: str | None = None, *, lines: int = DEFAULT_LINES, follow: bool = False,
         out: TextIO | None = None, poll_interval: float = 0.25) -> int:
    """``pspy logs``: the last ``lines`` lines of one principal's log, or of
    every principal's (and the supervisor's, if it keeps one) one after the
    other in the plan's order; with ``follow``, then each new line as it
    comes. Lines are prefixed with their principal when several logs are
    shown; one principal's log is shown bare. Following ends with Ctrl-C
    (exit 0), or once the supervisor that was running at the start has
    exited; if none was, it waits for the app to be started."""
    out = out or sys.stdout
    folder = plan.host_path(LOG_DIR)
    names = [p.name for p in plan.principals]
    known = names if SUPERVISOR in names else [*names, SUPERVISOR]
    if principal is None:
        # The supervisor's own log when it has one; when following, in case it starts one.
        has_own = follow or log_files(os.path.join(folder, log_file_name(SUPERVISOR)))
        shown = [*names, SUPERVISOR] if SUPERVISOR not in names and has_own else names
    elif principal in known:
        shown = [principal]
    else:
        raise PspyError(f"no principal named {principal!r} in {plan.jail}; its logs are: {', '.join(known)}")
    paths = {name: os.path.join(folder, log_file_name(name)) for name in shown}
    width = prefix_width(shown)

    def emit(name: str, got: list[str]) -> None:
        shown_lines = format_lines(name, got, width) if len(shown) > 1 else [printable(x) for x in got]
        for line in shown_lines:
            out.write(line + "\n")

    try:
        if not follow:
            for name in shown:
                emit(name, tail_lines(paths[name], lines))
            if principal is not None and not log_files(paths[principal]):
                print(f"pspy: {principal} has no log yet ({paths[principal]})", file=sys.stderr)
            out.flush()
            return 0
        return _follow_all(plan, paths, lines, emit, out, poll_interval)
    except BrokenPipeError:
        # The reader went away (pspy logs | head): nothing is wrong. Later
        # flushes of stdout must not fail again at exit.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _follow_all(plan: Plan, paths: dict[str, str], lines: int, emit, out: TextIO, poll_interval: float) -> int:
    followers = {name: LogFollower(path, lines) for name, path in paths.items()}
    running = supervisor_alive(plan)
    if running is None:
        print(f"pspy: {plan.app_name} is not running; waiting for its logs (Ctrl-C to end)", file=sys.stderr)
    next_check = time.monotonic() + 1.0
    try:
        while True:
            got_any = False
            for name, follower in followers.items():
                got = follower.poll()
                emit(name, got)
                got_any = got_any or bool(got)
            out.flush()
            if running is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                if supervisor_alive(plan) != running:
                    for name, follower in followers.items():
                        emit(name, follower.poll() + follower.flush())
                    out.flush()
                    print(f"pspy: the supervisor of {plan.app_name} (pid {running}) has exited; "
                          "end of its logs", file=sys.stderr)
                    return 0
            if not got_any:
                time.sleep(poll_interval)
    except KeyboardInterrupt:
        return 0   # the way to end following: not a failure
    finally:
        for follower in followers.values():
            follower.close()
