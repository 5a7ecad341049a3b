"""Real app folders hold Python 2 leftovers, templates and data named .py:
bootstrap skips what it cannot parse (saying so) and what pspy.toml excludes."""

import os

import pytest

from conftest import pspy, write_app

pytestmark = pytest.mark.root

SERVICE = """
    import pspy

    @pspy.service(service_provider="Store")
    def put(k, v):
        pass
    """

# A decorator mistake: a non-literal perms argument, at line 5.
BROKEN_SERVICE = """
    import pspy
    PERMS = {}

    @pspy.service(service_provider="Store", perms=PERMS)
    def drop(k):
        pass
    """


@pytest.mark.parametrize("flags", [[], ["--namespaces"]], ids=["chroot", "namespaces"])
def test_unparsable_file_that_does_not_mention_pspy_is_skipped_with_a_warning(tmp_path, flags):
    app = write_app(tmp_path / "app", {"store.py": SERVICE, "legacy/report.py": 'import sys\n\nprint "total"\n'})
    jail = str(tmp_path / "jail")
    proc = pspy("bootstrap", app, "--jail", jail, "--no-run", *flags)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "pspy: warning: legacy/report.py:3: skipped: not Python 3 source (" in output
    assert "does not mention pspy" in output and "Traceback" not in output
    # Skipped by discovery only: the file is still part of the app in the jail.
    assert os.path.isfile(os.path.join(jail, "app", "legacy", "report.py"))


@pytest.mark.parametrize("flags", [[], ["--namespaces"]], ids=["chroot", "namespaces"])
def test_excluded_folder_with_a_decorator_error_is_not_read(tmp_path, flags):
    files = {"store.py": SERVICE, "broken/drop.py": BROKEN_SERVICE}
    app = write_app(tmp_path / "app", {**files, "pspy.toml": 'exclude = ["broken/"]\n'})
    jail = str(tmp_path / "jail")
    proc = pspy("bootstrap", app, "--jail", jail, "--no-run", *flags)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "broken" not in output and "drop.py" not in output
    assert os.path.isfile(os.path.join(jail, "app", "broken", "drop.py"))   # still copied

    # Control: the same app without the exclude fails on that file, with file:line.
    control = write_app(tmp_path / "control", files)
    proc = pspy("bootstrap", control, "--jail", str(tmp_path / "control-jail"), "--no-run", *flags)
    assert proc.returncode == 1
    assert "broken/drop.py:5" in proc.stderr and "literal" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not os.path.exists(tmp_path / "control-jail" / ".pspy" / "plan.json")
