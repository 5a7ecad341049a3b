"""Chroot jails share one root-owned copy of each interpreter file by hard link
(pspy/runtime_store.py): nothing a principal can write is ever shared, a
changed host file never changes what another jail holds, and jails on another
filesystem get copies."""

import os
import stat
import time

import pytest

from conftest import ATTEMPT, ZOOBANK, probe, pspy
from pspy import jail as jail_module
from pspy import runtime_store

pytestmark = pytest.mark.root


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    monkeypatch.setattr(runtime_store, "STORE_DIR", str(root / "runtime"))
    monkeypatch.setattr(runtime_store, "_stores", {})
    return root / "runtime"


def host_file(tmp_path, name, mode=0o644, text="print('hi')\n"):
    path = tmp_path / "host" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def copy_into(tmp_path, jail_name, src):
    dst = tmp_path / jail_name / src.name
    dst.parent.mkdir(exist_ok=True)
    jail_module._copy_file(str(src), str(dst))
    return dst


def test_two_jails_get_one_root_owned_inode_for_an_unchanged_file(tmp_path, store):
    src = host_file(tmp_path, "mod.py")
    a, b = copy_into(tmp_path, "jail-a", src), copy_into(tmp_path, "jail-b", src)
    assert os.stat(a).st_ino == os.stat(b).st_ino != os.stat(src).st_ino
    assert os.stat(a).st_nlink == 3   # the store's entry and the two jails
    assert (os.stat(a).st_uid, stat.S_IMODE(os.stat(a).st_mode)) == (0, 0o644)
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700 and os.stat(store).st_uid == 0
    assert a.read_text() == src.read_text()


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o4755, 0o2755])
def test_a_file_others_may_write_or_a_setuid_one_is_copied_not_shared(tmp_path, store, mode):
    src = host_file(tmp_path, "risky", mode)
    a, b = copy_into(tmp_path, "jail-a", src), copy_into(tmp_path, "jail-b", src)
    assert os.stat(a).st_ino != os.stat(b).st_ino
    assert os.stat(a).st_nlink == os.stat(b).st_nlink == 1
    assert not os.path.exists(store) or os.listdir(store) == []


def test_a_changed_host_file_gets_a_new_entry_and_the_other_jail_keeps_its_copy(tmp_path, store):
    src = host_file(tmp_path, "mod.py", text="old\n")
    a = copy_into(tmp_path, "jail-a", src)
    b = copy_into(tmp_path, "jail-b", src)
    time.sleep(1.1)   # the re-bootstrap check compares whole seconds of mtime
    src.write_text("new, longer\n")
    jail_module._copy_file(str(src), str(a))   # jail-a bootstrapped again
    assert a.read_text() == "new, longer\n"
    assert b.read_text() == "old\n"            # written beside, never into the shared inode
    assert len(os.listdir(store)) == 2


def test_a_store_someone_else_could_write_is_not_used(tmp_path, store):
    store.mkdir(mode=0o700)
    os.chmod(store, 0o777)
    src = host_file(tmp_path, "mod.py")
    a, b = copy_into(tmp_path, "jail-a", src), copy_into(tmp_path, "jail-b", src)
    assert os.stat(a).st_ino != os.stat(b).st_ino
    assert os.listdir(store) == []


def test_a_store_that_is_a_symlink_is_not_used(tmp_path, store):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    store.symlink_to(elsewhere)
    src = host_file(tmp_path, "mod.py")
    copy_into(tmp_path, "jail-a", src)
    assert os.listdir(elsewhere) == []


def test_entries_no_jail_links_are_pruned_after_the_grace_time_only(tmp_path, store):
    kept, dropped = host_file(tmp_path, "kept.py"), host_file(tmp_path, "dropped.py")
    copy_into(tmp_path, "jail-a", kept)
    gone = copy_into(tmp_path, "jail-b", dropped)
    gone.unlink()
    assert runtime_store.prune() == 0                      # unlinked just now: kept a while
    assert runtime_store.prune(now=time.time() + runtime_store.UNUSED_GRACE_S + 5) == 1
    assert len(os.listdir(store)) == 1
    assert (tmp_path / "jail-a" / "kept.py").read_text() == kept.read_text()


def test_a_principal_can_neither_write_its_runtime_nor_link_it_into_its_data(tmp_path):
    jails = [str(tmp_path / "one"), str(tmp_path / "two")]
    for jail in jails:
        pspy("bootstrap", ZOOBANK, "--jail", jail, "--no-run", check=True)
    # the first jail's copy of the os module is the second's, through the store
    module = os.__file__.lstrip("/")
    inodes = {os.stat(os.path.join(j, module)).st_ino for j in jails}
    assert len(inodes) == 1 and os.stat(os.path.join(jails[0], module)).st_nlink >= 3
    before = open(os.path.join(jails[1], module), "rb").read()
    result = probe(jails[0], "Bank", ATTEMPT + f"""
import errno
path = {os.__file__!r}
def link_into_data():
    os.link(path, "/app/db/bank/os.py")
print(json.dumps({{"write": attempt(lambda: open(path, "ab")), "chmod": attempt(lambda: os.chmod(path, 0o666)),
                  "link": attempt(link_into_data), "read": len(open(path, "rb").read()) > 0}}))
""")
    # link: refused (fs.protected_hardlinks: the file is root's; Landlock refers no file into data)
    assert result == {"write": "PermissionError", "chmod": "PermissionError", "link": "PermissionError",
                      "read": True}
    assert open(os.path.join(jails[1], module), "rb").read() == before
