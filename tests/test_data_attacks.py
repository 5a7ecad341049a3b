"""Attacks on the data grants from inside the principals (tests/apps/grants).

The attacker holds ``web`` (arbitrary Python as web) and talks to the owner
``Data`` both through pspy.db and through the raw protocol (any op, any
argument). Each test tries what a grant or the owner must refuse next to a
control that works. Tests marked xfail(strict=True) record a hole that is
open: they assert the safe behaviour, and start passing (so fail as xfail)
when it is fixed. Both isolation modes.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, detached, probe, provider_pid

pytestmark = pytest.mark.root

APP = os.path.join(REPO, "tests", "apps", "grants")

# Probe code: raw(options) opens a session of the raw protocol; call(s, op, *args)
# returns the owner's answer, or [exception class, message] if the call raised.
RAW = """
import json, time
import pspy
from pspy.runtime import current
rt = current()
def raw(options=None, database="main"):
    s = rt.client("Data").session("pspy.db")
    s.opened = s.call("open", database, options or {})
    return s
def call(s, op, *args):
    try:
        return s.call(op, *args)
    except Exception as e:
        return [type(e).__name__, str(e)]
def error_of(answer):
    return answer.get("error") if isinstance(answer, dict) else answer
"""


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def app(request, tmp_path_factory):
    with detached(APP, tmp_path_factory, "attacks", request.param) as jail:
        yield {"jail": jail, "mode": request.param}


def raw_as(app, principal, code):
    return probe(app["jail"], principal, RAW + code)


def peak_memory_of_data(app) -> int:
    """Data's peak resident memory so far, in bytes (VmHWM)."""
    with open(f"/proc/{provider_pid(app['jail'], 'Data')}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in Data's status")


def test_the_raw_protocol_refuses_misuse_and_the_session_goes_on(app):
    got = raw_as(app, "web", """
out = {}
s = raw()
out["open"] = s.opened
out["open_twice"] = error_of(call(s, "open", "main", {}))
out["unknown_op"] = error_of(call(s, "load_extension", "x"))
out["isolation_injected"] = error_of(call(s, "isolation_level", "DEFERRED; ATTACH 'x' AS x"))
out["sql_not_str"] = error_of(call(s, "execute", b"SELECT 1", [], False))
out["unbindable"] = error_of(call(s, "execute", "SELECT ?", [[1]], False))
out["other_database"] = error_of(raw(database="other").opened)
out["no_database"] = error_of(raw(database=None).opened)
out["unknown_function_set"] = error_of(raw({"functions": "os"}).opened)
out["timeout_out_of_range"] = error_of(raw({"timeout": 1e9}).opened)
# Another session's cursor is not served: ids are per session.
other = raw()
big = call(other, "execute", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000) "
                             "SELECT x FROM c", [], False)
out["other_cursor"] = [big.get("cursor"), error_of(call(s, "fetch", big.get("cursor"), 10))]
out["own_cursor"] = len(call(other, "fetch", big.get("cursor"), 10)["rows"])
# Another session's uncommitted insert is not seen.
call(other, "execute", "INSERT INTO message (author_id, text) VALUES (1, 'uncommitted secret')", [], False)
out["uncommitted"] = call(s, "execute", "SELECT count(*) FROM message WHERE text = 'uncommitted secret'",
                          [], False)["rows"]
out["uncommitted_own"] = call(other, "execute", "SELECT count(*) FROM message WHERE text = 'uncommitted secret'",
                              [], False)["rows"]
call(other, "rollback")
out["control"] = call(s, "execute", "SELECT username FROM user ORDER BY user_id", [], False)["rows"]
print(json.dumps(out))
""")
    assert got["open"] == {"in_transaction": False}
    assert got["open_twice"] == ["ProgrammingError", "a database is open on this connection already"]
    assert got["unknown_op"][0] == "ProgrammingError" and "unknown database operation" in got["unknown_op"][1]
    assert got["isolation_injected"][0] == "ProgrammingError"
    assert got["sql_not_str"] == ["ProgrammingError", "a statement is a str"]
    assert got["unbindable"][0] == "ProgrammingError"
    assert got["other_database"][0] == "PermissionDenied" and "'other'" in got["other_database"][1]
    assert got["no_database"][0] == "PermissionDenied"
    assert got["unknown_function_set"][0] == "ProgrammingError" and "'os'" in got["unknown_function_set"][1]
    assert got["timeout_out_of_range"][0] == "ProgrammingError"
    assert got["other_cursor"][0] is not None
    assert got["other_cursor"][1][0] == "ProgrammingError" and "no open cursor" in got["other_cursor"][1][1]
    assert got["own_cursor"] == 10
    assert got["uncommitted"] == [0] and got["uncommitted_own"] == [1]
    assert got["control"] == ["alice", "bob"]


# executescript takes its own path in the owner (session.py): what execute refuses, it must too.
SCRIPTS = [
    ("ATTACH DATABASE 'db/app.db' AS other", "attach"),
    ("VACUUM INTO 'db/copy.db'", "attach"),
    ("VACUUM", "attach"),
    ("PRAGMA journal_mode = OFF", "PRAGMA journal_mode"),
    ("PRAGMA foreign_keys = OFF", "PRAGMA foreign_keys"),
    ("CREATE TEMP VIEW v AS SELECT pw_hash FROM user", "schema"),
    ("CREATE TEMP TRIGGER t AFTER INSERT ON message BEGIN SELECT 1; END", "CREATE TEMP TRIGGER"),
    ("DROP TRIGGER pspy_replace_guard_0", "DROP TEMP TRIGGER pspy_replace_guard_0"),
    ("SELECT 1; SELECT pw_hash FROM user", "user.pw_hash"),
]


