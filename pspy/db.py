"""``pspy.db``: a DB-API 2.0 connection to a database declared in ``pspy.toml``.

    import pspy.db
    db = pspy.db.connect("main")
    db.row_factory = sqlite3.Row          # or pspy.db.Row: both give rows by name
    for row in db.execute("SELECT username FROM user WHERE user_id = ?", (uid,)):
        ...

It behaves as ``sqlite3`` does (qmark parameters, implicit transactions,
``with db:`` commits or rolls back, sqlite3's exception classes), so an app
changes only the line that opens its database. Under pspy:

- in the database's owner, it is a plain sqlite3 connection to the file:
  the owner holds every right;
- in any other principal, each statement runs in the owner, on a
  connection of this principal's alone whose SQLite authorizer allows
  exactly its grants (pspy/data/authorizer.py). A statement they do not
  allow raises ``pspy.db.PermissionDenied`` (a ``sqlite3.DatabaseError``
  and a ``pspy.PermissionDenied``) naming the table and column.

Without pspy (``python app.py``), it opens the file named in the app's
``pspy.toml`` directly, so the app runs unchanged in development.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from typing import Any, Iterable, Iterator

from . import errors
from .plan import DATABASE_SERVICE

apilevel = "2.0"
threadsafety = 1          # threads may share the module, not connections
paramstyle = "qmark"

# sqlite3's own classes: `except sqlite3.IntegrityError` in the app keeps working.
Warning = sqlite3.Warning
Error = sqlite3.Error
InterfaceError = sqlite3.InterfaceError
DatabaseError = sqlite3.DatabaseError
DataError = sqlite3.DataError
OperationalError = sqlite3.OperationalError
IntegrityError = sqlite3.IntegrityError
InternalError = sqlite3.InternalError
ProgrammingError = sqlite3.ProgrammingError
NotSupportedError = sqlite3.NotSupportedError
Binary = bytes


# Half the owner's idle limit for a session (pspy/data/session.py IDLE_TIMEOUT).
_REOPEN_AFTER = 150.0


class PermissionDenied(errors.PermissionDenied, sqlite3.DatabaseError):
    """A statement the caller's grants do not allow; the message names the table and column."""


# What a failed statement in the owner comes back as (pspy/data/session.py sends the name).
ERRORS = {cls.__name__: cls for cls in (Warning, Error, InterfaceError, DatabaseError, DataError,
                                        OperationalError, IntegrityError, InternalError, ProgrammingError,
                                        NotSupportedError, PermissionDenied)}


class Row(tuple):
    """A row whose values are read by index or by column name (case-insensitive), like sqlite3.Row."""

    __slots__ = ()
    _names: tuple[str, ...] = ()

    def __getitem__(self, key):
        if type(key) is str:
            lowered = key.lower()
            for i, name in enumerate(self._names):
                if name.lower() == lowered:
                    return tuple.__getitem__(self, i)
            raise IndexError(f"no column named {key!r}")
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)

    def __repr__(self) -> str:
        return f"<pspy.db.Row {dict(zip(self._names, self))!r}>"


def _row_class(names: tuple[str, ...]) -> type:
    return type("Row", (Row,), {"__slots__": (), "_names": names})


def connect(database: str, *, isolation_level: str | None = "", timeout: float = 5.0,
            functions: str | None = None, **options) -> Any:
    """A connection to the database ``database`` of ``pspy.toml``.

    ``functions`` names a set of SQL functions the owner registers on this
    caller's connection (``FUNCTION_SETS`` of pspy/data/session.py, e.g.
    "django"): a Python function cannot cross to run in the owner, so the
    owner runs its own copy of a known set. Where the file is opened here
    (the owner, development) the caller registers what it needs itself."""
    path = local_path(database)
    if path is not None:
        return _connect_directly(path, isolation_level, timeout, options)
    from . import runtime
    rt = runtime.current()
    spec = _spec_of(rt, database)
    if options:
        raise NotSupportedError(f"pspy.db.connect({database!r}): {', '.join(options)} cannot be set on a "
                                f"connection that runs in {spec['owner']}")
    if database not in rt.me.grants:
        raise PermissionDenied(f"{rt.me.name} has no grant on database {database!r} (owned by "
                               f"{spec['owner']}); add one under [databases.{database}.grants.{rt.me.name}]")
    return Connection(rt, spec["owner"], database, isolation_level, timeout, functions)


def local_path(database: str) -> str | None:
    """The file of ``database`` when this process opens it itself: in the
    database's owner, and without pspy (development). None in any other
    principal, whose statements run in the owner."""
    from . import runtime
    rt = runtime.current()
    if rt is None:
        return _development_path(database)
    spec = _spec_of(rt, database)
    if spec["owner"] == rt.me.name:
        return os.path.join(rt.plan.app_dir, spec["path"])
    return None


