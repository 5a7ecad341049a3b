"""minitwit on ONE database, separated by data grants, in both isolation modes.

examples/minitwit keeps its SQL in its views, as its author wrote it; only
the line that opens the database is pspy's. Its features are used over HTTP
end to end; then, from inside `web`, the statements an attacker holding the
front end would try are refused by SQLite in the owner `Data`, next to the
granted ones that work; and `Auth`, alone, reads the password hashes.
"""

import os

import pytest
import requests

from conftest import REPO, detached, free_port, probe, wait_for_http

pytestmark = pytest.mark.root

MINITWIT = os.path.join(REPO, "examples", "minitwit")

# Probe code: run(sql, params) -> ["ok", rows] or [exception class, message].
SQL = """
import json, sqlite3
import pspy.db
db = pspy.db.connect("main")
def run(sql, params=()):
    try:
        return ["ok", [list(r) for r in db.execute(sql, params).fetchall()]]
    except Exception as e:
        return [type(e).__name__, str(e)]
"""


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def minitwit(request, tmp_path_factory):
    port = free_port()
    env = {"MINITWIT_PORT": str(port), "MINITWIT_SECRET_KEY": "front-end-only-secret"}
    with detached(MINITWIT, tmp_path_factory, "minitwit", request.param, env=env) as jail:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/public?format=json")
        yield {"jail": jail, "base": base, "mode": request.param}


def session(base, username, password):
    s = requests.Session()
    s.headers["Accept"] = "application/json"
    r = s.post(f"{base}/register", json={"username": username, "password": password}, timeout=10)
    assert r.status_code == 201, r.text
    r = s.post(f"{base}/login", json={"username": username, "password": password}, timeout=10)
    assert r.status_code == 200, r.text
    return s


def texts(response):
    assert response.status_code == 200, response.text
    return [m["text"] for m in response.json()["messages"]]


def test_register_login_post_follow_unfollow_over_http(minitwit):
    base = minitwit["base"]
    alice, bob = session(base, "alice", "alice-pw"), session(base, "bob", "bob-pw")
    assert alice.post(f"{base}/register", json={"username": "bob", "password": "x"}).status_code == 400
    assert requests.post(f"{base}/login", json={"username": "bob", "password": "wrong"},
                         headers={"Accept": "application/json"}).status_code == 403
    assert alice.post(f"{base}/add_message", json={"text": "hello from alice"}).status_code == 201
    assert bob.post(f"{base}/add_message", json={"text": "bob here"}).status_code == 201
    assert alice.post(f"{base}/bob/follow").json()["following"] is True
    assert texts(alice.get(f"{base}/")) == ["bob here", "hello from alice"]
    assert texts(alice.get(f"{base}/bob")) == ["bob here"]
    assert alice.post(f"{base}/bob/unfollow").json()["following"] is False
    assert texts(alice.get(f"{base}/")) == ["hello from alice"]
    assert "bob here" in texts(requests.get(f"{base}/public?format=json"))
    r = bob.post(f"{base}/change_password", json={"old_password": "bob-pw", "new_password": "bob-pw2",
                                                  "new_password2": "bob-pw2"})
    assert r.status_code == 200, r.text
    assert requests.post(f"{base}/login", json={"username": "bob", "password": "bob-pw2"},
                         headers={"Accept": "application/json"}).status_code == 200


def test_from_inside_web_the_forbidden_statements_fail_and_the_granted_work(minitwit):
    got = probe(minitwit["jail"], "web", SQL + """
out = {
  "vacuum into": run("VACUUM INTO 'db/copy.db'"),   # first: no VACUUM runs inside a transaction
  "injection": run("SELECT text FROM message WHERE text = '' UNION SELECT pw_hash FROM user --'"),
  "blind": run("SELECT username FROM user WHERE username = 'alice' AND pw_hash LIKE 's%'"),
  "update other": run("UPDATE message SET text = 'defaced' WHERE author_id != 1"),
  "replace": run("INSERT OR REPLACE INTO message (message_id, author_id, text, pub_date) "
                 "SELECT message_id, author_id, 'defaced', pub_date FROM message"),
  "attach": run("ATTACH DATABASE 'db/minitwit.db' AS other"),
  "writable_schema": run("PRAGMA writable_schema = 1"),
  "drop": run("DROP TABLE message"),
  "users": run("SELECT user_id, username FROM user ORDER BY user_id"),
  "insert": run("INSERT INTO message (author_id, text, pub_date) VALUES (1, 'granted', 0)"),
  "open": None,
}
db.rollback()
try:
    sqlite3.connect("file:db/minitwit.db?mode=ro", uri=True).execute("SELECT 1 FROM user").fetchall()
    out["open"] = "opened"
except sqlite3.Error as e:
    out["open"] = type(e).__name__
print(json.dumps(out))
""")
    for name in ("injection", "blind", "update other", "replace", "attach", "vacuum into", "writable_schema",
                 "drop"):
        assert got[name][0] == "PermissionDenied" and "web may not" in got[name][1], (name, got[name])
    assert "user.pw_hash" in got["injection"][1] and "user.pw_hash" in got["blind"][1]
    assert "message.text" in got["update other"][1]
    assert got["users"][0] == "ok" and [row[1] for row in got["users"][1]][:2] == ["alice", "bob"]
    assert got["insert"] == ["ok", []]
    assert got["open"] == "OperationalError"   # the file is not web's to open (not even in its view: namespaces)


def test_auth_alone_reads_the_hashes(minitwit):
    got = probe(minitwit["jail"], "Auth", SQL + """
print(json.dumps([run("SELECT username, pw_hash FROM user WHERE username = 'alice'"),
                  run("SELECT text FROM message")]))
""")
    assert got[0][0] == "ok" and got[0][1][0][0] == "alice" and got[0][1][0][1].startswith(("scrypt:", "pbkdf2:"))
    assert got[1][0] == "PermissionDenied" and "message" in got[1][1]
