"""Resource limits (limits= on the decorator), tried from inside the
principal in chroot and namespace mode: each limit stops its bomb, beside a
control in which a principal without limits (Free) does the same thing.

tests/apps/limits: Hog has memory 64M, processes 16, open_files 32,
file_size 1M, cpu_seconds 3, cpus 0.5; Free has no limits.
"""

import json
import os
import textwrap
import time

import pytest

from conftest import OUTCOME, REPO, RUN_AS, own_process, probe, provider_pid, pspy, rootless_copy, run_state, status_rows

pytestmark = pytest.mark.root

LIMITS_APP = os.path.join(REPO, "tests", "apps", "limits")
MiB = 1 << 20


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def jail(request, tmp_path_factory):
    jail = str(tmp_path_factory.mktemp(f"limits-{request.param}") / "jail")
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", LIMITS_APP, "--jail", jail, "--detach", *flags, check=True)
    yield {"jail": jail, "mode": request.param}
    pspy("stop", "--jail", jail)


MEMORY = """
import json
chunks = []
try:
    while len(chunks) < 200:
        chunks.append(bytearray(MiB))
    result = "ok"
except MemoryError:
    result = "MemoryError"
print(json.dumps([result, len(chunks)]))
""".replace("MiB", str(MiB))


def test_memory_without_bound_is_contained(jail):
    # The exec session shares the cgroup with the running provider, so either
    # bound may be hit first: RLIMIT_DATA (MemoryError) or the cgroup (SIGKILL).
    proc = pspy("exec", "--jail", jail["jail"], "Hog", "--", "python", "-c", MEMORY)
    if proc.returncode == 0:
        result, held = json.loads(proc.stdout)
        assert result == "MemoryError" and held < 64, held
    else:
        # SIGKILL from the cgroup's out-of-memory killer: pspy exec reports a
        # killed child as 256 - 9; in namespace mode its PID 1 reports 128 + 9.
        assert proc.returncode in (256 - 9, 128 + 9), proc
    assert probe(jail["jail"], "Free", MEMORY) == ["ok", 200]   # control: 200 MiB without limits


BIG = """
import json
try:
    block = bytearray(100 * MiB)   # mapped, never touched: only RLIMIT_DATA sees it
    print(json.dumps("ok"))
except MemoryError:
    print(json.dumps("MemoryError"))
""".replace("MiB", str(MiB))


def test_mapping_more_than_the_memory_limit_fails_with_memory_error(jail):
    assert probe(jail["jail"], "Hog", BIG) == "MemoryError"
    assert probe(jail["jail"], "Free", BIG) == "ok"


# Three processes of 40 MiB each: every one is under the 64 MiB RLIMIT_DATA,
# together they pass the cgroup's 64 MiB: the kernel kills one.
CGROUP_MEMORY = """
import json, os, time
kids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        block = bytearray(40 * MiB)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(1)
        os._exit(0)
    kids.append(pid)
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids]))
""".replace("MiB", str(MiB))


def test_the_cgroup_holds_memory_that_several_processes_use_together(jail):
    codes = probe(jail["jail"], "Hog", CGROUP_MEMORY)
    assert -9 in codes, codes   # SIGKILL by the cgroup's out-of-memory killer
    assert probe(jail["jail"], "Free", CGROUP_MEMORY) == [0, 0, 0]


FORKS = """
import json, os, time
kids, error = [], None
r, w = os.pipe()
while len(kids) < 40:
    try:
        pid = os.fork()
    except OSError as e:
        error = type(e).__name__
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)   # held until the parent has counted and closed its end
        os._exit(0)
    kids.append(pid)
os.close(w)
for k in kids:
    os.waitpid(k, 0)
print(json.dumps([len(kids), error]))
"""


def test_forking_without_bound_stops_at_the_process_limit(jail):
    count, error = probe(jail["jail"], "Hog", FORKS)
    assert error == "BlockingIOError" and count < 16, (count, error)
    assert probe(jail["jail"], "Free", FORKS) == [40, None]


FILES = """
import json
held = []
try:
    while len(held) < 100:
        held.append(open("/dev/null"))
    result = "ok"
except OSError as e:
    result = type(e).__name__ + str(e.errno)
print(json.dumps([result, len(held)]))
"""


def test_opening_files_without_bound_stops_at_open_files(jail):
    result, count = probe(jail["jail"], "Hog", FILES)
    assert result == "OSError24" and count < 32, (result, count)   # EMFILE
    assert probe(jail["jail"], "Free", FILES) == ["ok", 100]


WRITE = """
import json, os, tempfile
def write(n):
    try:
        # its own temporary folder: chroot mode's /tmp is the jail's, shared, and Landlock keeps it out
        with open(os.path.join(tempfile.gettempdir(), "big-%d" % os.getpid()), "wb") as f:
            f.write(b"x" * n)
        return "ok"
    except OSError as e:
        return "errno %d" % e.errno
print(json.dumps([write(512 * 1024), write(2 * MiB)]))
""".replace("MiB", str(MiB))


