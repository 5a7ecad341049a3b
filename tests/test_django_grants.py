"""A Django app on ONE SQLite file through pspy.contrib.django, separated by
data grants, in both isolation modes.

examples/dpaste_grants: Snippet(content, author, created, delete_token) in
db/snippets.sqlite3, held by Data. The front end `web` (Django's runserver)
may read every column of a snippet but delete_token and insert snippets;
Data checks delete tokens (tokens.py). The app's pages and API are used over
HTTP; then, from inside `web`, its own Django ORM and a raw cursor ask for
what the grants refuse, next to the granted queries that work, and SQLite
in Data refuses them. Django's SQL functions (dates, REGEXP) run in Data.
"""

import datetime
import json
import os
import urllib.error
import urllib.request

import pytest

from conftest import REPO, detached, free_port, probe, pspy, wait_for_http

pytestmark = pytest.mark.root

APP = os.path.join(REPO, "examples", "dpaste_grants")

# Probe code, run as a principal in the app's folder: Django set up on the
# app's settings; attempt(fn) -> ["ok", value] or [exception class, message].
DJANGO = """
import json, os, sys
sys.path.insert(0, os.getcwd())
os.environ["DJANGO_SETTINGS_MODULE"] = "dpaste.settings"
import django
django.setup()
import pspy.db
from django.db import connection
from snippets.models import Snippet
def attempt(fn):
    try:
        return ["ok", fn()]
    except pspy.db.PermissionDenied as e:
        return ["PermissionDenied", str(e)]
    except Exception as e:
        return [type(e).__name__, str(e)]
def raw(sql):
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [list(r) for r in cursor.fetchall()]
"""


