"""SQLAlchemy over pspy's data grants: a ``creator`` for SQLite engines.

    from sqlalchemy import create_engine
    import pspy.contrib.sqlalchemy
    engine = create_engine("sqlite://", creator=pspy.contrib.sqlalchemy.creator("main"))

"main" is the database's name in ``pspy.toml``. Where this process opens
the file itself (the owner, or no pspy) the connection is a plain sqlite3
one. Elsewhere its statements run in the owner under this principal's
grants; SQLAlchemy's SQLite dialect registers two Python functions on
every new connection (regexp, floor), which cannot cross, so the owner
registers the dialect's own on the caller's connection (the "sqlalchemy"
function set of pspy/data/session.py) and the caller's registration of
those two is accepted as done. A refused statement raises
``sqlalchemy.exc.DatabaseError`` whose ``orig`` is a
``pspy.db.PermissionDenied`` naming the table and column.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

import pspy.db

FUNCTION_SET = "sqlalchemy"
# What SQLAlchemy's pysqlite dialect registers in its on_connect: name -> arity.
_REGISTERED_IN_OWNER = {"regexp": 2, "floor": 1}


def creator(database: str) -> Callable[[], Any]:
    """A function that opens a DB-API connection to ``database``, for ``create_engine(creator=...)``."""
    return lambda: connect(database)


def connect(database: str) -> Any:
    connection = pspy.db.connect(database, functions=FUNCTION_SET)
    if isinstance(connection, pspy.db.Connection):
        refuse = connection.create_function

        def create_function(name, narg, *args, **kwargs):
            if _REGISTERED_IN_OWNER.get(str(name).lower()) != narg:
                refuse(name, narg, *args, **kwargs)
        connection.create_function = create_function
    return connection


def prepare_connection(db: sqlite3.Connection) -> None:
    """In the owner, on a caller's connection: what the dialect's on_connect registers."""
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

    SQLiteDialect_pysqlite(dbapi=sqlite3).on_connect()(db)
