"""The backend: Django's sqlite3 backend whose connection is ``pspy.db.connect(NAME)``.

Where this process opens the file itself (the database's owner, or no pspy
at all) it is Django's sqlite3 backend on that file, unchanged: its
functions, its PRAGMAs, its type converters. In any other principal the
connection is a ``pspy.db.Connection``: each statement runs in the owner
under this principal's grants, and the owner registers Django's SQL
functions and turns foreign keys on (the "django" function set,
pspy/contrib/django/functions.py), since a Python function cannot cross.
There, a statement the grants refuse raises ``pspy.db.PermissionDenied``
naming the table and column: a read of a column not granted, a schema
change (migrations run as the owner at bootstrap), any PRAGMA write
(``disable_constraint_checking``, which loaddata uses, included).

Django's test databases (an in-memory one, or ``TEST["NAME"]``) are plain
SQLite files or memory of this process: the test runner gets Django's
sqlite3 behaviour on them, without grants.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from itertools import tee

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.db.backends.sqlite3 import base as sqlite3_base
from django.db.utils import DatabaseErrorWrapper
from django.utils.asyncio import async_unsafe
from django.utils.functional import cached_property

import pspy.db
from pspy.data.grants import _DATABASE_NAME

FUNCTION_SET = "django"


class PermissionDenied(pspy.db.PermissionDenied, DatabaseError):
    """A statement the grants refuse, as Django raises it: ``except
    pspy.db.PermissionDenied`` and ``except django.db.DatabaseError`` both
    catch it (Django would otherwise turn it into a bare DatabaseError)."""


class _RefusalsKeptErrorWrapper(DatabaseErrorWrapper):
    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is not None and issubclass(exc_type, pspy.db.PermissionDenied) \
                and not issubclass(exc_type, DatabaseError):
            # A refusal leaves the connection usable: errors_occurred stays unset.
            raise PermissionDenied(*exc_value.args).with_traceback(traceback) from exc_value
        return super().__exit__(exc_type, exc_value, traceback)


class DatabaseWrapper(sqlite3_base.DatabaseWrapper):
    display_name = "SQLite through pspy data grants"

    def _runs_here(self) -> str | None:
        """The file to open in this process, or None where statements run in the owner."""
        name = str(self.settings_dict["NAME"])
        if not _DATABASE_NAME.fullmatch(name):
            # Not a name pspy.toml can declare: Django's test database (its
            # creation.py puts a memory URI or TEST["NAME"] here), plain sqlite3.
            return name
        return pspy.db.local_path(name)

    @async_unsafe
    def get_new_connection(self, conn_params):
        path = self._runs_here()
        if path is not None:
            return super().get_new_connection({**conn_params, "database": path})
        if any(command.strip() for command in self.init_commands):
            raise ImproperlyConfigured(
                f"settings.DATABASES[{self.alias!r}]['OPTIONS']['init_command'] cannot run on a connection "
                f"whose statements run in the database's owner; set what it sets in the owner")
        # Autocommit, as Django then sets it (_set_autocommit): isolation_level None.
        return pspy.db.connect(str(self.settings_dict["NAME"]), isolation_level=None,
                               timeout=float(self.settings_dict["OPTIONS"].get("timeout", 5.0)),
                               functions=FUNCTION_SET)

    def disable_constraint_checking(self):
        self.ensure_connection()
        if isinstance(self.connection, pspy.db.Connection):
            # Django's migrations (its SQLite schema editor) and loaddata turn
            # foreign keys off first; the grants never let a caller do that.
            raise PermissionDenied(
                f"{self.alias!r} (pspy database {self.settings_dict['NAME']!r}) runs in the database's owner: "
                "turning foreign keys off, as Django's migrations and loaddata do, is the owner's alone; "
                "run them as the owner (the set-up script of pspy.toml, at bootstrap)")
        return super().disable_constraint_checking()

    def check_constraints(self, table_names=None):
        self.ensure_connection()
        if isinstance(self.connection, pspy.db.Connection):
            # PRAGMA foreign_key_check reads whole tables, past the grants, so
            # the authorizer refuses it. Nothing is lost: a caller cannot turn
            # foreign keys off (above), and SQLite refuses a COMMIT that would
            # leave a deferred foreign key broken.
            return
        super().check_constraints(table_names)

    @cached_property
    def wrap_database_errors(self):
        return _RefusalsKeptErrorWrapper(self)

    def create_cursor(self, name=None):
        if isinstance(self.connection, pspy.db.Connection):
            return self.connection.cursor(factory=PspyCursorWrapper)
        return super().create_cursor(name)


class PspyCursorWrapper(pspy.db.Cursor):
    """Django's "format" and "pyformat" parameters turned into SQLite's, by
    Django's own conversion (sqlite3_base.SQLiteCursorWrapper.convert_query)."""

    convert_query = sqlite3_base.SQLiteCursorWrapper.convert_query

    def execute(self, query, params=None):
        if params is None:
            return super().execute(query)
        param_names = list(params) if isinstance(params, Mapping) else None
        return super().execute(self.convert_query(query, param_names=param_names), _adapted(params))

    def executemany(self, query, param_list):
        peekable, param_list = tee(iter(param_list))
        first = next(peekable, None)
        param_names = list(first) if first and isinstance(first, Mapping) else None
        return super().executemany(self.convert_query(query, param_names=param_names), map(_adapted, param_list))


def _adapted(params):
    """Parameters adapted here, as sqlite3 would adapt them on a local
    connection: Django registers its adapters (Decimal to str) in this
    process's sqlite3, not in the owner's."""
    def adapt(value):
        adapter = sqlite3.adapters.get((type(value), sqlite3.PrepareProtocol))
        return adapter(value) if adapter is not None else value
    if isinstance(params, Mapping):
        return {name: adapt(value) for name, value in params.items()}
    return [adapt(value) for value in params]
