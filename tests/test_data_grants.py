"""Data grants as declared: pspy.toml's [databases.NAME] read, checked and planned (pure: no root)."""

import os
import sqlite3

import pytest

from pspy import config
from pspy.data import grants
from pspy.discover import Manifest, PermSpec, ProviderSpec, ServiceSpec
from pspy.errors import ConfigError, PlanError
from pspy.plan import DATABASE_SERVICE, Options, Plan, build_plan

MINITWIT = {
    "main": {
        "path": "db/minitwit.db", "owner": "Data",
        "grants": {
            "web": {"select": ["message", "follower", "user(user_id, username)"],
                    "insert": ["message", "follower"], "delete": ["follower"]},
            "Auth": {"select": ["user"], "insert": ["user"], "update": ["user(pw_hash)"]},
        },
    },
}

SCHEMA = """
CREATE TABLE user (user_id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT NOT NULL UNIQUE, pw_hash TEXT);
CREATE TABLE follower (who_id INTEGER, whom_id INTEGER);
CREATE TABLE message (message_id INTEGER PRIMARY KEY AUTOINCREMENT, author_id INTEGER, text TEXT, pub_date INTEGER);
"""


def problems_of(databases) -> str:
    with pytest.raises(ConfigError) as e:
        grants.parse(databases)
    return str(e.value)


def test_grants_become_the_plans_plain_form_with_lower_cased_names():
    [db] = grants.parse(MINITWIT)
    assert (db.name, db.path, db.owner, db.engine, db.folder) == ("main", "db/minitwit.db", "Data", "sqlite", "db/")
    assert db.grants["web"] == {"tables": {"message": {"select": ["*"], "insert": ["*"]},
                                           "follower": {"select": ["*"], "insert": ["*"], "delete": ["*"]},
                                           "user": {"select": ["user_id", "username"]}}, "schema": False}
    assert db.grants["Auth"]["tables"]["user"] == {"select": ["*"], "insert": ["*"], "update": ["pw_hash"]}
    [db] = grants.parse({"main": {"path": "db/x.db", "owner": "Data",
                                  "grants": {"web": {"select": ["User( User_ID )"], "schema": True}}}})
    assert db.grants["web"] == {"tables": {"user": {"select": ["user_id"]}}, "schema": True}


@pytest.mark.parametrize("databases, expected", [
    ({"main": {"path": "app.db", "owner": "Data"}}, "databases.main.path: 'app.db' is in the app's root folder"),
    ({"main": {"path": "../x/app.db", "owner": "Data"}}, "must be a file path inside the app folder"),
    ({"main": {"path": "/var/app.db", "owner": "Data"}}, "must be a file path inside the app folder"),
    ({"main": {"path": "db/app.db"}}, "databases.main.owner must name the provider"),
    ({"main": {"path": "db/app.db", "owner": "Data", "engine": "oracle"}}, "databases.main.engine: 'oracle'"),
    ({"main": {"path": "db/app.db", "owner": "Data", "pathh": 1}}, "databases.main: unknown key(s) pathh"),
    ({"main": {"path": "db/app.db", "owner": "Data", "grants": {"web": {"read": ["x"]}}}},
     "databases.main.grants.web: unknown right 'read'"),
    ({"main": {"path": "db/app.db", "owner": "Data", "grants": {"web": {"select": "user"}}}},
     "databases.main.grants.web.select must be a list"),
    ({"main": {"path": "db/app.db", "owner": "Data", "grants": {"web": {"select": ["user(pw hash)"]}}}},
     "'user(pw hash)' is not \"table\" or \"table(column, ...)\""),
    ({"main": {"path": "db/app.db", "owner": "Data", "grants": {"web": {"insert": ["user(username)"]}}}},
     "insert is granted per table"),
    ({"main": {"path": "db/app.db", "owner": "Data", "grants": {"web": {"select": ["user", "user(user_id)"]}}}},
     "table 'user' is named twice"),
    ({"main": {"path": "db/app.db", "owner": "Data", "grants": {"Data": {"select": ["user"]}}}},
     "databases.main.grants.Data: Data owns the database"),
    ({"a": {"path": "db/app.db", "owner": "Data"}, "b": {"path": "db/app.db", "owner": "Data"}},
     "databases.b: db/app.db is also database 'a'"),
    ({"a": {"path": "db/a.db", "owner": "Data"}, "b": {"path": "db/b.db", "owner": "Other"}},
     "its folder db/ holds database 'a' of 'Data'"),
])
def test_mistakes_are_named_with_their_key(databases, expected):
    assert expected in problems_of(databases)


def test_pspy_toml_mistakes_name_the_file(tmp_path):
    (tmp_path / "pspy.toml").write_text('[databases.main]\npath = "db/app.db"\nowner = "Data"\n'
                                        '[databases.main.grants.web]\nselect = ["user(pw hash)"]\n')
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path))
    assert f"{tmp_path / 'pspy.toml'} databases.main.grants.web.select" in str(e.value)


def manifest(*providers) -> Manifest:
    return Manifest(app_root="/srv/minitwit", providers={p.name: p for p in providers})


def auth(perms=None, isolation=None) -> ProviderSpec:
    return ProviderSpec("Auth", services=[ServiceSpec("check_login", "function", "auth", "auth.py", 9, "Auth",
                                                      ("web",))],
                        perms={p: PermSpec(p, m, "auth.py:8") for p, m in (perms or {}).items()},
                        isolation=isolation, isolation_location="auth.py:8" if isolation else None)


