"""Bootstrap never changes anything outside the jail, and explains each refusal.

Each test checks a host file's owner, mode and contents before and after,
and that the user gets one clear message instead of a traceback.
"""

import json
import os
import pathlib
import shutil
import tempfile

import pytest

from conftest import access_of, probe, pspy, write_app

pytestmark = pytest.mark.root

SERVICE = """
import pspy

@pspy.service(service_provider="Store", perms={PERMS})
def put(key, value):
    return None
"""


def fingerprint(path):
    st = os.lstat(path)
    with open(path, "rb") as f:
        return (st.st_uid, st.st_gid, st.st_mode, st.st_nlink, f.read())


@pytest.fixture
def victim(tmp_path):
    """A host file standing for /etc/shadow, outside app and jail."""
    path = tmp_path / "host-secret"
    path.write_text("root:secret\n")
    os.chmod(path, 0o600)
    return str(path)


def test_perms_path_leaving_the_app_is_refused_with_file_and_line(tmp_path):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"../../etc/shadow": 0o777}')})
    before = fingerprint("/etc/shadow")
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
    assert proc.returncode == 1
    assert "store.py:4" in proc.stderr and "leaves the app root" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert fingerprint("/etc/shadow") == before
    assert not os.path.exists(tmp_path / "jail")   # refused before anything was written


def test_app_symlink_under_perms_is_refused_and_its_target_untouched(tmp_path, victim):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o770}'),
                                       "data/ok.txt": "fine\n"})
    os.symlink(victim, os.path.join(app, "data", "evil"))
    before = fingerprint(victim)
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "data/evil" in proc.stderr and "symlink" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert fingerprint(victim) == before
    assert not os.path.exists(tmp_path / "jail" / "app")   # no half-made app in the jail


