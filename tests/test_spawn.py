"""Namespace mode's spawn path (pspy/_native/spawn.c) and the template roots
it copies (pspy/sandbox/template.py), driven in-process as the supervisor
drives them: several starts of one principal from one template."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO, pspy

pytestmark = pytest.mark.root

ESCAPE = os.path.join(REPO, "tests", "apps", "escape")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The escape app bootstrapped (not run) in namespace mode, with the app's
    user namespace and templates as a supervisor holds them."""
    from pspy.plan import Plan
    from pspy.sandbox import template
    from pspy.sandbox.user import create_user_namespace
    jail = str(tmp_path_factory.mktemp("spawn") / "jail")
    pspy("bootstrap", ESCAPE, "--jail", jail, "--namespaces", "--no-run", check=True)
    plan = Plan.load(jail)
    userns = create_user_namespace(plan)
    yield plan, userns
    template.release(plan)
    os.close(userns)


def run(app, principal, code, **kwargs):
    """Run Python code as the principal; it prints one JSON value."""
    from pspy.sandbox.spawn import spawn_principal
    plan, userns = app
    with tempfile.TemporaryFile() as out:
        proc = spawn_principal(plan, plan.principal(principal), ["python", "-c", code], stdout=out,
                               stderr=subprocess.STDOUT, userns_fd=userns, **kwargs)
        assert proc.wait(timeout=60) == 0
        out.seek(0)
        text = out.read().decode()
    return json.loads(text.strip().splitlines()[-1])


LOOK_AND_LEAVE_A_MARK = """
import json, os
seen = {"tmp": sorted(os.listdir("/tmp")), "shm": sorted(os.listdir("/dev/shm"))}
for path in ("/tmp/mark", "/dev/shm/mark"):
    with open(path, "w") as f:
        f.write("left by an earlier start")
seen["written"] = [os.path.exists("/tmp/mark"), os.path.exists("/dev/shm/mark")]
print(json.dumps(seen))
"""


def tmp_holds(plan):
    """What a fresh /tmp holds: the folders leading to a Python prefix that
    lives under /tmp on the host (a venv there, as in a CI checkout)."""
    from pspy.sandbox import mount
    return sorted({os.path.relpath(p, "/tmp").split("/")[0] for p in mount.python_paths(plan.jail)
                   if p.startswith("/tmp/")})


def test_each_start_from_one_template_gets_an_empty_tmp_and_dev_shm(app, monkeypatch):
    from pspy.sandbox import template
    plan, _ = app
    template.release(plan)
    builds = []
    real_build = template.build
    monkeypatch.setattr(template, "build", lambda *a: builds.append(a[1].name) or real_build(*a))
    first = run(app, "Store", LOOK_AND_LEAVE_A_MARK)
    second = run(app, "Store", LOOK_AND_LEAVE_A_MARK)
    assert builds == ["Store"]                      # one root, copied by both starts
    assert first["written"] == [True, True]        # control: the writes worked
    assert first["tmp"] == second["tmp"] == tmp_holds(plan)
    assert second["shm"] == [] and first["shm"] == []


def test_starts_from_one_template_do_not_share_namespaces(app):
    # Both alive at once: the kernel reuses a freed namespace's number.
    code = ("import json, os, sys; print(json.dumps([os.readlink('/proc/self/ns/' + n) "
            "for n in ('pid', 'mnt', 'net')]), flush=True); sys.stdin.read()")
    first, second = (started(app, "Store", code) for _ in range(2))
    try:
        a, b = (json.loads(proc.stdout.readline()) for proc in (first, second))
        assert all(x != y for x, y in zip(a, b)), (a, b)
        assert a[1] != os.readlink("/proc/self/ns/mnt")   # control: not the host's either
    finally:
        for proc in (first, second):
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0


def test_the_principal_has_a_cgroup_namespace_of_its_own(app):
    code = ("import json, os; print(json.dumps([os.readlink('/proc/self/ns/cgroup'), "
            "open('/proc/self/cgroup').read().split()]))")
    ns, lines = run(app, "Store", code)
    assert ns != os.readlink("/proc/self/ns/cgroup")   # not the host's
    assert all(line.endswith(":/") for line in lines), lines   # its cgroup is its root: no host path


