"""pspy analyze and data grants (issue 17), from pure Plan objects: each
principal's table and column rights in the report, and the findings for a
principal that can read a column named like a secret or change the schema.
The grants themselves are enforced by the database: tests of that run a
real app (tests/test_data_*.py)."""

import json
import os

import pytest

from pspy.analyze import findings, format_json, format_text, report
from pspy.analyze.report import data_rights
from pspy.plan import Plan, PrincipalPlan, ServicePlan

from conftest import REPO

SCHEMA = json.load(open(os.path.join(REPO, "docs", "analyze.schema.json")))

# The minitwit shape: one database, owned by the data-only provider Data.
TABLES = {"user": ["user_id", "username", "email", "pw_hash"], "message": ["message_id", "author_id", "text"],
          "follower": ["who_id", "whom_id"]}
WEB = {"main": {"tables": {"message": {"select": ["*"], "insert": ["*"]},
                           "follower": {"select": ["*"], "insert": ["*"], "delete": ["*"]},
                           "user": {"select": ["user_id", "username"]}}, "schema": False}}
AUTH = {"main": {"tables": {"user": {"select": ["*"], "insert": ["*"], "update": ["pw_hash"]}}, "schema": False}}


def principal(name, kind="provider", grants=None, uid=40001):
    services = ([ServicePlan(name="pspy.db", kind="database", module="pspy.data", file="pspy.toml", line=0,
                             callers=["Auth", "web"])] if name == "Data" else [])
    return PrincipalPlan(name=name, kind=kind, uid=uid, gid=uid, group=name, extra_groups=[], groups=[], env=[],
                         services=services, grants=grants or {})


def minitwit(tmp_path, web=WEB, auth=AUTH, tables=TABLES, databases=True):
    jail = tmp_path / "jail"
    os.makedirs(jail / "app" / "db")
    (jail / "app" / "app.py").write_text("")
    return Plan(app_name="minitwit", app_source="/src", jail=str(jail), mode="chroot", uid_base=40000,
                gid_base=40000, interpreter="/usr/bin/python3", groups={},
                principals=[principal("web", "front_end", web, 40000), principal("Auth", grants=auth, uid=40001),
                            principal("Data", uid=40002)],
                databases=[{"name": "main", "engine": "sqlite", "path": "db/minitwit.db", "owner": "Data",
                            "location": "pspy.toml databases.main", "tables": tables}] if databases else [])


def analyzed(plan):
    """The report, checked against the JSON schema it promises."""
    import jsonschema
    data = report(plan)
    jsonschema.validate(data, SCHEMA)
    return data


def by_name(data):
    return {p["name"]: p for p in data["principals"]}


def grant_findings(data):
    return [f for f in data["findings"] if f["id"] in ("secret-column-readable", "schema-granted")]


def test_each_principal_has_its_table_and_column_rights_and_the_owner_every_one(tmp_path):
    data = analyzed(minitwit(tmp_path))
    ps = by_name(data)
    web, = ps["web"]["data"]
    assert (web["database"], web["path"], web["owner"], web["is_owner"], web["schema"]) == (
        "main", "db/minitwit.db", "Data", False, False)
    assert web["tables"] == {"follower": {"select": ["*"], "insert": ["*"], "delete": ["*"]},
                             "message": {"select": ["*"], "insert": ["*"]},
                             "user": {"select": ["user_id", "username"]}}
    # A whole-table grant is resolved to the table's real columns; a column grant stays as granted.
    assert web["readable"] == {"follower": ["who_id", "whom_id"], "message": ["message_id", "author_id", "text"],
                               "user": ["user_id", "username"]}
    assert web["location"] == "pspy.toml databases.main.grants.web"
    owner, = ps["Data"]["data"]
    assert owner["is_owner"] and owner["schema"] and owner["tables"] == {}
    assert owner["readable"] == {t: TABLES[t] for t in sorted(TABLES)}
    # Plain data: the JSON form carries it unchanged.
    assert json.loads(format_json(data))["principals"][0]["data"] == ps["web"]["data"]


def test_a_principal_without_grants_on_a_database_has_no_entry_and_a_plan_without_databases_none(tmp_path):
    plan = minitwit(tmp_path, auth={})
    assert data_rights(plan, plan.principal("Auth")) == []
    plain = analyzed(minitwit(tmp_path / "plain", databases=False))
    assert [p["data"] for p in plain["principals"]] == [[], [], []]


def test_a_grant_of_user_id_and_username_raises_no_finding(tmp_path):
    data = analyzed(minitwit(tmp_path, auth={}))
    assert grant_findings(data) == []
    # Control: the same web with the whole user table reads pw_hash.
    whole = {"main": {"tables": {**WEB["main"]["tables"], "user": {"select": ["*"]}}, "schema": False}}
    assert [f["principal"] for f in grant_findings(analyzed(minitwit(tmp_path / "whole", web=whole, auth={})))] == [
        "web"]


def test_reading_a_secret_column_through_a_whole_table_grant_names_principal_database_table_and_column(tmp_path):
    found = grant_findings(analyzed(minitwit(tmp_path)))
    # Only Auth: web reads user(user_id, username), and Data, which reads pw_hash too, holds the file.
    assert [(f["id"], f["severity"], f["principal"], f["path"]) for f in found] == [
        ("secret-column-readable", "medium", "Auth", "db/minitwit.db")]
    reason = found[0]["reason"]
    assert reason.startswith("Auth can read user.pw_hash of database main (db/minitwit.db, Data's), a column "
                             "named like a secret"), reason
    # How to narrow it, in pspy.toml's spelling and at its key.
    assert reason.endswith('select "user(user_id, username, email)" instead at '
                           'pspy.toml databases.main.grants.Auth'), reason