def test_a_file_past_file_size_cannot_be_written(jail):
    assert probe(jail["jail"], "Hog", WRITE) == ["ok", "errno 27"]   # EFBIG; Python ignores SIGXFSZ
    assert probe(jail["jail"], "Free", WRITE) == ["ok", "ok"]


def test_a_spinning_principal_is_killed_at_cpu_seconds(jail):
    # Control: a second of CPU is within the 3 s limit.
    spin = "import time\nend = time.process_time() + {}\nwhile time.process_time() < end: pass\nprint(1)"
    assert probe(jail["jail"], "Hog", spin.format(1)) == 1
    start = time.monotonic()
    proc = pspy("exec", "--jail", jail["jail"], "Hog", "--", "python", "-c", "while True: pass", timeout=60)
    assert proc.returncode != 0 and time.monotonic() - start < 30
    assert "1" not in proc.stdout


def test_the_ready_copy_waits_under_the_same_limits_and_cgroups_as_the_serving_copy(jail):
    def limits_and_cgroups(pid):
        limits = [line for line in open(f"/proc/{pid}/limits") if line.startswith("Max ")]
        lines = open(f"/proc/{pid}/cgroup").read().splitlines()
        cgroups = sorted(line.split(":", 1)[1] for line in lines
                         if {"memory", "pids", "cpu"} & set(line.split(":")[1].split(",")))
        return limits, cgroups or [line for line in lines if line.startswith("0::")]   # v2 alone

    deadline = time.monotonic() + 20
    while not (state := run_state(jail["jail"]))["principals"]["Hog"].get("spare_ready"):
        assert time.monotonic() < deadline, "Hog's ready copy did not become ready"
        time.sleep(0.1)
    hog, free = state["principals"]["Hog"], state["principals"]["Free"]
    serving, spare = own_process(hog["pid"]), own_process(hog["spare_pid"])
    assert serving != spare
    assert limits_and_cgroups(spare) == limits_and_cgroups(serving)
    limits, cgroups = limits_and_cgroups(spare)
    assert any(line.startswith("Max open files") and line.split()[3] == "32" for line in limits), limits
    assert all("Hog" in line for line in cgroups) and cgroups, cgroups
    # control: Free's copies have neither its limits nor its cgroups
    assert limits_and_cgroups(own_process(free["pid"])) != (limits, cgroups)


def test_a_provider_past_its_cpu_seconds_is_killed_and_status_says_which_limit(jail):
    before = status_rows(jail["jail"])
    assert before["Hog"]["last_exit"] is None and before["Hog"]["running"]
    # Control first: a call that does not spin is answered.
    call = OUTCOME + "import pspy, hog\nprint(json.dumps(outcome(hog.{})))"
    assert probe(jail["jail"], "Free", call.format("pid"))[0] == "ok"
    assert probe(jail["jail"], "Free", call.format("spin"))[0] == "CallInterrupted"
    deadline = time.monotonic() + 20
    while (hog := status_rows(jail["jail"])["Hog"])["last_exit"] is None or not hog["answers"]:
        assert time.monotonic() < deadline, hog
        time.sleep(0.1)
    assert hog["last_exit"]["reason"] == "was killed by SIGXCPU (its cpu_seconds limit)", hog
    assert hog["restarts"] == 1 and hog["pid"] != before["Hog"]["pid"]
    # The text form: pid, ids, uptime, restarts, why it last ended, its socket answers.
    line = next(text.strip() for text in pspy("status", "--jail", jail["jail"], check=True).stdout.splitlines()
                if text.strip().startswith("Hog "))
    assert f"uid {hog['uid']} gid {hog['gid']}" in line and f"pid {hog['pid']} up " in line, line
    assert "1 restart, last was killed by SIGXCPU (its cpu_seconds limit)" in line and line.endswith(", answers")
    assert os.path.exists(f"/proc/{hog['pid']}") and 0 <= hog["uptime_s"] < 20, hog
    assert status_rows(jail["jail"])["Free"]["last_exit"] is None   # control: Free was not touched


def test_a_principal_cannot_raise_its_limits(jail):
    code = """
    import json, resource
    def attempt(r, value):
        try:
            resource.setrlimit(r, (value, value))
            return "ok"
        except (ValueError, OSError) as e:
            return type(e).__name__
    print(json.dumps([attempt(resource.RLIMIT_NOFILE, 1024), attempt(resource.RLIMIT_DATA, 1 << 40),
                      attempt(resource.RLIMIT_NOFILE, 20)]))
    """
    assert probe(jail["jail"], "Hog", textwrap.dedent(code)) == ["ValueError", "ValueError", "ok"]


