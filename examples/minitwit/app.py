"""minitwit's front end (the principal `web`): its views keep their own SQL.

Each view queries the database `main` as minitwit's did; only the line that
opens it is pspy's (database.get_db). Under pspy the statements run in the
data-only provider `Data`, on a connection whose SQLite authorizer allows
`web` exactly its grants in pspy.toml: read message, follower and
user(user_id, username); insert into message and follower; delete from
follower. So no query here reads `SELECT *` from user: pw_hash is not
`web`'s. Passwords go through the provider `Auth` (auth.py).

Every page also answers in JSON, for `?format=json`, an `Accept:
application/json` header or a JSON request body: what scripts and tests use.

    python setup_db.py && MINITWIT_SECRET_KEY=... python app.py    # without pspy
"""

import os
import secrets
import sys
import time

from flask import Flask, abort, flash, g, jsonify, redirect, render_template, request, session, url_for

import auth
from database import get_db

PER_PAGE = 30
MAX_MESSAGE_LENGTH = 1000
# URLs of the app that a username must not shadow (a user's page is /<username>).
RESERVED_NAMES = {"public", "login", "logout", "register", "add_message", "change_password", "static"}


def _secret_key():
    key = os.environ.get("MINITWIT_SECRET_KEY")
    if not key:
        print("minitwit: MINITWIT_SECRET_KEY is not set; sessions end when this process does", file=sys.stderr)
        key = secrets.token_hex(32)
    return key


app = Flask(__name__)
app.config.update(SECRET_KEY=_secret_key(), SESSION_COOKIE_SAMESITE="Lax")


# --- the database, as minitwit opens it: one connection per request ---------------

def db():
    if "db" not in g:
        g.db = get_db()
    return g.db


@app.teardown_appcontext
def close_db(error):
    connection = g.pop("db", None)
    if connection is not None:
        connection.close()


def query_db(query, args=(), one=False):
    rows = db().execute(query, args).fetchall()
    return (rows[0] if rows else None) if one else rows


def get_user_id(username):
    row = query_db("SELECT user_id FROM user WHERE username = ?", [username], one=True)
    return row["user_id"] if row else None


@app.before_request
def before_request():
    g.user = None
    if "user_id" in session:
        g.user = query_db("SELECT user_id, username FROM user WHERE user_id = ?", [session["user_id"]], one=True)


@app.template_filter("datetimeformat")
def format_datetime(timestamp):
    return time.strftime("%Y-%m-%d @ %H:%M", time.gmtime(timestamp))


# --- HTML for a browser, JSON for a script -----------------------------------------

def wants_json():
    if request.args.get("format") == "json" or request.is_json:
        return True
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json"


def field(name):
    """A submitted value, from the form or a JSON body; "" if absent or not text."""
    data = request.get_json(silent=True) if request.is_json else request.form
    value = data.get(name, "") if isinstance(data, dict) else ""
    return value if isinstance(value, str) else ""


def repeated(name, value):
    """Whether the repeated field `name` matches `value`: the form always sends it, a JSON body may not."""
    if request.is_json and not field(name):
        return True
    return field(name) == value


def _plain(value):
    """Rows as dicts, for JSON."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "keys"):
        return dict(value)
    return value


def render(template, status=200, **context):
    """The page, or what it shows as JSON (with the signed-in user); a form's error as {"error": ...}."""
    if wants_json() and context.get("error"):
        return jsonify({"error": context["error"]}), status
    if wants_json():
        return jsonify({"user": _plain(g.user), **{k: _plain(v) for k, v in context.items()}}), status
    return render_template(template, **context), status


def done(message, location, status=200, **data):
    """What a form did: flash it and redirect a browser; the data as JSON for a script."""
    if wants_json():
        return jsonify(data), status
    flash(message)
    return redirect(location)


def refused(message, location, status=400):
    """A form that could not be done, for a reason the person can fix."""
    if wants_json():
        return jsonify({"error": message}), status
    flash(message)
    return redirect(location)


@app.errorhandler(401)
def login_first(e):
    if wants_json():
        return jsonify({"error": "not logged in"}), 401
    return redirect(url_for("login"))


@app.errorhandler(404)
def not_found(e):
    if wants_json():
        return jsonify({"error": e.description}), 404
    return e


def signed_in():
    if g.user is None:
        abort(401)
    return g.user


# --- timelines -----------------------------------------------------------------------

@app.route("/")
def timeline():
    """The signed-in user's messages and those of the people they follow."""
    if g.user is None:
        if wants_json():
            abort(401)
        return redirect(url_for("public_timeline"))
    messages = query_db("""
        SELECT message.message_id, message.text, message.pub_date, user.user_id, user.username
        FROM message JOIN user ON user.user_id = message.author_id
        WHERE user.user_id = ? OR user.user_id IN (SELECT whom_id FROM follower WHERE who_id = ?)
        ORDER BY message.pub_date DESC, message.message_id DESC LIMIT ?""",
        [g.user["user_id"], g.user["user_id"], PER_PAGE])
    return render("timeline.html", kind="home", messages=messages)


