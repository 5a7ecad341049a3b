"""Create the microblog's database (run by `pspy bootstrap` as the pspy.toml
`script`, or by hand before `python app.py`). Idempotent: it runs at every
bootstrap, and an existing database keeps its data."""

import os
import sqlite3

from database import DATABASE, SCHEMA

os.makedirs(os.path.dirname(DATABASE), exist_ok=True)
with sqlite3.connect(DATABASE) as db:
    db.executescript(SCHEMA)
db.close()
