"""Credentials and tokens. Only the Auth provider can read db/cred/."""

import hashlib
import hmac
import os
import secrets
import sqlite3

import pspy
from db_paths import CRED_DB, connect

NEW_USER_ZOOBARS = 10


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)


@pspy.service(service_provider="Auth", group="AuthGroup", perms={"db/cred/": 0o700},
              callers=["web", "Bank"])
class Auth:
    def _db(self):
        return connect(CRED_DB)

    def register(self, username, password):
        """Create a user; returns a fresh token."""
        if not isinstance(username, str) or not username or len(username) > 64 or not username.isprintable():
            raise ValueError("username must be 1-64 printable characters")
        if not isinstance(password, str) or len(password) < 1:
            raise ValueError("password must not be empty")
        salt = os.urandom(16)
        token = secrets.token_hex(16)
        with self._db() as db:
            try:
                db.execute("INSERT INTO cred (username, salt, hash, token) VALUES (?, ?, ?, ?)",
                           (username, salt, _hash(password, salt), token))
            except sqlite3.IntegrityError:
                raise ValueError(f"user {username!r} already exists") from None
        return token

    def login(self, username, password):
        """A new token for the right password, else PermissionError."""
        with self._db() as db:
            row = db.execute("SELECT salt, hash FROM cred WHERE username = ?", (username,)).fetchone()
            if row is None or not hmac.compare_digest(row[1], _hash(password, row[0])):
                raise PermissionError("wrong username or password")
            token = secrets.token_hex(16)
            db.execute("UPDATE cred SET token = ? WHERE username = ?", (token, username))
        return token

    def check_token(self, username, token):
        with self._db() as db:
            row = db.execute("SELECT token FROM cred WHERE username = ?", (username,)).fetchone()
        return row is not None and row[0] is not None and hmac.compare_digest(row[0], str(token))

    def user_for_token(self, token):
        with self._db() as db:
            row = db.execute("SELECT username FROM cred WHERE token = ?", (str(token),)).fetchone()
        return row[0] if row else None
