"""Declared data grants: ``[databases.NAME]`` in ``pspy.toml``, read and checked.

    [databases.main]
    path = "db/app.sqlite"          # in the app, in a folder of its own
    owner = "Data"                  # the provider that holds the file

    [databases.main.grants.web]
    select = ["message", "user(user_id, username)"]
    insert = ["message"]

``select`` and ``update`` name a table (every column) or some of its
columns; ``insert`` and ``delete`` name tables (SQLite's authorizer sees an
insert or a delete per table, never per column); ``schema = true`` allows
CREATE, ALTER and DROP. The owner holds the file and every right; no one
else opens it. Everything here is pure: the schema is read by ``read_schema``
at bootstrap, and ``check_schema`` compares.

In the plan a principal's grants on one database are
``{"tables": {table: {right: [columns] or ["*"]}}, "schema": bool}``, names
lower-cased (SQLite compares them without case).
"""

from __future__ import annotations

import os
import posixpath
import re
import sqlite3
import stat
from dataclasses import dataclass, field
from urllib.parse import quote

from ..errors import ConfigError

RIGHTS = ("select", "insert", "update", "delete")
COLUMN_RIGHTS = ("select", "update")
ENGINES = ("sqlite",)
ALL = "*"
SOURCE = "pspy.toml"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRY = re.compile(rf"\s*({_NAME})\s*(?:\(\s*({_NAME}(?:\s*,\s*{_NAME})*)\s*,?\s*\))?\s*")
_DATABASE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
_KEYS = ("path", "owner", "engine", "grants")


@dataclass
class Database:
    name: str
    path: str                   # relative to the app root, normalized
    owner: str
    engine: str = "sqlite"
    grants: dict[str, dict] = field(default_factory=dict)   # principal -> {"tables": ..., "schema": bool}

    @property
    def location(self) -> str:
        return f"{SOURCE} databases.{self.name}"

    @property
    def folder(self) -> str:
        """The folder the owner must hold: SQLite writes its journal beside the file."""
        return posixpath.dirname(self.path) + "/"

    def to_plan(self) -> dict:
        return {"name": self.name, "engine": self.engine, "path": self.path, "owner": self.owner,
                "location": self.location, "tables": {}}


def parse(config: dict) -> list[Database]:
    """``pspy.toml``'s ``databases`` table as Databases; ConfigError naming
    every problem, each with its key."""
    problems: list[str] = []
    out: list[Database] = []
    for name, spec in sorted(config.items()):
        where = f"{SOURCE} databases.{name}"
        if not _DATABASE_NAME.fullmatch(name):
            problems.append(f"{where}: a database name is a letter then letters, digits or '_'")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{where} must be a table with path, owner and grants")
            continue
        unknown = sorted(set(spec) - set(_KEYS))
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}")
        engine = spec.get("engine", "sqlite")
        if engine not in ENGINES:
            problems.append(f"{where}.engine: {engine!r} is not supported (supported: {', '.join(ENGINES)})")
        path = _path_problem(spec.get("path"), f"{where}.path", problems)
        owner = spec.get("owner")
        if not isinstance(owner, str) or not re.fullmatch(_NAME, owner or ""):
            problems.append(f"{where}.owner must name the provider that holds the file, got {owner!r}")
            owner = None
        grants = spec.get("grants", {})
        if not isinstance(grants, dict):
            problems.append(f"{where}.grants must be a table of principal = {{select = [...], ...}}")
            grants = {}
        parsed = {}
        for principal, rights in sorted(grants.items()):
            if principal == owner:
                problems.append(f"{where}.grants.{principal}: {principal} owns the database and holds every "
                                "right already; grant rights to other principals")
                continue
            parsed[principal] = parse_grant(rights, f"{where}.grants.{principal}", problems)
        if path is not None and owner is not None:
            out.append(Database(name, path, owner, engine, parsed))
    seen: dict[str, str] = {}
    for db in out:
        other = seen.get(db.path)
        if other is not None:
            problems.append(f"{db.location}: {db.path} is also database {other!r}; a file is one database")
        seen[db.path] = db.name
    folders: dict[str, Database] = {}
    for db in out:
        other = folders.get(db.folder)
        if other is not None and other.owner != db.owner:
            problems.append(f"{db.location}: its folder {db.folder} holds database {other.name!r} of "
                            f"{other.owner!r}; a folder has one owner, so databases of different owners "
                            "live in different folders")
        folders.setdefault(db.folder, db)
    if problems:
        raise ConfigError("\n".join(problems))
    return out


def _path_problem(path, where: str, problems: list[str]) -> str | None:
    if not isinstance(path, str) or not path or "\0" in path:
        problems.append(f"{where} must be the database file's path in the app, e.g. \"db/app.sqlite\"")
        return None
    norm = posixpath.normpath(path)
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or path.endswith("/"):
        problems.append(f"{where}: {path!r} must be a file path inside the app folder")
        return None
    if posixpath.dirname(norm) in ("", "."):
        problems.append(f"{where}: {path!r} is in the app's root folder; put it in a folder of its own "
                        "(e.g. db/" + posixpath.basename(norm) + "): SQLite writes its journal beside the "
                        "file, so its owner must hold the folder")
        return None
    if any(part.startswith(".pspy") for part in norm.split("/")):
        problems.append(f"{where}: {path!r} is under pspy's own state folder")
        return None
    return norm


