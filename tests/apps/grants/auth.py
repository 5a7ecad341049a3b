"""Auth reads and changes password hashes through its grants; Stats has none."""

import pspy
import pspy.db


@pspy.service(service_provider="Auth", callers=["web"])
def hash_of(username):
    with pspy.db.connect("main") as db:
        row = db.execute("SELECT pw_hash FROM user WHERE username = ?", (username,)).fetchone()
    return row[0] if row else None


@pspy.service(service_provider="Stats", callers=["web"])
def count_messages():
    with pspy.db.connect("main") as db:
        return db.execute("SELECT count(*) FROM message").fetchone()[0]
