"""What the owner of a database does to the connection of a Django caller
(pspy/data/session.py's "django" function set), before the caller's
authorizer is installed: what Django's own sqlite3 backend does in
``get_new_connection``, which a caller in another process cannot do itself.
"""

from __future__ import annotations

import sqlite3

# Django's functions that build a string of a length their caller chooses:
# SQLite limits a value's length, but only after Python has built it, so in
# the owner a call like LPAD('', 1e12, 'x') would exhaust its memory first.
_SIZED = {"LPAD": 3, "RPAD": 3, "REPEAT": 2}


def prepare_connection(db: sqlite3.Connection) -> None:
    from django.db.backends.sqlite3._functions import register

    register(db)
    limit = db.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    for name, arity in _SIZED.items():
        db.create_function(name, arity, _within_length(db, name, limit), deterministic=True)
    # As Django's backend: foreign keys enforced. Set here, before the
    # authorizer refuses every PRAGMA write, so a caller cannot turn them off.
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA legacy_alter_table = OFF")


def _within_length(db: sqlite3.Connection, name: str, limit: int):
    """Django's ``name``, refused when what it builds would pass SQLite's length limit."""
    from django.db.backends.sqlite3 import _functions

    django_function = getattr(_functions, f"_sqlite_{name.lower()}")

    def sized(*args):
        if _built_length(name, *args) > limit:
            raise ValueError(f"{name}: a result over SQLite's length limit ({limit})")
        return django_function(*args)
    return sized


def _built_length(name: str, text, length, fill=None) -> int:
    """The length of the string Django's function builds: REPEAT(text, n) is
    text * n; LPAD and RPAD build fill * length, then cut it."""
    if text is None or length is None:
        return 0
    try:
        length = max(int(length), 0)
    except (TypeError, ValueError):
        return 0
    unit = len(str(text)) if name == "REPEAT" else max(len(str(fill or "")), 1)
    return unit * length
