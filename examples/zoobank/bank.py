"""Zoobar balances. Only the Bank provider can read or write db/bank/."""

import pspy
from auth import NEW_USER_ZOOBARS, Auth
from db_paths import BANK_DB, connect


def _db():
    return connect(BANK_DB, isolation_level="IMMEDIATE")


@pspy.service(service_provider="Bank", group="BankGroup", perms={"db/bank/": 0o700}, callers=["web"])
def new_account(username):
    with _db() as db:
        db.execute("INSERT OR IGNORE INTO person (username, zoobars) VALUES (?, ?)",
                   (username, NEW_USER_ZOOBARS))


@pspy.service(service_provider="Bank", callers=["web"])
def balance(username):
    """Zoobars of a user; LookupError if there is no such user."""
    with _db() as db:
        row = db.execute("SELECT zoobars FROM person WHERE username = ?", (username,)).fetchone()
    if row is None:
        raise LookupError(f"no user {username!r}")
    return row[0]


@pspy.service(service_provider="Bank", callers=["web"])
def transfer(sender, recipient, zoobars, token):
    """Move zoobars; the sender's token is checked with Auth, not trusted from the caller."""
    if not Auth().check_token(sender, token):
        raise PermissionError("invalid token for the sender")
    if isinstance(zoobars, bool) or not isinstance(zoobars, int) or zoobars <= 0:
        raise ValueError("zoobars must be a positive whole number")
    with _db() as db:
        rows = dict(db.execute("SELECT username, zoobars FROM person WHERE username IN (?, ?)",
                               (sender, recipient)).fetchall())
        if recipient not in rows:
            raise LookupError(f"no user {recipient!r}")
        if rows.get(sender, 0) < zoobars:
            raise ValueError(f"{sender} has only {rows.get(sender, 0)} zoobars")
        db.execute("UPDATE person SET zoobars = zoobars - ? WHERE username = ?", (zoobars, sender))
        db.execute("UPDATE person SET zoobars = zoobars + ? WHERE username = ?", (zoobars, recipient))
        db.execute("INSERT INTO transfers (sender, recipient, zoobars) VALUES (?, ?, ?)",
                   (sender, recipient, zoobars))
        (left,) = db.execute("SELECT zoobars FROM person WHERE username = ?", (sender,)).fetchone()
    return left