def test_a_column_grant_of_a_secret_is_a_finding_per_column_and_unknown_columns_are_not_guessed(tmp_path):
    web = {"main": {"tables": {"user": {"select": ["username", "pw_hash", "reset_token"]},
                               "session": {"select": ["*"]}}, "schema": False}}
    data = analyzed(minitwit(tmp_path, web=web, auth={}))
    assert [f["reason"].split(",")[0] for f in grant_findings(data)] == [
        "web can read user.pw_hash of database main (db/minitwit.db", "web can read user.reset_token of database "
        "main (db/minitwit.db"]
    # session is not among the tables the plan knows: it stays "every column", no name to judge.
    assert by_name(data)["web"]["data"][0]["readable"]["session"] == ["*"]


def test_a_principal_granted_schema_changes_is_a_high_finding(tmp_path):
    auth = {"main": {"tables": {"user": {"select": ["username"]}}, "schema": True}}
    found = grant_findings(analyzed(minitwit(tmp_path, auth=auth)))
    assert [(f["id"], f["severity"], f["principal"], f["path"]) for f in found] == [
        ("schema-granted", "high", "Auth", "db/minitwit.db")]
    assert "remove schema = true at pspy.toml databases.main.grants.Auth" in found[0]["reason"]


@pytest.mark.parametrize("column", ["password", "passwd", "pw_hash", "PW_HASH", "reset_token", "secret_key",
                                    "api_key", "apikey", "api_keys", "passwordhash", "hashed_password", "pwd",
                                    "private_key", "key", "otp_secret", "refresh-token", "token2"])
def test_a_column_named_like_a_secret(column):
    assert findings.secret_like(column)


@pytest.mark.parametrize("column", ["keyboard", "monkey", "secretary", "tokenizer", "user_id", "username",
                                    "email", "salt", "hash", "session", "author", "is_private", "passport", ""])
def test_a_column_not_named_like_a_secret(column):
    assert not findings.secret_like(column)


def test_text_has_a_data_line_per_principal_only_when_the_plan_has_databases(tmp_path):
    text = format_text(analyzed(minitwit(tmp_path)))
    assert ("  data:      main (db/minitwit.db, Data's): select follower, message, user(user_id, username); "
            "insert follower, message; delete follower\n") in text
    assert ("  data:      main (db/minitwit.db, Data's): select user; insert user; update user(pw_hash)\n"
            in text)
    assert "  data:      main (db/minitwit.db): owner (every table and column)\n" in text
    assert "MEDIUM [Auth]: Auth can read user.pw_hash of database main" in text
    schema = {"main": {"tables": {}, "schema": True}}
    assert "  data:      main (db/minitwit.db, Data's): schema changes\n" in format_text(
        analyzed(minitwit(tmp_path / "schema", auth=schema)))
    assert "  data:      none\n" in format_text(analyzed(minitwit(tmp_path / "none", auth={})))
    assert "data:" not in format_text(analyzed(minitwit(tmp_path / "plain", databases=False)))


PSPY_TOML = """
[databases.main]
path = "db/minitwit.db"
owner = "Data"

[databases.main.grants.web]
select = ["message", "follower", "user(user_id, username)"]
insert = ["message", "follower"]
delete = ["follower"]

[databases.main.grants.Auth]
select = ["User"]
insert = ["user"]
update = ["user(PW_HASH)"]
"""


def test_grants_as_pspy_toml_declares_them_reach_the_report_as_written(tmp_path):
    import tomllib

    from pspy.data import grants
    db, = grants.parse(tomllib.loads(PSPY_TOML)["databases"])
    plan = minitwit(tmp_path, web=None, auth=None)
    plan.databases = [dict(db.to_plan(), tables=TABLES)]   # bootstrap records the real schema
    for name, grant in db.grants.items():
        plan.principal(name).grants[db.name] = grant
    data = analyzed(plan)
    assert by_name(data)["web"]["data"] == analyzed(minitwit(tmp_path / "by-hand"))["principals"][0]["data"]
    text = format_text(data)
    assert "  data:      main (db/minitwit.db, Data's): select user; insert user; update user(pw_hash)\n" in text
    assert [f["principal"] for f in grant_findings(data)] == ["Auth"]


def test_every_finding_kind_is_in_the_schema_and_the_docs_with_its_severity():
    docs = open(os.path.join(REPO, "docs", "analyze.md")).read()
    assert set(SCHEMA["$defs"]["finding"]["properties"]["id"]["enum"]) == set(findings.KINDS)
    for kind, (severity, _) in findings.KINDS.items():
        assert f"| `{kind}` | {severity} |" in docs, kind
    # The docs spell out the secret-name rule word for word.
    rule = docs[docs.index("A column is named like a secret"):]
    rule = rule[:rule.index("\n\n")]
    for word in findings.SECRET_WORDS | findings.SECRET_COMPANIONS:
        assert f" {word}," in rule.replace("\n", " ") or f" {word} " in rule.replace("\n", " "), word
