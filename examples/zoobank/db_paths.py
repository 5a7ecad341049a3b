"""Where zoobank keeps its data, relative to the app root, and how to open it."""

import contextlib
import os
import sqlite3

HERE = os.path.dirname(os.path.abspath(__file__))
CRED_DB = os.path.join(HERE, "db", "cred", "cred.db")
BANK_DB = os.path.join(HERE, "db", "bank", "bank.db")


@contextlib.contextmanager
def connect(path, **kwargs):
    """A connection that commits on success, rolls back on error, and is always closed."""
    db = sqlite3.connect(path, **kwargs)
    try:
        with db:
            yield db
    finally:
        db.close()