def test_executescript_is_refused_what_execute_is(app):
    got = raw_as(app, "web", f"""
s = raw()
out = [error_of(call(s, "executescript", script)) for script in {[script for script, _ in SCRIPTS]!r}]
out.append(call(s, "executescript", "SELECT count(*) FROM message; SELECT username FROM user"))
print(json.dumps(out))
""")
    for (script, names), refusal in zip(SCRIPTS, got):
        assert refusal[0] == "PermissionDenied" and names.lower() in refusal[1].lower(), (script, refusal)
    assert got[-1] == {"rowcount": -1, "lastrowid": None, "in_transaction": False}, got


def test_django_functions_cannot_build_a_string_past_the_length_limit_in_the_owner(app):
    # Django's LPAD/REPEAT are Python: the guard in pspy/contrib/django/functions.py
    # must use the session's length limit (16 MB), not SQLite's 1e9 default.
    before = peak_memory_of_data(app)
    got = raw_as(app, "web", """
s = raw({"functions": "django"})
print(json.dumps([call(s, "execute", "SELECT length(REPEAT('x', 1000)), LPAD('ab', 4, '-')", [], False)["rows"],
                  error_of(call(s, "execute", "SELECT length(LPAD('', 300000000, 'x'))", [], False)),
                  error_of(call(s, "execute", "SELECT length(REPEAT('x', 20000000))", [], False))]))
""")
    grown = peak_memory_of_data(app) - before
    assert got[0] == [1000, "--ab"]
    # The function refuses (SQLite reports a user function's exception so),
    # rather than SQLite refusing the 300 MB string Python already built.
    assert got[1] == ["OperationalError", "user-defined function raised exception"], got
    assert got[2] == ["OperationalError", "user-defined function raised exception"], got
    assert grown < 100 << 20, f"Data's peak memory grew by {grown >> 20} MB"


# Was a hole: the function sets' REGEXP was Python's re, which backtracks, holds
# the GIL and cannot be stopped by the statement limit. Now RE2's (data/regexp.py).
def test_a_catastrophic_regexp_answers_at_once_and_data_serves_the_others_meanwhile(app):
    got = raw_as(app, "web", """
s = raw({"functions": "django"})
other = raw()
out = [call(s, "execute", "SELECT 'abc' REGEXP 'b+'", [], False)["rows"]]
began = time.monotonic()
out.append(call(s, "execute", "SELECT ? REGEXP ?", ["a" * 5000 + "!", "(a+)+$"], False).get("rows"))
out.append(time.monotonic() - began)
out.append(error_of(call(s, "execute", "SELECT 'aa' REGEXP '(?=a)a'", [], False)))
out.append(call(other, "execute", "SELECT 1", [], False)["rows"])
print(json.dumps(out))
""")
    assert got[0] == [1]                      # control: REGEXP works
    assert got[1] == [0] and got[2] < 2, got  # (a+)+$ over 5,000 characters: no match, at once
    assert got[3][0] == "OperationalError", got   # a lookahead RE2 cannot take: the statement fails
    assert got[4] == [1]


@pytest.mark.xfail(strict=True, reason="hole: Data fetches FIRST_ROWS (1024) rows before weighing them and keeps "
                                       "those over the answer's budget, so SELECT zeroblob(16e6) over 1024 rows "
                                       "holds 16 GB in the owner")
def test_one_answer_does_not_hold_rows_of_unbounded_size_in_the_owner(app):
    before = peak_memory_of_data(app)
    got = raw_as(app, "web", """
s = raw()
a = call(s, "execute", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1024) "
                       "SELECT zeroblob(500000) FROM c", [], False)
print(json.dumps([len(a.get("rows", [])), a.get("cursor") is not None, error_of(a)]))
""")
    grown = peak_memory_of_data(app) - before
    assert got[0] >= 1 and got[1], got   # the rows stream, as the control
    assert grown < 128 << 20, f"Data's peak memory grew by {grown >> 20} MB for one answer of about 48 KB"


# Was a hole (rollback-journal mode: an open cursor held SQLite's shared lock):
# the owner puts the file in WAL mode, where a reader blocks no writer.
def test_a_reader_cannot_hold_off_another_principals_writes(app):
    holder = subprocess.Popen(
        [sys.executable, "-m", "pspy", "exec", "--jail", app["jail"], "web", "--", "python", "-c",
         textwrap.dedent(RAW + """
s = raw()
a = call(s, "execute", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) "
                       "SELECT x FROM c, (SELECT user_id FROM user LIMIT 1)", [], False)
print(json.dumps(a.get("cursor")), flush=True)
import sys
sys.stdin.read()   # holds the cursor until the test closes stdin
""")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(holder.stdout.readline()) is not None   # web holds a cursor with rows left
        got = raw_as(app, "Auth", """
s = raw({"timeout": 1})
out = [error_of(call(s, "execute", "UPDATE user SET pw_hash = pw_hash WHERE username = 'bob'", [], False)),
       error_of(call(s, "commit"))]
call(s, "rollback")
print(json.dumps(out))
""")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert got == [None, None], got
