"""REGEXP on a caller's connection in a database's owner, in linear time.

Django's and SQLAlchemy's own REGEXP is Python's ``re``, which backtracks:
``'aaaaaaaaaaaaaaaaaaaaaaaaa!' REGEXP '(a+)+$'`` runs for seconds, and each
more character doubles it. In the owner that runs a caller's pattern, and
neither the statement time limit (SQLite's progress handler does not run
during one function call) nor other callers (``re`` holds the GIL) can
stop it. So the function sets replace it with RE2's (google-re2), which
matches in time linear in the text; a pattern RE2 cannot take
(backreferences, lookaround) fails the statement. Without google-re2 in
the owner, REGEXP is refused, saying why.
"""

from __future__ import annotations

import functools
import sqlite3

try:
    import re2
except ImportError:   # the owner's environment lacks it: REGEXP refuses
    re2 = None


def install(db: sqlite3.Connection) -> None:
    """Make REGEXP on ``db`` RE2's, over the function set's own."""
    db.create_function("regexp", 2, _regexp, deterministic=True)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str):
    return re2.compile(pattern)


def _regexp(pattern, string):
    if pattern is None or string is None:
        return None
    if re2 is None:
        raise ValueError("REGEXP needs google-re2 in the database's owner: Python's re could run for ever "
                         "on a caller's pattern; install google-re2, or use LIKE or GLOB")
    return bool(_compiled(str(pattern)).search(str(string)))
