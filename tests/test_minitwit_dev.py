"""The minitwit example (examples/minitwit) as a plain Flask app, without pspy.

Its views keep their own SQL on ONE database, opened by `pspy.db.connect`;
with no pspy runtime that opens the file pspy.toml names, so the same files
are a plain Flask app. Here a copy of the folder is set up by its own
setup_db.py and driven end to end through Flask's test client: register,
login, post, follow, unfollow, the three timelines, change of password,
logout, in JSON and in HTML. No root, no jail: the front end's connections
carry the authorizer that Data puts on web's connections under pspy, built
from web's grants in the copy's pspy.toml, so every view is shown to keep
within them. The jail, the RPC and the kernel's say on who the caller is
are the integration test's.
"""

import importlib.util
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO
from pspy.config import load
from pspy.data.authorizer import Authorizer

MINITWIT = os.path.join(REPO, "examples", "minitwit")
DATABASE = "db/minitwit.db"            # pspy.toml [databases.main] path
# The example's modules that app.py imports by these names; other tests load
# other examples' modules under the same names (zoobank's `auth`).
APP_MODULES = ("auth", "database")
# sqlite3 authorizer actions on data, and the grant right each one needs.
DATA_RIGHTS = {sqlite3.SQLITE_READ: "select", sqlite3.SQLITE_INSERT: "insert",
               sqlite3.SQLITE_UPDATE: "update", sqlite3.SQLITE_DELETE: "delete"}


