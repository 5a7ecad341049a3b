"""The microblog's front end (the principal `web`): minitwit's pages and a small JSON API.

Under pspy, the functions of `timeline` imported here are RPC stubs: this
process holds no database and cannot open db/; it asks the Timeline
provider, which answers with plain values. It keeps the signed session
cookie, whose key (MICROBLOG_SECRET_KEY) only this process is given.

    python setup_db.py && MICROBLOG_SECRET_KEY=... python app.py    # without pspy
"""

import os
import secrets
import sys
import time

from flask import Blueprint, Flask, abort, flash, g, jsonify, redirect, render_template, request, session, url_for

import timeline

# URLs of the app that a username must not shadow (a user's page is /<username>).
RESERVED_NAMES = {"public", "login", "logout", "register", "add_message", "api", "static"}


def _secret_key():
    key = os.environ.get("MICROBLOG_SECRET_KEY")
    if not key:
        print("microblog: MICROBLOG_SECRET_KEY is not set; sessions end when this process does",
              file=sys.stderr)
        key = secrets.token_hex(32)
    return key


app = Flask(__name__)
app.config.update(SECRET_KEY=_secret_key(), SESSION_COOKIE_SAMESITE="Lax")


@app.template_filter("datetimeformat")
def format_datetime(timestamp):
    return time.strftime("%Y-%m-%d @ %H:%M", time.gmtime(timestamp))


@app.before_request
def load_user():
    g.user = timeline.get_user(session["user_id"]) if "user_id" in session else None


def _register(username, password, password2=None):
    """The user id of a new account; ValueError with a message for the person otherwise."""
    if password2 is not None and password != password2:
        raise ValueError("the two passwords do not match")
    if isinstance(username, str) and username.lower() in RESERVED_NAMES:
        raise ValueError(f"the username {username!r} is reserved")
    return timeline.register(username, password)


# --- pages --------------------------------------------------------------------------

@app.get("/")
def personal():
    if g.user is None:
        return redirect(url_for("public"))
    return render_template("timeline.html", kind="personal",
                           messages=timeline.personal_timeline(g.user["user_id"]))


@app.get("/public")
def public():
    return render_template("timeline.html", kind="public", messages=timeline.public_timeline())


@app.get("/<username>")
def user_page(username):
    try:
        profile = timeline.user_by_name(username)
    except LookupError:
        abort(404)
    followed = g.user is not None and timeline.is_following(g.user["user_id"], profile["user_id"])
    return render_template("timeline.html", kind="user", profile=profile, followed=followed,
                           messages=timeline.user_timeline(username))


@app.post("/<username>/follow")
def follow_user(username):
    if g.user is None:
        abort(401)
    try:
        timeline.follow(g.user["user_id"], username)
    except LookupError:
        abort(404)
    except ValueError as e:
        flash(str(e))
    else:
        flash(f"You are now following {username}")
    return redirect(url_for("user_page", username=username))


@app.post("/<username>/unfollow")
def unfollow_user(username):
    if g.user is None:
        abort(401)
    try:
        timeline.unfollow(g.user["user_id"], username)
    except LookupError:
        abort(404)
    flash(f"You are no longer following {username}")
    return redirect(url_for("user_page", username=username))


@app.post("/add_message")
def add_message():
    if g.user is None:
        abort(401)
    try:
        timeline.post_message(g.user["user_id"], request.form.get("text", ""))
    except ValueError as e:
        flash(str(e))
    else:
        flash("Your message was recorded")
    return redirect(url_for("personal"))


@app.route("/login", methods=["GET", "POST"])
def login():
    if g.user is not None:
        return redirect(url_for("personal"))
    error = None
    if request.method == "POST":
        try:
            user_id = timeline.check_login(request.form.get("username", ""), request.form.get("password", ""))
        except PermissionError as e:
            error = str(e)
        else:
            session.clear()
            session["user_id"] = user_id
            flash("You were logged in")
            return redirect(url_for("personal"))
    return render_template("login.html", error=error), 403 if error else 200


@app.route("/register", methods=["GET", "POST"])
def register():
    if g.user is not None:
        return redirect(url_for("personal"))
    error = None
    if request.method == "POST":
        form = request.form
        try:
            _register(form.get("username", ""), form.get("password", ""), form.get("password2", ""))
        except ValueError as e:
            error = str(e)
        else:
            flash("You were successfully registered and can login now")
            return redirect(url_for("login"))
    return render_template("register.html", error=error), 400 if error else 200


@app.errorhandler(401)
def login_first(e):
    return redirect(url_for("login"))


@app.get("/logout")
def logout():
    session.clear()
    flash("You were logged out")
    return redirect(url_for("public"))


# --- JSON API (what the workload and the tests use) -------------------------------

api = Blueprint("api", __name__, url_prefix="/api")
ERRORS = {ValueError: 400, PermissionError: 403, LookupError: 404}


@api.errorhandler(ValueError)
@api.errorhandler(PermissionError)
@api.errorhandler(LookupError)
def api_error(e):
    # Services raise these for the caller's mistakes, and the API answers them
    # as JSON; a page catches the ones it expects (anything else there is a bug).
    status = next(code for cls, code in ERRORS.items() if isinstance(e, cls))
    return jsonify({"error": str(e)}), status


@api.errorhandler(401)
def api_unauthorized(e):
    return jsonify({"error": "not logged in"}), 401


def _fields(*names):
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or any(n not in data for n in names):
        raise ValueError(f"expected a JSON object with {', '.join(names)}")
    return [data[n] for n in names]


def _user_or_401():
    if g.user is None:
        abort(401)
    return g.user


@api.post("/register")
def api_register():
    username, password = _fields("username", "password")
    return jsonify({"user_id": _register(username, password)}), 201


@api.post("/login")
def api_login():
    username, password = _fields("username", "password")
    user_id = timeline.check_login(username, password)
    session.clear()
    session["user_id"] = user_id
    return jsonify({"user_id": user_id, "username": username})


@api.post("/logout")
def api_logout():
    session.clear()
    return jsonify({"logged_out": True})


@api.get("/me")
def api_me():
    return jsonify({"user": g.user})


@api.post("/messages")
def api_post_message():
    user = _user_or_401()
    (text,) = _fields("text")
    return jsonify({"message_id": timeline.post_message(user["user_id"], text)}), 201


@api.get("/timeline")
def api_personal_timeline():
    return jsonify({"messages": timeline.personal_timeline(_user_or_401()["user_id"])})


@api.get("/public")
def api_public_timeline():
    return jsonify({"messages": timeline.public_timeline()})


@api.get("/users/<username>")
def api_user(username):
    profile = timeline.user_by_name(username)
    followed = g.user is not None and timeline.is_following(g.user["user_id"], profile["user_id"])
    return jsonify({"user": profile, "followed": followed, "messages": timeline.user_timeline(username)})


@api.post("/users/<username>/follow")
def api_follow(username):
    timeline.follow(_user_or_401()["user_id"], username)
    return jsonify({"following": True})


@api.post("/users/<username>/unfollow")
def api_unfollow(username):
    timeline.unfollow(_user_or_401()["user_id"], username)
    return jsonify({"following": False})


app.register_blueprint(api)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("MICROBLOG_PORT", "8090")), threaded=True)
