"""per_call's folder of call folders, without root: in chroot mode /tmp is
shared by every principal, so names another principal plants there must
never stop a provider from starting, and a live copy's folder is kept."""

import os
import tempfile

from pspy import percall


def test_planted_names_do_not_stop_a_provider_and_only_dead_makers_folders_go(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    prefix = "pspy-calls-Runner-"
    planted = [f"{prefix}99999999999999999999-x", f"{prefix}\u00b2-x", f"{prefix}-x", f"{prefix}abc"]
    for name in planted:
        os.mkdir(tmp_path / name)
    live = tmp_path / f"{prefix}{os.getpid()}-live"     # a copy that still runs: kept
    os.mkdir(live)
    dead_pid = 2 ** 22 + 1                               # above pid_max's default: no such process
    dead = tmp_path / f"{prefix}{dead_pid}-dead"
    os.mkdir(dead)
    base = percall._fresh_base("Runner")
    assert os.path.isdir(base) and os.path.basename(base).startswith(f"{prefix}{os.getpid()}-")
    assert live.is_dir() and not dead.exists()
    other = tmp_path / "pspy-calls-Other-1-x"            # another provider's: not touched
    os.mkdir(other)
    percall._fresh_base("Runner")
    assert other.is_dir()
