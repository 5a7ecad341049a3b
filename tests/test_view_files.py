"""Host data files in a principal's view: the time-zone database ships in
every view, and pspy learn reports the host files a principal looked for
and did not find, with the pspy.toml ``files`` line that copies them in.

The learn app, Looker, looks at import time (learning records from the
first line of the app on) for: a world-readable file (open) and an
owner-only file (stat) this test puts on the host under /opt, a path that
exists nowhere, a path of /tmp that exists on the host's /tmp only (a
principal's /tmp is its own), and files of its view (its own source, a zone
file, the mime.types pspy.toml copies in); it also tries to create a file
that exists on the host. Only the first two are reported; only the first
may be suggested.
"""

import datetime
import json
import os
import shutil
import sys
import tempfile
import zoneinfo

import pytest

from conftest import ERRNO_ATTEMPT, probe, pspy, write_app

LOOKER = """
import os
import zoneinfo

import pspy

LOOK_FOR = %(paths)r


def _look():
    for path in LOOK_FOR:
        try:
            open(path).close()
        except OSError:
            pass
    os.path.exists(%(stat)r)   # a stat, as zoneinfo looks for a zone file
    try:
        open(%(create)r, "w").close()   # a creation: not a file it looked for
    except OSError:
        pass
    zoneinfo.ZoneInfo("Europe/Paris")


_look()


@pspy.service(service_provider="Looker")
def ping():
    return "pong"
"""

ZONES = ERRNO_ATTEMPT + """
import datetime, sys, zoneinfo
paris = zoneinfo.ZoneInfo("Europe/Paris")
offset = lambda when: datetime.datetime(*when, tzinfo=paris).utcoffset().total_seconds()
print(json.dumps({
    "winter": offset((2024, 1, 15, 12)), "summer": offset((2024, 7, 15, 12)),
    "now": datetime.datetime.now(paris).utcoffset().total_seconds(),
    "tzdata package used": "tzdata" in sys.modules,
    # forbidden: the zone database is read-only in every view
    "create a zone file": attempt(lambda: open("/usr/share/zoneinfo/pspy-planted", "w").close()),
    "change a zone file": attempt(lambda: open("/usr/share/zoneinfo/Europe/Paris", "r+b").close()),
    "make a folder there": attempt(lambda: os.mkdir("/usr/share/zoneinfo/pspy-planted-dir")),
}))
"""

READ = """
import json
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return type(e).__name__
print(json.dumps({p: read(p) for p in %r}))
"""


def test_the_learning_log_names_each_missing_path_once_in_order():
    from pspy.seccomp.learning import missing_paths
    log = "\n".join(["pspy-learn 2 0 3221225534", "pspy-learn-missing /b/c", "pspy-learn-missing /a",
                     "pspy-learn-missing /b/c", "pspy-learn-missing relative", "pspy-learn-missing /with space"])
    assert missing_paths(log) == ["/b/c", "/a", "/with space"]


@pytest.mark.parametrize("mode", ["chroot", "namespaces"])
def test_only_host_files_outside_private_places_are_suggested(tmp_path, mode):
    from pspy import learn
    here = os.path.realpath(sys.executable)   # on the host, readable by all
    # In the host's own /tmp (a private place of every view), wherever pytest's folders are.
    fd, host_tmp = tempfile.mkstemp(prefix="only-on-the-host-", dir="/tmp")
    os.close(fd)

    class FakePlan:
        app_source = str(tmp_path)
        files = ["/etc/mime.types"]
    FakePlan.mode = mode
    said = []
    suggested = learn.report_missing_files(FakePlan(), {"S": [
        here, "/nonexistent-pspy-view-files/x", str(host_tmp), "/app/svc.py", "/proc/self/status",
        "/.pspy/plan.json"]}, say=said.append)
    assert suggested == [here]
    text = "\n".join(said)
    assert f"S looked for {here}, which is on the host but not in its view" in text
    assert f'files = ["/etc/mime.types", "{here}"]' in text
    assert ("chroot mode (without --namespaces)" in text) == (mode == "namespaces")
    assert learn.report_missing_files(FakePlan(), {"S": ["/nonexistent-pspy-view-files/x"]}, say=said.append) == []
    os.unlink(host_tmp)


