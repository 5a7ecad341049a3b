"""Data grants on SQLite, enforced by SQLite in the owner, tried from inside each principal.

tests/apps/grants: one file db/app.db held by Data (a provider no decorator
names); web may select message and user(user_id, username) and insert into
message; Auth may select user and update user(pw_hash); Stats has no grant.
Every forbidden statement is tried as the principal, through pspy.db, next to
a granted one that works. Both isolation modes.
"""

import os

import pytest

from conftest import REPO, detached, probe

pytestmark = pytest.mark.root

APP = os.path.join(REPO, "tests", "apps", "grants")

# Probe code: run(sql, params) -> ["ok", rows] or [exception class, message].
SQL = """
import json, sqlite3
import pspy, pspy.db
db = pspy.db.connect("main")
def run(sql, params=(), many=False):
    try:
        cursor = db.executemany(sql, params) if many else db.execute(sql, params)
        return ["ok", [list(r) for r in cursor.fetchall()]]
    except pspy.db.PermissionDenied as e:
        assert isinstance(e, sqlite3.DatabaseError) and isinstance(e, pspy.PermissionDenied)
        return ["PermissionDenied", str(e)]
    except Exception as e:
        return [type(e).__name__, str(e)]
"""


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def app(request, tmp_path_factory):
    with detached(APP, tmp_path_factory, "grants", request.param) as jail:
        yield {"jail": jail, "mode": request.param}


def sql_as(app, principal, code):
    return probe(app["jail"], principal, SQL + code)


def test_the_front_end_reads_and_inserts_what_it_is_granted(app):
    got = sql_as(app, "web", """
out = [run("SELECT user_id, username FROM user ORDER BY user_id"),
       run("INSERT INTO message (author_id, text, pub_date, attachment, score) VALUES (?, ?, ?, ?, ?)",
           (1, "hello \\u00e9", 2**62, b"\\x00\\xff", 1.5)),
       run("SELECT author_id, text, pub_date, attachment, score, NULL FROM message WHERE text LIKE 'hello%'")]
db.commit()
row = db.execute("SELECT attachment, pub_date FROM message WHERE text LIKE 'hello%'").fetchone()
out.append([type(row[0]).__name__, row[1] == 2**62])
print(json.dumps(out, default=repr))
""")
    assert got[0] == ["ok", [[1, "alice"], [2, "bob"]]]
    assert got[1] == ["ok", []]
    assert got[2][0] == "ok" and got[2][1][0][:3] == [1, "hello \u00e9", 2**62]
    assert got[3] == ["bytes", True]


@pytest.mark.parametrize("sql, names", [
    # An injection-style UNION through a granted column list.
    ("SELECT text FROM message WHERE author_id = 1 UNION SELECT pw_hash FROM user", "user.pw_hash"),
    ("SELECT username FROM user WHERE pw_hash LIKE 'hash%'", "user.pw_hash"),
    ("SELECT * FROM user", "user.pw_hash"),
    ("UPDATE user SET username = 'mallory' WHERE user_id = 2", "update user.username"),
    ("UPDATE message SET text = 'defaced' WHERE author_id = 2", "update message.text"),
    ("DELETE FROM message", "delete from message"),
    ("ATTACH DATABASE 'db/app.db' AS other", "attach"),
    ("PRAGMA writable_schema = 1", "PRAGMA writable_schema"),
    ("DROP TABLE message", "schema"),
    ("CREATE TABLE stolen (x)", "schema"),
])
def test_the_front_end_is_refused_what_it_is_not_granted_by_sqlite_naming_what(app, sql, names):
    got = sql_as(app, "web", f"print(json.dumps([run({sql!r}), run('SELECT count(*) FROM message')]))")
    assert got[0][0] == "PermissionDenied", got
    assert names.lower() in got[0][1].lower() and "web" in got[0][1], got
    assert got[1][0] == "ok", got   # the session goes on after a refusal


def test_the_front_end_cannot_open_the_file_itself(app):
    got = probe(app["jail"], "web", """
import json
try:
    open("db/app.db", "rb")
    print(json.dumps("opened"))
except OSError as e:
    print(json.dumps(type(e).__name__))
""")
    assert got == ("PermissionError" if app["mode"] == "chroot" else "FileNotFoundError")


def test_auth_reads_the_hashes_and_changes_only_the_column_it_is_granted(app):
    got = sql_as(app, "Auth", """
out = [run("SELECT username, pw_hash FROM user ORDER BY user_id"),
       run("UPDATE user SET pw_hash = 'new-hash' WHERE username = 'bob'"),
       run("UPDATE user SET username = 'eve' WHERE username = 'bob'"),
       run("INSERT INTO user (username, pw_hash) VALUES ('eve', 'x')")]
db.rollback()
print(json.dumps(out))
""")
    assert got[0] == ["ok", [["alice", "hash-of-alice"], ["bob", "hash-of-bob"]]]
    assert got[1] == ["ok", []]
    assert got[2][0] == "PermissionDenied" and "user.username" in got[2][1]
    assert got[3][0] == "PermissionDenied" and "insert into user" in got[3][1]


def test_a_principal_without_grants_is_refused_at_connect_and_by_the_owner(app):
    got = probe(app["jail"], "Stats", """
import json, pspy, pspy.db
from pspy.rpc.client import Client
from pspy.runtime import current
try:
    pspy.db.connect("main")
    out = ["connected"]
except pspy.PermissionDenied as e:
    out = ["refused", str(e)]
# Past the library's own check, straight to the owner's socket.
rt = current()
try:
    session = rt.client("Data").session("pspy.db")
    out.append(session.call("open", "main", {}))
except Exception as e:
    out.append([type(e).__name__, str(e)])
print(json.dumps(out))
""")
    assert got[0] == "refused" and "Stats has no grant on database 'main'" in got[1]
    assert got[2][0] in ("PermissionDenied", "ServiceUnavailable"), got


def test_a_transaction_rolls_back_when_its_caller_dies_and_cursors_stream(app):
    got = sql_as(app, "web", """
import os
pid = os.fork()
if pid == 0:
    db2 = pspy.db.connect("main")
    db2.execute("INSERT INTO message (author_id, text) VALUES (1, 'never committed')")
    os._exit(0)
os.waitpid(pid, 0)
db.executemany("INSERT INTO message (author_id, text) VALUES (?, ?)", [(2, f"m{i}") for i in range(3000)])
db.commit()
cursor = db.execute("SELECT text FROM message WHERE text LIKE 'm%' ORDER BY message_id")
first = cursor.fetchmany(10)
rest = cursor.fetchall()
lost = run("SELECT count(*) FROM message WHERE text = 'never committed'")
print(json.dumps([len(first), len(rest), first[0][0], rest[-1][0], lost]))
""")
    assert got[:4] == [10, 2990, "m0", "m2999"]
    assert got[4] == ["ok", [[0]]]


def test_a_runaway_statement_is_stopped_in_time_and_a_huge_value_is_refused_before_it_is_built(app):
    # rpc_timeout = 5 in the app: Data stops a statement at 4.5 s, before its caller gives up.
    got = sql_as(app, "web", """
import time
began = time.monotonic()
out = [run("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")]
out.append(time.monotonic() - began)
out.append(run("SELECT length(randomblob(100000000))"))
out.append(run("SELECT length(randomblob(1000000))"))
print(json.dumps(out))
""")
    assert got[0][0] == "OperationalError" and "ran past its 4.5s" in got[0][1], got
    assert 4 < got[1] < 5, got
    assert got[2][0] == "DataError" or "too big" in got[2][1], got
    assert got[3] == ["ok", [[1000000]]]