def _spec_of(rt, database: str) -> dict:
    spec = next((d for d in rt.plan.databases if d["name"] == database), None)
    if spec is None:
        names = ", ".join(d["name"] for d in rt.plan.databases) or "none"
        raise OperationalError(f"no database named {database!r} in this app's plan (databases: {names}); "
                               "declare it in pspy.toml under [databases.NAME] and bootstrap again")
    return spec


def _connect_directly(path: str, isolation_level, timeout, options) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=timeout, isolation_level=isolation_level, **options)


def _development_path(database: str) -> str:
    """The database's file without pspy: from the pspy.toml of the app (the
    folder of the main script, or the current folder, and their parents)."""
    from .config import load
    starts = []
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main:
        starts.append(os.path.dirname(os.path.abspath(main)))
    starts.append(os.getcwd())
    for start in starts:
        folder = start
        while True:
            if os.path.isfile(os.path.join(folder, "pspy.toml")):
                for db in load(folder).get("databases", []):
                    if db.name == database:
                        return os.path.join(folder, db.path)
                raise OperationalError(f"{os.path.join(folder, 'pspy.toml')} declares no database {database!r}")
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    raise OperationalError(f"pspy.db.connect({database!r}): no pspy.toml found above {' or '.join(starts)}")


class Connection:
    """A connection whose statements run in the database's owner."""

    def __init__(self, rt, owner: str, database: str, isolation_level, timeout: float,
                 functions: str | None = None):
        self._client = rt.client(owner)
        self._session = self._client.session(DATABASE_SERVICE)
        self._owner = owner
        self._used = time.monotonic()
        self._open_options = {"isolation_level": isolation_level, "timeout": timeout}
        if functions is not None:
            self._open_options["functions"] = functions
        self.database = database
        self.row_factory = None
        self._isolation_level = isolation_level
        self._in_transaction = False
        self._lock = threading.Lock()
        self._closed = False
        self._abandoned: list[int] = []   # cursors dropped with rows left: closed with the next statement
        self._request("open", database, self._open_options)

    # --- the wire -------------------------------------------------------------
    def _request(self, op: str, *args):
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")
        with self._lock:
            now = time.monotonic()
            if now - self._used > _REOPEN_AFTER and not self._in_transaction and op not in ("open", "fetch"):
                # The owner closes a session quiet for long (data/session.py):
                # one that holds no transaction is opened again, unseen.
                self._session.close()
                self._session = self._client.session(DATABASE_SERVICE)
                self._session.call("open", self.database, self._open_options)
            self._used = now
            try:
                answer = self._session.call(op, *args)
            except errors.RPCError as e:
                if isinstance(e, errors.PermissionDenied):
                    raise PermissionDenied(str(e)) from None
                raise OperationalError(f"database {self.database!r} in {self._owner}: {e}") from None
        if type(answer) is not dict:
            raise InterfaceError(f"malformed answer from {self._owner}")
        self._in_transaction = bool(answer.get("in_transaction", self._in_transaction))
        failure = answer.get("error")
        if failure is not None:
            cls = ERRORS.get(failure[0], DatabaseError)
            raise cls(failure[1])
        return answer

    # --- DB-API -----------------------------------------------------------------
    def cursor(self, factory=None) -> "Cursor":
        cursor = (factory or Cursor)(self)
        return cursor

    def execute(self, sql: str, parameters=()) -> "Cursor":
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters) -> "Cursor":
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str) -> "Cursor":
        return self.cursor().executescript(sql_script)

    def commit(self) -> None:
        self._request("commit")

    def rollback(self) -> None:
        self._request("rollback")

    def close(self) -> None:
        if not self._closed:
            try:
                self._request("close")
            except Error:
                pass
            self._closed = True
            self._session.close()

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    @property
    def isolation_level(self):
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value) -> None:
        self._request("isolation_level", value)
        self._isolation_level = self._open_options["isolation_level"] = value   # a session reopened keeps it

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, kind, value, tb) -> None:
        # As sqlite3: commit on success, roll back on an exception; stay open.
        if kind is None:
            self.commit()
        else:
            self.rollback()

    def create_function(self, name, *args, **kwargs):
        raise NotSupportedError(f"create_function({name!r}): a Python function cannot run in the database's "
                                f"owner ({self._owner}); compute it in the app, or in a service of {self._owner}")

    create_aggregate = create_collation = create_window_function = create_function

    def __del__(self):
        try:
            if not self._closed:
                self._closed = True
                self._session.close()
        except Exception:  # noqa: BLE001 - at interpreter exit, anything may be gone
            pass


