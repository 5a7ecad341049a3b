"""limits=: what it may say, what it becomes (setrlimit calls, cgroup files
on v1 and v2), and which hierarchy holds a controller. Pure: no root."""

import pytest

from conftest import write_app
from pspy import limits
from pspy.discover import discover
from pspy.errors import DiscoveryError, SandboxError
from pspy.plan import Plan, PrincipalPlan
from pspy.sandbox import cgroup

MiB = 1 << 20


def test_sizes_may_be_written_with_units_and_numbers_stay_numbers():
    got, problems = limits.normalize({"memory": "64M", "file_size": "1KiB", "processes": 15,
                                      "cpu_seconds": 1, "call_timeout": 0.5, "cpus": 0.5}, "here")
    assert problems == []
    assert got == {"memory": 64 * MiB, "file_size": 1024, "processes": 15, "cpu_seconds": 1,
                   "call_timeout": 0.5, "cpus": 0.5}


@pytest.mark.parametrize("value, message", [
    ({"memry": 1}, "unknown limit 'memry'"),
    ({"memory": "lots"}, "limits memory must be bytes"),
    ({"memory": 1024}, "at least 16777216"),
    ({"processes": 0}, "limits processes must be a whole number from 1"),
    ({"processes": True}, "limits processes must be a whole number"),
    ({"open_files": 3}, "from 16"),
    ({"call_timeout": 0}, "limits call_timeout must be a number in (0, 86400]"),
    ({"cpu_seconds": 0.5}, "at least 1"),
    ([1], "limits must be a dict"),
])
def test_bad_limits_are_refused_saying_which_and_why(value, message):
    _, problems = limits.normalize(value, "svc.py:3")
    assert problems and all(p.startswith("svc.py:3") for p in problems)
    assert any(message in p for p in problems), problems


def test_limits_become_rlimits_with_a_hard_cpu_limit_a_second_later():
    got = limits.rlimits({"cpu_seconds": 2, "memory": 64 * MiB, "processes": 15, "open_files": 64,
                          "file_size": MiB, "call_timeout": 1}, rootless=False)
    assert got == [(limits.RLIMIT_CPU, 2, 3), (limits.RLIMIT_DATA, 64 * MiB, 64 * MiB),
                   (limits.RLIMIT_NPROC, 15, 15), (limits.RLIMIT_NOFILE, 64, 64),
                   (limits.RLIMIT_FSIZE, MiB, MiB)]
    # Rootless the uid is the user's own: a process limit on it would count their shell too.
    assert limits.RLIMIT_NPROC not in [r for r, _, _ in limits.rlimits({"processes": 15}, rootless=True)]


def test_per_call_cpu_seconds_bound_each_call_process_not_the_provider_forwarding_them():
    given = {"cpu_seconds": 1, "memory": 64 * MiB}
    assert limits.rlimits(given, rootless=False, per_call=True) == [(limits.RLIMIT_DATA, 64 * MiB, 64 * MiB)]
    assert limits.call_rlimits(given) == [(limits.RLIMIT_CPU, 1, 2)]
    assert limits.call_rlimits({"memory": 64 * MiB}) == []


