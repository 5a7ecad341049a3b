"""The database owner's side of ``pspy.db``: one SQLite connection per caller session.

A caller's ``pspy.db.connect`` opens a connection of its own to the owner
(rpc/client.Session) and every statement of that session comes on it. The
caller is who the kernel says it is (SO_PEERCRED at accept, rpc/server.py),
never what it sends; its SQLite connection carries an authorizer built
from its grants in the plan (authorizer.py), so SQLite itself refuses
what they do not allow, at prepare time, before a row is read. The session,
its transaction and its cursors end with the connection: a caller that dies
leaves nothing open (an open transaction is rolled back).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from itertools import chain

from ..rpc.server import FRAME_TIMEOUT, ConnectionState
from . import regexp
from .authorizer import Authorizer

log = logging.getLogger("pspy.data")

IDLE_TIMEOUT = 300.0        # seconds a database session may wait between statements (rpc: 10 s) ...
BUSY_IDLE_TIMEOUT = 30.0    # ... and while it holds a transaction or a cursor, and with it a lock others wait on
FIRST_ROWS = 1024           # rows sent with a query's answer; the rest on fetch
MAX_CURSORS = 64            # cursors with rows left that one session may hold open
ROW_BYTES_BUDGET = 48 << 10  # about this many bytes of rows in one answer (rows are sampled, not all measured)
STATEMENT_TIME_LIMIT = 30.0   # seconds one statement or fetch may run (DatabaseService: the app's rpc_timeout)
PROGRESS_EVERY = 100_000      # SQLite VM steps between two looks at the clock (about a millisecond)
MAX_LENGTH = 16 << 20         # bytes of one value (DatabaseService: the app's max_frame)
TRANSACTION_LIMIT = 60.0      # seconds a caller's transaction may stay open (DatabaseService: 2 x rpc_timeout)
KEPT_PER_CALLER = 4           # ended sessions kept open for a caller's next ones ...
KEPT_FOR = 60.0               # ... for at most this many seconds
_ISOLATION = (None, "", "DEFERRED", "IMMEDIATE", "EXCLUSIVE")


def _django_functions(db: sqlite3.Connection) -> None:
    from ..contrib.django.functions import prepare_connection
    prepare_connection(db)
    regexp.install(db)   # theirs is Python's re: see regexp.py


def _sqlalchemy_functions(db: sqlite3.Connection) -> None:
    from ..contrib.sqlalchemy import prepare_connection
    prepare_connection(db)
    regexp.install(db)


# SQL function sets a caller may ask for at open (pspy.db.connect(functions=...)).
# A Python function cannot cross to run here, so the owner registers its own
# copy of a known set, before the authorizer is on; the caller names one, never
# sends code.
FUNCTION_SETS = {"django": _django_functions, "sqlalchemy": _sqlalchemy_functions}


class DatabaseSession:
    """One caller's connection to one database, with its grants."""

    def __init__(self, caller: str, database: str, path: str, grants: dict, isolation_level, timeout: float,
                 functions: str | None = None):
        self.caller, self.database, self.timeout = caller, database, timeout
        self.authorizer = Authorizer(caller, database, grants)
        self.db = sqlite3.connect(path, timeout=timeout, isolation_level=isolation_level,
                                  check_same_thread=False)
        # No value longer than a frame may carry: randomblob(1e9) is refused
        # before it is built, not after a gigabyte was. Set before the function
        # set, whose Python functions that build strings (Django's LPAD, REPEAT)
        # read the limit when registered: after, they saw SQLite's 1e9 default.
        self.db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_LENGTH)
        if functions is not None:
            FUNCTION_SETS[functions](self.db)
        self.authorizer.install(self.db)
        self.time_limit = STATEMENT_TIME_LIMIT
        self.deadline = 0.0
        # SQLite calls back every PROGRESS_EVERY steps of its VM: a statement
        # past its time (a runaway recursive CTE) is interrupted there, so a
        # caller that gave up waiting leaves no statement running in the owner.
        self.db.set_progress_handler(self._past_deadline, PROGRESS_EVERY)
        self.cursors: dict[int, sqlite3.Cursor] = {}
        self.pending: dict[int, list] = {}   # rows read from a cursor but over one answer's budget
        self.next_cursor = 0
        self.keeper = None   # DatabaseService._keep: takes the session for this caller's next one
        self.transaction_began: float | None = None   # DatabaseService: when its open transaction began

    def _past_deadline(self) -> bool:
        return time.monotonic() > self.deadline

    def begin(self) -> None:
        """Before each statement or fetch: no refusal recorded, a fresh deadline."""
        self.authorizer.reset()
        self.deadline = time.monotonic() + self.time_limit

    def close(self) -> None:
        for cursor in self.cursors.values():
            cursor.close()
        self.cursors.clear()
        self.pending.clear()
        if self.keeper is not None and self.keeper(self):
            return
        self.db.close()   # an open transaction is rolled back

    def answer(self, **fields) -> dict:
        fields["in_transaction"] = self.db.in_transaction
        return fields

    def failed(self, e: sqlite3.Error) -> dict:
        if isinstance(e, sqlite3.OperationalError) and str(e) == "interrupted" and \
                time.monotonic() > self.deadline:
            return self.answer(error=["OperationalError", f"the statement was stopped: it ran past its "
                                                          f"{self.time_limit:g}s (0.9 x the app's rpc_timeout)"])
        denial = self.authorizer.refusal(e)
        if denial is not None:
            log.warning("denied: %s", denial)
            return self.answer(error=["PermissionDenied", denial])
        return self.answer(error=[type(e).__name__, str(e)])

    def execute(self, sql, parameters, many: bool) -> dict:
        if type(sql) is not str:
            return self.answer(error=["ProgrammingError", "a statement is a str"])
        self.begin()
        cursor = self.db.cursor()
        try:
            if many:
                if type(parameters) is not list:
                    return self.answer(error=["ProgrammingError", "executemany takes a list of parameter sets"])
                cursor.executemany(sql, parameters)
            else:
                cursor.execute(sql, parameters)
            return self._rows_of(cursor, FIRST_ROWS)
        except sqlite3.Error as e:
            cursor.close()
            return self.failed(e)
        except (TypeError, ValueError, OverflowError) as e:   # parameters SQLite cannot bind
            cursor.close()
            return self.answer(error=["ProgrammingError", str(e)])

    def _rows_of(self, cursor: sqlite3.Cursor, wanted: int, cursor_id: int | None = None) -> dict:
        # The answer carries the column names and the rows as one flat list
        # of values: the codec sends a tuple as an extension value, one nested
        # encoding per row, ten times the cost of the values themselves.
        columns = [d[0] for d in cursor.description] if cursor.description else None
        rows: list = []
        rest: list = []
        more = False
        if columns is not None:
            pending = self.pending.pop(cursor_id, []) if cursor_id is not None else []
            rows = pending + cursor.fetchmany(wanted - len(pending)) if wanted > len(pending) else pending
            more = len(rows) >= wanted
            rows, rest = _within_budget(rows)
            if rest:
                more = True
        if more and cursor_id is None:
            if len(self.cursors) >= MAX_CURSORS:
                cursor.close()
                return self.answer(error=["OperationalError", f"more than {MAX_CURSORS} cursors with rows left "
                                          "are open on this connection; fetch or close some"])
            self.next_cursor += 1
            cursor_id = self.next_cursor
            self.cursors[cursor_id] = cursor
        if more and rest:
            self.pending[cursor_id] = rest
        if not more:
            if cursor_id is not None:
                self.cursors.pop(cursor_id, None)
            cursor.close()
        answer = self.answer(rowcount=cursor.rowcount, lastrowid=cursor.lastrowid)
        if columns is not None:
            answer["columns"] = columns
            answer["rows"] = list(chain.from_iterable(rows))
        if more:
            answer["cursor"] = cursor_id
        return answer

    def forget(self, cursor_id) -> None:
        cursor = self.cursors.pop(cursor_id, None)
        self.pending.pop(cursor_id, None)
        if cursor is not None:
            cursor.close()

    def fetch(self, cursor_id, wanted) -> dict:
        cursor = self.cursors.get(cursor_id)
        if cursor is None:
            return self.answer(error=["ProgrammingError", f"no open cursor {cursor_id!r}"])
        if type(wanted) is not int or not 1 <= wanted <= 1 << 20:
            return self.answer(error=["ProgrammingError", "fetch takes 1 to 1048576 rows"])
        self.begin()
        try:
            return self._rows_of(cursor, wanted, cursor_id)
        except sqlite3.Error as e:
            self.forget(cursor_id)
            return self.failed(e)


