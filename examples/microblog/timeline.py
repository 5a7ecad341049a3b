"""The microblog's data: users, who follows whom, and messages.

Under pspy these functions run in the provider `Timeline`, the only
principal that can open db/. The front end calls them through RPC stubs and
gets plain values back: ints, bools, and dicts or lists of dicts with the
fields a page shows. Password hashes never leave this process: `register`
hashes, `check_login` compares, and nothing returns `pw_hash`.

Every service names `callers=["web"]`: the front end is the only principal
that may ask. The front end is trusted to say which user is signed in (it
holds the session), so a user id is an argument, as in minitwit; what the
front end cannot do is read the password hashes or touch the database
other than through these functions.
"""

import re
import sqlite3
import time

from werkzeug.security import check_password_hash, generate_password_hash

import pspy
from database import connect

PER_PAGE = 30
MAX_MESSAGE_LENGTH = 1000
# A username is a URL path segment (/<username>), so never "." or "..": it starts with a letter, digit or "_".
USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")


def _user_id(value):
    # Values arrive from another process: check them like any input.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("a user id is a positive whole number")
    return value


def _limit(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ValueError("limit must be a whole number from 1 to 100")
    return value


def _messages(db, where, params, limit):
    rows = db.execute(
        "SELECT message.message_id, message.text, message.pub_date, user.username AS author "
        "FROM message JOIN user ON user.user_id = message.author_id "
        f"WHERE {where} ORDER BY message.pub_date DESC, message.message_id DESC LIMIT ?",
        (*params, _limit(limit))).fetchall()
    return [dict(row) for row in rows]


def _id_of(db, username):
    row = db.execute("SELECT user_id FROM user WHERE username = ?", (str(username),)).fetchone()
    if row is None:
        raise LookupError(f"no user {username!r}")
    return row["user_id"]


@pspy.service(service_provider="Timeline", perms={"db/": 0o700}, callers=["web"])
def register(username, password):
    """Create a user; returns the new user id. ValueError if the name is taken or invalid."""
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise ValueError("a username is 1-32 letters, digits, '_', '.' or '-', starting with a letter, digit or '_'")
    if not isinstance(password, str) or not password:
        raise ValueError("you have to enter a password")
    pw_hash = generate_password_hash(password)
    with connect() as db:
        try:
            cursor = db.execute("INSERT INTO user (username, pw_hash) VALUES (?, ?)", (username, pw_hash))
        except sqlite3.IntegrityError:
            raise ValueError(f"the username {username!r} is already taken") from None
        return cursor.lastrowid


@pspy.service(service_provider="Timeline", callers=["web"])
def check_login(username, password):
    """The user id for the right password, else PermissionError (the same for an unknown user)."""
    with connect() as db:
        row = db.execute("SELECT user_id, pw_hash FROM user WHERE username = ?", (str(username),)).fetchone()
    if row is None or not isinstance(password, str) or not check_password_hash(row["pw_hash"], password):
        raise PermissionError("invalid username or password")
    return row["user_id"]


@pspy.service(service_provider="Timeline", callers=["web"])
def get_user(user_id):
    """{"user_id", "username"} of a user id, or None (e.g. a session of a deleted database)."""
    with connect() as db:
        row = db.execute("SELECT user_id, username FROM user WHERE user_id = ?", (_user_id(user_id),)).fetchone()
    return dict(row) if row else None


@pspy.service(service_provider="Timeline", callers=["web"])
def user_by_name(username):
    """{"user_id", "username"}; LookupError if there is no such user."""
    with connect() as db:
        return {"user_id": _id_of(db, username), "username": str(username)}


@pspy.service(service_provider="Timeline", callers=["web"])
def is_following(who_id, whom_id):
    with connect() as db:
        row = db.execute("SELECT 1 FROM follower WHERE who_id = ? AND whom_id = ?",
                         (_user_id(who_id), _user_id(whom_id))).fetchone()
    return row is not None


@pspy.service(service_provider="Timeline", callers=["web"])
def follow(who_id, whom_username):
    """`who_id` follows `whom_username` (again: no change); LookupError for an unknown user."""
    with connect() as db:
        whom_id = _id_of(db, whom_username)
        if whom_id == _user_id(who_id):
            raise ValueError("you cannot follow yourself")
        db.execute("INSERT OR IGNORE INTO follower (who_id, whom_id) VALUES (?, ?)", (who_id, whom_id))


@pspy.service(service_provider="Timeline", callers=["web"])
def unfollow(who_id, whom_username):
    with connect() as db:
        db.execute("DELETE FROM follower WHERE who_id = ? AND whom_id = ?",
                   (_user_id(who_id), _id_of(db, whom_username)))


@pspy.service(service_provider="Timeline", callers=["web"])
def post_message(author_id, text):
    """Store a message; returns its id."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a message must not be empty")
    if len(text) > MAX_MESSAGE_LENGTH:
        raise ValueError(f"a message has at most {MAX_MESSAGE_LENGTH} characters")
    with connect() as db:
        if db.execute("SELECT 1 FROM user WHERE user_id = ?", (_user_id(author_id),)).fetchone() is None:
            raise LookupError(f"no user with id {author_id}")
        cursor = db.execute("INSERT INTO message (author_id, text, pub_date) VALUES (?, ?, ?)",
                            (author_id, text, int(time.time())))
        return cursor.lastrowid


@pspy.service(service_provider="Timeline", callers=["web"])
def public_timeline(limit=PER_PAGE):
    """The latest messages of everyone: [{"message_id", "author", "text", "pub_date"}]."""
    with connect() as db:
        return _messages(db, "1", (), limit)


@pspy.service(service_provider="Timeline", callers=["web"])
def user_timeline(username, limit=PER_PAGE):
    """The latest messages of one user; LookupError if there is no such user."""
    with connect() as db:
        return _messages(db, "message.author_id = ?", (_id_of(db, username),), limit)


@pspy.service(service_provider="Timeline", callers=["web"])
def personal_timeline(user_id, limit=PER_PAGE):
    """A user's own messages and those of the users they follow."""
    with connect() as db:
        return _messages(db, "message.author_id = ? OR message.author_id IN "
                             "(SELECT whom_id FROM follower WHERE who_id = ?)",
                         (_user_id(user_id), user_id), limit)