def test_symlinked_folder_matched_by_a_glob_is_refused(tmp_path, victim):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/*": 0o700}')})
    os.symlink(os.path.dirname(victim), os.path.join(app, "data"))
    before = fingerprint(victim)
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
    # "data" is a link: the glob is not walked through it, and the bootstrap says so.
    assert fingerprint(victim) == before
    assert proc.returncode == 1 and "goes through data, a symlink of the app" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_app_symlink_outside_perms_points_nowhere_inside_the_jail(tmp_path, victim):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    os.symlink(victim, os.path.join(app, "escape"))
    before = fingerprint(victim)
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--no-run", check=True)
    assert fingerprint(victim) == before
    # The link is copied as a link; inside the chroot its target does not exist.
    seen = access_of(jail, "Store", ["escape", "store.py"])
    assert seen["escape"]["read"] == "FileNotFoundError"
    assert seen["store.py"]["read"] == "ok"


def test_hard_link_planted_in_provider_data_is_left_alone_on_rebootstrap(tmp_path, victim):
    # Refusing would let whoever planted it keep the app down; the link is
    # kept, its file unchanged, and named (tests/test_rebootstrap_links.py
    # plants every kind of link from inside, in both modes).
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--no-run", check=True)
    # A provider's data folder now holds a hard link to a host file (as if planted).
    os.link(victim, os.path.join(jail, "app", "data", "planted"))
    before = fingerprint(victim)
    proc = pspy("bootstrap", app, "--jail", jail, "--no-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "data/planted" in proc.stdout and "hard links" in proc.stdout and "left as it is" in proc.stdout
    assert fingerprint(victim) == before
    assert os.path.samefile(victim, os.path.join(jail, "app", "data", "planted"))


def test_jail_that_is_not_a_pspy_jail_is_refused(tmp_path):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    proc = pspy("bootstrap", app, "--jail", str(other), "--no-run")
    assert proc.returncode == 1 and "not a pspy jail" in proc.stderr
    assert sorted(os.listdir(other)) == ["keep.txt"]


def test_perms_give_the_provider_its_paths_and_nothing_else(tmp_path):
    app = write_app(tmp_path / "app", {
        "store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700, "conf/*.ini": 0o600}'),
        "conf/a.ini": "[a]\n", "conf/readme.txt": "not matched\n", "data/x": "x\n"})
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--no-run", check=True)
    seen = access_of(jail, "Store", ["data/x", "conf/a.ini", "conf/readme.txt", "store.py"])
    assert seen["data/x"] == {"read": "ok", "write": "ok"}
    assert seen["conf/a.ini"] == {"read": "ok", "write": "ok"}
    assert seen["conf/readme.txt"] == {"read": "ok", "write": "PermissionError"}
    assert seen["store.py"] == {"read": "ok", "write": "PermissionError"}
    web = access_of(jail, "web", ["data/x", "conf/a.ini"])
    assert web["data/x"]["read"] == "PermissionError"
    assert web["conf/a.ini"]["read"] == "PermissionError"


def test_setup_script_runs_before_provider_data_comes_back(tmp_path):
    # The script runs as root: it must never see (and so never import, open or
    # follow) anything a provider wrote in an earlier run.
    app = write_app(tmp_path / "app", {
        "store.py": SERVICE.replace("{PERMS}", '{"vault/": 0o700}'),
        "setup.py": """
            import os
            with open("script-saw.txt", "w") as f:
                f.write(str(sorted(os.listdir("vault")) if os.path.isdir("vault") else None))
            """})
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--script", "setup.py", "--no-run", check=True)
    planted = os.path.join(jail, "app", "vault", "__init__.py")
    with open(planted, "w") as f:
        f.write("raise SystemExit('provider code ran as root')\n")
    pspy("bootstrap", app, "--jail", jail, "--script", "setup.py", "--no-run", check=True)
    assert open(os.path.join(jail, "app", "script-saw.txt")).read() == "None"
    assert os.path.exists(planted)   # control: the provider's data itself was kept


def test_nested_perms_of_two_providers_keep_both_providers_data(tmp_path):
    # (a folder name that is not a Python identifier: see the sys.path test below)
    app = write_app(tmp_path / "app", {
        "a.py": "import pspy\n@pspy.service(service_provider='Alpha', perms={'var-data/a/': 0o700})\ndef f(): pass\n",
        "z.py": "import pspy\n@pspy.service(service_provider='Zeta', perms={'var-data/': 0o711})\ndef g(): pass\n"})
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--no-run", check=True)
    for rel in ("var-data/a/alpha.txt", "var-data/zeta.txt"):
        with open(os.path.join(jail, "app", rel), "w") as f:
            f.write(rel)
    pspy("bootstrap", app, "--jail", jail, "--no-run", check=True)
    for rel in ("var-data/a/alpha.txt", "var-data/zeta.txt"):
        assert open(os.path.join(jail, "app", rel)).read() == rel
    seen = access_of(jail, "Alpha", ["var-data/a/alpha.txt"])
    assert seen["var-data/a/alpha.txt"] == {"read": "ok", "write": "ok"}


def test_hard_link_in_the_app_source_is_refused(tmp_path, victim):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    os.link(victim, os.path.join(app, "linked"))
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
    assert proc.returncode == 1
    assert "linked" in proc.stderr and "hard links" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_app_file_not_readable_by_others_stays_root_only(tmp_path):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}'),
                                       "private.conf": "token=1\n", "public.conf": "x=1\n"})
    os.chmod(os.path.join(app, "private.conf"), 0o600)
    os.chmod(os.path.join(app, "public.conf"), 0o644)
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--no-run", check=True)
    seen = access_of(jail, "Store", ["private.conf", "public.conf"])
    assert seen["private.conf"]["read"] == "PermissionError"
    assert seen["public.conf"]["read"] == "ok"


def test_perms_a_provider_cannot_reach_are_refused(tmp_path):
    app = write_app(tmp_path / "app", {
        "a.py": "import pspy\n@pspy.service(service_provider='Alpha', perms={'data/a/': 0o700})\ndef f(): pass\n",
        "z.py": "import pspy\n@pspy.service(service_provider='Zeta', perms={'data/': 0o700})\ndef g(): pass\n"})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
    assert proc.returncode == 1
    assert "Alpha cannot reach it" in proc.stderr and "folder data is 0o700" in proc.stderr


def test_two_jails_never_share_a_uid(tmp_path):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    first, second = str(tmp_path / "one"), str(tmp_path / "two")
    pspy("bootstrap", app, "--jail", first, "--no-run", check=True)
    pspy("bootstrap", app, "--jail", second, "--no-run", check=True)
    uids = [{p["name"]: p["uid"] for p in json.load(open(os.path.join(j, ".pspy", "plan.json")))["principals"]}
            for j in (first, second)]
    assert not set(uids[0].values()) & set(uids[1].values())
    # Asking explicitly for the first jail's ids is refused, naming that jail.
    base = min(uids[0].values())
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "three"), "--uid-base", str(base), "--no-run")
    assert proc.returncode == 1 and first in proc.stderr and "overlap" in proc.stderr
    # Bootstrapping the first jail again keeps its ids.
    pspy("bootstrap", app, "--jail", first, "--no-run", check=True)
    again = {p["name"]: p["uid"] for p in json.load(open(os.path.join(first, ".pspy", "plan.json")))["principals"]}
    assert again == uids[0]


def test_a_plan_copied_elsewhere_cannot_aim_stop_at_its_jail(tmp_path):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--no-run", check=True)
    decoy = tmp_path / "decoy"
    (decoy / ".pspy").mkdir(parents=True)
    (decoy / ".pspy" / "plan.json").write_text(open(os.path.join(jail, ".pspy", "plan.json")).read())
    proc = pspy("stop", "--jail", str(decoy))
    assert proc.returncode == 1 and "belongs to the jail" in proc.stderr
    assert pspy("status", "--jail", jail).returncode == 3   # control: the real jail answers


def test_jail_under_a_folder_others_can_write_is_refused(tmp_path):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)   # no sticky bit: anyone could swap the jail
    proc = pspy("bootstrap", app, "--jail", str(shared / "jail"), "--no-run")
    assert proc.returncode == 1 and "writable by others" in proc.stderr
    assert not os.path.exists(shared / "jail")
    owned = tmp_path / "owned"
    owned.mkdir()
    os.chown(owned, 65534, 65534)
    proc = pspy("bootstrap", app, "--jail", str(owned / "jail"), "--no-run")
    assert proc.returncode == 1 and "not root" in proc.stderr


def test_shared_data_named_like_a_module_at_the_app_root_is_refused(tmp_path):
    # The app root is first on sys.path: a provider could plant json/__init__.py
    # in a readable 'json/' and every principal importing json would run it.
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"json/": 0o711}')})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
    assert proc.returncode == 1 and "importable by every principal" in proc.stderr
    private = write_app(tmp_path / "app2", {"store.py": SERVICE.replace("{PERMS}", '{"json/": 0o700}')})
    pspy("bootstrap", private, "--jail", str(tmp_path / "jail2"), "--no-run", check=True)   # control


@pytest.fixture
def outside_tmp():
    """A host folder outside /tmp (which --files refuses), removed afterwards."""
    path = tempfile.mkdtemp(prefix="pspy-test-", dir="/var/lib")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path)


def test_extra_files_keep_their_host_folder_modes(tmp_path, outside_tmp):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    extra = outside_tmp / "extra"
    (extra / "closed").mkdir(parents=True)
    (extra / "closed" / "secret.txt").write_text("root only\n")
    (extra / "open.txt").write_text("for everyone\n")
    os.chmod(extra, 0o755)
    os.chmod(extra / "closed", 0o700)
    os.chmod(extra / "open.txt", 0o644)
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--files", str(extra), "--no-run", check=True)
    assert os.path.exists(os.path.join(jail, str(extra).lstrip("/"), "closed", "secret.txt"))
    seen = probe(jail, "Store", f"""
        import json
        out = {{}}
        for p in ({str(extra / "open.txt")!r}, {str(extra / "closed" / "secret.txt")!r}):
            try:
                open(p).read(); out[p] = "ok"
            except Exception as e:
                out[p] = type(e).__name__
        print(json.dumps(out))
        """)
    assert seen[str(extra / "open.txt")] == "ok"
    assert seen[str(extra / "closed" / "secret.txt")] == "PermissionError"


def test_extra_files_from_tmp_are_refused(tmp_path):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--files", "/tmp", "--no-run")
    assert proc.returncode == 1 and "under /tmp" in proc.stderr


def test_rebootstrap_keeps_a_data_folder_pspy_created_reachable(tmp_path):
    # data/ is not in the source: pspy makes it for perms "data/store/"; a
    # second bootstrap carries the data over and must keep data/ searchable.
    app = write_app(tmp_path / "app", {
        "s.py": "import pspy\n@pspy.service(service_provider='Store', perms={'data/store/': 0o700})\ndef f(): pass\n"})
    jail = str(tmp_path / "jail")
    for _ in range(2):
        pspy("bootstrap", app, "--jail", jail, "--no-run", check=True)
    assert os.stat(os.path.join(jail, "app", "data")).st_mode & 0o001


def test_when_every_block_of_ids_is_held_the_error_says_why_and_what_frees_one(tmp_path):
    # Jails hold their ids while their folders exist; a host where old jails
    # pile up must hear that, not only the last block's conflict.
    from pspy.bootstrap import ID_BLOCK, Request, _plan_with_free_ids, options_for
    from pspy.discover import discover
    from pspy.plan import DEFAULT_GID_BASE, DEFAULT_UID_BASE
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}')})
    options = options_for(Request(app_dir=app, jail=str(tmp_path / "jail")))
    manifest = discover(app)
    held = {f"/gone/{k}": {"uids": [DEFAULT_UID_BASE + k * ID_BLOCK] * 2, "gids": [DEFAULT_GID_BASE + k * ID_BLOCK] * 2}
            for k in range(200)}
    with pytest.raises(Exception) as refused:
        _plan_with_free_ids(manifest, options, None, held)
    message = str(refused.value)
    assert "200 jails" in message and "remove the folders of jails you no longer use" in message, message
    # Control: one block freed (its jail folder removed) is taken.
    del held["/gone/7"]
    plan = _plan_with_free_ids(manifest, options, None, held)
    assert min(p.uid for p in plan.principals) == DEFAULT_UID_BASE + 7 * ID_BLOCK


def test_perms_behind_a_symlink_of_the_app_are_refused_naming_the_link(tmp_path):
    # The link stays inside the app: harmless, but perms would match nothing
    # through it, and the provider would find its data root-only at run time.
    jail = str(tmp_path / "jail")
    for pattern in ("data/*", "data/bank/", "data/*/ledger.db"):
        app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", repr({pattern: 0o700})),
                                           "real/bank/ledger.db": "x\n"})
        if not os.path.lexists(os.path.join(app, "data")):
            os.symlink("real", os.path.join(app, "data"))
        proc = pspy("bootstrap", app, "--jail", jail, "--namespaces", "--no-run")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr == (f"pspy: error: store.py:4: perms {pattern!r} goes through data, a symlink of the "
                               "app (to real); perms are never followed through a link, so it would match "
                               "nothing: name the real path or replace the link by a folder\n")
        assert not os.path.exists(jail)   # refused before anything was built
    # control: the same perms on the real folder bootstrap
    os.remove(os.path.join(app, "data"))
    os.rename(os.path.join(app, "real"), os.path.join(app, "data"))
    pspy("bootstrap", app, "--jail", jail, "--namespaces", "--no-run", check=True)