def _within_budget(rows: list) -> tuple[list, list]:
    """(rows to send now, rows kept for the next fetch). An answer is kept
    under what the caller's decoder takes without measuring it first
    (codec.Limits.measured_above), and far under the frame limit: the first
    and last rows are weighed, not every row (that would cost more than the
    query)."""
    if len(rows) < 2:
        return rows, []
    weight = max(_weight(rows[0]), _weight(rows[-1]))
    keep = max(1, ROW_BYTES_BUDGET // max(weight, 1))
    return (rows, []) if keep >= len(rows) else (rows[:keep], rows[keep:])


def _weight(row) -> int:
    return 16 + sum(len(v) + 8 if type(v) in (str, bytes) else 16 for v in row)


def _write_ahead_log(path: str) -> None:
    """Put the database in WAL mode, once, as its owner: readers then never
    block a writer, so a grantee holding a cursor open (a snapshot) cannot
    hold off another principal's writes; only a write transaction can, and
    that one for TRANSACTION_LIMIT at most. The mode stays with the file."""
    try:
        db = sqlite3.connect(path, timeout=5.0)
    except sqlite3.Error as e:
        log.warning("%s: cannot open the database to put it in WAL mode: %s", path, e)
        return
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            log.warning("%s: journal mode is %s, not WAL: a grantee's open cursor holds off others' writes",
                        path, mode)
    except sqlite3.Error as e:
        log.warning("%s: cannot put the database in WAL mode: %s", path, e)
    finally:
        db.close()


class DatabaseService:
    """The owner's ``pspy.db`` endpoint: a per-connection service (rpc/server.py)."""

    def __init__(self, app_dir: str, databases: list[dict], grants_of: dict[str, dict], *,
                 time_limit: float = STATEMENT_TIME_LIMIT, max_length: int = MAX_LENGTH,
                 transaction_limit: float = TRANSACTION_LIMIT):
        # databases: the plan's entries this provider owns; grants_of: principal -> its PrincipalPlan.grants
        self.paths = {d["name"]: os.path.join(app_dir, d["path"]) for d in databases}
        self.grants_of = grants_of
        self.time_limit, self.max_length = time_limit, max_length
        self.transaction_limit = transaction_limit
        for path in self.paths.values():
            _write_ahead_log(path)
        self._kept: dict[tuple, list[tuple[float, DatabaseSession]]] = {}   # (caller, ...) -> ended sessions
        self._lock = threading.Lock()

    def __call__(self, state: ConnectionState, op, *args):
        session = state.value
        if session is not None and session.transaction_began is not None and \
                time.monotonic() - session.transaction_began > self.transaction_limit:
            # A transaction holds SQLite's write lock: past its limit it is
            # rolled back whatever comes, so no caller holds off the others'
            # writes by keeping one open with a statement now and then.
            session.db.rollback()
            for cursor_id in list(session.cursors):
                session.forget(cursor_id)
            session.transaction_began = None
            return session.answer(error=["OperationalError", f"the transaction was rolled back: it was open "
                                                             f"longer than {self.transaction_limit:g}s"])
        answer = self._do(state, op, args)
        session = state.value
        if session is not None:
            busy = session.db.in_transaction
            if not busy:
                session.transaction_began = None
            elif session.transaction_began is None:
                session.transaction_began = time.monotonic()
            # A session in a transaction (or holding a cursor with rows left,
            # which reads a snapshot) is closed sooner when it goes quiet, and
            # a transaction at the latest when its limit comes.
            idle = BUSY_IDLE_TIMEOUT if busy or session.cursors else IDLE_TIMEOUT
            if busy:
                idle = max(0.01, min(idle, self.transaction_limit
                                     - (time.monotonic() - session.transaction_began)))
            if state.conn.idle_timeout != idle:
                state.conn.hold_frames_to(idle, FRAME_TIMEOUT)
        return answer

    def _do(self, state: ConnectionState, op, args: tuple):
        session = state.value
        if op == "open":
            return self._open(state, *args)
        if session is None:
            return {"error": ["ProgrammingError", "no database is open on this connection"]}
        if op == "execute" and len(args) in (3, 4):
            # A fourth argument: cursors the caller dropped with rows left, closed first.
            for cursor_id in args[3] if len(args) == 4 and type(args[3]) is list else ():
                session.forget(cursor_id)
            return session.execute(args[0], args[1], bool(args[2]))
        if op == "fetch" and len(args) == 2:
            return session.fetch(args[0], args[1])
        if op == "close_cursor" and len(args) == 1:
            session.forget(args[0])
            return session.answer()
        if op in ("commit", "rollback") and not args:
            try:
                getattr(session.db, op)()
            except sqlite3.Error as e:
                return session.failed(e)
            return session.answer()
        if op == "executescript" and len(args) == 1 and type(args[0]) is str:
            session.begin()
            try:
                session.db.executescript(args[0]).close()
            except sqlite3.Error as e:
                return session.failed(e)
            return session.answer(rowcount=-1, lastrowid=None)
        if op == "isolation_level" and len(args) == 1 and args[0] in _ISOLATION:
            session.db.isolation_level = args[0]
            return session.answer()
        if op == "close" and not args:
            state.close()
            return {"in_transaction": False}
        return {"error": ["ProgrammingError", f"unknown database operation {op!r}"]}

    def _open(self, state: ConnectionState, database=None, options=None) -> dict:
        if state.value is not None:
            return {"error": ["ProgrammingError", "a database is open on this connection already"]}
        grants = self.grants_of.get(state.caller, {}).get(database)
        if database not in self.paths or grants is None:
            # Only what the plan grants: a name it does not know is refused the same way.
            log.warning("denied: %s (uid %d) asked for database %r, which it has no grant on",
                        state.caller, state.uid, database)
            return {"error": ["PermissionDenied", f"{state.caller} has no grant on a database named "
                                                  f"{database!r} of this provider"]}
        options = options if type(options) is dict else {}
        isolation = options.get("isolation_level", "")
        timeout = options.get("timeout", 5.0)
        functions = options.get("functions")
        if isolation not in _ISOLATION or type(timeout) not in (int, float) or not 0 <= timeout <= 600:
            return {"error": ["ProgrammingError", "isolation_level or timeout out of range"]}
        if functions is not None and (type(functions) is not str or functions not in FUNCTION_SETS):
            return {"error": ["ProgrammingError", f"unknown function set {functions!r} (known: "
                                                  f"{', '.join(sorted(FUNCTION_SETS))})"]}
        # Per caller, database and function set: a bounded number of keys.
        key = (state.caller, database, functions)
        session = self._kept_session(key, float(timeout))
        if session is None:
            try:
                session = DatabaseSession(state.caller, database, self.paths[database], grants, isolation,
                                          float(timeout), functions)
            except (sqlite3.Error, ImportError) as e:   # ImportError: a function set's library is not here
                return {"error": ["OperationalError", f"cannot open database {database!r}: {e}"]}
            session.time_limit = self.time_limit
            session.db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.max_length)
            session.keeper = lambda s, key=key: self._keep(key, s)
        else:
            session.db.isolation_level = isolation
        state.value = session
        return session.answer()

    def _keep(self, key: tuple, session: DatabaseSession) -> bool:
        """Keep a session that ended for its caller's next one: opening one
        (a connection, its grants installed, a function set registered) costs
        ten times what a small statement does, and Django opens one per
        request. Kept per caller, so one principal's connection never serves
        another; its transaction is rolled back first."""
        try:
            if session.db.in_transaction:
                session.db.rollback()
        except sqlite3.Error:
            return False
        session.transaction_began = None
        with self._lock:
            kept = self._kept.setdefault(key, [])
            if len(kept) >= KEPT_PER_CALLER:
                return False
            kept.append((time.monotonic(), session))
        return True

    def _kept_session(self, key: tuple, timeout: float) -> DatabaseSession | None:
        stale = []
        found = None
        with self._lock:
            kept = self._kept.get(key, [])
            while kept and found is None:
                since, session = kept.pop()
                if time.monotonic() - since < KEPT_FOR and session.timeout == timeout:
                    found = session
                else:
                    stale.append(session)
        for session in stale:   # past KEPT_FOR: closed, not kept again
            session.keeper = None
            session.close()
        return found