def parse_grant(rights, where: str, problems: list[str]) -> dict:
    """One principal's rights on one database, in the plan's form."""
    tables: dict[str, dict[str, list[str]]] = {}
    if not isinstance(rights, dict):
        problems.append(f"{where} must be a table such as {{ select = [\"message\"], insert = [\"message\"] }}")
        return {"tables": tables, "schema": False}
    schema = rights.get("schema", False)
    if not isinstance(schema, bool):
        problems.append(f"{where}.schema must be true or false, got {schema!r}")
        schema = False
    for right, entries in rights.items():
        if right == "schema":
            continue
        if right not in RIGHTS:
            problems.append(f"{where}: unknown right {right!r}; known: {', '.join(RIGHTS)}, schema")
            continue
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            problems.append(f"{where}.{right} must be a list such as [\"message\", \"user(user_id, username)\"]")
            continue
        for entry in entries:
            m = _ENTRY.fullmatch(entry)
            if m is None:
                problems.append(f"{where}.{right}: {entry!r} is not \"table\" or \"table(column, ...)\"")
                continue
            table = m[1].lower()
            columns = [c.strip().lower() for c in m[2].split(",")] if m[2] else [ALL]
            if columns != [ALL] and right not in COLUMN_RIGHTS:
                problems.append(f"{where}.{right}: {entry!r}: {right} is granted per table (SQLite checks "
                                f"an {right} per table, not per column); write {m[1]!r}")
                continue
            given = tables.setdefault(table, {})
            if right in given:
                problems.append(f"{where}.{right}: table {m[1]!r} is named twice; name it once, with "
                                "every column it needs (or none for all)")
                continue
            if len(set(columns)) != len(columns):
                problems.append(f"{where}.{right}: {entry!r} names a column twice")
                continue
            given[right] = columns
    return {"tables": tables, "schema": schema}


def check_principals(databases: list[Database], principals: list[str]) -> None:
    """Every grantee is a principal of the app."""
    problems = []
    for db in databases:
        for name in db.grants:
            if name not in principals:
                problems.append(f"{db.location}.grants.{name}: {name!r} is not a principal of this app "
                                f"({', '.join(principals)})")
    if problems:
        raise ConfigError("\n".join(problems))


def read_schema(path: str) -> dict[str, list[str]]:
    """{table: [columns]} of an SQLite file, read without writing anything
    beside it (immutable: no journal, no lock file) unless it has a
    write-ahead log."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: a database must be a regular file")
    # A write-ahead log left by the owner (data/session.py puts the file in
    # WAL mode) may hold the latest schema: then read through it (SQLite may
    # make the -shm file; bootstrap gives the folder to the owner after).
    uri = "file:" + _uri_path(path) + ("?mode=ro" if os.path.exists(path + "-wal") else "?mode=ro&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise ConfigError(f"{path}: cannot open the database: {e}") from None
    try:
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        return {t.lower(): [row[1].lower() for row in conn.execute("SELECT * FROM pragma_table_info(?)", (t,))]
                for t in tables}
    except sqlite3.Error as e:
        raise ConfigError(f"{path}: cannot read the database's schema: {e}") from None
    finally:
        conn.close()


def _uri_path(path: str) -> str:
    return quote(os.path.abspath(path))


def check_schema(db: Database, schema: dict[str, list[str]]) -> list[str]:
    """Grants naming a table or column the database lacks, each with its key."""
    problems = []
    for principal, grant in sorted(db.grants.items()):
        for table, rights in sorted(grant["tables"].items()):
            where = f"{db.location}.grants.{principal}"
            if table not in schema:
                problems.append(f"{where}: table {table!r} is not in {db.path} (its tables: "
                                f"{', '.join(sorted(schema)) or 'none'})")
                continue
            for right, columns in sorted(rights.items()):
                missing = [c for c in columns if c != ALL and c not in schema[table]]
                if missing:
                    problems.append(f"{where}.{right}: table {table!r} has no column {', '.join(missing)} "
                                    f"(its columns: {', '.join(schema[table])})")
    return problems


def check_against_schemas(plan, app_root: str) -> None:
    """At bootstrap, once the set-up script ran and old data came over:
    every database exists in ``app_root`` (the staged app), and every grant
    names tables and columns it has. Records each database's tables and
    columns in the plan, for analyze. ConfigError naming every problem."""
    problems = []
    for spec in plan.databases:
        path = os.path.join(app_root, spec["path"])
        where = f"{spec['location']}.path"
        if not os.path.lexists(path):
            problems.append(f"{where}: {spec['path']} does not exist in the app after its set-up script; "
                            "create the database there (a script = \"...\" in pspy.toml runs at bootstrap)")
            continue
        try:
            schema = read_schema(path)
        except (ConfigError, OSError) as e:
            problems.append(f"{where}: {e}")
            continue
        spec["tables"] = schema
        db = Database(spec["name"], spec["path"], spec["owner"], spec["engine"],
                      {p.name: p.grants[spec["name"]] for p in plan.principals if spec["name"] in p.grants})
        problems.extend(check_schema(db, schema))
    if problems:
        raise ConfigError("\n".join(problems))
