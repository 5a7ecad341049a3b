"""A provider cannot keep root from bootstrapping its app again.

Whatever a provider plants in its own data (symlinks to host files and
folders or to another principal's data, a dangling link, hard links, a
FIFO), the next ``pspy bootstrap`` keeps the data as it is, never follows
or changes anything through a link, names each such entry in a warning,
and starts the app. No host file changes. Both modes; the links are
planted from inside, as the provider, through ``pspy exec``; what a
provider cannot make (a device, a hard link to a host file) root plants,
as an earlier pspy or a careless admin could have left it.
"""

import hashlib
import json
import os
import stat

import pytest

from conftest import ATTEMPT, probe, pspy, write_app

pytestmark = pytest.mark.root

APP = {
    "store.py": """
        import pspy

        @pspy.service(service_provider="Store", perms={"data/": 0o700})
        def put(key, value):
            with open("data/" + key, "w") as f:
                f.write(value)

        @pspy.service(service_provider="Store")
        def get(key):
            with open("data/" + key) as f:
                return f.read()

        @pspy.service(service_provider="Other", perms={"other/": 0o700})
        def keep(value):
            with open("other/secret", "w") as f:
                f.write(value)
        """,
    "pspy.toml": 'front_end = ["python", "-c", "import time; time.sleep(3600)"]\n',
}

# What Store plants in its data, from inside; {decoy_file}, {decoy_dir} and
# {other} are host paths outside its data.
PLANT = ATTEMPT + """
import stat, tempfile
results = {{}}
def link_own_file_from_its_tmp():
    outside = os.path.join(tempfile.gettempdir(), "mine.txt")
    with open(outside, "w") as f:
        f.write("made in my tmp\\n")
    os.link(outside, "data/tmp_link")
with open("data/own.txt", "w") as f:
    f.write("mine\\n")
results["own_link"] = attempt(lambda: os.link("data/own.txt", "data/own_link.txt"))
results["to_file"] = attempt(lambda: os.symlink({decoy_file!r}, "data/to_file"))
results["to_dir"] = attempt(lambda: os.symlink({decoy_dir!r}, "data/to_dir"))
results["to_other"] = attempt(lambda: os.symlink({other!r}, "data/to_other"))
results["to_other_in_jail"] = attempt(lambda: os.symlink("/app/other/secret", "data/to_other_in_jail"))
results["dangling"] = attempt(lambda: os.symlink("/nowhere/at/all", "data/dangling"))
results["sub"] = attempt(lambda: os.mkdir("data/sub"))
results["sub/up"] = attempt(lambda: os.symlink("../../other", "data/sub/up"))
results["fifo"] = attempt(lambda: os.mkfifo("data/fifo"))
results["tmp_link"] = attempt(link_own_file_from_its_tmp)
results["device"] = attempt(lambda: os.mknod("data/device", 0o600 | stat.S_IFCHR, os.makedev(1, 3)))
results["app_file_link"] = attempt(lambda: os.link("store.py", "data/app_file_link"))
print(json.dumps(results))
"""

SYMLINKS = ["data/to_file", "data/to_dir", "data/to_other", "data/to_other_in_jail", "data/dangling", "data/sub/up"]


