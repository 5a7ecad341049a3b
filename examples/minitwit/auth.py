"""Passwords: the provider `Auth`, the only principal that reads or writes user.pw_hash.

Its grants on the database `main` (pspy.toml) are select and insert on
`user` and update of `user(pw_hash)` alone; the front end `web` may read
`user(user_id, username)` but never the hashes. So `register` hashes,
`check_login` compares, `change_password` replaces, and none of them
returns a hash.

The front end is the only caller (`callers=["web"]`). It is trusted to say
who is signed in, as minitwit's session does; what it cannot do is read or
set a password hash other than through these functions.
"""

import contextlib
import functools
import re
import sqlite3

from werkzeug.security import check_password_hash, generate_password_hash

import pspy
from database import get_db

# A username is a URL path segment (/<username>): never "." or "..", no "/".
USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")


def _text(value, what):
    # Arguments arrive from another process: checked like any input.
    if not isinstance(value, str) or not value:
        raise ValueError(f"you have to enter a {what}")
    return value


@contextlib.contextmanager
def _transaction():
    """A connection that commits on success, rolls back on error, and is always closed."""
    db = get_db()
    try:
        with db:
            yield db
    finally:
        db.close()


@functools.cache
def _unknown_user_hash():
    # Hashed on first use, not at import: the front end imports this module too.
    return generate_password_hash("no such user")


def _checked_user_id(db, username, password):
    row = db.execute("SELECT user_id, pw_hash FROM user WHERE username = ?", (str(username),)).fetchone()
    if row is None or not isinstance(password, str):
        # The same work as for a wrong password, so that the time taken
        # does not tell which usernames exist.
        check_password_hash(_unknown_user_hash(), "")
        raise PermissionError("invalid username or password")
    if not check_password_hash(row["pw_hash"], password):
        raise PermissionError("invalid username or password")
    return row["user_id"]


@pspy.service(service_provider="Auth", callers=["web"])
def register(username, password):
    """Create a user; returns the new user id. ValueError if the name is taken or invalid."""
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise ValueError("a username is 1-32 letters, digits, '_', '.' or '-', "
                         "starting with a letter, digit or '_'")
    pw_hash = generate_password_hash(_text(password, "password"))
    with _transaction() as db:
        try:
            cursor = db.execute("INSERT INTO user (username, pw_hash) VALUES (?, ?)", (username, pw_hash))
        except sqlite3.IntegrityError:
            raise ValueError(f"the username {username!r} is already taken") from None
        return cursor.lastrowid


@pspy.service(service_provider="Auth", callers=["web"])
def check_login(username, password):
    """The user id for the right password, else PermissionError (the same for an unknown user)."""
    with _transaction() as db:
        return _checked_user_id(db, username, password)


@pspy.service(service_provider="Auth", callers=["web"])
def change_password(username, old_password, new_password):
    """Replace the password of `username`, given the current one (PermissionError otherwise)."""
    pw_hash = generate_password_hash(_text(new_password, "new password"))
    with _transaction() as db:
        user_id = _checked_user_id(db, username, old_password)
        db.execute("UPDATE user SET pw_hash = ? WHERE user_id = ?", (pw_hash, user_id))