@app.route("/public")
def public_timeline():
    messages = query_db("""
        SELECT message.message_id, message.text, message.pub_date, user.user_id, user.username
        FROM message JOIN user ON user.user_id = message.author_id
        ORDER BY message.pub_date DESC, message.message_id DESC LIMIT ?""", [PER_PAGE])
    return render("timeline.html", kind="public", messages=messages)


@app.route("/<username>")
def user_timeline(username):
    profile = query_db("SELECT user_id, username FROM user WHERE username = ?", [username], one=True)
    if profile is None:
        abort(404, f"no user {username!r}")
    followed = g.user is not None and query_db(
        "SELECT 1 FROM follower WHERE who_id = ? AND whom_id = ?",
        [g.user["user_id"], profile["user_id"]], one=True) is not None
    messages = query_db("""
        SELECT message.message_id, message.text, message.pub_date, user.user_id, user.username
        FROM message JOIN user ON user.user_id = message.author_id
        WHERE user.user_id = ?
        ORDER BY message.pub_date DESC, message.message_id DESC LIMIT ?""", [profile["user_id"], PER_PAGE])
    return render("timeline.html", kind="user", profile=profile, followed=followed, messages=messages)


# --- following and posting ----------------------------------------------------------

@app.post("/<username>/follow")
def follow_user(username):
    me = signed_in()
    whom_id = get_user_id(username)
    if whom_id is None:
        abort(404, f"no user {username!r}")
    here = url_for("user_timeline", username=username)
    if whom_id == me["user_id"]:
        return refused("you cannot follow yourself", here)
    # OR IGNORE: following again changes nothing (never OR REPLACE, which deletes).
    db().execute("INSERT OR IGNORE INTO follower (who_id, whom_id) VALUES (?, ?)", [me["user_id"], whom_id])
    db().commit()
    return done(f"You are now following {username}", here, following=True)


@app.post("/<username>/unfollow")
def unfollow_user(username):
    me = signed_in()
    whom_id = get_user_id(username)
    if whom_id is None:
        abort(404, f"no user {username!r}")
    db().execute("DELETE FROM follower WHERE who_id = ? AND whom_id = ?", [me["user_id"], whom_id])
    db().commit()
    return done(f"You are no longer following {username}", url_for("user_timeline", username=username),
                following=False)


@app.post("/add_message")
def add_message():
    me = signed_in()
    text = field("text")
    if not text.strip():
        return refused("a message must not be empty", url_for("timeline"))
    if len(text) > MAX_MESSAGE_LENGTH:
        return refused(f"a message has at most {MAX_MESSAGE_LENGTH} characters", url_for("timeline"))
    cursor = db().execute("INSERT INTO message (author_id, text, pub_date) VALUES (?, ?, ?)",
                          [me["user_id"], text, int(time.time())])
    db().commit()
    return done("Your message was recorded", url_for("timeline"), 201, message_id=cursor.lastrowid)


# --- accounts: the passwords are Auth's ---------------------------------------------

@app.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET" and g.user is not None and not wants_json():
        return redirect(url_for("timeline"))
    error = None
    if request.method == "POST":
        username = field("username")
        try:
            user_id = auth.check_login(username, field("password"))
        except PermissionError as e:
            error = str(e)
        else:
            session.clear()
            session["user_id"] = user_id
            return done("You were logged in", url_for("timeline"), user={"user_id": user_id, "username": username})
    return render("login.html", 403 if error else 200, error=error)


@app.route("/register", methods=["GET", "POST"])
def register():
    if request.method == "GET" and g.user is not None and not wants_json():
        return redirect(url_for("timeline"))
    error = None
    if request.method == "POST":
        username, password = field("username"), field("password")
        if not repeated("password2", password):
            error = "the two passwords do not match"
        elif username.lower() in RESERVED_NAMES:
            error = f"the username {username!r} is reserved"
        else:
            try:
                user_id = auth.register(username, password)
            except ValueError as e:
                error = str(e)
            else:
                return done("You were successfully registered and can login now", url_for("login"), 201,
                            user_id=user_id)
    return render("register.html", 400 if error else 200, error=error)


@app.route("/change_password", methods=["GET", "POST"])
def change_password():
    me = signed_in()
    error, status = None, 200
    if request.method == "POST":
        new_password = field("new_password")
        if not repeated("new_password2", new_password):
            error, status = "the two new passwords do not match", 400
        else:
            try:
                auth.change_password(me["username"], field("old_password"), new_password)
            except PermissionError:
                error, status = "the current password is not right", 403
            except ValueError as e:
                error, status = str(e), 400
            else:
                return done("Your password was changed", url_for("timeline"), changed=True)
    return render("change_password.html", status, error=error)


@app.route("/logout", methods=["GET", "POST"])
def logout():
    session.pop("user_id", None)
    return done("You were logged out", url_for("public_timeline"), logged_out=True)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("MINITWIT_PORT", "8091")), threaded=True)