def test_only_principals_with_a_filter_load_one(app):
    code = "import json; print(json.dumps([l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0]))"
    assert run(app, "Store", code) == "2"   # the default profile, from its filter file
    assert run(app, "Bare", code) == "0"    # control: seccomp="none" (PSPY_SECCOMP=none)


def test_filter_files_are_readable_whatever_the_umask_and_strangers_are_refused(app):
    from pspy import jail
    from pspy.errors import JailError
    from pspy.plan import FILTER_DIR
    plan, _ = app
    folder = os.path.join(plan.jail, FILTER_DIR.lstrip("/"))
    old = os.umask(0o077)
    try:
        with open(os.path.join(folder, "Gone.filter"), "w") as f:   # a principal the plan no longer has
            f.write("x")
        jail.write_filters(plan)
    finally:
        os.umask(old)
    assert sorted(os.listdir(folder)) == ["Net.filter", "Store.filter", "web.filter"]   # not Bare's, nor Gone's
    assert oct(os.stat(folder).st_mode & 0o777) == "0o755"
    for name in os.listdir(folder):
        assert oct(os.stat(os.path.join(folder, name)).st_mode & 0o777) == "0o644"
    assert run(app, "Store", "import json; print(json.dumps('started'))") == "started"   # control
    os.mkdir(os.path.join(folder, "odd"))
    try:
        with pytest.raises(JailError, match="odd is not a filter file of pspy's"):
            jail.write_filters(plan)
    finally:
        os.rmdir(os.path.join(folder, "odd"))
    moved = folder + ".real"
    os.rename(folder, moved)
    os.symlink(moved, folder)
    try:
        with pytest.raises(JailError, match="symlink"):
            jail.write_filters(plan)
    finally:
        os.unlink(folder)
        os.rename(moved, folder)


def test_a_jail_without_filter_files_loads_the_filter_from_the_plan(app):
    """Jails bootstrapped before the filter files existed still start filtered."""
    from pspy import jail
    from pspy.plan import filter_path
    from pspy.sandbox import template
    plan, _ = app
    os.unlink(os.path.join(plan.jail, filter_path("Store").lstrip("/")))
    template.release(plan)
    try:
        code = ("import json; print(json.dumps([[l.split()[1] for l in open('/proc/self/status') "
                "if l.startswith('Seccomp:')][0], __import__('os').path.exists('" + filter_path("Store") + "')]))")
        assert run(app, "Store", code) == ["2", False]
    finally:
        jail.write_filters(plan)
        template.release(plan)


def test_a_filter_file_that_is_not_one_is_refused():
    from pspy import _filter
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"not a filter\n\x00\x01")
        f.flush()
        with pytest.raises(RuntimeError, match="is not a pspy seccomp filter"):
            _filter.install_file(f.name, sys.stderr)


def started(app, principal, code):
    from pspy.sandbox.spawn import spawn_principal
    plan, userns = app
    return spawn_principal(plan, plan.principal(principal), ["python", "-c", code], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, userns_fd=userns)


def test_a_python_prefix_under_tmp_is_bound_again_over_the_fresh_tmp(app, monkeypatch):
    """A venv living under /tmp on the host is bound into the root at its own
    path: the fresh /tmp of each start must not hide it."""
    from pspy.sandbox import mount, template
    prefix = tempfile.mkdtemp(prefix="pspy-prefix-", dir="/tmp")
    try:
        os.chmod(prefix, 0o777)   # writable to all on the host: only the bind can make it read-only
        with open(os.path.join(prefix, "marker"), "w") as f:
            f.write("interpreter files")
        os.chmod(os.path.join(prefix, "marker"), 0o644)
        real = mount.python_paths
        monkeypatch.setattr(mount, "python_paths", lambda jail: [*real(jail), prefix])
        plan, _ = app
        template.release(plan)   # built again, with the extra prefix
        code = f"""
import errno, json, os
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def write(path):
    with open(path, "w") as f:
        f.write("x")
print(json.dumps({{"marker": open("{prefix}/marker").read(),
                  "write in prefix": attempt(lambda: write("{prefix}/new")),
                  "write in tmp": attempt(lambda: write("/tmp/mine")),
                  "tmp": sorted(os.listdir("/tmp"))}}))
"""
        for _ in range(2):
            result = run(app, "Store", code)
            assert result["marker"] == "interpreter files"
            assert result["write in prefix"] == "EROFS"   # a read-only bind, though the folder is 0777
            assert result["write in tmp"] == "ok"        # control
            assert result["tmp"] == sorted({*tmp_holds(plan), "mine"})
    finally:
        plan, _ = app
        template.release(plan)
        subprocess.run(["rm", "-rf", prefix], check=True)