def test_limits_are_visible_from_inside_and_their_cgroup_files_hold_them(jail):
    limits = probe(jail["jail"], "Hog", """
import json, resource
print(json.dumps({n: resource.getrlimit(getattr(resource, n))[1] for n in
                  ("RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_FSIZE")}))
""")
    assert limits == {"RLIMIT_CPU": 4, "RLIMIT_DATA": 64 * MiB, "RLIMIT_NPROC": 16, "RLIMIT_NOFILE": 32,
                      "RLIMIT_FSIZE": MiB}
    # The running provider sits in its cgroups, which hold the limits.
    report = json.loads(pspy("analyze", "--jail", jail["jail"], "--format", "json", check=True).stdout)
    hog = next(p for p in report["principals"] if p["name"] == "Hog")
    pid = provider_pid(jail["jail"], "Hog")
    groups = dict(line.split(":", 2)[1:] for line in open(f"/proc/{pid}/cgroup").read().splitlines())
    for controller, name, value in (("memory", "memory.limit_in_bytes", str(64 * MiB)),
                                    ("pids", "pids.max", "16"), ("cpu", "cpu.cfs_quota_us", "50000")):
        assert hog["cgroups"][controller] == "v1"
        assert groups[controller].endswith("/Hog")
        with open(f"/sys/fs/cgroup/{controller}{groups[controller]}/{name}") as f:
            assert f.read().strip() == value
    free_pid = provider_pid(jail["jail"], "Free")
    assert open(f"/proc/{free_pid}/cgroup").read().count("/Free") == 0   # control: no limits, no cgroup
    if jail["mode"] == "namespaces":
        inside = probe(jail["jail"], "Hog", """
import json
def attempt():
    try:
        open("/sys/fs/cgroup/pids/pids.max", "w").write("max")
        return "ok"
    except OSError as e:
        return e.errno
print(json.dumps([open("/proc/self/cgroup").read().count(":/\\n"),
                  [l.split()[-3] for l in open("/proc/self/limits") if l.startswith("Max processes")],
                  open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read().strip(),
                  open("/sys/fs/cgroup/pids/pids.max").read().strip(), attempt()]))
""")
        # its cgroup namespace shows its own cgroups as "/"; they are read-only (EROFS)
        assert inside == [10, ["16"], str(64 * MiB), "16", 30]


def test_analyze_reports_the_limits_and_what_enforces_them(jail):
    report = json.loads(pspy("analyze", "--jail", jail["jail"], "--format", "json", check=True).stdout)
    hog = next(p for p in report["principals"] if p["name"] == "Hog")
    assert hog["limits"] == {"memory": 64 * MiB, "processes": 16, "open_files": 32, "file_size": MiB,
                             "cpu_seconds": 3, "cpus": 0.5}
    assert hog["cgroups"] == {"cpu": "v1", "memory": "v1", "pids": "v1"}
    assert "cgroup v1 memory" in hog["limits_enforced_by"]
    assert {r["resource"] for r in hog["rlimits"]} == {"RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_NPROC",
                                                       "RLIMIT_NOFILE", "RLIMIT_FSIZE"}
    free = next(p for p in report["principals"] if p["name"] == "Free")
    assert free["limits"] == {} and free["limits_enforced_by"] == "no limits"
    text = pspy("analyze", "--jail", jail["jail"], check=True).stdout
    assert "limits:    cpu_seconds 3, cpus 0.5" in text


def test_stop_removes_the_principals_cgroups(tmp_path):
    jail = str(tmp_path / "jail")
    pspy("bootstrap", LIMITS_APP, "--jail", jail, "--detach", "--namespaces", check=True)
    folders = json.load(open(os.path.join(jail, ".pspy", "run", "state.json")))["cgroups"]
    assert len(folders) == 3 and all(os.path.isdir(f) for f in folders)
    pspy("stop", "--jail", jail, check=True)
    assert not any(os.path.exists(f) for f in folders)
    assert not any(os.path.exists(os.path.dirname(f)) for f in folders)


def test_rootless_limits_are_setrlimit_only_and_analyze_says_so(rootless_user):
    app, jail = rootless_copy(rootless_user, LIMITS_APP, "limits")
    RUN_AS[jail] = rootless_user
    pspy("bootstrap", app, "--jail", jail, "--no-run", "--namespaces", check=True)
    report = json.loads(pspy("analyze", "--jail", jail, "--format", "json", check=True).stdout)
    hog = next(p for p in report["principals"] if p["name"] == "Hog")
    assert hog["cgroups"] == {} and hog["limits_enforced_by"].startswith("setrlimit only (rootless")
    assert "RLIMIT_NPROC" not in {r["resource"] for r in hog["rlimits"]}   # the uid is the user's own
    result, held = probe(jail, "Hog", MEMORY)
    assert result == "MemoryError" and held < 64
    assert probe(jail, "Hog", BIG) == "MemoryError"
    assert probe(jail, "Hog", WRITE) == ["ok", "errno 27"]
