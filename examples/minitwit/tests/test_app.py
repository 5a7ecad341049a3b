"""MiniTwit's own tests, run without pspy from the app folder:

    python setup_db.py && python -m pytest tests

They use a database of their own in a temporary folder (a copy of the app's
pspy.toml points there), so the app's db/ is never touched.
"""

import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)


@pytest.fixture
def client(tmp_path, monkeypatch):
    # pspy.db finds the database through the pspy.toml above the current folder.
    shutil.copy(os.path.join(HERE, "pspy.toml"), tmp_path)
    (tmp_path / "db").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PSPY_PRINCIPAL", raising=False)
    import app
    import database
    db = database.get_db()
    db.executescript(database.SCHEMA)
    db.close()
    app.app.config["TESTING"] = True
    return app.app.test_client()


def test_a_new_user_posts_and_sees_the_message(client):
    assert client.post("/register", json={"username": "ann", "password": "pw"}).status_code == 201
    assert client.post("/login", json={"username": "ann", "password": "pw"}).status_code == 200
    assert client.post("/add_message", json={"text": "hello"}).status_code == 201
    messages = client.get("/?format=json").get_json()["messages"]
    assert [m["text"] for m in messages] == ["hello"]


def test_a_wrong_password_is_refused(client):
    client.post("/register", json={"username": "ann", "password": "pw"})
    response = client.post("/login", json={"username": "ann", "password": "nope"})
    assert response.status_code == 403 and response.get_json()["error"] == "invalid username or password"