def test_namespace_mode_binds_the_zone_database_where_the_system_folders_do_not_hold_it(tmp_path, monkeypatch):
    from pspy.sandbox import landlock, mount
    elsewhere = tmp_path / "zoneinfo"
    elsewhere.mkdir()
    monkeypatch.setattr(mount, "SYSTEM_DATA", ("/usr/share/zoneinfo", str(elsewhere), "/nonexistent-pspy-zones"))
    assert mount.system_data_paths() == [str(elsewhere)]   # /usr is bound whole; a missing one is skipped
    rules = landlock.grants("chroot", "S", False, [])["rules"]
    assert ["r", str(elsewhere)] in rules and ["r", "/usr/share/zoneinfo"] in rules


@pytest.fixture(scope="module")
def host_files():
    """A readable and an owner-only file on the host, outside any view
    (not under /tmp, which is each principal's own and never reported)."""
    folder = f"/opt/pspy-view-files-{os.getpid()}"
    os.makedirs(folder, mode=0o755)
    os.chmod(folder, 0o755)
    paths = {"readable": os.path.join(folder, "data.txt"), "owner only": os.path.join(folder, "secret.txt"),
             "created": os.path.join(folder, "created.txt"), "host tmp": f"/tmp/pspy-view-files-{os.getpid()}.txt"}
    for key, mode in (("readable", 0o644), ("owner only", 0o600), ("created", 0o644), ("host tmp", 0o644)):
        with open(paths[key], "w") as f:
            f.write(f"{key}\n")
        os.chmod(paths[key], mode)
    yield paths
    shutil.rmtree(folder)
    os.unlink(paths["host tmp"])


@pytest.fixture(scope="module")
def learned(host_files, tmp_path_factory):
    """pspy learn, chroot mode, against Looker; the workload has nothing to
    do: Looker looks at import time."""
    assert os.path.isfile("/usr/share/zoneinfo/Europe/Paris"), "this test needs the host's time-zone database"
    root = tmp_path_factory.mktemp("view-files")
    paths = [host_files["readable"], "/nonexistent-pspy-view-files/x", host_files["host tmp"], "/app/looker.py",
             "/usr/share/zoneinfo/Europe/Paris", "/etc/mime.types"]
    looker = LOOKER % {"paths": paths, "stat": host_files["owner only"], "create": host_files["created"]}
    app = write_app(root / "app", {"looker.py": looker,
                                   "pspy.toml": 'files = ["/etc/mime.types"]\n'})
    jail = str(root / "jail")
    proc = pspy("learn", app, "--jail", jail, "--", "true", timeout=300, check=True)
    return app, jail, proc.stdout


def _suggested_line(stdout):
    lines = [line.strip() for line in stdout.splitlines() if line.strip().startswith("files = ")]
    assert len(lines) == 1, stdout
    return lines[0]


@pytest.mark.root
def test_learn_names_a_host_file_missing_from_the_view_and_suggests_the_files_line(learned, host_files):
    app, jail, out = learned
    assert f"Looker looked for {host_files['readable']}, which is on the host but not in its view" in out, out
    # The line keeps what pspy.toml had and adds the readable file.
    assert json.loads(_suggested_line(out).split("=", 1)[1]) == ["/etc/mime.types", host_files["readable"]]
    # The owner-only file is said, but copying it would not let Looker read it: not suggested.
    assert f"Looker looked for {host_files['owner only']}, which is on the host but not in its view " \
           "(readable only by its owner or group there: not suggested)" in out, out


