"""The SQLite authorizer of data grants (pspy/data/authorizer.py), in process:
each statement a grant forbids is refused by SQLite itself, before a row is
read, next to the granted statement that works. Pure: no root, no runtime."""

import os
import sqlite3
from contextlib import closing

import pytest

from pspy.data.authorizer import Authorizer

SCHEMA = """
CREATE TABLE user (user_id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT NOT NULL UNIQUE, pw_hash TEXT);
CREATE TABLE follower (who_id INTEGER, whom_id INTEGER);
CREATE TABLE message (message_id INTEGER PRIMARY KEY AUTOINCREMENT, author_id INTEGER, text TEXT, pub_date INTEGER);
INSERT INTO user (username, pw_hash) VALUES ('alice', 'hash-of-alice'), ('bob', 'hash-of-bob');
INSERT INTO follower VALUES (1, 2);
INSERT INTO message (author_id, text, pub_date) VALUES (1, 'hello from alice', 1), (2, 'hello from bob', 2);
"""

# The grants of the format (web, Auth) in the plan's form, and a few more principals the rules need.
WEB = {"tables": {"message": {"select": ["*"], "insert": ["*"]},
                  "follower": {"select": ["*"], "insert": ["*"], "delete": ["*"]},
                  "user": {"select": ["user_id", "username"]}}, "schema": False}
GRANTS = {
    "web": WEB,
    "Auth": {"tables": {"user": {"select": ["*"], "insert": ["*"], "update": ["pw_hash"]}}, "schema": False},
    "signup": {"tables": {"user": {"select": ["user_id", "username"], "insert": ["*"]}}, "schema": False},
    "renamer": {"tables": {"user": {"select": ["*"], "update": ["username"]}}, "schema": False},
    "migrator": {"tables": {"message": {"select": ["*"], "delete": ["*"]}}, "schema": True},
    "nobody": {},
}
PW_HASH = "web may not select user.pw_hash in database 'main'"


@pytest.fixture
def db(tmp_path) -> str:
    path = str(tmp_path / "minitwit.db")
    with closing(sqlite3.connect(path)) as owner:
        owner.executescript(SCHEMA)
    return path


def owner_sql(db: str, script: str) -> None:
    """What the owner (no authorizer, every right) does to the file."""
    with closing(sqlite3.connect(db)) as owner:
        owner.executescript(script)


def owner_rows(db: str, sql: str) -> list:
    with closing(sqlite3.connect(db)) as owner:
        return owner.execute(sql).fetchall()


class Caller:
    """One caller's session as the owner serves it: its own connection, its grants installed."""

    def __init__(self, db: str, principal: str, grants: dict, install: bool = True):
        self.authorizer = Authorizer(principal, "main", grants)
        self.db = sqlite3.connect(db, isolation_level=None)
        if install:
            self.authorizer.install(self.db)
        else:
            self.db.set_authorizer(self.authorizer)

    def run(self, sql: str, parameters=()) -> list:
        self.authorizer.reset()
        return self.db.execute(sql, parameters).fetchall()

    def refused(self, sql: str, parameters=()) -> str:
        """The refusal in words; fails the test if the statement works, or fails for another reason."""
        self.authorizer.reset()
        with pytest.raises(sqlite3.Error) as failure:
            self.db.execute(sql, parameters).fetchall()
        why = self.authorizer.refusal(failure.value)
        assert why, f"{sql!r} failed, but no grant refused it: {failure.value!r}"
        return why


@pytest.fixture
def connect(db):
    callers = []

    def as_principal(principal: str, grants: dict | None = None, install: bool = True) -> Caller:
        caller = Caller(db, principal, GRANTS[principal] if grants is None else grants, install)
        callers.append(caller)
        return caller

    yield as_principal
    for caller in callers:
        caller.db.close()


RECURSIVE = ("WITH RECURSIVE r(n, x) AS (SELECT 1, (SELECT {} FROM user LIMIT 1) "
             "UNION ALL SELECT n + 1, x FROM r WHERE n < 3) SELECT n FROM r")