def test_an_owner_no_decorator_names_becomes_a_data_only_provider_holding_the_folder():
    plan = build_plan(manifest(auth()), Options(databases=grants.parse(MINITWIT)))
    data = plan.principal("Data")
    assert data.kind == "provider" and data.modules == [] and not data.network
    assert [(p.pattern, p.mode) for p in data.perms] == [("db/", 0o700)]
    [service] = data.services
    assert (service.name, service.kind, service.callers) == (DATABASE_SERVICE, "database", ["Auth", "web"])
    assert plan.principal("web").grants["main"]["tables"]["user"] == {"select": ["user_id", "username"]}
    assert "main" not in data.grants and plan.principal("Auth").grants["main"]["tables"]["user"]["update"] == ["pw_hash"]
    assert plan.databases == [{"name": "main", "engine": "sqlite", "path": "db/minitwit.db", "owner": "Data",
                               "location": "pspy.toml databases.main", "tables": {}}]
    assert Plan.from_dict(__import__("json").loads(plan.to_json())).principal("web").grants == \
        plan.principal("web").grants


def test_a_decorated_owner_gets_the_folder_added_or_keeps_its_own_grant_of_it():
    databases = grants.parse({"main": {"path": "db/minitwit.db", "owner": "Auth", "grants": {"web": {"select": ["message"]}}}})
    plan = build_plan(manifest(auth()), Options(databases=databases))
    assert [(p.pattern, p.mode, p.location) for p in plan.principal("Auth").perms] == \
        [("db/", 0o700, "pspy.toml databases.main")]
    assert [s.name for s in plan.principal("Auth").services] == ["check_login", DATABASE_SERVICE]
    plan = build_plan(manifest(auth({"db/": 0o700})), Options(databases=databases))
    assert [(p.pattern, p.location) for p in plan.principal("Auth").perms] == [("db/", "auth.py:8")]


@pytest.mark.parametrize("owner_perms, owner, expected", [
    ({"db/": 0o500}, "Auth", "'Auth' gives db/ mode 0o500 (auth.py:8); the owner of db/minitwit.db needs 0o700"),
    ({"db/": 0o700}, "Data", "db/ is 'Auth''s (auth.py:8), but db/ holds db/minitwit.db, which 'Data' owns"),
    ({"db/minitwit.db": 0o600}, "Data", "db/minitwit.db is 'Auth''s"),
    ({}, "web", "the front end cannot own a database"),
])
def test_an_owner_that_cannot_hold_the_folder_is_refused(owner_perms, owner, expected):
    databases = grants.parse({"main": {"path": "db/minitwit.db", "owner": owner}})
    with pytest.raises(PlanError) as e:
        build_plan(manifest(auth(owner_perms)), Options(databases=databases))
    assert expected in str(e.value)


def test_grants_to_a_stranger_and_a_per_call_owner_are_refused():
    databases = grants.parse({"main": {"path": "db/x.db", "owner": "Data", "grants": {"Nobody": {"select": ["t"]}}}})
    with pytest.raises(ConfigError, match=r"databases.main.grants.Nobody: 'Nobody' is not a principal of this app"):
        build_plan(manifest(auth()), Options(databases=databases))
    databases = grants.parse({"main": {"path": "db/x.db", "owner": "Auth"}})
    with pytest.raises(PlanError, match=r"isolation=\"per_call\", auth.py:8\); a database session lasts"):
        build_plan(manifest(auth(isolation="per_call")), Options(databases=databases))


def test_the_real_schema_decides_which_tables_and_columns_a_grant_may_name(tmp_path):
    os.mkdir(tmp_path / "db")
    with sqlite3.connect(tmp_path / "db" / "minitwit.db") as db:
        db.executescript(SCHEMA)
    databases = grants.parse({"main": {"path": "db/minitwit.db", "owner": "Data", "grants": {
        "web": {"select": ["message", "user(user_id, email)"], "update": ["messages"]}}}})
    plan = build_plan(manifest(auth()), Options(databases=databases))
    with pytest.raises(ConfigError) as e:
        grants.check_against_schemas(plan, str(tmp_path))
    assert "databases.main.grants.web.select: table 'user' has no column email" in str(e.value)
    assert "databases.main.grants.web: table 'messages' is not in db/minitwit.db" in str(e.value)
    good = build_plan(manifest(auth()), Options(databases=grants.parse(MINITWIT)))
    grants.check_against_schemas(good, str(tmp_path))
    assert good.databases[0]["tables"]["user"] == ["user_id", "username", "pw_hash"]
    assert not os.path.exists(tmp_path / "db" / "minitwit.db-journal")
    missing = build_plan(manifest(auth()), Options(databases=grants.parse(
        {"main": {"path": "db/other.db", "owner": "Data"}})))
    with pytest.raises(ConfigError, match="db/other.db does not exist in the app after its set-up script"):
        grants.check_against_schemas(missing, str(tmp_path))


def test_the_schema_is_read_through_a_write_ahead_log_the_owner_left(tmp_path):
    os.mkdir(tmp_path / "db")
    owner = sqlite3.connect(tmp_path / "db" / "minitwit.db")
    owner.execute("PRAGMA journal_mode = WAL")
    owner.execute("PRAGMA wal_autocheckpoint = 0")   # the new table stays in the log, as after a crash
    owner.executescript(SCHEMA)
    try:
        assert os.path.getsize(tmp_path / "db" / "minitwit.db-wal") > 0
        assert grants.read_schema(str(tmp_path / "db" / "minitwit.db"))["message"] == \
            ["message_id", "author_id", "text", "pub_date"]
    finally:
        owner.close()