def test_a_module_principals_cannot_read_is_refused_at_plan_time_in_one_line(tmp_path):
    app = write_app(tmp_path / "app", {"store.py": SERVICE.replace("{PERMS}", '{"data/": 0o700}'),
                                       "lib/util.py": "X = 1\n", "setup.py": "print('as root')\n",
                                       "data/own.py": "Y = 2\n"})
    os.chmod(os.path.join(app, "setup.py"), 0o600)         # the set-up script runs as root: not refused
    os.chmod(os.path.join(app, "data", "own.py"), 0o600)   # the provider's own, by its perms: not refused
    jail = str(tmp_path / "jail")
    for path, mode, unreadable, why in (("store.py", 0o600, "store.py", "mode 0o600"),
                                        ("lib", 0o750, "lib/util.py", "folder lib is 0o750")):
        before = os.stat(os.path.join(app, path)).st_mode
        os.chmod(os.path.join(app, path), mode)
        proc = pspy("bootstrap", app, "--jail", jail, "--namespaces", "--no-run", "--script", "setup.py")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr == (f"pspy: error: no principal can read {unreadable} ({why}): principals import "
                               "the app's modules as themselves, not as root; make them readable by others "
                               "(chmod o+r, folders o+x) or, if no principal imports them, list them in "
                               "pspy.toml's exclude\n")
        assert not os.path.exists(jail)
        os.chmod(os.path.join(app, path), before)
    # control: readable again, the same app bootstraps and the provider imports it
    pspy("bootstrap", app, "--jail", jail, "--namespaces", "--no-run", "--script", "setup.py", check=True)
    assert probe(jail, "Store", "import json, store, lib.util; print(json.dumps(lib.util.X))") == 1