# Reads: (forbidden, its allowed twin). Every place a column can hide is a read of it.
READS = {
    "select_star": ("SELECT * FROM user", "SELECT user_id, username FROM user"),
    "union": ("SELECT username FROM user UNION SELECT pw_hash FROM user",
              "SELECT username FROM user UNION SELECT CAST(user_id AS TEXT) FROM user"),
    "subquery": ("SELECT text, (SELECT pw_hash FROM user WHERE user_id = author_id) FROM message",
                 "SELECT text, (SELECT username FROM user WHERE user_id = author_id) FROM message"),
    "where": ("SELECT username FROM user WHERE pw_hash LIKE 'hash-of-a%'",
              "SELECT username FROM user WHERE username LIKE 'a%'"),
    "order_by": ("SELECT username FROM user ORDER BY pw_hash", "SELECT username FROM user ORDER BY username"),
    "join_on": ("SELECT text FROM message JOIN user ON user.pw_hash = message.text",
                "SELECT text FROM message JOIN user ON user.user_id = message.author_id"),
    "aggregate": ("SELECT max(length(pw_hash)) FROM user", "SELECT max(length(username)) FROM user"),
    "cte": ("WITH s AS (SELECT pw_hash AS x FROM user) SELECT count(*) FROM s",
            "WITH s AS (SELECT username AS x FROM user) SELECT count(*) FROM s"),
    "recursive_cte": (RECURSIVE.format("pw_hash"), RECURSIVE.format("username")),
    "table_function": ("SELECT value FROM json_each((SELECT json_group_array(pw_hash) FROM user))",
                       "SELECT value FROM json_each((SELECT json_group_array(username) FROM user))"),
}


@pytest.mark.parametrize("forbidden, allowed", READS.values(), ids=READS.keys())
def test_web_cannot_read_pw_hash_however_the_statement_hides_it(connect, forbidden, allowed):
    web = connect("web")
    assert web.run(allowed)
    assert web.refused(forbidden).startswith(PW_HASH)


def test_the_refusal_names_principal_table_column_and_database(connect):
    web = connect("web")
    assert web.refused("SELECT * FROM user") == PW_HASH
    assert web.refused("WITH s AS (SELECT pw_hash FROM user) SELECT * FROM s") == \
        PW_HASH + " (inside 's': views, triggers and WITH clauses run with web's grants)"
    assert web.run("SELECT username FROM user ORDER BY user_id") == [("alice",), ("bob",)]
    assert web.authorizer.denial is None    # reset() forgot the last refusal


def test_count_of_a_table_needs_a_select_grant_on_it_a_column_grant_will_do(connect):
    auth = connect("Auth")
    assert auth.refused("SELECT count(*) FROM message") == "Auth may not select from message in database 'main'"
    assert auth.refused("SELECT 1 FROM follower LIMIT 1") == "Auth may not select from follower in database 'main'"
    assert auth.run("SELECT count(*) FROM user") == [(2,)]
    assert connect("web").run("SELECT count(*) FROM user") == [(2,)]


def test_a_bare_rowid_is_a_column_a_column_grant_must_name(connect):
    who_only = {"tables": {"follower": {"select": ["who_id"]}}}
    assert connect("web", who_only).refused("SELECT rowid FROM follower") == \
        "web may not select follower.rowid in database 'main'"
    assert connect("web", who_only).run("SELECT who_id FROM follower") == [(1,)]
    assert connect("web").run("SELECT rowid FROM follower") == [(1,)]
    # An INTEGER PRIMARY KEY is the rowid: SQLite reports it by its own name.
    assert connect("signup").run("SELECT rowid, _rowid_ FROM user WHERE username = 'bob'") == [(2, 2)]


def test_names_compare_without_case_as_sqlite_does(connect, db):
    owner_sql(db, "CREATE TABLE Profile (Id INTEGER PRIMARY KEY, Bio TEXT, Secret TEXT);"
                  "INSERT INTO Profile VALUES (1, 'likes tea', 'the secret');")
    reader = connect("web", {"tables": {"profile": {"select": ["id", "bio"], "insert": ["*"]}}})
    assert reader.run("SELECT ID, bio FROM PROFILE") == [(1, "likes tea")]
    assert reader.refused("SELECT secret FROM profile") == "web may not select Profile.Secret in database 'main'"
    reader.run("INSERT INTO PROFILE (bio) VALUES ('new')")
    assert reader.refused("INSERT OR REPLACE INTO profile (id, bio) VALUES (1, 'mine')").startswith(
        "web may not delete from Profile")


