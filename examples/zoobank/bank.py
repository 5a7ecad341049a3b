"""Zoobar balances. Only the Bank provider can read or write db/bank/."""

import sqlite3

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
def transfer(sender, recipient, zoobars, token, ref=None):
    """Move zoobars; the sender's token is checked with Auth, not trusted from the caller.

    ``ref`` is an optional name the client picks for this transfer (unique per
    sender, e.g. a random hex string). It is there for the calls whose outcome
    is unknown: pspy delivers a call at most once, so if the Bank dies after
    receiving a transfer the client gets an error and cannot tell whether it
    was applied. The ref is stored with the transfer in the same transaction,
    and the database refuses a second transfer of the sender with the same
    ref, so the client may simply send it again: it is applied if the first
    was not, and refused if the first was; never twice. The ledger (the
    transfers table) says which.
    """
    if not Auth().check_token(sender, token):
        raise PermissionError("invalid token for the sender")
    if isinstance(zoobars, bool) or not isinstance(zoobars, int) or zoobars <= 0:
        raise ValueError("zoobars must be a positive whole number")
    if ref is not None and (not isinstance(ref, str) or not ref or len(ref) > 64 or not ref.isprintable()):
        raise ValueError("ref must be 1-64 printable characters")
    with _db() as db:
        rows = dict(db.execute("SELECT username, zoobars FROM person WHERE username IN (?, ?)",
                               (sender, recipient)).fetchall())
        if recipient not in rows:
            raise LookupError(f"no user {recipient!r}")
        if rows.get(sender, 0) < zoobars:
            raise ValueError(f"{sender} has only {rows.get(sender, 0)} zoobars")
        try:
            db.execute("INSERT INTO transfers (sender, recipient, zoobars, ref) VALUES (?, ?, ?, ?)",
                       (sender, recipient, zoobars, ref))
        except sqlite3.IntegrityError:
            raise ValueError(f"{sender} already made a transfer with ref {ref!r}; this one was not applied") from None
        db.execute("UPDATE person SET zoobars = zoobars - ? WHERE username = ?", (zoobars, sender))
        db.execute("UPDATE person SET zoobars = zoobars + ? WHERE username = ?", (zoobars, recipient))
        (left,) = db.execute("SELECT zoobars FROM person WHERE username = ?", (sender,)).fetchone()
    return left
