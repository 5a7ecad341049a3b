"""One caller's grants on one SQLite database, enforced by SQLite's authorizer.

The owner opens one connection per caller session, and ``Authorizer.install``
puts the caller's grants on it: SQLite calls the authorizer for every table,
column, function and statement kind while it prepares a statement, and a
refusal fails the statement before a row is read. pspy parses no SQL. What
SQLite reports was checked on SQLite 3.40, and the tests
(tests/test_data_authorizer.py) show each rule on the SQLite Python links.

Rules:
- Reading a column (SQLITE_READ) needs it, or every column ("*"), in the
  table's select grant, wherever the column appears: the result, WHERE,
  ORDER BY, JOIN ON, a subquery, a CTE, RETURNING, an UPSERT's conflict
  target, a foreign-key lookup. A table read with no column (SQLite
  reports "", as for ``count(*)`` or ``SELECT 1 FROM t``) needs some select
  grant on the table. A recursive CTE's own rows are reported the same way
  and told apart by the schema's names, read at ``install``: a table
  created after the session opened passes as a CTE there (its row count
  shows, never a column). A rowid alias (INTEGER PRIMARY KEY) is reported by its
  column's name; a table's bare rowid as "rowid", which a column-listed
  grant must name.
- Refusals are SQLITE_DENY, never SQLITE_IGNORE: a column silently read as
  NULL would be a wrong answer, not a refusal.
- INSERT and DELETE need the table's insert or delete grant; UPDATE (and an
  UPSERT's DO UPDATE) the column's update grant. An AUTOINCREMENT insert
  needs only the insert grant: SQLite keeps sqlite_sequence itself and does
  not report it.
- INSERT OR REPLACE and UPDATE OR REPLACE delete the row they replace, and
  SQLite reports them as a plain insert or update. ``install`` therefore
  puts a temporary BEFORE DELETE trigger that aborts on every table the
  caller may insert into or update but not delete from, and turns on
  ``recursive_triggers`` (without it SQLite runs no delete trigger for a
  replaced row). Without those triggers (``set_authorizer`` called
  directly), inserts and updates of such tables are refused, saying why.
  Side effect to know: with recursive triggers on, an app trigger that
  writes its own table fires again, up to SQLite's depth limit.
- Views, triggers and WITH clauses have no definer rights: what they read
  and write is checked against the caller's grants (SQLite names them in
  the authorizer's 5th argument, quoted in refusals). Reading a view also
  needs a select grant on the view itself, and SQLite reports every column
  of the view's query, used or not.
- The schema (sqlite_master, sqlite_temp_master) may be read by anyone:
  the names and declarations of tables are not their data. Writing it, and
  every other schema change (CREATE, DROP, ALTER of tables, indexes, views,
  triggers and virtual tables, temporary or not; ANALYZE; REINDEX), needs
  ``"schema": true``. SQLite's other own tables (sqlite_sequence,
  sqlite_stat1...) follow the same rule, since DDL writes them. DROP TABLE
  also needs the delete grant on the table: SQLite reports it as deleting
  every row, exactly as ``DELETE FROM``. Even with ``"schema": true`` pspy's
  own triggers (named ``pspy_*``) may not be dropped.
- ATTACH and DETACH are always refused. So is VACUUM, with or without INTO:
  SQLite reports it as attaching the copy it writes (a file name, or "" for
  a plain VACUUM), and ``install`` also sets the connection's limit of
  attached databases to 0.
- PRAGMA: only schema introspection (table_info, table_xinfo, table_list,
  index_list, index_info, index_xinfo, foreign_key_list, whose argument
  names a table or an index) and reading a few settings with no argument
  (collation_list, compile_options, foreign_keys, read_uncommitted,
  data_version: FTS5 reads the last itself). Any pragma with a value
  (writable_schema=1, journal_mode=..., foreign_keys=OFF) is refused, and so
  are the others, which either change state with no argument (optimize,
  shrink_memory, wal_checkpoint) or read all data (integrity_check). The
  table-valued forms (``SELECT * FROM pragma_table_info('t')``) are refused:
  the PRAGMA statement serves.
- Functions are allowed but for those that reach memory or files:
  load_extension, fts3_tokenizer and fts5 (they pass pointers), rtreenode
  and rtreedepth (testing functions that decode raw pages), and the
  shell's readfile, writefile and edit should they be present. The
  table-valued functions json_each, json_tree and generate_series compute
  from their arguments alone and may be read (unless the schema has a table
  of that name, which is a table like any other); other virtual tables are
  tables (dbstat, for one, is granted to no one; an FTS5 table needs its
  shadow tables granted too, as SQLite reports FTS5's own reads of them).
- Uniqueness and foreign keys answer questions: an insert refused as a
  duplicate tells that the value exists. With ``foreign_keys`` on, SQLite
  reports the parent-key lookup as a read, so it needs select on that key.
- Transactions and savepoints are allowed. Any other action code (a newer
  SQLite's) is refused.

The first use of a virtual table on a connection makes SQLite report an
update of sqlite_master (its constructor declares the table's columns),
which these rules refuse; ``install`` therefore connects json_each, json_tree
and the schema's virtual tables before the authorizer is on.

The authorizer sees statements, not the connection's other doors:
``blobopen``, ``backup``, ``serialize`` and ``load_extension`` on a
connection bypass it, so a caller must never reach them.
"""

