"""Each principal's own HOME and TMPDIR, tried from inside the principals.

chroot mode: every principal sees one jail, so a folder two of them may
write is where one plants a file or a symlink for the other (this kind of
host runs with fs.protected_symlinks=0). Alpha tries to write and to plant
a link in Beta's HOME and TMPDIR, and in the jail's /tmp; each fails with
EACCES, with Landlock on and off (the barrier is the folders' owners and
modes, not Landlock). Controls: Alpha writes its own HOME and TMPDIR, and
tempfile.mkstemp() works. With pspy.toml's tmp.shared = true, the jail's
/tmp is shared (1777), and Alpha hands Beta a file there.

Namespace mode: each principal's /tmp is a tmpfs of its own, and HOME and
TMPDIR point into it.
"""

import json
import os
import stat

import pytest

from conftest import ERRNO_ATTEMPT, probe, pspy, write_app
from pspy import config
from pspy.errors import ConfigError, PlanError
from pspy.plan import Options, build_plan
from test_plan import zoobank

APP = {
    "alpha.py": """
        import pspy

        @pspy.service(service_provider="Alpha")
        def ping():
            return "alpha"
    """,
    "beta.py": """
        import pspy

        @pspy.service(service_provider="Beta")
        def ping():
            return "beta"
    """,
}

ATTEMPTS = ERRNO_ATTEMPT + """
import tempfile
def write(path):
    with open(path, "w") as f:
        f.write("planted")
def hand_over(path):
    write(path)
    os.chmod(path, 0o644)   # its umask (077) made it 0600: sharing is said on purpose
other = %(other)r
me = os.environ["HOME"], os.environ["TMPDIR"]
fd, made = tempfile.mkstemp()
os.close(fd)
print(json.dumps({
    "env": list(me),
    "own folders": [[os.stat(p).st_uid == os.getuid(), oct(os.stat(p).st_mode & 0o777)] for p in me],
    "mkstemp": [os.path.dirname(made), attempt(lambda: write(made))],
    # forbidden
    "write in the other's HOME": attempt(lambda: write(other["home"] + "/planted")),
    "link in the other's HOME": attempt(lambda: os.symlink("/app/alpha.py", other["home"] + "/.bashrc")),
    "write in the other's TMPDIR": attempt(lambda: write(other["tmpdir"] + "/planted")),
    "link in the other's TMPDIR": attempt(lambda: os.symlink("/app/alpha.py", other["tmpdir"] + "/x")),
    # forbidden unless pspy.toml asks for a shared /tmp
    "write in /tmp": attempt(lambda: hand_over("/tmp/exchange")),
    "link in /tmp": attempt(lambda: os.symlink("/app/alpha.py", "/tmp/link")),
    # allowed
    "write in its HOME": attempt(lambda: write(me[0] + "/mine")),
    "write in its TMPDIR": attempt(lambda: write(me[1] + "/mine")),
}))
"""

FORBIDDEN = ("write in the other's HOME", "link in the other's HOME",
             "write in the other's TMPDIR", "link in the other's TMPDIR")


def _bootstrap(source, jail, toml, flags=()):
    with open(os.path.join(source, "pspy.toml"), "w") as f:
        f.write(toml)
    pspy("bootstrap", source, "--jail", jail, "--no-run", *flags, check=True)
    plan = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
    return {p["name"]: p for p in plan["principals"]}


LANDLOCK_OFF = "[landlock]\nenabled = false\n"
SHARED = "[tmp]\nshared = true\n"


def _left(jail):
    """What lies in the jail's /tmp and Alpha's HOME, seen as root."""
    return {"tmp": sorted(os.listdir(os.path.join(jail, "tmp"))),
            "home": sorted(os.listdir(os.path.join(jail, ".pspy", "home", "Alpha")))}


def _observe(jail):
    plan = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
    beta = next({"home": p["home"], "tmpdir": p["tmpdir"]} for p in plan["principals"] if p["name"] == "Beta")
    alpha = probe(jail, "Alpha", ATTEMPTS % {"other": beta})
    # Beta then takes what Alpha left in a shared /tmp.
    took = probe(jail, "Beta", "import json; print(json.dumps(open('/tmp/exchange').read()))") \
        if alpha["write in /tmp"] == "ok" else None
    return {"alpha": alpha, "beta took": took, "tmp": os.lstat(os.path.join(jail, "tmp"))}


@pytest.fixture(scope="module")
def chroot_seen(tmp_path_factory):
    """What Alpha saw, per setup. The second jail is bootstrapped twice:
    first with a shared /tmp, where Alpha leaves a file and a link, then
    private and with Landlock off; what Alpha left must be gone."""
    seen = {}
    jails = {}
    for name in ("one", "two"):
        source = write_app(tmp_path_factory.mktemp(f"private-{name}") / "app", APP)
        jails[name] = source, str(tmp_path_factory.mktemp(f"private-{name}") / "jail")
    _bootstrap(*jails["one"], "")
    seen["landlock on"] = _observe(jails["one"][1])
    _bootstrap(*jails["two"], SHARED)
    seen["shared, landlock on"] = _observe(jails["two"][1])
    seen["left by the shared run"] = _left(jails["two"][1])
    _bootstrap(*jails["two"], LANDLOCK_OFF)
    seen["left after the next bootstrap"] = _left(jails["two"][1])
    seen["landlock off"] = _observe(jails["two"][1])
    return seen