class Cursor:
    arraysize = 1

    def __init__(self, connection: Connection):
        self.connection = connection
        self.row_factory = None     # None: the connection's
        self.description = None
        self.rowcount = -1
        self.lastrowid = None
        self._rows: list = []
        self._at = 0
        self._cursor_id = None      # the owner's open cursor, while it has rows left
        self._make_row = None

    def _take(self, answer: dict) -> "Cursor":
        columns = answer.get("columns")
        self.description = tuple((name, None, None, None, None, None, None) for name in columns) \
            if columns is not None else None
        self.rowcount = answer.get("rowcount", -1)
        self.lastrowid = answer.get("lastrowid")
        self._rows = _unflatten(answer.get("rows"), len(columns)) if columns else []
        self._at = 0
        self._cursor_id = answer.get("cursor")
        self._make_row = self._row_maker()
        return self

    def _row_maker(self):
        factory = self.row_factory if self.row_factory is not None else self.connection.row_factory
        if factory is None or self.description is None:
            return None
        if factory is sqlite3.Row or factory is Row:
            cls = _row_class(tuple(d[0] for d in self.description))
            return cls
        return lambda values: factory(self, values)

    def _forget_remote(self) -> None:
        # The owner's cursor is closed with the next statement on this
        # connection (its rows left unread); no round trip of its own.
        if self._cursor_id is not None:
            cursor_id, self._cursor_id = self._cursor_id, None
            self.connection._abandoned.append(cursor_id)

    def __del__(self):
        try:
            self._forget_remote()
        except Exception:  # noqa: BLE001 - at interpreter exit, anything may be gone
            pass

    def _execute(self, sql: str, parameters, many: bool) -> "Cursor":
        self._forget_remote()
        connection = self.connection
        abandoned, connection._abandoned = connection._abandoned, []
        if abandoned:
            return self._take(connection._request("execute", str(sql), parameters, many, abandoned))
        return self._take(connection._request("execute", str(sql), parameters, many))

    def execute(self, sql: str, parameters=()) -> "Cursor":
        return self._execute(sql, _parameters(parameters), False)

    def executemany(self, sql: str, seq_of_parameters: Iterable) -> "Cursor":
        return self._execute(sql, [_parameters(p) for p in seq_of_parameters], True)

    def executescript(self, sql_script: str) -> "Cursor":
        self._forget_remote()
        return self._take(self.connection._request("executescript", str(sql_script)))

    def _more(self) -> bool:
        if self._cursor_id is None:
            return False
        answer = self.connection._request("fetch", self._cursor_id, max(self.arraysize, 1024))
        self._rows, self._at = _unflatten(answer.get("rows"), len(self.description)), 0
        if answer.get("cursor") is None:
            self._cursor_id = None
        return bool(self._rows)

    def fetchone(self):
        if self._at >= len(self._rows) and not self._more():
            return None
        row = self._rows[self._at]
        self._at += 1
        return self._make_row(row) if self._make_row is not None else row

    def fetchmany(self, size: int | None = None) -> list:
        size = self.arraysize if size is None else size
        out = []
        while len(out) < size:
            if self._at >= len(self._rows) and not self._more():
                break
            taken = self._rows[self._at:self._at + size - len(out)]
            self._at += len(taken)
            out.extend(taken)
        return self._shape(out)

    def fetchall(self) -> list:
        out = self._rows[self._at:]
        self._at = len(self._rows)
        while self._more():
            out.extend(self._rows)
            self._at = len(self._rows)
        return self._shape(out)

    def _shape(self, rows: list) -> list:
        make = self._make_row
        if make is None:
            return rows
        return list(map(make, rows))

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        self._forget_remote()
        self._rows, self._at = [], 0

    def setinputsizes(self, sizes) -> None:
        pass

    def setoutputsize(self, size, column=None) -> None:
        pass


def _unflatten(values, width: int) -> list[tuple]:
    """Rows as tuples from the answer's flat list of values (data/session.py)."""
    if type(values) is not list or len(values) % width:
        raise InterfaceError("malformed rows in the owner's answer")
    return list(zip(*[iter(values)] * width))


def _parameters(parameters):
    """Parameters as they cross: a list (qmark) or a dict (named)."""
    if isinstance(parameters, dict):
        return dict(parameters)
    if isinstance(parameters, (list, tuple)):
        return list(parameters)
    if hasattr(parameters, "keys"):
        return {k: parameters[k] for k in parameters.keys()}
    raise ProgrammingError(f"parameters are a sequence or a mapping, not {type(parameters).__name__}")