def fingerprint(path, principal=None):
    """Owner, mode and content (a folder: its entries, each fingerprinted) of
    a host path. An owner that is ``principal``'s (uid, gid) reads as its
    name: a bootstrap may move an app to other ids when its own are taken
    meanwhile, and then gives each principal its data under the new ones."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        content = {name: fingerprint(os.path.join(path, name), principal) for name in sorted(os.listdir(path))}
    else:
        with open(path, "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
    owner = (st.st_uid, st.st_gid)
    if principal is not None and owner == principal[1]:
        owner = principal[0]
    return (owner, stat.S_IMODE(st.st_mode), content)


def ids_of(jail, name):
    with open(os.path.join(jail, ".pspy", "plan.json")) as f:
        return {p["name"]: (p["uid"], p["gid"]) for p in json.load(f)["principals"]}[name]


def uid_of(jail, name):
    return ids_of(jail, name)[0]


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def rebooted(request, tmp_path_factory):
    mode = request.param
    base = tmp_path_factory.mktemp(f"relink-{mode}")
    app = write_app(base / "app", APP)
    jail = str(base / "jail")
    flags = ["--namespaces"] if mode == "namespaces" else []
    decoy_file = base / "decoy.txt"
    decoy_file.write_text("root:secret\n")
    os.chmod(decoy_file, 0o640)
    decoy_dir = base / "decoy-dir"
    decoy_dir.mkdir()
    (decoy_dir / "inside.txt").write_text("host data\n")
    os.chmod(decoy_dir, 0o755)
    # Built, not run: what follows runs as principals through pspy exec, and
    # only the second bootstrap must start the app.
    pspy("bootstrap", app, "--jail", jail, "--no-run", *flags, check=True)
    try:
        probe(jail, "Other", "import json\nwith open('other/secret', 'w') as f: f.write('kept')\nprint(1)")
        other = os.path.join(jail, "app", "other")
        planted = probe(jail, "Store", PLANT.format(decoy_file=str(decoy_file), decoy_dir=str(decoy_dir),
                                                    other=other))
        data = os.path.join(jail, "app", "data")
        # What a provider cannot make, as an earlier pspy or an admin could have left it.
        os.link(decoy_file, os.path.join(data, "host_link"))
        os.mknod(os.path.join(data, "root_device"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        before = {str(decoy_file): fingerprint(decoy_file), str(decoy_dir): fingerprint(decoy_dir),
                  other: fingerprint(other, ("Other", ids_of(jail, "Other")))}
        store_uid = uid_of(jail, "Store")   # whose the entries Store made are
        targets = {rel: os.readlink(os.path.join(jail, "app", rel)) for rel in SYMLINKS}
        again = pspy("bootstrap", app, "--jail", jail, "--detach", *flags)
        yield {"mode": mode, "jail": jail, "planted": planted, "again": again, "before": before,
               "targets": targets, "decoy_file": str(decoy_file),
               "other": other, "store_uid": store_uid}
    finally:
        pspy("stop", "--jail", jail)


def test_the_provider_planted_its_links_from_inside(rebooted):
    planted = rebooted["planted"]
    for name in ["own_link", "to_file", "to_dir", "to_other", "to_other_in_jail", "dangling", "sub", "sub/up",
                 "fifo"]:
        assert planted[name] == "ok", planted
    # A provider cannot make a device, nor link a file it does not own
    # (fs.protected_hardlinks; in namespace mode the app is another, read-only
    # mount, and a link across mounts fails first): root planted those.
    assert planted["device"] == "PermissionError"
    assert planted["app_file_link"] == ("PermissionError" if rebooted["mode"] == "chroot" else "OSError")
    # Chroot mode: its private tmp is on the jail's file system, so it links
    # a file of its own from outside its data. Namespace mode: /tmp is a
    # tmpfs of its own, and a link across file systems fails.
    assert planted["tmp_link"] == ("ok" if rebooted["mode"] == "chroot" else "OSError")


def test_rebootstrap_starts_the_app_and_names_each_entry_it_left_alone(rebooted):
    again = rebooted["again"]
    assert again.returncode == 0, again.stdout + again.stderr
    warned = {line.split(" (Store's data): ")[0].removeprefix("pspy: warning: "): line
              for line in again.stdout.splitlines() if "(Store's data)" in line}
    expected = SYMLINKS + ["data/fifo", "data/host_link", "data/root_device"]
    if rebooted["mode"] == "chroot":
        expected.append("data/tmp_link")
    assert sorted(warned) == sorted(expected), again.stdout
    for rel in SYMLINKS:
        assert "a symlink to" in warned[rel] and "left as it is" in warned[rel]
    assert "2 hard links, 1 of them outside this data" in warned["data/host_link"]
    assert "a FIFO" in warned["data/fifo"] and "a character device" in warned["data/root_device"]
    # Hard links whose every link is in the provider's own data are its data like any other file.
    assert "data/own.txt" not in again.stdout and "data/own_link.txt" not in again.stdout
    # The app runs: the front end calls Store, which reads and writes its data.
    seen = probe(rebooted["jail"], "web", "import json, store; store.put('after', 'yes'); "
                                          "print(json.dumps([store.get('own.txt'), store.get('after')]))")
    assert seen == ["mine\n", "yes"]


def test_no_host_file_nor_other_principals_data_changed(rebooted):
    other = rebooted["other"]
    after = {path: fingerprint(path, ("Other", ids_of(rebooted["jail"], "Other")) if path == other else None)
             for path in rebooted["before"]}
    assert after == rebooted["before"]
    assert os.stat(rebooted["decoy_file"]).st_uid == 0   # still root's, as the decoy standing for /etc/shadow


def test_planted_entries_are_kept_as_they_are(rebooted):
    app = os.path.join(rebooted["jail"], "app")
    assert {rel: os.readlink(os.path.join(app, rel)) for rel in SYMLINKS} == rebooted["targets"]
    host_link = os.lstat(os.path.join(app, "data", "host_link"))
    decoy = os.stat(rebooted["decoy_file"])
    assert (host_link.st_ino, host_link.st_uid, stat.S_IMODE(host_link.st_mode)) == (decoy.st_ino, 0, 0o640)
    fifo = os.lstat(os.path.join(app, "data", "fifo"))
    assert stat.S_ISFIFO(fifo.st_mode) and fifo.st_uid == rebooted["store_uid"]


def test_the_provider_still_owns_reads_and_writes_its_data(rebooted):
    jail = rebooted["jail"]
    store = uid_of(jail, "Store")
    data = os.path.join(jail, "app", "data")
    for rel in ["", "own.txt", "own_link.txt", "sub"]:
        assert os.lstat(os.path.join(data, rel)).st_uid == store, rel
    seen = probe(jail, "Store", ATTEMPT + """
def write():
    with open("data/written-after.txt", "w") as f:
        f.write("new\\n")
print(json.dumps([open("data/own.txt").read(), open("data/own_link.txt").read(), attempt(write),
                  attempt(lambda: os.listdir("data/sub"))]))
""")
    assert seen == ["mine\n", "mine\n", "ok", "ok"]


def test_another_principal_still_cannot_read_the_providers_data(rebooted):
    seen = probe(rebooted["jail"], "Other", ATTEMPT + """
print(json.dumps([attempt(lambda: open("data/own.txt").read()), attempt(lambda: open("other/secret").read())]))
""")
    # Chroot mode: the provider's 0o700 folder; namespace mode: it is not mounted at all.
    refused = "PermissionError" if rebooted["mode"] == "chroot" else "FileNotFoundError"
    assert seen == [refused, "ok"]
