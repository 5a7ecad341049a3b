"""MiniTwit as it was before pspy: one process that opens the database file itself.

Kept for comparison; nothing imports or runs it (app.py replaced it, and
templates/ has moved on with app.py). Set against app.py, three things
differ in kind: the database is opened with sqlite3.connect on a path of
its own, passwords are hashed and checked here, and `select *` on user
reads pw_hash into every request, which under pspy's grants the front end
may no longer do.
"""

import os
import sqlite3
import time

from flask import Flask, abort, flash, g, redirect, render_template, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

DATABASE = "db/minitwit.db"
PER_PAGE = 30
SECRET_KEY = os.environ.get("MINITWIT_SECRET_KEY") or os.urandom(24)

app = Flask(__name__)
app.config.from_object(__name__)


def get_db():
    if "db" not in g:
        g.db = sqlite3.connect(app.config["DATABASE"])
        g.db.row_factory = sqlite3.Row
    return g.db


@app.teardown_appcontext
def close_database(exception):
    db = g.pop("db", None)
    if db is not None:
        db.close()


def query_db(query, args=(), one=False):
    rv = get_db().execute(query, args).fetchall()
    return (rv[0] if rv else None) if one else rv


def get_user_id(username):
    rv = query_db("select user_id from user where username = ?", [username], one=True)
    return rv[0] if rv else None


@app.template_filter("datetimeformat")
def format_datetime(timestamp):
    return time.strftime("%Y-%m-%d @ %H:%M", time.gmtime(timestamp))


@app.before_request
def before_request():
    g.user = None
    if "user_id" in session:
        g.user = query_db("select * from user where user_id = ?", [session["user_id"]], one=True)


@app.route("/")
def timeline():
    if not g.user:
        return redirect(url_for("public_timeline"))
    return render_template("timeline.html", kind="home", messages=query_db("""
        select message.*, user.* from message, user
        where message.author_id = user.user_id and (
            user.user_id = ? or user.user_id in (select whom_id from follower where who_id = ?))
        order by message.pub_date desc limit ?""", [session["user_id"], session["user_id"], PER_PAGE]))


@app.route("/public")
def public_timeline():
    return render_template("timeline.html", kind="public", messages=query_db("""
        select message.*, user.* from message, user
        where message.author_id = user.user_id
        order by message.pub_date desc limit ?""", [PER_PAGE]))


@app.route("/<username>")
def user_timeline(username):
    profile_user = query_db("select * from user where username = ?", [username], one=True)
    if profile_user is None:
        abort(404)
    followed = False
    if g.user:
        followed = query_db("select 1 from follower where follower.who_id = ? and follower.whom_id = ?",
                            [session["user_id"], profile_user["user_id"]], one=True) is not None
    return render_template("timeline.html", kind="user", profile=profile_user, followed=followed,
                           messages=query_db("""
        select message.*, user.* from message, user
        where user.user_id = message.author_id and user.user_id = ?
        order by message.pub_date desc limit ?""", [profile_user["user_id"], PER_PAGE]))


@app.route("/<username>/follow", methods=["POST"])
def follow_user(username):
    if not g.user:
        abort(401)
    whom_id = get_user_id(username)
    if whom_id is None:
        abort(404)
    db = get_db()
    db.execute("insert into follower (who_id, whom_id) values (?, ?)", [session["user_id"], whom_id])
    db.commit()
    flash(f'You are now following "{username}"')
    return redirect(url_for("user_timeline", username=username))


@app.route("/<username>/unfollow", methods=["POST"])
def unfollow_user(username):
    if not g.user:
        abort(401)
    whom_id = get_user_id(username)
    if whom_id is None:
        abort(404)
    db = get_db()
    db.execute("delete from follower where who_id = ? and whom_id = ?", [session["user_id"], whom_id])
    db.commit()
    flash(f'You are no longer following "{username}"')
    return redirect(url_for("user_timeline", username=username))


@app.route("/add_message", methods=["POST"])
def add_message():
    if "user_id" not in session:
        abort(401)
    if request.form["text"]:
        db = get_db()
        db.execute("insert into message (author_id, text, pub_date) values (?, ?, ?)",
                   (session["user_id"], request.form["text"], int(time.time())))
        db.commit()
        flash("Your message was recorded")
    return redirect(url_for("timeline"))


@app.route("/login", methods=["GET", "POST"])
def login():
    if g.user:
        return redirect(url_for("timeline"))
    error = None
    if request.method == "POST":
        user = query_db("select * from user where username = ?", [request.form["username"]], one=True)
        if user is None:
            error = "Invalid username"
        elif not check_password_hash(user["pw_hash"], request.form["password"]):
            error = "Invalid password"
        else:
            flash("You were logged in")
            session["user_id"] = user["user_id"]
            return redirect(url_for("timeline"))
    return render_template("login.html", error=error)


@app.route("/register", methods=["GET", "POST"])
def register():
    if g.user:
        return redirect(url_for("timeline"))
    error = None
    if request.method == "POST":
        if not request.form["username"]:
            error = "You have to enter a username"
        elif not request.form["password"]:
            error = "You have to enter a password"
        elif request.form["password"] != request.form["password2"]:
            error = "The two passwords do not match"
        elif get_user_id(request.form["username"]) is not None:
            error = "The username is already taken"
        else:
            db = get_db()
            db.execute("insert into user (username, pw_hash) values (?, ?)",
                       [request.form["username"], generate_password_hash(request.form["password"])])
            db.commit()
            flash("You were successfully registered and can login now")
            return redirect(url_for("login"))
    return render_template("register.html", error=error)


@app.route("/logout")
def logout():
    flash("You were logged out")
    session.pop("user_id", None)
    return redirect(url_for("public_timeline"))


if __name__ == "__main__":
    app.run()
