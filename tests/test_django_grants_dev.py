"""pspy.contrib.django without root: the example app (examples/dpaste_grants)
without pspy, where the backend is Django's sqlite3 on the file pspy.toml
names; and the owner's side of a Django caller's session (the "django"
function set of pspy/data/session.py) on a file, under an authorizer. The
jail, the RPC and the grants seen from inside `web` are
tests/test_django_grants.py's.
"""

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO
from pspy.contrib.django.functions import prepare_connection
from pspy.data.session import DatabaseService, DatabaseSession
from pspy.rpc.server import ConnectionState

APP = os.path.join(REPO, "examples", "dpaste_grants")
WEB_GRANTS = {"tables": {"snippets_snippet": {"select": ["id", "author"], "insert": ["*"]}}, "schema": False}


def _without_pspy(app_dir, *argv):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSPY_")}
    return subprocess.run([sys.executable, *argv], cwd=app_dir, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory):
    app_dir = str(tmp_path_factory.mktemp("dpaste") / "dpaste_grants")
    shutil.copytree(APP, app_dir, ignore=shutil.ignore_patterns("db", "__pycache__"))
    done = _without_pspy(app_dir, "setup_db.py")
    assert done.returncode == 0, done.stderr
    return app_dir


def test_the_apps_own_suite_passes_through_the_backend_without_pspy(app_dir):
    done = _without_pspy(app_dir, "manage.py", "test", "-v", "1")
    assert done.returncode == 0 and "Ran 4 tests" in done.stderr and "\nOK" in done.stderr, done.stderr


def test_without_pspy_the_backend_is_djangos_sqlite3_on_the_file_pspy_toml_names(app_dir):
    done = _without_pspy(app_dir, "-c", """
import json, os, sqlite3
os.environ["DJANGO_SETTINGS_MODULE"] = "dpaste.settings"
import django
django.setup()
from django.db import connection
from snippets.models import Snippet
Snippet.objects.create(content="c", author="a", delete_token="t0ken")
print(json.dumps([type(connection.connection) is sqlite3.Connection,
                  list(Snippet.objects.values_list("delete_token", flat=True)),
                  connection.cursor().execute("PRAGMA foreign_keys").fetchone()[0]]))
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[true, ["t0ken"], 1]'
    with sqlite3.connect(os.path.join(app_dir, "db", "snippets.sqlite3")) as db:   # the file pspy.toml names
        assert db.execute("SELECT delete_token FROM snippets_snippet").fetchall() == [("t0ken",)]


@pytest.fixture
def session(app_dir):
    """web's session in the owner, as a pspy.contrib.django connection opens
    it: statements on its connection pass web's authorizer."""
    s = DatabaseSession("web", "main", os.path.join(app_dir, "db", "snippets.sqlite3"), WEB_GRANTS, None, 5.0,
                        "django")
    yield s
    s.close()


def test_the_owner_runs_djangos_functions_for_a_django_caller(session, app_dir):
    got = session.db.execute("SELECT django_date_extract('year', '2024-05-06'), "
                             "django_datetime_trunc('month', '2024-05-06 07:08:09', 'UTC', 'UTC'), "
                             "'abc' REGEXP '^a.c$', LPAD('ab', 4, '*'), SHA1('x')").fetchall()
    assert got == [(2024, "2024-05-01 00:00:00", 1, "**ab", "11f6ad8ec52a2984abaafd7c3b516503785c2072")]
    # control: without the function set, SQLite has no such function
    plain = DatabaseSession("web", "main", os.path.join(app_dir, "db", "snippets.sqlite3"), WEB_GRANTS, None, 5.0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such function"):
            plain.db.execute("SELECT django_date_extract('year', '2024-05-06')")
    finally:
        plain.close()


def test_an_unknown_function_set_is_refused_at_open():
    service = DatabaseService("/nonexistent", [{"name": "main", "path": "db/x.sqlite3"}],
                              {"web": {"main": WEB_GRANTS}})
    state = ConnectionState("web", 1000, 0, None)
    answer = service._open(state, "main", {"functions": "pickle"})
    assert answer["error"][0] == "ProgrammingError" and "unknown function set 'pickle'" in answer["error"][1]
    assert state.value is None


def test_foreign_keys_are_on_and_the_caller_cannot_turn_them_off(session):
    assert session.db.execute("PRAGMA foreign_keys").fetchall() == [(1,)]
    with pytest.raises(sqlite3.DatabaseError) as refused:
        session.db.execute("PRAGMA foreign_keys = OFF")
    assert "web may not run PRAGMA foreign_keys=OFF" in session.authorizer.refusal(refused.value)
    assert session.db.execute("PRAGMA foreign_keys").fetchall() == [(1,)]


def test_a_padding_longer_than_sqlite_takes_is_refused_before_it_is_built():
    db = sqlite3.connect(":memory:")
    db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)   # read by the guards when they are registered
    prepare_connection(db)
    for sql in ("SELECT LPAD('ab', 2000, '*')", "SELECT RPAD('ab', 900, '0123456789')", "SELECT REPEAT('ab', 600)"):
        with pytest.raises(sqlite3.OperationalError) as refused:
            db.execute(sql)
        # Built, then refused by SQLite, would be "string or blob too big".
        assert str(refused.value) == "user-defined function raised exception", sql
    assert db.execute("SELECT LPAD('ab', 1000, '*'), REPEAT('ab', 500)").fetchone() == ("*" * 998 + "ab", "ab" * 500)