def test_web_cannot_update_anyones_message_nor_delete_it_but_deletes_its_follows(connect, db):
    web = connect("web")
    assert web.refused("UPDATE message SET text = 'pwned' WHERE author_id = 2") == \
        "web may not update message.text in database 'main'"
    assert web.refused("DELETE FROM message WHERE author_id = 2") == \
        "web may not delete from message in database 'main'"
    assert web.refused("INSERT INTO user (username) VALUES ('eve')") == \
        "web may not insert into user in database 'main'"
    web.run("DELETE FROM follower WHERE who_id = 1")
    assert owner_rows(db, "SELECT count(*) FROM follower") == [(0,)]
    assert owner_rows(db, "SELECT text FROM message WHERE author_id = 2") == [("hello from bob",)]


def test_auth_updates_pw_hash_and_no_other_column(connect, db):
    auth = connect("Auth")
    assert auth.refused("UPDATE user SET username = 'mallory' WHERE user_id = 2") == \
        "Auth may not update user.username in database 'main'"
    auth.run("UPDATE user SET pw_hash = 'new-hash' WHERE user_id = 2")
    assert auth.run("SELECT pw_hash FROM user WHERE user_id = 2") == [("new-hash",)]
    assert owner_rows(db, "SELECT username, pw_hash FROM user WHERE user_id = 2") == [("bob", "new-hash")]


def test_insert_select_cannot_copy_a_forbidden_column_into_a_readable_table(connect, db):
    web = connect("web")
    assert web.refused("INSERT INTO message (author_id, text, pub_date) SELECT user_id, pw_hash, 0 FROM user") \
        == PW_HASH
    web.run("INSERT INTO message (author_id, text, pub_date) SELECT user_id, username, 0 FROM user")
    assert owner_rows(db, "SELECT count(*) FROM message WHERE text LIKE 'hash-of%'") == [(0,)]
    assert owner_rows(db, "SELECT count(*) FROM message WHERE pub_date = 0") == [(2,)]


def test_returning_a_column_needs_select_on_it(connect, db):
    signup = connect("signup")
    assert signup.refused("INSERT INTO user (username, pw_hash) VALUES ('carol', 'h') RETURNING pw_hash") == \
        "signup may not select user.pw_hash in database 'main'"
    assert owner_rows(db, "SELECT count(*) FROM user WHERE username = 'carol'") == [(0,)]
    assert signup.run("INSERT INTO user (username, pw_hash) VALUES ('carol', 'h') RETURNING user_id") == [(3,)]


def test_an_upsert_updates_only_granted_columns(connect, db):
    auth = connect("Auth")
    auth.run("INSERT INTO user (username, pw_hash) VALUES ('alice', 'rotated') "
             "ON CONFLICT (username) DO UPDATE SET pw_hash = excluded.pw_hash")
    assert owner_rows(db, "SELECT pw_hash FROM user WHERE username = 'alice'") == [("rotated",)]
    assert auth.refused("INSERT INTO user (username, pw_hash) VALUES ('alice', 'x') "
                        "ON CONFLICT (username) DO UPDATE SET username = 'mallory'") == \
        "Auth may not update user.username in database 'main'"
    assert connect("signup").refused("INSERT INTO user (username, pw_hash) VALUES ('bob', 'mine') "
                                     "ON CONFLICT (username) DO UPDATE SET pw_hash = excluded.pw_hash") == \
        "signup may not update user.pw_hash in database 'main'"


def test_insert_or_replace_cannot_overwrite_a_row_without_the_delete_grant(connect, db):
    # SQLite reports INSERT OR REPLACE as a plain INSERT; install's guard trigger stops the delete it does.
    web = connect("web")
    assert web.refused("INSERT OR REPLACE INTO message (message_id, author_id, text, pub_date) "
                       "VALUES (2, 1, 'forged', 0)") == \
        "web may not delete from message in database 'main': INSERT OR REPLACE and UPDATE OR REPLACE " \
        "delete the row they replace"
    assert owner_rows(db, "SELECT author_id, text FROM message WHERE message_id = 2") == [(2, "hello from bob")]
    web.run("INSERT OR REPLACE INTO message (message_id, author_id, text, pub_date) VALUES (99, 1, 'new', 0)")
    assert owner_rows(db, "SELECT text FROM message WHERE message_id = 99") == [("new",)]
    assert connect("signup").refused("REPLACE INTO user (user_id, username, pw_hash) VALUES (1, 'alice', 'mine')") \
        .startswith("signup may not delete from user")
    assert owner_rows(db, "SELECT pw_hash FROM user WHERE user_id = 1") == [("hash-of-alice",)]


