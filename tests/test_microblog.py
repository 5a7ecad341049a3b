"""The microblog example (minitwit) privilege-separated, in chroot mode and in
namespace mode, used over HTTP and probed from inside its principals.

Its one SQLite database lives with the provider Timeline: the front end `web`
serves every page without opening it, and cannot open it. The paper's first
design, a service handing the front end the sqlite3 connection
(paper_design.py), fails at the call site. Without pspy the same files run
as a plain Flask app.
"""

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO, access_of, free_port, probe, pspy

pytestmark = pytest.mark.root

MICROBLOG = os.path.join(REPO, "examples", "microblog")
DATABASE = "db/microblog.db"   # relative to the app root, each principal's working directory


# The example's own client, reused rather than rewritten; loaded under a name
# of its own, since tests/test_zoobank.py imports zoobank's as `workload`.
_spec = importlib.util.spec_from_file_location("microblog_workload", os.path.join(MICROBLOG, "workload.py"))
workload = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workload)


def texts(response):
    status, body = response
    assert status == 200, body
    return workload.texts(body["messages"])


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def microblog(request, tmp_path_factory):
    jail = str(tmp_path_factory.mktemp(f"microblog-{request.param}") / "jail")
    port = free_port()
    env = {"MICROBLOG_PORT": str(port), "MICROBLOG_SECRET_KEY": "front-end-only-secret"}
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", MICROBLOG, "--jail", jail, "--detach", *flags, env=env, check=True)
    try:
        base = f"http://127.0.0.1:{port}"
        workload.wait_until_up(base)
        # Denied means "permission denied" in chroot mode, "not there" in namespace mode.
        denied = "PermissionError" if request.param == "chroot" else "FileNotFoundError"
        yield {"jail": jail, "base": base, "denied": denied}
    finally:
        pspy("stop", "--jail", jail)


def test_register_login_post_follow_unfollow_logout_over_the_json_api(microblog):
    base = microblog["base"]
    alice, bob = workload.Client(base), workload.Client(base)
    assert alice.register("alice", "alice-pw")[0] == 201
    assert bob.register("bob", "bob-pw")[0] == 201
    assert alice.register("alice", "another-pw")[0] == 400            # the name is taken
    assert workload.Client(base).login("alice", "wrong-pw")[0] == 403
    assert workload.Client(base).login("nobody", "alice-pw")[0] == 403
    status, body = alice.login("alice", "alice-pw")
    assert status == 200 and body["username"] == "alice"
    assert alice.api("GET", "/api/me")[1]["user"] == {"user_id": body["user_id"], "username": "alice"}
    assert bob.login("bob", "bob-pw")[0] == 200

    assert bob.post("bob's first post")[0] == 201
    assert alice.post("alice was here")[0] == 201
    assert texts(alice.public()) == ["alice was here", "bob's first post"]
    assert texts(alice.timeline()) == ["alice was here"]                # not following bob yet

    assert alice.follow("bob") == (200, {"following": True})
    assert alice.user("bob")[1]["followed"] is True
    assert texts(alice.timeline()) == ["alice was here", "bob's first post"]
    assert texts(bob.timeline()) == ["bob's first post"]                # following is one way

    assert alice.unfollow("bob") == (200, {"following": False})
    assert texts(alice.timeline()) == ["alice was here"]

    assert alice.logout()[0] == 200
    assert alice.api("GET", "/api/me")[1] == {"user": None}
    assert alice.timeline()[0] == 401
    assert alice.post("after logout")[0] == 401
    assert "after logout" not in texts(bob.public())


def test_the_pages_do_the_same_for_a_person_with_a_browser(microblog):
    base = microblog["base"]
    carol, dave = workload.Client(base), workload.Client(base)
    for client, name in ((carol, "carol"), (dave, "dave")):
        status, html = client.form("/register", {"username": name, "password": "pw", "password2": "pw"})
        assert status == 200 and "You were successfully registered" in html
    status, html = carol.form("/login", {"username": "carol", "password": "wrong"})
    assert status == 403 and "invalid username or password" in html
    for client, name in ((carol, "carol"), (dave, "dave")):
        status, html = client.form("/login", {"username": name, "password": "pw"})
        assert status == 200 and "You were logged in" in html

    dave.form("/add_message", {"text": "dave <b>says</b> hi"})
    shown = "dave &lt;b&gt;says&lt;/b&gt; hi"   # and escaped: the page is the front end's
    assert shown in carol.page("/public")[1]
    assert shown not in carol.page("/")[1]
    status, html = carol.form("/dave/follow", {})
    assert "You are now following dave" in html and "Unfollow user" in html
    assert shown in carol.page("/")[1]
    carol.form("/dave/unfollow", {})
    assert shown not in carol.page("/")[1]

    status, html = carol.page("/logout")
    assert "You were logged out" in html and "sign in" in html
    assert "What's on your mind" not in carol.page("/")[1]


def test_web_cannot_open_the_database_and_timeline_can(microblog):
    jail, denied = microblog["jail"], microblog["denied"]
    assert access_of(jail, "web", [DATABASE]) == {DATABASE: {"read": denied, "write": denied}}
    # Nor through SQLite, which would also create a fresh database if it could write there.
    opened = probe(jail, "web", f"""
        import json, sqlite3
        try:
            sqlite3.connect({DATABASE!r}).execute("SELECT count(*) FROM user").fetchone()
            print(json.dumps("opened"))
        except sqlite3.OperationalError as e:
            print(json.dumps(str(e)))
        """)
    assert opened == "unable to open database file"
    # control: the provider that owns it reads and writes it
    assert access_of(jail, "Timeline", [DATABASE]) == {DATABASE: {"read": "ok", "write": "ok"}}


def test_the_papers_design_fails_at_the_call_site_with_a_serialization_error(microblog):
    # paper_design.connect_db is a Timeline service that returns its sqlite3 connection.
    seen = probe(microblog["jail"], "web", """
        import json, paper_design, pspy, timeline
        try:
            paper_design.connect_db()
            failure = None
        except pspy.SerializationError as e:
            failure = {"type": f"{type(e).__module__}.{type(e).__qualname__}", "message": str(e)}
        # control: the same provider answers a service that returns plain values
        print(json.dumps({"failure": failure, "public": type(timeline.public_timeline()).__name__}))
        """)
    assert seen["failure"] is not None, "connect_db returned something to the front end"
    assert seen["failure"]["type"] == "pspy.errors.SerializationError"
    message = seen["failure"]["message"]
    assert "Timeline.connect_db" in message and "return value" in message, message
    assert "sqlite3.Connection" in message, message
    assert seen["public"] == "list"


def test_the_example_runs_without_pspy(tmp_path):
    app = shutil.copytree(MICROBLOG, tmp_path / "microblog", ignore=shutil.ignore_patterns("db", "__pycache__"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSPY_")} | {"MICROBLOG_PORT": str(port)}
    subprocess.run([sys.executable, "setup_db.py"], cwd=app, env=env, check=True)
    with open(tmp_path / "app.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "app.py"], cwd=app, env=env, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        workload.wait_until_up(base)
        erin = workload.Client(base)
        assert erin.register("erin", "pw")[0] == 201 and erin.login("erin", "pw")[0] == 200
        assert erin.post("no jail today")[0] == 201
        assert texts(erin.public()) == ["no jail today"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    # The decorator changed nothing: the app's own process wrote its own database.
    with sqlite3.connect(app / DATABASE) as db:
        assert db.execute("SELECT text FROM message").fetchall() == [("no jail today",)]
