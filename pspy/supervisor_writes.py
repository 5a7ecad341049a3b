"""What the supervisor writes to disk, and why none of it can stop the app.

The supervisor writes three kinds of things: each principal's log
(``logs``: what the principal printed, appended by a ``LogWriter``), its own
messages (``messages``: its stdout, which detached is ``supervisor.log``)
and the run state that ``pspy status`` reads (``state``). They live in the
jail, on a disk a principal may fill with its own data. A write that fails
there (ENOSPC, EDQUOT, EIO: any OSError) loses that write and nothing else:
it is counted per kind, the first loss of a run of them is said (on the
terminal in the foreground; detached, the message waits in stdout's buffer
for space), and the counts go into the run state for ``pspy status``. The
supervisor goes on restarting providers: starting a copy needs no disk of
the jail (namespace mode builds each view on a fresh tmpfs; chroot mode
only opens what bootstrap wrote).

No failed write truncates what is already on disk: logs are only appended
to, and the state file is replaced whole (see ``StateFile``).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .logs import LogError, LogWriter
from .plan import Plan
from .running import state_path

KINDS = {"logs": "principals' logs", "messages": "supervisor's messages", "state": "run state"}


@dataclass
class Loss:
    writes: int = 0        # writes lost, in all
    since: float = 0.0     # wall clock of the first
    errno: str = ""        # the latest failure: its errno name ("ENOSPC") ...
    error: str = ""        # ... and its text
    failing: bool = False  # the latest write of the kind failed


class LostWrites:
    """The writes lost per kind; ``say`` is told when a run of losses begins and ends."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.kinds: dict[str, Loss] = {}

    def lost(self, kind: str, error: BaseException | str, count: int = 1) -> None:
        loss = self.kinds.get(kind)
        if loss is None:
            loss = self.kinds[kind] = Loss(since=time.time())
        loss.writes += count
        code = getattr(error, "errno", None)
        loss.errno = errno.errorcode.get(code, "") if isinstance(code, int) else ""
        loss.error = getattr(error, "strerror", None) or str(error) or "write failed"
        if not loss.failing:
            loss.failing = True
            self._tell(f"pspy: cannot write the {KINDS[kind]}: {loss.error}; such writes are dropped and "
                       "counted ('pspy status' shows them) while it lasts; the app runs on")

    def ok(self, kind: str) -> None:
        """A write of ``kind`` worked: a run of losses, if any, has ended."""
        loss = self.kinds.get(kind)
        if loss is not None and loss.failing:
            loss.failing = False
            self._tell(f"pspy: the {KINDS[kind]} can be written again; {loss.writes} write(s) lost since "
                       f"{time.ctime(loss.since)}")

    def summary(self) -> dict:
        """What the run state records: {kind: {"writes", "since", "errno", "error", "failing"}}."""
        return {kind: {"writes": loss.writes, "since": loss.since, "errno": loss.errno, "error": loss.error,
                       "failing": loss.failing} for kind, loss in self.kinds.items()}

    def _tell(self, text: str) -> None:
        try:
            self.say(text)
        except (OSError, ValueError, UnicodeError):
            pass   # it is counted already; the note is a courtesy


def open_log(path: str, max_bytes: int, keep: int, lost: LostWrites) -> LogWriter | None:
    """A principal's log writer, or None (counted) if its file cannot be opened now; the next write tries again."""
    try:
        return LogWriter(path, max_bytes, keep)
    except (OSError, LogError) as e:
        lost.lost("logs", e)
        return None


def append_log(writer: LogWriter, lost: LostWrites, data: bytes = b"", note: str = "") -> None:
    """Append ``data``, or ``note`` on a line of its own, to a log (a
    LogWriter never raises); a write that lost bytes counts as one lost write."""
    before = writer.dropped
    if note:
        writer.note(note)
    else:
        writer.write(data)
    if writer.dropped > before:
        lost.lost("logs", writer.last_error or "write failed")
    else:
        lost.ok("logs")


# renameat2(2): swaps two names in one step. Not in Python's os module.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_RESERVE = 64 * 1024   # the state file's size on disk: a state grows past it only with hundreds of principals


_libc: ctypes.CDLL | None = None


def _exchange(a: str, b: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:   # a libc older than glibc 2.28
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), a)


class StateFile:
    """The run state, replaced whole, and still writable on a full disk.

    Two files of a reserved size: ``state.json``, which readers open, and
    ``state.json.next`` beside it. A new state goes into ``.next``, padded
    with spaces to the reserved size (JSON ignores them), over blocks it
    already holds, so a full disk does not stop the write on tmpfs, ext4 or
    xfs; then the two names are exchanged in one step (renameat2
    RENAME_EXCHANGE): a reader sees the old state or the new one, whole, and
    the old file's blocks take the next state (a reader that kept the old
    file open across two more states could see it rewritten: readers read it
    whole at once). A write that fails leaves
    ``state.json`` as it was. Where exchange is not supported, the new state
    is renamed over the old one (a fresh ``.next`` then needs space).
    """

    def __init__(self, plan: Plan):
        self.path = state_path(plan)
        self.next = self.path + ".next"
        self.reserve = _RESERVE

    def write(self, state: dict) -> None:
        """Replace the state; OSError if it could not be (the old state is then intact)."""
        data = json.dumps(state).encode()
        reserve = self.reserve
        if len(data) + 1 > reserve:
            reserve = 1 << (2 * len(data)).bit_length()   # growing needs space: it may fail, and is tried again
        padded = data + b" " * (reserve - len(data) - 1) + b"\n"
        # O_NOFOLLOW: the run folder is root's, but nothing in it is followed anyway.
        fd = os.open(self.next, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size > reserve:
                os.ftruncate(fd, reserve)   # shrinking needs no space; stale bytes must not trail the JSON
            view, written = memoryview(padded), 0
            while written < len(padded):
                written += os.pwrite(fd, view[written:], written)
        finally:
            os.close(fd)
        try:
            _exchange(self.next, self.path)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            os.rename(self.next, self.path)   # the first state, or a filesystem without exchange
        self.reserve = reserve

    def remove(self) -> None:
        for path in (self.path, self.next, self.path + ".tmp"):   # .tmp: left by earlier versions
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