@pytest.mark.root
def test_learn_reports_no_path_that_is_nowhere_private_or_in_the_view(learned, host_files):
    app, jail, out = learned
    log = open(os.path.join(jail, ".pspy", "logs", "Looker.log"), errors="replace").read()
    # The listener did see them missing (so the filter below is what keeps them out) ...
    for path in ("/nonexistent-pspy-view-files/x", host_files["host tmp"]):
        assert f"pspy-learn-missing {path}\n" in log, log[-3000:]
        assert path not in out
    # A file it tried to create is no file it looked for.
    assert host_files["created"] not in log and host_files["created"] not in out
    # ... and never saw missing what is in the view.
    for path in ("/app/looker.py", "/usr/share/zoneinfo/Europe/Paris", "/etc/mime.types"):
        assert f"pspy-learn-missing {path}\n" not in log
        assert f"looked for {path}," not in out


@pytest.fixture(scope="module")
def with_suggested_files(learned):
    """The learn jail bootstrapped again (chroot mode, Landlock on) with the
    files line learn suggested in pspy.toml."""
    app, jail, out = learned
    with open(os.path.join(app, "pspy.toml"), "w") as f:
        f.write(_suggested_line(out) + "\n")
    again = pspy("bootstrap", app, "--jail", jail, "--no-run", check=True).stdout
    return jail, again


@pytest.mark.root
def test_the_suggested_files_line_puts_the_file_in_the_view(with_suggested_files, host_files):
    jail, _ = with_suggested_files
    seen = probe(jail, "Looker", READ % ([host_files["readable"], host_files["owner only"]],))
    assert seen == {host_files["readable"]: "readable\n", host_files["owner only"]: "FileNotFoundError"}


@pytest.fixture(scope="module")
def clock_namespaces(tmp_path_factory):
    """A new jail in namespace mode (Landlock on): the app folder, the jail,
    and what the first bootstrap said."""
    root = tmp_path_factory.mktemp("zones")
    app = write_app(root / "app", {"svc.py": "import pspy\n@pspy.service(service_provider='Clock')\n"
                                             "def now():\n    pass\n"})
    jail = str(root / "jail")
    out = pspy("bootstrap", app, "--jail", jail, "--no-run", "--namespaces", check=True).stdout
    return app, jail, out


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def zone_jail(request):
    """chroot mode: the learn jail, bootstrapped again; namespace mode: Clock's."""
    if request.param == "chroot":
        jail, _ = request.getfixturevalue("with_suggested_files")
        principal = "Looker"
    else:
        _, jail, _ = request.getfixturevalue("clock_namespaces")
        principal = "Clock"
    plan = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
    assert [p for p in plan["principals"] if p["name"] == principal][0]["landlock"], "Landlock must be on here"
    return request.param, jail, principal


@pytest.mark.root
def test_a_principal_reads_time_zones_from_the_host_database_and_cannot_write_it(zone_jail):
    mode, jail, principal = zone_jail
    seen = probe(jail, principal, ZONES)
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    assert (seen["winter"], seen["summer"]) == (3600, 7200)
    assert seen["now"] == datetime.datetime.now(paris).utcoffset().total_seconds()
    assert seen["tzdata package used"] is False   # the host's files, in the view, served
    expected = {"EACCES"} if mode == "chroot" else {"EROFS", "EACCES"}   # root's files; a read-only bind
    for what in ("create a zone file", "change a zone file", "make a folder there"):
        assert seen[what] in expected, (what, seen)


@pytest.mark.root
def test_a_new_jail_points_to_pspy_learn_once(clock_namespaces, with_suggested_files):
    app, jail, first = clock_namespaces
    assert "a new jail" in first and f"pspy learn {app} -- WORKLOAD" in first, first
    again = pspy("bootstrap", app, "--jail", jail, "--no-run", "--namespaces", check=True).stdout
    assert "a new jail" not in again   # control: only the first bootstrap says it
    assert "a new jail" not in with_suggested_files[1]   # nor one after pspy learn built the jail