@pytest.mark.root
@pytest.mark.parametrize("setup", ["landlock on", "landlock off", "shared, landlock on"])
def test_a_principal_cannot_write_or_plant_a_link_in_another_principals_home_or_tmpdir(chroot_seen, setup):
    alpha = chroot_seen[setup]["alpha"]
    for what in FORBIDDEN:
        assert alpha[what] == "EACCES", (setup, what, alpha)
    # the controls: its own folders, 0700 and its own, and tempfile in them
    assert alpha["env"] == ["/.pspy/home/Alpha", "/tmp/pspy-Alpha"], alpha
    assert alpha["own folders"] == [[True, "0o700"], [True, "0o700"]], alpha
    assert alpha["mkstemp"] == ["/tmp/pspy-Alpha", "ok"], alpha
    assert alpha["write in its HOME"] == alpha["write in its TMPDIR"] == "ok", alpha


@pytest.mark.root
@pytest.mark.parametrize("setup", ["landlock on", "landlock off"])
def test_the_jails_tmp_is_roots_unless_the_app_asks_for_a_shared_one(chroot_seen, setup):
    seen = chroot_seen[setup]
    assert seen["alpha"]["write in /tmp"] == seen["alpha"]["link in /tmp"] == "EACCES", seen["alpha"]
    assert (seen["tmp"].st_uid, stat.S_IMODE(seen["tmp"].st_mode)) == (0, 0o755)


@pytest.mark.root
def test_with_a_shared_tmp_two_principals_exchange_a_file_there(chroot_seen):
    seen = chroot_seen["shared, landlock on"]
    assert seen["alpha"]["write in /tmp"] == seen["alpha"]["link in /tmp"] == "ok", seen["alpha"]
    assert seen["beta took"] == "planted"
    assert (seen["tmp"].st_uid, stat.S_IMODE(seen["tmp"].st_mode)) == (0, 0o1777)


@pytest.mark.root
def test_bootstrap_empties_what_principals_left_in_the_jails_tmp_and_homes(chroot_seen):
    """A link Alpha planted in a shared /tmp does not outlive the next bootstrap."""
    before, after = chroot_seen["left by the shared run"], chroot_seen["left after the next bootstrap"]
    assert {"exchange", "link"} <= set(before["tmp"]) and before["home"] == ["mine"]   # the control
    assert after == {"tmp": ["pspy-Alpha", "pspy-Beta", "pspy-web"], "home": []}


NAMESPACE_PROBE = """
import json, os, tempfile
left = os.listdir("/tmp")
with open("/tmp/%s", "w") as f:
    f.write("x")
fd, made = tempfile.mkstemp()
print(json.dumps([os.environ["HOME"], os.environ["TMPDIR"], os.path.dirname(made), left]))
"""


@pytest.mark.root
def test_namespace_mode_gives_each_principal_a_private_tmp_as_home_and_tmpdir(tmp_path_factory):
    source = write_app(tmp_path_factory.mktemp("private-ns") / "app", APP)
    jail = str(tmp_path_factory.mktemp("private-ns") / "jail")
    principals = _bootstrap(source, jail, "", ["--namespaces"])
    assert {(p["home"], p["tmpdir"]) for p in principals.values()} == {("/tmp", "/tmp")}
    alpha = probe(jail, "Alpha", NAMESPACE_PROBE % "from-alpha")
    beta = probe(jail, "Beta", NAMESPACE_PROBE % "from-beta")
    assert alpha[:3] == beta[:3] == ["/tmp", "/tmp", "/tmp"]
    assert "from-alpha" not in beta[3] and "from-beta" not in alpha[3]   # its own /tmp, not Alpha's
    assert not os.path.exists(os.path.join(jail, "tmp"))   # nothing shared was made in the jail


def _config_error(tmp_path, text):
    (tmp_path / "pspy.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path))
    return str(e.value)


def test_a_misspelt_or_mistyped_tmp_setting_is_an_error(tmp_path):
    assert "unknown setting tmp.share; known: shared" in _config_error(tmp_path, "[tmp]\nshare = true\n")
    assert "tmp.shared must be true or false" in _config_error(tmp_path, "[tmp]\nshared = 'yes'\n")
    assert "tmp must be a dict" in _config_error(tmp_path, "tmp = true\n")
    (tmp_path / "pspy.toml").write_text("[tmp]\nshared = true\n")
    assert config.load(str(tmp_path)) == {"tmp": {"shared": True}}


def test_a_shared_tmp_is_for_chroot_mode_only():
    with pytest.raises(PlanError, match="tmp.shared = true is for chroot mode"):
        build_plan(zoobank(), Options(mode="namespaces", shared_tmp=True))
    plan = build_plan(zoobank(), Options(shared_tmp=True))
    assert plan.shared_tmp and plan.principal("Bank").home == "/.pspy/home/Bank"
