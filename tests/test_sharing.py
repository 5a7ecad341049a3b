"""The front end owns data (pspy.toml perms.web) and principals share data
through groups and other bits, in chroot, namespace and rootless mode,
probed from inside each principal; analyze says exactly what they observe.

tests/apps/sharing: web owns uploads/ (0o700) and db/shared/ (0o770, its
group Front, of which Person is a member); Person owns db/person/ (0o750,
PersonGroup, of which web is a member); Bank owns db/bank/ (0o700) and
db/public/ (0o755).
"""

import json
import os

import pytest

from conftest import REPO, RUN_AS, probe, pspy, rootless_copy

pytestmark = pytest.mark.root

SHARING = os.path.join(REPO, "tests", "apps", "sharing")

# What each principal may do, by Unix semantics: "rw", "r" or "" (nothing).
EXPECTED = {
    "web": {"uploads/": "rw", "db/shared/": "rw", "db/shared/notes.txt": "rw",
            "db/person/": "r", "db/person/profiles.txt": "r",
            "db/public/": "r", "db/public/rates.txt": "r",
            "db/bank/": "", "db/bank/ledger.txt": ""},
    "Person": {"uploads/": "", "db/shared/": "rw", "db/shared/notes.txt": "rw",
               "db/person/": "rw", "db/person/profiles.txt": "rw",
               "db/public/": "r", "db/public/rates.txt": "r",
               "db/bank/": "", "db/bank/ledger.txt": ""},
    "Bank": {"uploads/": "", "db/shared/": "", "db/shared/notes.txt": "",
             "db/person/": "", "db/person/profiles.txt": "",
             "db/public/": "rw", "db/public/rates.txt": "rw",
             "db/bank/": "rw", "db/bank/ledger.txt": "rw"},
}

PROBE = """
import json, os
def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as e:
        return type(e).__name__
def read(p):
    if p.endswith("/"):
        os.listdir(p)
    else:
        open(p, "rb").read(1)
def write(p):
    if p.endswith("/"):
        name = os.path.join(p, ".probe")
        open(name, "w").close()
        os.unlink(name)
    else:
        open(p, "ab").close()
print(json.dumps({p: {"read": attempt(lambda: read(p)), "write": attempt(lambda: write(p))} for p in %r}))
"""


@pytest.fixture(scope="module", params=["chroot", "namespaces", "rootless"])
def shared(request, tmp_path_factory):
    flags = ["--namespaces"] if request.param != "chroot" else []
    if request.param == "rootless":
        user = request.getfixturevalue("rootless_user")
        app, jail = rootless_copy(user, SHARING, "sharing")
        RUN_AS[jail] = user
    else:
        app, jail = SHARING, str(tmp_path_factory.mktemp(f"sharing-{request.param}") / "jail")
    built = pspy("bootstrap", app, "--jail", jail, "--no-run", *flags, check=True)
    report = json.loads(pspy("analyze", "--jail", jail, "--format", "json", check=True).stdout)
    yield {"jail": jail, "mode": request.param, "bootstrap": built,
           "report": {p["name"]: p for p in report["principals"]}}


def observed(jail, principal):
    return probe(jail, principal, PROBE % (sorted(EXPECTED[principal]),))


@pytest.mark.parametrize("principal", sorted(EXPECTED))
def test_each_principal_reaches_exactly_what_the_owners_bits_give_it(shared, principal):
    seen = observed(shared["jail"], principal)
    got = {path: ("r" if r["read"] == "ok" else "") + ("w" if r["write"] == "ok" else "")
           for path, r in seen.items()}
    assert got == EXPECTED[principal], seen
    if shared["mode"] != "chroot":
        # Another principal's data that its bits do not admit is not mounted at all.
        for path, rights in EXPECTED[principal].items():
            if not rights:
                assert seen[path]["read"] == "FileNotFoundError", (path, seen[path])


@pytest.mark.parametrize("principal", sorted(EXPECTED))
def test_analyze_says_what_the_principal_observes(shared, principal):
    seen = observed(shared["jail"], principal)
    report = shared["report"][principal]
    for path, result in seen.items():
        assert (result["read"] == "ok") == (path in report["readable"]), (path, result, report["readable"])
        assert (result["write"] == "ok") == (path in report["writable"]), (path, result, report["writable"])


def test_analyze_lists_owned_data_and_other_principals_data_reached(shared):
    report = shared["report"]
    assert report["web"]["owns"] == ["db/shared/", "uploads/"]
    assert report["web"]["reaches"] == [
        {"path": "db/public/", "owner": "Bank", "read": True, "write": False},
        {"path": "db/person/", "owner": "Person", "read": True, "write": False}]
    assert report["Person"]["reaches"] == [
        {"path": "db/public/", "owner": "Bank", "read": True, "write": False},
        {"path": "db/shared/", "owner": "web", "read": True, "write": True}]
    assert report["Bank"]["reaches"] == []


def test_the_front_end_has_its_configured_group_and_extra_group(shared):
    web, person = shared["report"]["web"], shared["report"]["Person"]
    assert web["group"] == "Front" and web["extra_groups"] == ["PersonGroup"]
    if shared["mode"] != "rootless":
        assert web["groups"] == [person["gid"]]
        ids = probe(shared["jail"], "web", "import json, os; print(json.dumps([os.getgid(), os.getgroups()]))")
        assert ids == [web["gid"], [person["gid"]]]


def test_what_the_front_end_writes_is_its_own_and_survives_a_rebootstrap(shared, tmp_path):
    jail = shared["jail"]
    code = "open('uploads/avatar.png', 'w').write('png'); print(1)"
    assert probe(jail, "web", code) == 1
    assert probe(jail, "Person", "import json, os; print(json.dumps(os.path.exists('uploads/avatar.png')))") is False
    flags = ["--namespaces"] if shared["mode"] != "chroot" else []
    source = SHARING if shared["mode"] != "rootless" else os.path.join(os.path.dirname(jail), "app")
    pspy("bootstrap", source, "--jail", jail, "--no-run", *flags, check=True)
    assert probe(jail, "web", "import json; print(json.dumps(open('uploads/avatar.png').read()))") == "png"
