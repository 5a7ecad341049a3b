"""Where the microblog keeps its data, relative to the app root, and how to open it.

The whole database lives in db/, a folder only the Timeline provider owns
(perms {"db/": 0o700} in timeline.py): SQLite writes its journal beside the
database file, so the provider must own the folder, not just the file.
"""

import contextlib
import os
import sqlite3

HERE = os.path.dirname(os.path.abspath(__file__))
DATABASE = os.path.join(HERE, "db", "microblog.db")

SCHEMA = """
CREATE TABLE IF NOT EXISTS user (
    user_id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    pw_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS follower (
    who_id INTEGER NOT NULL REFERENCES user (user_id),
    whom_id INTEGER NOT NULL REFERENCES user (user_id),
    PRIMARY KEY (who_id, whom_id)
);
CREATE TABLE IF NOT EXISTS message (
    message_id INTEGER PRIMARY KEY AUTOINCREMENT,
    author_id INTEGER NOT NULL REFERENCES user (user_id),
    text TEXT NOT NULL,
    pub_date INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS message_by_author ON message (author_id, pub_date);
"""


@contextlib.contextmanager
def connect(path=DATABASE):
    """A connection that commits on success, rolls back on error, and is always closed."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        with db:
            yield db
    finally:
        db.close()
