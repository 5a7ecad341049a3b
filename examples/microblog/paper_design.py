"""The pspy paper's first cut at minitwit, kept to show why it fails.

minitwit opens its database in the front end (`connect_db()`, then
`g.db.execute(...)` in every view). The paper's separation moved
`connect_db` into a provider that owns the database and left the views
alone: the front end would call the service and use the connection it
returns. That cannot work. A connection is a handle on an open file and a
SQLite library state inside the provider's process; it has no value that
could be copied into another process, and the point of the separation is
that the front end cannot open that file itself. pspy's RPC sends plain
values only (never pickle), so the call fails at the call site with

    pspy.SerializationError: return value of Timeline.connect_db: ... sqlite3.Connection ...

and the front end never holds anything of the database. The working design
(timeline.py) moves the queries, not the connection: each service runs its
SQL in the provider and returns dicts, lists and ints.

This service widens nothing: it runs in the same provider as timeline.py,
declares no perms, group or network of its own (the provider's are merged
from timeline.py), and only the front end may call it. app.py never imports
this module; the tests call it as `web` to check the error.
"""

import sqlite3

import pspy
from database import DATABASE


@pspy.service(service_provider="Timeline", callers=["web"])
def connect_db():
    """minitwit's connect_db() as a service: returns the sqlite3 connection (which cannot cross)."""
    return sqlite3.connect(DATABASE)