def call(base, method, path, body=None):
    request = urllib.request.Request(base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def api(base, method, path, body=None):
    status, text = call(base, method, path, body)
    return status, json.loads(text)


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def site(request, tmp_path_factory):
    port = free_port()
    front_end = ["python", "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    with detached(APP, tmp_path_factory, "dpaste-grants", request.param, front_end,
                  env={"DPASTE_SECRET_KEY": "front-end-only"}) as jail:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/api/snippets")
        status, created = api(base, "POST", "/api/snippets", {"content": "print('hi <b>')", "author": "ada"})
        assert status == 201, created
        yield {"jail": jail, "base": base, "mode": request.param, "snippet": created}


def django_as(site, principal, code):
    return probe(site["jail"], principal, DJANGO + code)


def test_the_pages_and_the_api_work_end_to_end_through_the_backend(site):
    base, snippet = site["base"], site["snippet"]
    assert api(base, "GET", f"/api/snippets/{snippet['id']}")[1]["content"] == "print('hi <b>')"
    status, html = call(base, "GET", "/")
    assert status == 200 and f"#{snippet['id']}</a> by ada" in html
    assert snippet["created"][:7] in html                         # its month, by django_datetime_trunc
    status, html = call(base, "GET", f"/{snippet['id']}/")
    assert status == 200 and "print(&#x27;hi &lt;b&gt;&#x27;)" in html
    assert call(base, "GET", "/999999/")[0] == 404
    # Filtered by weekday in SQL: django_datetime_extract runs in Data.
    weekday = datetime.datetime.fromisoformat(snippet["created"]).isoweekday() % 7 + 1   # 1 is Sunday
    for day in (weekday, weekday % 7 + 1):
        status, listed = api(base, "GET", f"/api/snippets?weekday={day}")
        assert status == 200 and (snippet["id"] in [s["id"] for s in listed["snippets"]]) == (day == weekday)


def test_deleting_takes_the_token_which_only_data_reads(site):
    base = site["base"]
    status, created = api(base, "POST", "/api/snippets", {"content": "x = 1", "author": "bob"})
    assert status == 201 and len(created["delete_token"]) > 20
    path = f"/api/snippets/{created['id']}/delete"
    assert api(base, "POST", path, {"token": "guess"}) == (403, {"deleted": False})
    assert api(base, "GET", f"/api/snippets/{created['id']}")[0] == 200
    assert api(base, "POST", path, {"token": created["delete_token"]}) == (200, {"deleted": True})
    assert call(base, "GET", f"/api/snippets/{created['id']}")[0] == 404


def test_the_orm_in_web_is_refused_the_delete_token_and_gets_the_rest(site):
    got = django_as(site, "web", f"""
import sqlite3
class Money:
    def __init__(self, units):
        self.units = units
sqlite3.register_adapter(Money, lambda money: f"{{money.units:.2f}} EUR")
pk = {site["snippet"]["id"]}
print(json.dumps([
    attempt(lambda: list(Snippet.objects.values("delete_token"))),
    attempt(lambda: Snippet.with_tokens.get(pk=pk).author),
    attempt(lambda: Snippet.objects.filter(delete_token__startswith="a").count()),
    attempt(lambda: Snippet.objects.get(pk=pk).delete_token),
    attempt(lambda: Snippet.objects.filter(pk=pk).update(author="mallory")),
    attempt(lambda: Snippet.objects.filter(pk=pk).delete()),
    attempt(lambda: list(Snippet.objects.filter(pk=pk).values_list("author", "content"))),
    attempt(lambda: connection.ensure_connection() or type(connection.connection).__module__),
    # A parameter is adapted in web by the adapters registered there (Django
    # registers Decimal's), as sqlite3 would: a Money could not cross itself.
    attempt(lambda: connection.cursor().execute("SELECT %s", [Money(5)]).fetchone()[0]),
]))
""")
    for refused in got[:4]:
        assert refused[0] == "PermissionDenied", got
        assert "snippets_snippet.delete_token" in refused[1] and "web" in refused[1], got
    assert got[4][0] == "PermissionDenied" and "update snippets_snippet.author" in got[4][1], got
    assert got[5][0] == "PermissionDenied" and "delete from snippets_snippet" in got[5][1], got
    assert got[6] == ["ok", [["ada", "print('hi <b>')"]]]          # control: the granted columns
    assert got[7] == ["ok", "pspy.db"]                              # web's connection runs in Data
    assert got[8] == ["ok", "5.00 EUR"]


def test_a_raw_cursor_in_web_is_refused_attach_drop_and_pragma_writes(site):
    got = django_as(site, "web", """
print(json.dumps([
    attempt(lambda: raw("ATTACH DATABASE 'db/snippets.sqlite3' AS other")),
    attempt(lambda: raw("DROP TABLE snippets_snippet")),
    attempt(lambda: raw("PRAGMA writable_schema = 1")),
    attempt(lambda: raw("PRAGMA foreign_keys = OFF")),
    attempt(lambda: raw("SELECT delete_token FROM snippets_snippet UNION SELECT author FROM snippets_snippet")),
    attempt(lambda: raw("PRAGMA foreign_keys")),
    attempt(lambda: raw("SELECT count(*) > 0 FROM snippets_snippet")),
]))
""")
    for refused, names in zip(got, ["attach", "schema", "writable_schema", "foreign_keys",
                                    "snippets_snippet.delete_token"]):
        assert refused[0] == "PermissionDenied" and names in refused[1].lower(), (names, got)
    assert got[5] == ["ok", [[1]]]       # control: foreign keys on, set by Data for Django's connection
    assert got[6] == ["ok", [[1]]]


def test_a_migration_in_web_is_refused_and_the_schema_stays(site):
    got = django_as(site, "web", """
from django.core.management import call_command
print(json.dumps([
    attempt(lambda: call_command("migrate", "snippets", "zero", verbosity=0)),
    # Past Django's own check: a schema editor used without its "with".
    attempt(lambda: connection.SchemaEditorClass(connection, atomic=False).delete_model(Snippet)),
    attempt(lambda: Snippet.objects.filter(author="ada").exists()),
]))
""")
    assert got[0][0] == "PermissionDenied" and "run them as the owner" in got[0][1], got
    assert got[1][0] == "PermissionDenied" and "schema" in got[1][1], got
    assert got[2] == ["ok", True]


def test_djangos_sql_functions_run_in_data_for_web(site):
    got = django_as(site, "web", f"""
from django.db.models import Value
from django.db.models.functions import ExtractWeekDay, LPad, TruncDate, TruncMonth
pk = {site["snippet"]["id"]}
mine = Snippet.objects.filter(pk=pk)
print(json.dumps([
    attempt(lambda: str(mine.annotate(day=TruncDate("created")).values_list("day", flat=True).get())),
    attempt(lambda: str(mine.annotate(month=TruncMonth("created")).values_list("month", flat=True).get())),
    attempt(lambda: 1 <= mine.annotate(d=ExtractWeekDay("created")).values_list("d", flat=True).get() <= 7),
    attempt(lambda: list(mine.filter(author__regex=r"^a.a$").values_list("author", flat=True))),
    attempt(lambda: list(mine.annotate(p=LPad("author", 6, Value("*"))).values_list("p", flat=True))),
    attempt(lambda: list(mine.annotate(p=LPad("author", 10**12, Value("*"))).values_list("p", flat=True))),
    attempt(lambda: mine.exists()),
]))
""")
    created = site["snippet"]["created"]
    assert got[0] == ["ok", created[:10]], got
    assert got[1][0] == "ok" and got[1][1].startswith(created[:7] + "-01 00:00"), got
    assert got[2] == ["ok", True]
    assert got[3] == ["ok", ["ada"]]
    assert got[4] == ["ok", ["***ada"]]
    # A padding longer than SQLite takes is refused before Data builds it.
    assert got[5][0] in ("OperationalError", "DataError") and "user-defined function" in got[5][1], got
    assert got[6] == ["ok", True]         # and Data goes on serving


def test_in_data_the_backend_is_djangos_sqlite3_on_the_file(site):
    got = django_as(site, "Data", """
print(json.dumps([
    attempt(lambda: connection.ensure_connection() or type(connection.connection) is __import__("sqlite3").Connection),
    attempt(lambda: len(Snippet.with_tokens.values_list("delete_token", flat=True)[0]) > 20),
]))
""")
    assert got == [["ok", True], ["ok", True]]


def test_the_apps_own_tests_pass_inside_web_through_its_grants_and_leave_nothing(site):
    """The app's TestCases run by Django's runner in web, on "main" through
    the backend (dpaste/settings_test_through_grants.py). Not its delete
    test: the view calls Data, whose connection cannot see the snippet the
    test's open transaction created in web's."""
    count = "print(json.dumps(Snippet.objects.count()))"
    before = django_as(site, "web", count)
    tests = [f"snippets.tests.SnippetTests.{name}" for name in (
        "test_a_new_snippet_is_listed_and_shown_with_its_author", "test_an_empty_snippet_is_refused",
        "test_snippets_by_month_and_weekday")]
    done = pspy("exec", "--jail", site["jail"], "web", "--", "python", "manage.py", "test", "--keepdb",
                "--settings=dpaste.settings_test_through_grants", *tests)
    assert done.returncode == 0 and "Ran 3 tests" in done.stderr and "\nOK" in done.stderr, done.stderr
    assert django_as(site, "web", count) == before        # each test's transaction rolled back in Data


def test_sqlalchemy_in_web_through_the_same_grants(site):
    got = probe(site["jail"], "web", """
import json
import pspy.contrib.sqlalchemy, pspy.db
from sqlalchemy import create_engine, exc, text
engine = create_engine("sqlite://", creator=pspy.contrib.sqlalchemy.creator("main"))
def attempt(sql, **params):
    try:
        with engine.begin() as connection:
            result = connection.execute(text(sql), params)
            return ["ok", [list(r) for r in result] if result.returns_rows else []]
    except exc.DatabaseError as e:
        return [type(e.orig).__name__, str(e.orig)]
print(json.dumps([
    attempt("SELECT author FROM snippets_snippet WHERE author REGEXP :p AND floor(id) = id", p="^a.a$"),
    attempt("INSERT INTO snippets_snippet (content, author, created, delete_token) VALUES ('c', 'sa', :t, 'x')",
            t="2024-01-01 00:00:00"),
    attempt("SELECT count(*) FROM snippets_snippet WHERE author = 'sa'"),
    attempt("SELECT delete_token FROM snippets_snippet"),
    attempt("DELETE FROM snippets_snippet WHERE author = 'sa'"),
]))
""")
    assert got[0] == ["ok", [["ada"]]]          # regexp and floor: the dialect's, run in Data
    assert got[1] == ["ok", []] and got[2] == ["ok", [[1]]]
    assert got[3][0] == "PermissionDenied" and "snippets_snippet.delete_token" in got[3][1], got
    assert got[4][0] == "PermissionDenied" and "delete from snippets_snippet" in got[4][1], got