@pytest.fixture(scope="module")
def minitwit(tmp_path_factory):
    """The app's module, imported from a set-up copy of the folder; its
    views' connections enforce web's grants and record the (right, table,
    column) of every statement they ran."""
    app_dir = str(tmp_path_factory.mktemp("minitwit") / "minitwit")
    shutil.copytree(MINITWIT, app_dir, ignore=shutil.ignore_patterns("db", "__pycache__", ".pytest_cache"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSPY_")}
    subprocess.run([sys.executable, "setup_db.py"], cwd=app_dir, env=env, check=True)
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("PSPY_")]:
            mp.delenv(name)
        mp.setenv("MINITWIT_SECRET_KEY", "dev-test-key")
        # pspy.db looks for pspy.toml above the main script, then the current folder.
        mp.chdir(app_dir)
        front_end = _import_app(app_dir)
        (database,) = load(app_dir)["databases"]
        touched = set()
        opened = front_end.get_db

        def get_db_as_web():
            db = opened()
            authorizer = Authorizer("web", database.name, database.grants["web"])
            authorizer.install(db)

            def recording(action, table, column, dbname, source):
                right = DATA_RIGHTS.get(action)
                if right is not None:
                    touched.add((right, table.lower(), (column or "").lower()))
                return authorizer(action, table, column, dbname, source)
            db.set_authorizer(recording)
            return db
        # Only the front end's connections: auth.py holds its own get_db, as
        # Auth holds its own grants.
        mp.setattr(front_end, "get_db", get_db_as_web)
        front_end.app.config["TESTING"] = True
        yield {"module": front_end, "dir": app_dir, "touched": touched}


def _import_app(app_dir):
    saved = {name: sys.modules.pop(name) for name in APP_MODULES if name in sys.modules}
    sys.path.insert(0, app_dir)
    try:
        spec = importlib.util.spec_from_file_location("minitwit_front_end", os.path.join(app_dir, "app.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(app_dir)
        for name in APP_MODULES:
            sys.modules.pop(name, None)      # app.py keeps its own references
        sys.modules.update(saved)
    return module


@pytest.fixture
def browser(minitwit):
    """A new person: a client with a cookie jar of its own."""
    return lambda: minitwit["module"].app.test_client()


def texts(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    return [m["text"] for m in response.get_json()["messages"]]


def sign_up(client, name, password="pw"):
    assert client.post("/register", json={"username": name, "password": password}).status_code == 201
    response = client.post("/login", json={"username": name, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["user"]["user_id"]


def test_setup_db_creates_the_schema_in_the_file_pspy_toml_names(minitwit):
    (database,) = load(minitwit["dir"])["databases"]
    assert database.path == DATABASE and database.owner == "Data"
    with sqlite3.connect(os.path.join(minitwit["dir"], DATABASE)) as db:
        columns = {table: [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
                   for table in ("user", "follower", "message")}
    assert columns == {"user": ["user_id", "username", "pw_hash"], "follower": ["who_id", "whom_id"],
                       "message": ["message_id", "author_id", "text", "pub_date"]}


def test_register_login_post_follow_unfollow_logout_and_the_timelines(browser):
    alice, bob = browser(), browser()
    alice_id, bob_id = sign_up(alice, "alice"), sign_up(bob, "bob")
    assert alice_id != bob_id
    taken = browser().post("/register", json={"username": "alice", "password": "other"})
    assert taken.status_code == 400 and "already taken" in taken.get_json()["error"]
    for name, password in (("alice", "wrong"), ("nobody", "pw")):     # the same answer for both
        refused = browser().post("/login", json={"username": name, "password": password})
        assert refused.status_code == 403 and refused.get_json() == {"error": "invalid username or password"}
    assert alice.get("/public?format=json").get_json()["user"] == {"user_id": alice_id, "username": "alice"}

    assert bob.post("/add_message", json={"text": "bob's first post"}).status_code == 201
    posted = alice.post("/add_message", json={"text": "alice was here"})
    assert posted.status_code == 201 and isinstance(posted.get_json()["message_id"], int)
    assert alice.post("/add_message", json={"text": "  "}).status_code == 400
    assert texts(browser().get("/public?format=json")) == ["alice was here", "bob's first post"]
    assert texts(alice.get("/?format=json")) == ["alice was here"]              # not following bob yet

    assert alice.post("/bob/follow", json={}).get_json() == {"following": True}
    assert alice.post("/bob/follow", json={}).get_json() == {"following": True}  # again: no change
    assert alice.post("/alice/follow", json={}).status_code == 400
    bob_page = alice.get("/bob", headers={"Accept": "application/json"}).get_json()
    assert bob_page["followed"] is True and bob_page["profile"] == {"user_id": bob_id, "username": "bob"}
    assert [m["text"] for m in bob_page["messages"]] == ["bob's first post"]
    assert texts(alice.get("/?format=json")) == ["alice was here", "bob's first post"]
    assert texts(bob.get("/?format=json")) == ["bob's first post"]               # following is one way
    assert bob.get("/alice?format=json").get_json()["followed"] is False

    assert alice.post("/bob/unfollow", json={}).get_json() == {"following": False}
    assert texts(alice.get("/?format=json")) == ["alice was here"]
    assert alice.get("/nobody?format=json").status_code == 404
    assert alice.post("/nobody/follow", json={}).status_code == 404

    assert alice.post("/logout", json={}).get_json() == {"logged_out": True}
    assert alice.get("/public?format=json").get_json()["user"] is None
    assert alice.get("/?format=json").status_code == 401
    assert alice.post("/add_message", json={"text": "after logout"}).status_code == 401
    assert alice.post("/bob/follow", json={}).status_code == 401
    assert "after logout" not in texts(bob.get("/public?format=json"))


def test_the_pages_do_the_same_for_a_person_with_a_browser(browser):
    carol, dave = browser(), browser()
    mismatch = carol.post("/register", data={"username": "carol", "password": "a", "password2": "b"})
    assert mismatch.status_code == 400 and "do not match" in mismatch.get_data(as_text=True)
    reserved = carol.post("/register", data={"username": "public", "password": "a", "password2": "a"})
    assert reserved.status_code == 400 and "reserved" in reserved.get_data(as_text=True)
    for client, name in ((carol, "carol"), (dave, "dave")):
        page = client.post("/register", data={"username": name, "password": "pw", "password2": "pw"},
                           follow_redirects=True)
        assert page.status_code == 200 and "You were successfully registered" in page.get_data(as_text=True)
    wrong = carol.post("/login", data={"username": "carol", "password": "wrong"})
    assert wrong.status_code == 403 and "invalid username or password" in wrong.get_data(as_text=True)
    for client, name in ((carol, "carol"), (dave, "dave")):
        page = client.post("/login", data={"username": name, "password": "pw"}, follow_redirects=True)
        assert "You were logged in" in page.get_data(as_text=True)

    dave.post("/add_message", data={"text": "dave <b>says</b> hi"})
    shown = "dave &lt;b&gt;says&lt;/b&gt; hi"         # escaped by the template
    assert shown in carol.get("/public").get_data(as_text=True)
    assert shown not in carol.get("/").get_data(as_text=True)
    page = carol.post("/dave/follow", follow_redirects=True).get_data(as_text=True)
    assert "You are now following dave" in page and "Unfollow user" in page
    assert shown in carol.get("/").get_data(as_text=True)
    carol.post("/dave/unfollow")
    assert shown not in carol.get("/").get_data(as_text=True)

    page = carol.get("/logout", follow_redirects=True).get_data(as_text=True)
    assert "You were logged out" in page and "sign in" in page
    assert carol.get("/").headers["Location"].endswith("/public")          # signed out: home is public
    assert carol.post("/add_message", data={"text": "x"}).headers["Location"].endswith("/login")


def test_change_password_goes_through_auth_and_the_old_one_stops_working(browser, minitwit):
    erin = browser()
    sign_up(erin, "erin", "old-pw")
    wrong = erin.post("/change_password", json={"old_password": "nope", "new_password": "new-pw"})
    assert wrong.status_code == 403
    assert erin.post("/change_password", json={"old_password": "old-pw", "new_password": ""}).status_code == 400
    assert erin.post("/change_password", json={"old_password": "old-pw", "new_password": "new-pw"}).get_json() \
        == {"changed": True}
    assert browser().post("/login", json={"username": "erin", "password": "old-pw"}).status_code == 403
    assert browser().post("/login", json={"username": "erin", "password": "new-pw"}).status_code == 200
    assert browser().post("/change_password", json={"old_password": "new-pw", "new_password": "x"}).status_code \
        == 401


def test_passwords_are_stored_hashed_and_no_page_shows_a_hash(browser, minitwit):
    frank = browser()
    sign_up(frank, "frank", "frank-secret")
    frank.post("/add_message", json={"text": "frank's post"})
    with sqlite3.connect(os.path.join(minitwit["dir"], DATABASE)) as db:
        (pw_hash,) = db.execute("SELECT pw_hash FROM user WHERE username = 'frank'").fetchone()
    assert "frank-secret" not in pw_hash and re.match(r"[a-z0-9]+:", pw_hash), pw_hash
    for path in ("/public", "/", "/frank", "/login", "/change_password"):
        for query in ("", "?format=json"):
            body = frank.get(path + query).get_data(as_text=True)
            assert pw_hash not in body and "pw_hash" not in body, path + query


def test_every_view_keeps_within_webs_grants_and_auth_alone_reads_pw_hash(minitwit, browser):
    # The other tests ran every view with web's grants enforced; here they
    # run once more, and the record shows the statements went through them.
    george, hana = browser(), browser()
    sign_up(george, "george"), sign_up(hana, "hana")       # Auth's connections read and write pw_hash
    george.post("/add_message", json={"text": "g"})
    george.post("/hana/follow", json={})
    for path in ("/", "/public", "/hana", "/george"):
        assert george.get(path).status_code == 200, path
    george.post("/hana/unfollow", json={})
    touched = minitwit["touched"]
    assert {("select", "user", "user_id"), ("select", "user", "username"), ("select", "message", "text"),
            ("select", "follower", "whom_id"), ("insert", "message", ""), ("insert", "follower", ""),
            ("delete", "follower", "")} <= touched
    assert not {entry for entry in touched if entry[1] == "user" and entry[2] == "pw_hash"}
    # control: the front end's connection does refuse what web is not granted
    db = minitwit["module"].get_db()
    try:
        assert db.execute("SELECT count(*) FROM user").fetchone()[0] >= 2
        for forbidden in ("SELECT pw_hash FROM user", "UPDATE user SET username = 'x'",
                          "DELETE FROM message", "DROP TABLE follower"):
            # SQLite's words for a refused column read, and for any other refusal
            with pytest.raises(sqlite3.DatabaseError, match="is prohibited|not authorized"):
                db.execute(forbidden)
    finally:
        db.close()
