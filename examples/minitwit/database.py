"""minitwit's schema, and the one line that opens its database.

The database is `main` of pspy.toml (db/minitwit.db, owned by the data-only
provider `Data`). `get_db()` is the only place the app opens it: under pspy,
`pspy.db.connect` runs each statement in `Data`, on a connection whose SQLite
authorizer allows exactly the caller's grants; without pspy it opens the
file directly, so `python app.py` works as before.
"""

import sqlite3

import pspy.db

DATABASE = "main"   # the name in pspy.toml, [databases.main]

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


def get_db():
    """A new connection to minitwit's database whose rows are read by column name."""
    db = pspy.db.connect(DATABASE)
    db.row_factory = sqlite3.Row
    return db
