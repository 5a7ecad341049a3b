"""The Landlock value in the plan, its rules file and pspy.toml's landlock
table: pure, no root. tests/test_landlock.py proves the rules from inside
real principals."""

import os
import sys

import pytest

from pspy import _landlock, config
from pspy.errors import ConfigError, PlanError
from pspy.plan import Options, build_plan
from pspy.sandbox.landlock import elf_loader, grants
from test_plan import zoobank


def test_providers_without_network_have_tcp_denied_and_the_front_end_keeps_it():
    plan = build_plan(zoobank(), Options())
    by_name = {p.name: p.landlock for p in plan.principals}
    assert by_name["web"]["tcp"] == "allow" and by_name["Bank"]["tcp"] == "deny"
    assert all(v["scoped"] for v in by_name.values())
    # name resolution and CA certificates are for principals with network only
    assert ["r", "/etc/resolv.conf"] in by_name["web"]["rules"]
    assert ["r", "/etc/resolv.conf"] not in by_name["Bank"]["rules"]


def test_chroot_mode_grants_each_principal_its_own_home_and_temporary_folder_and_namespace_mode_its_tmp():
    chroot = {p.name: p for p in build_plan(zoobank(), Options()).principals}
    ns = {p.name: p for p in build_plan(zoobank(), Options(mode="namespaces")).principals}
    bank = chroot["Bank"]
    assert (bank.home, bank.tmpdir) == ("/.pspy/home/Bank", "/tmp/pspy-Bank")
    assert ["rw", bank.home] in bank.landlock["rules"] and ["rw", bank.tmpdir] in bank.landlock["rules"]
    assert ["rw", "/tmp"] not in bank.landlock["rules"]
    assert ns["Bank"].tmpdir == ns["Bank"].home == "/tmp" and ["rw", "/tmp"] in ns["Bank"].landlock["rules"]
    shared = build_plan(zoobank(), Options(shared_tmp=True)).principal("Bank")
    assert ["rw", "/tmp"] in shared.landlock["rules"]


def test_only_python_and_the_programs_pspy_toml_lists_are_executable():
    value = grants("chroot", "web", True, [], ["/usr/bin/convert"])
    executable = {path for letters, path in value["rules"] if "x" in letters}
    assert "/usr/bin/convert" in executable
    assert not executable & {"/usr", "/bin", "/lib", "/usr/bin"}
    assert os.path.realpath(sys.executable) in executable


def test_a_system_pythons_prefix_is_readable_but_only_the_interpreter_there_executable(monkeypatch):
    import pspy.sandbox.landlock as landlock
    monkeypatch.setattr(landlock, "interpreter_prefixes", lambda: ["/usr"])
    value = grants("namespaces", "Bank", False, [])
    assert ["r", "/usr"] in value["rules"] and ["rx", "/usr"] not in value["rules"]


def test_landlock_can_be_turned_off_and_execute_must_name_principals_of_the_app():
    assert all(p.landlock is None for p in build_plan(zoobank(), Options(landlock=False)).principals)
    with pytest.raises(PlanError, match="landlock.execute is configured for 'Nobody'"):
        build_plan(zoobank(), Options(landlock_execute={"Nobody": ["/bin/true"]}))


@pytest.mark.parametrize("toml, message", [
    ('landlock = false', "landlock must be a dict"),
    ('[landlock]\nenabled = "no"', "landlock.enabled must be true or false"),
    ('[landlock]\nexecute = { web = ["convert"] }', "absolute program paths"),
    ('[landlock]\nread = ["/etc"]', "unknown setting landlock.read"),
])
def test_a_bad_landlock_table_is_an_error_naming_the_file(tmp_path, toml, message):
    (tmp_path / "pspy.toml").write_text(toml + "\n")
    with pytest.raises(ConfigError, match=message) as e:
        config.load(str(tmp_path))
    assert str(tmp_path / "pspy.toml") in str(e.value)


def test_a_rules_file_that_is_not_one_is_refused_with_its_line():
    with pytest.raises(RuntimeError, match="not a pspy Landlock rules file"):
        _landlock.parse("hello\n", "/x.rules")
    with pytest.raises(RuntimeError, match=r"/x.rules:3: not a rule"):
        _landlock.parse(f"{_landlock.MAGIC} tcp=deny\nr /usr\nq /etc\n", "/x.rules")
    settings, rules = _landlock.parse(f"{_landlock.MAGIC} tcp=deny scoped=1\nrx /app\n", "/x.rules")
    assert settings == {"tcp": "deny", "scoped": "1"} and rules == [("rx", "/app")]


def test_letters_map_to_the_rights_the_kernel_handles():
    handled = _landlock.handled_fs(7)
    assert _landlock.rights("r", handled) == _landlock.READ_FILE | _landlock.READ_DIR
    assert _landlock.rights("l", handled) == _landlock.READ_DIR
    assert _landlock.rights("f", handled) == _landlock.WRITE_FILE | _landlock.TRUNCATE
    assert _landlock.rights("w", handled) & _landlock.EXECUTE == 0
    # an older ABI handles less, and a rule never asks for what it does not handle
    assert _landlock.rights("rwd", _landlock.handled_fs(1)) == _landlock.handled_fs(1) & ~_landlock.EXECUTE
    assert _landlock.handled_net(3) == 0 and _landlock.scopes(5) == 0


def test_the_interpreter_s_elf_loader_is_found():
    loader = elf_loader(os.path.realpath(sys.executable))
    assert loader and os.path.exists(loader) and "ld-linux" in loader
    assert elf_loader(__file__) is None