def test_update_or_replace_cannot_delete_the_row_it_collides_with(connect, db):
    renamer = connect("renamer")
    assert renamer.refused("UPDATE OR REPLACE user SET username = 'alice' WHERE user_id = 2") \
        .startswith("renamer may not delete from user")
    assert owner_rows(db, "SELECT username FROM user ORDER BY user_id") == [("alice",), ("bob",)]
    renamer.run("UPDATE user SET username = 'bobby' WHERE user_id = 2")
    assert owner_rows(db, "SELECT username FROM user WHERE user_id = 2") == [("bobby",)]


def test_without_install_a_write_that_could_replace_rows_is_refused_saying_why(connect, db):
    web = connect("web", install=False)
    why = web.refused("INSERT INTO message (author_id, text, pub_date) VALUES (1, 'x', 0)")
    assert why.startswith("web may not insert into message in database 'main' on this connection: it has no guard")
    assert "Authorizer.install" in why
    web.run("INSERT INTO follower VALUES (2, 1)")   # web may delete followers: a REPLACE takes nothing from it


def test_autoincrement_inserts_work_with_the_insert_grant_alone(connect, db):
    web = connect("web")
    cursor = web.db.execute("INSERT INTO message (author_id, text, pub_date) VALUES (1, 'third', 3)")
    assert cursor.lastrowid == 3
    assert owner_rows(db, "SELECT seq FROM sqlite_sequence WHERE name = 'message'") == [(3,)]
    assert web.refused("SELECT seq FROM sqlite_sequence") == "web may not select sqlite_sequence.seq in database 'main'"


def test_executemany_and_transactions_work_and_roll_back(connect, db):
    web = connect("web")
    web.authorizer.reset()
    web.db.executemany("INSERT INTO follower VALUES (?, ?)", [(2, 1), (3, 1), (3, 2)])
    web.run("BEGIN")
    web.run("INSERT INTO message (author_id, text, pub_date) VALUES (1, 'kept', 5)")
    web.run("SAVEPOINT draft")
    web.run("INSERT INTO message (author_id, text, pub_date) VALUES (1, 'dropped', 6)")
    web.run("ROLLBACK TO draft")
    web.run("RELEASE draft")
    web.run("COMMIT")
    web.run("BEGIN")
    web.run("DELETE FROM follower")
    web.run("ROLLBACK")
    assert owner_rows(db, "SELECT count(*) FROM follower") == [(4,)]
    assert owner_rows(db, "SELECT text FROM message WHERE pub_date >= 5") == [("kept",)]
    with pytest.raises(sqlite3.DatabaseError):
        web.authorizer.reset()
        web.db.executemany("INSERT INTO message (author_id, text, pub_date) SELECT ?, pw_hash, 0 FROM user",
                           [(1,), (2,)])
    assert web.authorizer.denial == PW_HASH


def test_attach_and_detach_are_refused_though_the_owner_could_attach(connect, db, tmp_path):
    other = str(tmp_path / "other.db")
    web = connect("web")
    assert web.refused(f"ATTACH DATABASE '{other}' AS other").startswith(
        f"web may not attach a database ({other!r}) to database 'main': ATTACH is refused")
    assert web.refused("ATTACH DATABASE ? AS other", (other,)).startswith(
        "web may not attach a database to database 'main'")
    assert web.refused("DETACH DATABASE temp").startswith("web may not detach")
    assert not os.path.exists(other)
    with closing(sqlite3.connect(db)) as owner:
        owner.execute("ATTACH DATABASE ? AS other", (other,))
    assert os.path.exists(other)


def test_vacuum_into_a_file_is_refused_though_it_works_for_the_owner(connect, db, tmp_path):
    copy = str(tmp_path / "copy.db")
    web = connect("web")
    assert "VACUUM" in web.refused("VACUUM INTO ?", (copy,))
    assert "VACUUM" in web.refused("VACUUM")
    assert not os.path.exists(copy)
    assert "VACUUM" in connect("migrator").refused("VACUUM INTO ?", (copy,))   # a schema grant does not allow it
    with closing(sqlite3.connect(db)) as owner:
        owner.execute("VACUUM INTO ?", (copy,))
    assert os.path.exists(copy)


@pytest.mark.parametrize("forbidden, allowed", [
    ("PRAGMA writable_schema = 1", "PRAGMA table_info(user)"),
    ("PRAGMA writable_schema", "PRAGMA main.table_xinfo('user')"),
    ("PRAGMA foreign_keys = OFF", "PRAGMA foreign_keys"),
    ("PRAGMA journal_mode = DELETE", "PRAGMA index_list(user)"),
    ("PRAGMA optimize", "PRAGMA compile_options"),
    ("PRAGMA integrity_check", "PRAGMA foreign_key_list(follower)"),
    ("SELECT name FROM pragma_table_info('user')", "PRAGMA collation_list"),
])
def test_only_reading_pragmas_without_a_value_are_allowed(connect, forbidden, allowed):
    web = connect("web")
    web.run(allowed)
    assert web.refused(forbidden).startswith("web may not ")


