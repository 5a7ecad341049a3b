import os
import sqlite3

os.makedirs("db", exist_ok=True)
with sqlite3.connect("db/app.db") as db:
    db.executescript("""
    CREATE TABLE IF NOT EXISTS user (user_id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT UNIQUE, pw_hash TEXT);
    CREATE TABLE IF NOT EXISTS message (message_id INTEGER PRIMARY KEY AUTOINCREMENT, author_id INTEGER,
                                        text TEXT, pub_date INTEGER, attachment BLOB, score REAL);
    INSERT OR IGNORE INTO user (username, pw_hash) VALUES ('alice', 'hash-of-alice'), ('bob', 'hash-of-bob');
    """)