from __future__ import annotations

import re
import sqlite3

RIGHTS = ("select", "insert", "update", "delete")

_OK, _DENY = sqlite3.SQLITE_OK, sqlite3.SQLITE_DENY
_READ, _SELECT, _FUNCTION = sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION
_INSERT, _UPDATE, _DELETE = sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE
_PRAGMA, _ATTACH, _DETACH = sqlite3.SQLITE_PRAGMA, sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH
_ALWAYS = frozenset((sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT, sqlite3.SQLITE_RECURSIVE))

# Schema changes: action -> (what it is called, index of the argument naming its object).
_SCHEMA_CHANGES = {
    sqlite3.SQLITE_CREATE_INDEX: ("CREATE INDEX", 0), sqlite3.SQLITE_CREATE_TABLE: ("CREATE TABLE", 0),
    sqlite3.SQLITE_CREATE_TEMP_INDEX: ("CREATE TEMP INDEX", 0),
    sqlite3.SQLITE_CREATE_TEMP_TABLE: ("CREATE TEMP TABLE", 0),
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: ("CREATE TEMP TRIGGER", 0),
    sqlite3.SQLITE_CREATE_TEMP_VIEW: ("CREATE TEMP VIEW", 0), sqlite3.SQLITE_CREATE_TRIGGER: ("CREATE TRIGGER", 0),
    sqlite3.SQLITE_CREATE_VIEW: ("CREATE VIEW", 0), sqlite3.SQLITE_CREATE_VTABLE: ("CREATE VIRTUAL TABLE", 0),
    sqlite3.SQLITE_DROP_INDEX: ("DROP INDEX", 0), sqlite3.SQLITE_DROP_TABLE: ("DROP TABLE", 0),
    sqlite3.SQLITE_DROP_TEMP_INDEX: ("DROP TEMP INDEX", 0), sqlite3.SQLITE_DROP_TEMP_TABLE: ("DROP TEMP TABLE", 0),
    sqlite3.SQLITE_DROP_TEMP_TRIGGER: ("DROP TEMP TRIGGER", 0),
    sqlite3.SQLITE_DROP_TEMP_VIEW: ("DROP TEMP VIEW", 0), sqlite3.SQLITE_DROP_TRIGGER: ("DROP TRIGGER", 0),
    sqlite3.SQLITE_DROP_VIEW: ("DROP VIEW", 0), sqlite3.SQLITE_DROP_VTABLE: ("DROP VIRTUAL TABLE", 0),
    sqlite3.SQLITE_ALTER_TABLE: ("ALTER TABLE", 1),   # (schema name, table)
    sqlite3.SQLITE_ANALYZE: ("ANALYZE", 0), sqlite3.SQLITE_REINDEX: ("REINDEX", 0),
}
_WRITES = {_INSERT: "insert into", _UPDATE: "update", _DELETE: "delete from"}

_SCHEMA_TABLES = frozenset(("sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"))
_TABLE_FUNCTIONS = frozenset(("json_each", "json_tree", "generate_series"))
_NAMING_PRAGMAS = frozenset(("table_info", "table_xinfo", "table_list", "index_list", "index_info",
                             "index_xinfo", "foreign_key_list"))
_READING_PRAGMAS = frozenset(("collation_list", "compile_options", "foreign_keys", "read_uncommitted",
                              "data_version"))
_REFUSED_FUNCTIONS = frozenset(("load_extension", "fts3_tokenizer", "fts5", "rtreenode", "rtreedepth",
                                "readfile", "writefile", "edit"))
