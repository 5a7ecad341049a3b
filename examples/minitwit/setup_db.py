"""Create minitwit's database: run by `pspy bootstrap` (pspy.toml `script`)
in the app folder, or by hand before `python app.py`. Idempotent: it runs at
every bootstrap, and an existing database keeps its data.

It opens the database as the app does, so the file's path is written in one
place only (pspy.toml); without a pspy runtime, as here, that is the file itself.
"""

import os

from database import SCHEMA, get_db

HERE = os.path.dirname(os.path.abspath(__file__))

# The folder of db/minitwit.db: SQLite creates the file, not the folder
# (which the owner holds whole, since the journal is written beside the file).
os.makedirs(os.path.join(HERE, "db"), exist_ok=True)
db = get_db()
try:
    db.executescript(SCHEMA)
    db.commit()
finally:
    db.close()
