"""The database owner's sessions (pspy/data/session.py), in this process: kept for
the same caller's next session only, and handed over clean (no root needed)."""

import os
import time
import sqlite3

import pytest

from pspy.data import session as session_module
from pspy.data.session import DatabaseService
from pspy.rpc.server import ConnectionState

GRANTS = {
    "web": {"main": {"tables": {"user": {"select": ["user_id", "username"]}, "message": {"select": ["*"],
                                                                                         "insert": ["*"]}},
                     "schema": False}},
    "Auth": {"main": {"tables": {"user": {"select": ["*"]}}, "schema": False}},
}


class NoSocket:
    idle_timeout = None

    def hold_frames_to(self, idle, frame):
        self.idle_timeout = idle


@pytest.fixture
def service(tmp_path):
    os.mkdir(tmp_path / "db")
    with sqlite3.connect(tmp_path / "db" / "app.db") as db:
        db.executescript("CREATE TABLE user (user_id INTEGER PRIMARY KEY, username TEXT, pw_hash TEXT);"
                         "CREATE TABLE message (message_id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT);"
                         "INSERT INTO user VALUES (1, 'alice', 'hash-of-alice');")
    return DatabaseService(str(tmp_path), [{"name": "main", "path": "db/app.db", "owner": "Data"}], GRANTS)


def opened(service, caller, **options):
    state = ConnectionState(caller, 1000, 1, NoSocket())
    answer = service(state, "open", "main", options)
    assert "error" not in answer, answer
    return state


def rows(service, state, sql):
    answer = service(state, "execute", sql, [], False)
    return answer.get("error") or answer.get("rows", [])


def test_an_ended_session_serves_its_callers_next_one_and_never_another_principal(service):
    web = opened(service, "web")
    connection = web.value.db
    web.close()
    auth = opened(service, "Auth")
    assert auth.value.db is not connection                      # Auth never gets web's connection ...
    assert rows(service, auth, "SELECT pw_hash FROM user") == ["hash-of-alice"]
    auth.close()
    web = opened(service, "web")
    assert web.value.db is connection                           # ... web gets its own back
    assert rows(service, web, "SELECT pw_hash FROM user")[0] == "PermissionDenied"   # with web's grants
    assert rows(service, web, "SELECT username FROM user") == ["alice"]


def test_a_kept_session_comes_back_without_the_last_ones_transaction_or_cursors(service):
    web = opened(service, "web")
    assert rows(service, web, "INSERT INTO message (text) VALUES ('uncommitted')") == []
    service(web, "execute", "SELECT * FROM message, message AS m2, message AS m3", [], False)
    web.close()
    again = opened(service, "web")
    assert again.value.cursors == {} and not again.value.db.in_transaction
    assert rows(service, again, "SELECT count(*) FROM message") == [0]


def test_only_a_few_sessions_are_kept_per_caller_and_not_for_long(service, monkeypatch):
    states = [opened(service, "web") for _ in range(session_module.KEPT_PER_CALLER + 3)]
    connections = [s.value.db for s in states]
    for s in states:
        s.close()
    assert len(service._kept[("web", "main", None)]) == session_module.KEPT_PER_CALLER
    with pytest.raises(sqlite3.ProgrammingError):
        connections[-1].execute("SELECT 1")                      # past the few: closed
    monkeypatch.setattr(session_module, "KEPT_FOR", 0.0)
    kept = [db for _, s in service._kept[("web", "main", None)] for db in [s.db]]
    fresh = opened(service, "web")
    assert fresh.value.db not in kept                          # past KEPT_FOR: a new one ...
    with pytest.raises(sqlite3.ProgrammingError):
        kept[-1].execute("SELECT 1")                            # ... and the old one closed
    other_timeout = opened(service, "web", timeout=1.0)
    assert other_timeout.value.timeout == 1.0


def test_the_database_is_in_wal_mode_so_a_readers_cursor_holds_off_no_writer(service, tmp_path):
    with sqlite3.connect(tmp_path / "db" / "app.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    web = opened(service, "web")
    service(web, "execute", "INSERT INTO message (text) VALUES (?)", [[str(i)] for i in range(11)], True)
    service(web, "commit")
    reading = service(web, "execute", "SELECT * FROM message, message AS b, message AS c", [], False)
    assert reading["cursor"] is not None            # 1,331 rows: a cursor with rows left, reading a snapshot
    writer = opened(service, "web", timeout=0.2)
    assert rows(service, writer, "INSERT INTO message (text) VALUES ('b')") == []
    assert "error" not in service(writer, "commit")   # while web's other session reads


def test_a_transaction_open_past_its_limit_is_rolled_back(tmp_path, service):
    service.transaction_limit = 0.3
    web = opened(service, "web")
    assert rows(service, web, "INSERT INTO message (text) VALUES ('kept')") == []
    assert "error" not in service(web, "commit")                      # control: within the limit
    assert rows(service, web, "INSERT INTO message (text) VALUES ('too slow')") == []
    assert web.conn.idle_timeout <= 0.3                                  # quiet, it is closed at the limit
    time.sleep(0.4)
    late = service(web, "execute", "INSERT INTO message (text) VALUES ('later')", [], False)
    assert late["error"][0] == "OperationalError" and "open longer than 0.3s" in late["error"][1]
    assert rows(service, web, "SELECT text FROM message") == ["kept"]


def test_without_google_re2_in_the_owner_regexp_is_refused_saying_why(service, monkeypatch):
    from pspy.data import regexp
    web = opened(service, "web", functions="django")
    assert rows(service, web, "SELECT 'abc' REGEXP 'b+'") == [1]
    monkeypatch.setattr(regexp, "re2", None)
    assert rows(service, web, "SELECT 'abc' REGEXP 'z'")[0] == "OperationalError"
    with pytest.raises(ValueError, match="REGEXP needs google-re2 in the database's owner"):
        regexp._regexp("b+", "abc")
