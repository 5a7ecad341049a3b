"""Findings bootstrap warns about and analyze lists, shown on a real jail."""

import json

import pytest

from conftest import probe, pspy, write_app

pytestmark = pytest.mark.root

SQLITE_WRITE = """
import json, sqlite3
def outcome():
    try:
        db = sqlite3.connect("db/app.sqlite")
        db.execute("create table if not exists t (x)")
        db.execute("insert into t values (1)")
        db.commit()
        return "ok"
    except sqlite3.Error as e:
        return str(e)
print(json.dumps(outcome()))
"""


def _app(tmp_path, perms):
    return write_app(tmp_path / "app", {"data.py": f"""\
        import pspy

        @pspy.service(service_provider="Data", perms={perms!r})
        def count():
            return 0
        """, "db/app.sqlite": ""})


@pytest.mark.parametrize("flags", [[], ["--namespaces"]], ids=["chroot", "namespaces"])
def test_a_database_file_owned_without_its_folder_is_a_warning_and_a_finding(tmp_path, flags):
    jail = str(tmp_path / "jail")
    built = pspy("bootstrap", _app(tmp_path, {"db/app.sqlite": 0o600}), "--jail", jail, "--no-run", *flags,
                 check=True)
    assert "pspy: warning: Data may write db/app.sqlite but not its folder db/" in built.stdout, built.stdout
    report = json.loads(pspy("analyze", "--jail", jail, "--format", "json", check=True).stdout)
    assert [(f["id"], f["severity"], f["principal"], f["path"]) for f in report["findings"]] == [
        ("write-file-not-folder", "medium", "Data", "db/app.sqlite")]
    assert "MEDIUM [Data]: Data may write db/app.sqlite" in pspy("analyze", "--jail", jail, check=True).stdout
    # What the warning is about: every write fails, though the file is Data's.
    assert probe(jail, "Data", SQLITE_WRITE) in ("attempt to write a readonly database",
                                                 "unable to open database file")


@pytest.mark.parametrize("flags", [[], ["--namespaces"]], ids=["chroot", "namespaces"])
def test_a_database_whose_folder_is_owned_too_gives_no_finding_and_writes(tmp_path, flags):
    jail = str(tmp_path / "jail")
    built = pspy("bootstrap", _app(tmp_path, {"db/": 0o700}), "--jail", jail, "--no-run", *flags, check=True)
    assert "warning" not in built.stdout
    report = json.loads(pspy("analyze", "--jail", jail, "--format", "json", check=True).stdout)
    assert report["findings"] == []
    assert probe(jail, "Data", SQLITE_WRITE) == "ok"