def test_pid_1_is_pspy_init_as_the_principal_with_nothing_of_the_supervisors(app):
    plan, _ = app
    principal = plan.principal("Store")
    proc = started(app, "Store", "import sys; print('ready', flush=True); sys.stdin.read()")
    try:
        assert proc.stdout.readline() == b"ready\n"   # its sitecustomize has run
        status = dict(line.split(":", 1) for line in open(f"/proc/{proc.pid}/status"))
        assert status["Name"].strip() == "pspy-init:Store"
        assert status["Uid"].split()[:3] == [str(principal.uid)] * 3
        for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[field], 16) == 0, field
        assert status["NoNewPrivs"].strip() == "1"
        # Not dumpable: the kernel gives its /proc files to root, not to its uid.
        assert os.stat(f"/proc/{proc.pid}/status").st_uid == 0 != principal.uid
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd")) == [2]   # stderr alone
        assert open(f"/proc/{proc.pid}/cmdline", "rb").read().split(b"\0")[0] == b"pspy-init:Store"
        children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
        assert len(children) == 1   # the principal, and nothing else of pspy's
        kid = children[0]
        assert open(f"/proc/{kid}/comm").read().strip() == "pspy:Store"
        assert proc.pidns() == os.readlink(f"/proc/{kid}/ns/pid")
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_a_missing_program_is_named_and_leaves_nothing_behind(app):
    from pspy.errors import SandboxError
    from pspy.sandbox.spawn import spawn_principal
    plan, userns = app
    before = set(_children())
    with pytest.raises(SandboxError, match="cannot run 'no-such-program' as Store: no such program"):
        spawn_principal(plan, plan.principal("Store"), ["no-such-program"], userns_fd=userns)
    assert set(_children()) <= before   # PID 1 of the failed start was reaped


def test_signals_reach_the_principal_through_pid_1(app):
    from pspy.sandbox.spawn import spawn_principal
    plan, userns = app
    code = ("import signal, sys, os; signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); "
            "os.write(1, b'ready'); signal.pause()")
    r, w = os.pipe()
    proc = spawn_principal(plan, plan.principal("Bare"), ["python", "-c", code], stdout=w, userns_fd=userns)
    os.close(w)
    assert os.read(r, 5) == b"ready"
    os.close(r)
    proc.send_signal(15)
    assert proc.wait(timeout=30) == 7   # the principal's own status, through pspy-init


def test_starts_while_other_threads_come_and_go(app):
    """The spawn path's children share the supervisor's memory and its
    thread-local storage: starts must work, and leave the process usable,
    while other threads of it are created and exit all the time."""
    import threading
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()

    churners = [threading.Thread(target=churn) for _ in range(3)]
    for t in churners:
        t.start()
    try:
        results = [run(app, "Bare", "import json, os; print(json.dumps(os.getuid()))") for _ in range(20)]
    finally:
        stop.set()
        for t in churners:
            t.join(timeout=30)
    plan, _ = app
    assert results == [plan.principal("Bare").uid] * 20
    assert not any(t.is_alive() for t in churners)   # no thread left stuck on a lock a child took
    t = threading.Thread(target=lambda: None)       # and threads can still be made
    t.start()
    t.join(timeout=10)
    assert not t.is_alive()


def _children():
    me = os.getpid()
    try:
        return open(f"/proc/{me}/task/{me}/children").read().split()
    except OSError:
        return []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