def test_the_schema_may_be_read_and_not_written(connect):
    web = connect("web")
    names = {name for (name,) in web.run("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert {"user", "follower", "message"} <= names
    assert ("pw_hash",) in [row[1:2] for row in web.run("PRAGMA table_info(user)")]   # names are not data
    web.run("SELECT * FROM sqlite_temp_master")
    # SQLite refuses a direct write of sqlite_master itself (writable_schema is off, and no caller may set
    # it); the authorizer refuses it too, and the writable ones SQLite keeps, such as sqlite_sequence.
    with pytest.raises(sqlite3.OperationalError, match="may not be modified"):
        web.run("UPDATE sqlite_master SET sql = 'x' WHERE name = 'user'")
    assert web.authorizer(sqlite3.SQLITE_UPDATE, "sqlite_master", "sql", "main", None) == sqlite3.SQLITE_DENY
    assert web.refused("UPDATE sqlite_sequence SET seq = 0").startswith(
        "web may not change the schema (write sqlite_sequence")


SCHEMA_CHANGES = [
    "CREATE TABLE stolen (x)", "CREATE TEMP TABLE stolen (x)", "CREATE VIEW v AS SELECT 1",
    "CREATE TEMP VIEW v AS SELECT 1", "CREATE TRIGGER tr AFTER INSERT ON message BEGIN SELECT 1; END",
    "CREATE TEMP TRIGGER tr AFTER INSERT ON message BEGIN SELECT 1; END", "CREATE INDEX i ON message (author_id)",
    "ALTER TABLE message ADD COLUMN extra", "ALTER TABLE message RENAME TO messages", "DROP TABLE message",
    "ANALYZE", "REINDEX",
]


@pytest.mark.parametrize("statement", SCHEMA_CHANGES)
def test_schema_changes_need_the_schema_grant(connect, statement):
    assert connect("web").refused(statement).startswith("web may not change the schema")
    connect("migrator").run(statement)


def test_drop_table_also_needs_the_delete_grant_and_pspys_guards_stay(connect):
    assert connect("migrator").refused("DROP TABLE follower") == \
        "migrator may not delete from follower in database 'main'"
    builder = connect("builder", {"tables": {"message": {"select": ["*"], "insert": ["*"]}}, "schema": True})
    [(guard,)] = builder.run("SELECT name FROM sqlite_temp_master WHERE type = 'trigger'")
    assert builder.refused(f"DROP TRIGGER {guard}") == \
        f"builder may not change the schema (DROP TEMP TRIGGER {guard}) in database 'main': pspy's guard triggers stay"
    builder.run("CREATE TEMP TRIGGER mine AFTER INSERT ON message BEGIN SELECT 1; END")
    builder.run("DROP TRIGGER mine")


@pytest.mark.parametrize("forbidden, allowed", [
    ("SELECT load_extension('libevil')", "SELECT upper(username) FROM user"),
    ("SELECT hex(fts3_tokenizer('simple'))", "SELECT json_extract('{\"a\": 1}', '$.a')"),
    ("SELECT rtreenode(2, x'00')", "SELECT printf('%d', count(*)) FROM message"),
])
def test_functions_that_reach_memory_or_files_are_refused(connect, forbidden, allowed):
    web = connect("web")
    web.run(allowed)
    assert web.refused(forbidden).startswith("web may not call ")


def test_views_and_triggers_run_with_the_callers_grants_not_their_definers(connect, db):
    owner_sql(db, """
        CREATE VIEW credentials AS SELECT username, pw_hash FROM user;
        CREATE VIEW names AS SELECT user_id, username FROM user;
        CREATE TABLE audit (user_id INTEGER, what TEXT);
        CREATE TRIGGER log_password AFTER UPDATE OF pw_hash ON user BEGIN
            INSERT INTO audit VALUES (new.user_id, 'password changed');
        END;
    """)
    views = {"credentials": {"select": ["*"]}, "names": {"select": ["*"]}}
    web = connect("web", {"tables": {**WEB["tables"], **views}})
    assert web.refused("SELECT username FROM credentials") == \
        PW_HASH + " (inside 'credentials': views, triggers and WITH clauses run with web's grants)"
    assert web.run("SELECT username FROM names ORDER BY user_id") == [("alice",), ("bob",)]
    assert connect("web").refused("SELECT username FROM names") == \
        "web may not select names.username in database 'main'"
    assert connect("Auth").refused("UPDATE user SET pw_hash = 'x' WHERE user_id = 1") == \
        "Auth may not insert into audit in database 'main' (inside 'log_password': views, triggers and " \
        "WITH clauses run with Auth's grants)"
    auth = GRANTS["Auth"]["tables"]
    audited = connect("Auth", {"tables": {**auth, "audit": {"insert": ["*"]}}})
    audited.run("UPDATE user SET pw_hash = 'x' WHERE user_id = 1")
    assert owner_rows(db, "SELECT user_id, what FROM audit") == [(1, "password changed")]


def test_a_granted_full_text_table_is_searchable_with_its_shadow_tables_granted(connect, db):
    owner_sql(db, "CREATE VIRTUAL TABLE search USING fts5(text);"
                  "INSERT INTO search (rowid, text) SELECT message_id, text FROM message;")
    shadows = ("search", "search_data", "search_idx", "search_content", "search_docsize", "search_config")
    reader = connect("web", {"tables": {table: {"select": ["*"]} for table in shadows}})
    assert reader.run("SELECT rowid FROM search WHERE search MATCH 'bob'") == [(2,)]
    assert connect("web", {"tables": {"search": {"select": ["*"]}}}).refused(
        "SELECT rowid FROM search WHERE search MATCH 'bob'").startswith("web may not select search_")


def test_a_table_named_like_a_table_valued_function_is_a_table_all_the_same(connect, db):
    owner_sql(db, "CREATE TABLE json_tree (secret TEXT); INSERT INTO json_tree VALUES ('s3cret');")
    web = connect("web")
    assert web.refused("SELECT secret FROM json_tree") == "web may not select json_tree.secret in database 'main'"
    assert web.run("SELECT value FROM json_each('[7]')") == [(7,)]


def test_no_grants_read_only_the_schema(connect):
    nobody = connect("nobody")
    assert nobody.refused("SELECT count(*) FROM message") == "nobody may not select from message in database 'main'"
    assert nobody.run("SELECT count(*) FROM sqlite_master WHERE name = 'message'") == [(1,)]


def test_install_expires_statements_prepared_before_it(db):
    connection = sqlite3.connect(db, isolation_level=None)
    query = "SELECT pw_hash FROM user"
    assert connection.execute(query).fetchall()           # now in the connection's statement cache
    authorizer = Authorizer("web", "main", WEB)
    authorizer.install(connection)
    with pytest.raises(sqlite3.DatabaseError):
        connection.execute(query).fetchall()
    assert authorizer.denial == PW_HASH
    connection.close()


def test_errors_that_are_not_refusals_are_not_reported_as_refusals(connect):
    auth = connect("Auth")
    auth.authorizer.reset()
    with pytest.raises(sqlite3.IntegrityError) as duplicate:
        auth.db.execute("INSERT INTO user (username, pw_hash) VALUES ('alice', 'x')")
    assert auth.authorizer.refusal(duplicate.value) is None
    with pytest.raises(sqlite3.OperationalError) as typo:
        auth.db.execute("SELEC 1")
    assert auth.authorizer.refusal(typo.value) is None


def test_unknown_action_codes_and_rights_are_refused():
    authorizer = Authorizer("web", "main", WEB)
    assert authorizer(999, "x", None, "main", None) == sqlite3.SQLITE_DENY
    assert "action 999" in authorizer.denial
    assert authorizer(0, "user", "f", None, None) == sqlite3.SQLITE_DENY   # SQLITE_COPY, long gone
    with pytest.raises(ValueError, match="unknown right 'read' on table 'user'"):
        Authorizer("web", "main", {"tables": {"user": {"read": ["*"]}}})


def test_a_recursive_cte_of_no_table_is_its_own_rows_and_its_body_is_still_checked(connect):
    # SQLite reports reading such a CTE as a table read with no schema name.
    web = connect("web")
    assert web.run("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) "
                   "SELECT count(*) FROM c") == [(5,)]
    assert web.refused("WITH RECURSIVE c(x) AS (SELECT pw_hash FROM user UNION ALL SELECT x FROM c LIMIT 5) "
                       "SELECT count(*) FROM c").startswith(PW_HASH)