def test_cgroup_files_on_v1_and_v2():
    lim = {"memory": 64 * MiB, "processes": 15, "cpus": 0.5}
    assert limits.cgroup_controllers(lim) == ["memory", "pids", "cpu"]
    assert limits.cgroup_files(lim, "memory", "v1") == [("memory.limit_in_bytes", str(64 * MiB)),
                                                         ("memory.memsw.limit_in_bytes", str(64 * MiB))]
    assert limits.cgroup_files(lim, "memory", "v2") == [("memory.max", str(64 * MiB)), ("memory.swap.max", "0")]
    assert limits.cgroup_files(lim, "pids", "v2") == [("pids.max", "15")]
    assert limits.cgroup_files(lim, "cpu", "v1") == [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000")]
    assert limits.cgroup_files(lim, "cpu", "v2") == [("cpu.max", "50000 100000")]


def _host(tmp_path, monkeypatch, mounts, own, v2_controllers="cpu memory pids"):
    (tmp_path / "mounts").write_text(mounts)
    (tmp_path / "cgroup").write_text(own)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text(v2_controllers + "\n")
    monkeypatch.setattr(cgroup, "MOUNTS", str(tmp_path / "mounts"))
    monkeypatch.setattr(cgroup, "OWN", str(tmp_path / "cgroup"))
    return str(v2)


def test_a_controller_is_found_on_v1_where_a_hierarchy_holds_it_else_on_v2(tmp_path, monkeypatch):
    v2 = _host(tmp_path, monkeypatch,
               f"cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\ncgroup2 {tmp_path}/v2 cgroup2 rw 0 0\n",
               "4:memory:/box\n0::/svc\n")
    assert cgroup.locate("memory") == ("v1", "/sys/fs/cgroup/memory/box")
    assert cgroup.locate("pids") == ("v2", f"{v2}/svc")
    assert cgroup.locate("hugetlb") is None


def test_a_pure_v2_host_places_every_controller_on_v2_and_the_view_at_sys_fs_cgroup(tmp_path, monkeypatch):
    v2 = _host(tmp_path, monkeypatch, f"cgroup2 {tmp_path}/v2 cgroup2 rw 0 0\n", "0::/\n")
    hog = PrincipalPlan(name="Hog", kind="provider", uid=1, gid=1, group="Hog", extra_groups=[], groups=[],
                        env=[], limits={"memory": 64 * MiB, "processes": 15})
    plan = Plan(app_name="x", app_source="/x", jail="/j", mode="namespaces", uid_base=40000, gid_base=40000,
                interpreter="/usr/bin/python3", groups={}, principals=[hog])
    plan.cgroups = cgroup.hierarchies(plan)
    assert plan.cgroups == {"memory": "v2", "pids": "v2"}
    folder = f"{v2}/{cgroup.app_folder_name(plan)}/Hog"
    assert cgroup.folders(plan, hog) == {"memory": folder, "pids": folder}
    assert cgroup.view_mounts(plan, hog) == [(folder, "/sys/fs/cgroup")]


def test_a_limit_the_host_cannot_enforce_is_an_error_naming_the_principal(tmp_path, monkeypatch):
    _host(tmp_path, monkeypatch, "proc /proc proc rw 0 0\n", "0::/\n")
    hog = PrincipalPlan(name="Hog", kind="provider", uid=1, gid=1, group="Hog", extra_groups=[], groups=[],
                        env=[], limits={"memory": 64 * MiB})
    plan = Plan(app_name="x", app_source="/x", jail="/j", mode="chroot", uid_base=40000, gid_base=40000,
                interpreter="/usr/bin/python3", groups={}, principals=[hog])
    with pytest.raises(SandboxError, match="limits of Hog need the cgroup controller 'memory'"):
        cgroup.hierarchies(plan)


def test_decorator_limits_are_checked_with_file_and_line_and_merged_once(tmp_path):
    root = write_app(tmp_path, {"svc.py": """\
        import pspy

        @pspy.service(service_provider="Box", limits={"memory": "64M", "call_timeout": 1},
                      isolation="per_call")
        def run(code):
            pass

        @pspy.service(service_provider="Box", limits={"memory": "32M"})
        def other():
            pass

        @pspy.service(service_provider="Bad", limits={"memroy": 1}, isolation="thread")
        def bad():
            pass
        """})
    with pytest.raises(DiscoveryError) as info:
        discover(root)
    text = "\n".join(f"{loc}: {msg}" for loc, msg in info.value.problems)
    assert "svc.py:8: provider 'Box' is given limits=" in text
    assert "svc.py:12: limits: unknown limit 'memroy'" in text
    assert "svc.py:12: isolation must be one of 'process', 'per_call', got 'thread'" in text
