"""Create zoobank's databases (run by `pspy bootstrap --script`, or by hand)."""

import os
import sqlite3

from db_paths import BANK_DB, CRED_DB

for path in (CRED_DB, BANK_DB):
    os.makedirs(os.path.dirname(path), exist_ok=True)

with sqlite3.connect(CRED_DB) as db:
    db.execute("CREATE TABLE IF NOT EXISTS cred (username TEXT PRIMARY KEY, salt BLOB, hash BLOB, token TEXT)")
with sqlite3.connect(BANK_DB) as db:
    db.execute("CREATE TABLE IF NOT EXISTS person (username TEXT PRIMARY KEY, zoobars INTEGER NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS transfers (id INTEGER PRIMARY KEY, sender TEXT, "
               "recipient TEXT, zoobars INTEGER, at TEXT DEFAULT CURRENT_TIMESTAMP, ref TEXT)")
    # A bank.db made before transfers had a ref gains the column. Unique per
    # sender (bank.transfer says why); NULL refs, transfers made without one,
    # never collide.
    if "ref" not in {row[1] for row in db.execute("PRAGMA table_info(transfers)")}:
        db.execute("ALTER TABLE transfers ADD COLUMN ref TEXT")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS transfers_sender_ref ON transfers (sender, ref)")