# SQLite's names for this connection's own databases; None where it gives none (a read with no column).
# Anything else was attached, which no caller may do.
_OWN_DATABASES = frozenset((None, "main", "temp"))
_EVERY = frozenset(("*",))    # a grant of every column; tested by identity
_GUARD_PREFIX = "pspy_"
_VIRTUAL = re.compile(r"\s*create\s+virtual\s", re.IGNORECASE)


class Authorizer:
    """set_authorizer callback for one caller's grants on one database."""

    def __init__(self, principal: str, database: str, grants: dict):
        """grants: ``{"tables": {table: {right: [columns] or ["*"]}}, "schema": bool}``
        (the plan's form, pspy/data/grants.py), or {} for none."""
        self.principal, self.database = principal, database
        self.denial: str | None = None    # the last refusal, in words; reset() before each statement
        self.schema = bool(grants.get("schema", False))
        select: dict[str, frozenset] = {}
        update: dict[str, frozenset] = {}
        insert, delete = set(), set()
        for table, rights in (grants.get("tables") or {}).items():
            table = table.lower()
            for right, columns in rights.items():
                if right not in RIGHTS:
                    raise ValueError(f"grants of {principal} on database {database!r}: unknown right "
                                     f"{right!r} on table {table!r} (rights: {', '.join(RIGHTS)})")
                every = "*" in columns
                if right == "select":
                    select[table] = _EVERY if every else frozenset(c.lower() for c in columns)
                elif right == "update":
                    update[table] = _EVERY if every else frozenset(c.lower() for c in columns)
                elif right == "insert":
                    insert.add(table)
                else:
                    delete.add(table)
        self._select = select
        self._granted_update = update
        self._insert = frozenset(insert)
        self._delete = frozenset(delete)
        self._guard_messages: frozenset[str] = frozenset()
        self._table_functions: frozenset[str] = frozenset()    # install() connects them, then allows them
        self._schema_names: frozenset[str] | None = None       # install(): tables, views; None: any name may be one
        self._replace_safe(frozenset())

    def _replace_safe(self, guarded: frozenset) -> None:
        """Inserts and updates are allowed on tables where a REPLACE's delete
        is either granted or stopped by a guard trigger (``install``)."""
        self._guarded = guarded
        safe = self._delete | guarded
        self._may_insert = frozenset(t for t in self._insert if t in safe)
        self._may_update = {t: c for t, c in self._granted_update.items() if t in safe}

    def reset(self) -> None:
        """Forget the last refusal: call before each statement."""
        self.denial = None

    def refusal(self, error: BaseException) -> str | None:
        """Why the statement that raised ``error`` on this authorizer's
        connection was refused, in words; None if no grant refused it (a
        constraint, a syntax error, a busy database)."""
        if self.denial is not None:
            return self.denial
        if isinstance(error, sqlite3.IntegrityError) and str(error) in self._guard_messages:
            return str(error)
        return None

    def __call__(self, action: int, arg1, arg2, dbname, source) -> int:
        # The common cases first, each a dict or set lookup on the names as
        # SQLite passes them (the schema's spelling); anything that misses
        # goes the slow way, which also folds case and words the refusal.
        if action == _READ:
            columns = self._select.get(arg1)
            if columns is not None and (columns is _EVERY or arg2 in columns) and dbname in _OWN_DATABASES:
                return _OK
            return self._read(arg1, arg2, dbname, source)
        if action == _SELECT:
            return _OK
        if action == _FUNCTION:
            if arg2.lower() not in _REFUSED_FUNCTIONS:
                return _OK
            return self._deny(f"{self.principal} may not call {arg2}() in database {self.database!r}: "
                              "it reaches memory or files", source)
        if action == _INSERT:
            if arg1 in self._may_insert and dbname in _OWN_DATABASES:
                return _OK
            return self._write(action, arg1, None, dbname, source)
        if action == _UPDATE:
            columns = self._may_update.get(arg1)
            if columns is not None and (columns is _EVERY or arg2 in columns) and dbname in _OWN_DATABASES:
                return _OK
            return self._write(action, arg1, arg2, dbname, source)
        if action == _DELETE:
            if arg1 in self._delete and dbname in _OWN_DATABASES:
                return _OK
            return self._write(action, arg1, None, dbname, source)
        if action in _ALWAYS:
            return _OK
        if action == _PRAGMA:
            return self._pragma(arg1, arg2, source)
        if action in _SCHEMA_CHANGES:
            return self._schema_change(action, arg1, arg2, source)
        if action == _ATTACH:
            named = "" if arg1 is None else f" ({arg1!r})"    # None: the file name is a parameter
            return self._deny(f"{self.principal} may not attach a database{named} to database "
                              f"{self.database!r}: ATTACH is refused, and so is VACUUM, which attaches "
                              "the copy it writes", source)
        if action == _DETACH:
            return self._deny(f"{self.principal} may not detach a database ({arg1!r}) from database "
                              f"{self.database!r}", source)
        return self._deny(f"{self.principal} may not do what SQLite calls action {action} "
                          f"({arg1!r}, {arg2!r}) in database {self.database!r}: pspy does not know it", source)

    # The slow paths: a name to fold, a special table, or a refusal to word.

    def _deny(self, why: str, source) -> int:
        if source:
            why += f" (inside {source!r}: views, triggers and WITH clauses run with {self.principal}'s grants)"
        self.denial = why
        return _DENY

    def _elsewhere(self, dbname, source) -> int:
        return self._deny(f"{self.principal} may not use database {dbname!r} on database {self.database!r}: "
                          "only the database itself (main) and its temporary tables (temp)", source)

    def _read(self, table: str, column: str, dbname, source) -> int:
        if dbname not in _OWN_DATABASES:
            return self._elsewhere(dbname, source)
        name = table.lower()
        if dbname is None and not column and self._schema_names is not None and name not in self._schema_names:
            # A recursive CTE's own rows, counted: SQLite reports them as a
            # table read with no column and no schema name, as it does a
            # table's count(*); told apart by the schema's names (install),
            # a CTE named like a table is taken for the table. What the CTE's
            # body reads from tables was checked column by column.
            return _OK
        if name in _SCHEMA_TABLES or name in self._table_functions or (self.schema and name.startswith("sqlite_")):
            return _OK
        columns = self._select.get(name)
        wanted = (column or "").lower()
        if columns is not None and (wanted == "" or columns is _EVERY or wanted in columns):
            return _OK
        if wanted == "":
            return self._deny(f"{self.principal} may not select from {table} in database {self.database!r}",
                              source)
        return self._deny(f"{self.principal} may not select {table}.{wanted if wanted == 'rowid' else column} "
                          f"in database {self.database!r}", source)

    def _write(self, action: int, table: str, column, dbname, source) -> int:
        if dbname not in _OWN_DATABASES:
            return self._elsewhere(dbname, source)
        name = table.lower()
        if name.startswith("sqlite_"):
            # SQLite's own tables: DDL writes them (sqlite_master for every
            # CREATE, sqlite_sequence on a rename). SQLite itself refuses a
            # direct write of sqlite_master unless writable_schema is on,
            # which no caller can set.
            if self.schema:
                return _OK
            return self._deny(f"{self.principal} may not change the schema (write {table}, as CREATE, DROP "
                              f"and ALTER do) in database {self.database!r}: no schema grant", source)
        if action == _INSERT:
            allowed = name in self._insert
        elif action == _DELETE:
            allowed = name in self._delete
        else:
            columns = self._granted_update.get(name)
            allowed = columns is not None and (columns is _EVERY or (column or "").lower() in columns)
        target = f"{table}.{column}" if column else table
        if not allowed:
            return self._deny(f"{self.principal} may not {_WRITES[action]} {target} in database "
                              f"{self.database!r}", source)
        if name in self._delete or name in self._guarded:
            return _OK
        return self._deny(f"{self.principal} may not {_WRITES[action]} {target} in database {self.database!r} "
                          "on this connection: it has no guard against INSERT OR REPLACE and UPDATE OR REPLACE, "
                          f"which delete rows, and {self.principal} may not delete from {table} "
                          "(put the authorizer on with Authorizer.install)", source)

    def _pragma(self, name: str, value, source) -> int:
        pragma = name.lower()
        if pragma in _NAMING_PRAGMAS or (pragma in _READING_PRAGMAS and value is None):
            return _OK
        shown = f"PRAGMA {name}" if value is None else f"PRAGMA {name}={value}"
        return self._deny(f"{self.principal} may not run {shown} on database {self.database!r}: only "
                          f"{', '.join(sorted(_NAMING_PRAGMAS))} and reading "
                          f"{', '.join(sorted(_READING_PRAGMAS))} are allowed", source)

    def _schema_change(self, action: int, arg1, arg2, source) -> int:
        what, which = _SCHEMA_CHANGES[action]
        name = (arg1, arg2)[which]
        if self.schema and not (action == sqlite3.SQLITE_DROP_TEMP_TRIGGER
                                and (name or "").lower().startswith(_GUARD_PREFIX)):
            return _OK
        why = "pspy's guard triggers stay" if self.schema else "no schema grant"
        return self._deny(f"{self.principal} may not change the schema ({what} {name}) in database "
                          f"{self.database!r}: {why}", source)

    def install(self, connection: sqlite3.Connection) -> None:
        """Make ``connection`` enforce these grants: the one way to put this
        authorizer on a connection. ``connection`` is fresh, and only this
        caller's statements run on it (temporary triggers and settings are
        the connection's). Order matters: virtual tables are connected and
        guards created before the authorizer is on, and setting it expires
        every statement prepared until then."""
        # Belt and braces for ATTACH and VACUUM [INTO], which the authorizer refuses too.
        connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        defensive = getattr(sqlite3, "SQLITE_DBCONFIG_DEFENSIVE", None)   # Python 3.12+
        if defensive is not None:
            # No writable_schema, no journal_mode=OFF, no writes to shadow tables. Set before the
            # virtual tables are connected: set after, SQLite 3.40 constructed them again on first use.
            connection.setconfig(defensive, True)
        _connect_virtual_tables(connection)
        tables, no_rows_of_their_own = _schema_objects(connection)
        self._schema_names = frozenset(tables) | no_rows_of_their_own
        needing_guard = sorted(t for t in (self._insert | set(self._granted_update)) - self._delete if t in tables)
        messages = set()
        for n, table in enumerate(needing_guard):
            message = (f"{self.principal} may not delete from {tables[table]} in database {self.database!r}: "
                       "INSERT OR REPLACE and UPDATE OR REPLACE delete the row they replace")
            messages.add(message)
            connection.execute(f"CREATE TEMP TRIGGER {_GUARD_PREFIX}replace_guard_{n} BEFORE DELETE ON "
                               f"main.{_identifier(tables[table])} BEGIN SELECT RAISE(ABORT, "
                               f"{_literal(message)}); END")
        if needing_guard:
            # Without recursive triggers SQLite fires no delete trigger for a replaced row.
            connection.execute("PRAGMA recursive_triggers = ON")
        self._guard_messages = frozenset(messages)
        self._replace_safe(frozenset(needing_guard) | no_rows_of_their_own)
        # A table of the schema named like a table-valued function is a table, granted or not.
        self._table_functions = _TABLE_FUNCTIONS - set(tables) - no_rows_of_their_own
        connection.set_authorizer(self)


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _schema_objects(connection: sqlite3.Connection) -> tuple[dict[str, str], frozenset]:
    """(ordinary tables: lower-cased name -> name as declared, names of views
    and virtual tables). A view or a virtual table has no rows a REPLACE could
    delete: its writes reach ordinary tables, which are checked and guarded
    themselves; and SQLite allows no trigger on a virtual table."""
    tables: dict[str, str] = {}
    others = set()
    for kind, name, sql in connection.execute(
            "SELECT type, name, sql FROM main.sqlite_master WHERE type IN ('table', 'view')"):
        if kind == "view" or _VIRTUAL.match(sql or ""):
            others.add(name.lower())
        elif not name.lower().startswith("sqlite_"):
            tables[name.lower()] = name
    return tables, frozenset(others)


def _connect_virtual_tables(connection: sqlite3.Connection) -> None:
    """Construct the table-valued functions and the schema's virtual tables
    on ``connection`` while it has no authorizer: a virtual table's first use
    on a connection declares its columns, which SQLite reports as an update
    of sqlite_master. Constructed once, they stay for the connection's life."""
    statements = ["SELECT * FROM json_each('[]')", "SELECT * FROM json_tree('[]')"]
    for name, sql in connection.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'table'"):
        if _VIRTUAL.match(sql or ""):
            statements.append(f"SELECT * FROM main.{_identifier(name)} LIMIT 0")
    for statement in statements:
        try:
            connection.execute(statement).fetchall()
        except sqlite3.Error:
            pass   # a SQLite without JSON, a module not loaded here: its use is refused later, which is safe
