"""pspy export systemd: units checked by systemd's own tools, and run by a
real systemd.

Every unit of zoobank and of a multi-file app passes `systemd-analyze
verify`, and `systemd-analyze security` rates it at or below the target
docs/systemd.md documents. This machine's PID 1 is not systemd, so the
end-to-end test boots one: a container (systemd-nspawn, `--volatile=yes`:
the host's /usr, an empty /etc, the interpreter and the app bound in) whose
PID 1 is systemd, where install.sh installs zoobank's export and the units
serve zoobank's workload; the principals are then checked from the kernel's
side (/proc) and from inside their own mount namespaces.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ZOOBANK, pspy, write_app

from pspy.export.systemd import PRIVATE_TMP
from pspy.runtime import listening_fds

# The units run the checkout's own interpreter (its venv); every unit hides
# /tmp and /var/tmp (PrivateTmp=), and the exporter refuses an interpreter
# there. CI's checkout is elsewhere; a developer's under /tmp sees why.
_VENV = os.path.realpath(sys.prefix)
pytestmark = pytest.mark.skipif(any(_VENV == t or _VENV.startswith(t + "/") for t in PRIVATE_TMP),
                                reason=f"the checkout's interpreter ({_VENV}) is under /tmp or /var/tmp, "
                                       "which exported units hide; run the suite from a checkout elsewhere")

# docs/systemd.md: the target exposure of systemd-analyze security (0-10, lower is better).
TARGET_NO_NETWORK = 1.0     # providers without network=True
TARGET_NETWORK = 2.0        # the front end and network=True providers

MULTI = {
    "pspy.toml": """\
        front_end = ["python", "front.py"]
        env = { web = ["FRONT_SECRET"] }
        perms = { web = { "uploads/" = 0o700 } }
        """,
    "front.py": """\
        import store
        if __name__ == "__main__":
            print(store.get("x"))
        """,
    "store.py": """\
        import pspy

        @pspy.service(service_provider="Store", group="Shared", perms={"data/": 0o750}, callers=["web", "Worker"],
                      limits={"memory": "64M", "processes": 16, "open_files": 64, "file_size": "1M",
                              "cpu_seconds": 3, "cpus": 0.5, "call_timeout": 2})
        def get(key):
            return key
        """,
    "worker.py": """\
        import pspy

        @pspy.service(service_provider="Worker", seccomp="strict", extra_groups=["Shared"], callers=["web"])
        def work(n):
            return n * 2
        """,
    "fetch.py": """\
        import pspy

        @pspy.service(service_provider="Fetcher", network=True, perms={"cache/": 0o700}, callers=["web"])
        def fetch(url):
            return url
        """,
}


# Ids far above the blocks bootstrap picks (from 40000): jails that other tests
# bootstrap meanwhile never take them, so exporting twice sees the same ids free.
IDS = ("--uid-base", "1900000000", "--gid-base", "1900000000")


def export(app, out, *extra):
    proc = pspy("export", "systemd", app, "--out", str(out), *extra)
    assert proc.returncode == 0, f"export failed:\n{proc.stdout}\n{proc.stderr}"
    return str(out)


def unit(out, name):
    """A unit file as {key: [values...]} (comments left out, every section together)."""
    settings = {}
    with open(os.path.join(out, name)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", "[")):
                continue
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def plan_of(out):
    with open(os.path.join(out, "runtime", "plan.json")) as f:
        return {p["name"]: p for p in json.load(f)["principals"]}


def units(out, suffixes=(".service", ".socket", ".target")):
    return sorted(f for f in os.listdir(out) if f.endswith(suffixes))


@pytest.fixture(scope="module")
def zoobank_out(tmp_path_factory):
    return export(ZOOBANK, tmp_path_factory.mktemp("zb") / "out", "--app-root", "/srv/zoobank", *IDS)


@pytest.fixture(scope="module")
def multi_out(tmp_path_factory):
    app = write_app(tmp_path_factory.mktemp("multi") / "multi", MULTI)
    return export(app, tmp_path_factory.mktemp("multi-out") / "out", "--app-root", "/srv/multi", *IDS)


# --- the runtime takes its socket from systemd ------------------------------------------

def test_runtime_takes_its_sockets_by_socket_activation():
    assert listening_fds({"LISTEN_FDS": "1", "LISTEN_PID": "4242"}, pid=4242) == [(3, None)]
    assert listening_fds({"LISTEN_FDS": "2", "LISTEN_PID": "4242"}, pid=4242) == [(3, None), (4, None)]
    # Meant for another process (a parent's, inherited): not ours.
    assert listening_fds({"LISTEN_FDS": "1", "LISTEN_PID": "4241"}, pid=4242) == []
    # pspy's supervisor's hand-over wins.
    assert listening_fds({"PSPY_LISTEN_FD": "7", "LISTEN_FDS": "1", "LISTEN_PID": "4242"}, pid=4242) == [(7, None)]


# --- systemd's tools ---------------------------------------------------------------------

@pytest.mark.parametrize("which", ["zoobank_out", "multi_out"])
def test_every_unit_passes_systemd_analyze_verify(which, request):
    out = request.getfixturevalue(which)
    files = units(out)
    assert len(files) >= 4
    proc = subprocess.run(["systemd-analyze", "verify", *files], cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("which", ["zoobank_out", "multi_out"])
def test_every_service_rates_at_or_below_the_documented_exposure(which, request):
    out = request.getfixturevalue(which)
    plan = plan_of(out)
    for name in units(out, (".service",)):
        principal = plan[re.match(r"pspy-[^-]+-(.+)\.service$", name).group(1)]
        networked = principal["kind"] == "front_end" or principal["network"]
        target = TARGET_NETWORK if networked else TARGET_NO_NETWORK
        # --threshold is in tenths: the command itself fails above it.
        proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--threshold={int(target * 10)}",
                               name], cwd=out, capture_output=True, text=True)
        exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout).group(1))
        assert proc.returncode == 0 and exposure <= target, f"{name}: exposure {exposure} > {target}"


# --- what the units say --------------------------------------------------------------------

def test_units_carry_each_principals_ids_files_and_network(zoobank_out):
    bank, auth, web = (unit(zoobank_out, f"pspy-zoobank-{n}.service") for n in ("Bank", "Auth", "web"))
    assert bank["User"] == ["pspy-zoobank-bank"] and bank["Group"] == ["pspy-zoobank-bankgroup"]
    # Bank calls Auth (its token check): it may connect to Auth's socket, nobody's else.
    assert bank["SupplementaryGroups"] == ["pspy-zoobank-auth-callers"]
    assert web["SupplementaryGroups"] == ["pspy-zoobank-auth-callers pspy-zoobank-bank-callers"]
    assert bank["ReadWritePaths"] == ["/srv/zoobank/db/bank"]
    assert "-/srv/zoobank/db/cred" in bank["InaccessiblePaths"][0].split()
    assert {"-/srv/zoobank/db/bank", "-/srv/zoobank/db/cred"} <= set(web["InaccessiblePaths"][0].split())
    assert "ReadWritePaths" not in web
    assert "/srv/zoobank" in bank["ReadOnlyPaths"][0].split()
    for u in (bank, auth):
        assert u["PrivateNetwork"] == ["yes"] and u["RestrictAddressFamilies"] == ["AF_UNIX"]
        assert u["ExecStart"][0].endswith(" -s -m pspy.provider")
    assert "PrivateNetwork" not in web
    assert web["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert web["EnvironmentFile"] == ["/etc/pspy/zoobank/env/web.env"]
    for u in (bank, auth, web):
        assert u["NoNewPrivileges"] == ["yes"] and u["CapabilityBoundingSet"] == [""]
        assert u["Restart"] == ["always"] and u["SystemCallArchitectures"] == ["native"]
        assert "PSPY_PLAN=/etc/pspy/zoobank/plan.json" in u["Environment"]
    sock = unit(zoobank_out, "pspy-zoobank-Bank.socket")
    assert sock["ListenStream"] == ["/run/pspy-zoobank/Bank.sock"]
    assert (sock["SocketUser"], sock["SocketGroup"], sock["SocketMode"]) == \
        (["root"], ["pspy-zoobank-bank-callers"], ["0660"])
    assert plan_of(zoobank_out)["Bank"]["socket"] == "/run/pspy-zoobank/Bank.sock"


def test_system_call_filter_is_the_principals_policy(zoobank_out, multi_out):
    for app, out, name in (("zoobank", zoobank_out, "Bank"), ("zoobank", zoobank_out, "web"),
                           ("multi", multi_out, "Worker")):
        policy = plan_of(out)[name]["seccomp"]["profile"]
        u = unit(out, f"pspy-{app}-{name}.service")
        allowed = set(u["SystemCallFilter"][0].split())
        policy_allows = {n for e in policy["syscalls"] if e["action"] == "SCMP_ACT_ALLOW" for n in e["names"]}
        # Everything the policy allows, and only what pspy's own filter needs on top
        # (loading itself, its denial reporter) or fails with its own errno (clone3).
        assert policy_allows <= allowed
        assert allowed - policy_allows <= {"seccomp", "gettid", "rt_sigreturn", "write", "clone3"}
        assert not allowed & {"mount", "ptrace", "unshare", "setns", "bpf", "setuid", "init_module", "kexec_load"}
        assert u["SystemCallErrorNumber"] == ["EPERM"]
        assert f"PSPY_SECCOMP=/etc/pspy/{app}/seccomp/{name}.filter" in u["Environment"]
    worker = unit(multi_out, "pspy-multi-Worker.service")
    # strict: no new processes, no sockets; clone for threads only, which pspy's filter checks.
    assert not {"execve", "fork", "vfork", "socket"} & set(worker["SystemCallFilter"][0].split())
    with open(os.path.join(multi_out, "pspy-multi-Worker.service")) as f:
        assert "# clone: allowed by the policy only for some arguments" in f.read()


def test_limits_groups_and_network_of_a_multi_file_app(multi_out):
    store, worker, fetcher, web = (unit(multi_out, f"pspy-multi-{n}.service")
                                   for n in ("Store", "Worker", "Fetcher", "web"))
    assert store["LimitCPU"] == ["3:4"] and store["MemoryMax"] == [str(64 << 20)] and store["TasksMax"] == ["16"]
    assert store["LimitNOFILE"] == ["64"] and store["LimitFSIZE"] == [str(1 << 20)]
    assert store["CPUQuota"] == ["50%"] and store["LimitNPROC"] == ["16"] and store["MemorySwapMax"] == ["0"]
    assert "LimitCPU" not in worker
    # Worker is in Store's group: Store's 0o750 data is readable to it, not writable.
    assert worker["SupplementaryGroups"] == ["pspy-multi-shared pspy-multi-store-callers"]
    assert "-/srv/multi/data" in worker["ReadOnlyPaths"][0].split()
    assert "-/srv/multi/data" in fetcher["InaccessiblePaths"][0].split()
    assert "PrivateNetwork" not in fetcher and fetcher["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert worker["PrivateNetwork"] == ["yes"]
    assert web["ReadWritePaths"] == ["/srv/multi/uploads"]
    with open(os.path.join(multi_out, "pspy-multi.tmpfiles.conf")) as f:
        tmpfiles = f.read()
    uid, gid = plan_of(multi_out)["Store"]["uid"], plan_of(multi_out)["Store"]["gid"]
    assert f"d /srv/multi/data 0750 {uid} {gid} -" in tmpfiles
    assert f"Z /srv/multi/data ~0750 {uid} {gid} -" in tmpfiles
    with open(os.path.join(multi_out, "runtime", "env", "web.env")) as f:
        assert "#FRONT_SECRET=" in f.read()


@pytest.mark.root
def test_sysusers_gives_every_account_the_plans_ids(multi_out, tmp_path):
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(["systemd-sysusers", f"--root={tmp_path}",
                           os.path.join(multi_out, "pspy-multi.sysusers.conf")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "etc" / "passwd") as f:
        users = {line.split(":")[0]: line.split(":")[2:4] for line in f}
    for name, p in plan_of(multi_out).items():
        assert users[f"pspy-multi-{name.lower()}"] == [str(p["uid"]), str(p["gid"])]


# --- mistakes --------------------------------------------------------------------------------

def test_a_bad_app_dir_is_named_without_a_traceback(tmp_path):
    proc = pspy("export", "systemd", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "nope: app folder not found" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    app = write_app(tmp_path / "plain", {"main.py": "print('no services')\n"})
    proc = pspy("export", "systemd", app, "--out", str(tmp_path / "out"), "--app-root", "/srv/plain")
    assert proc.returncode == 1 and "no @pspy.service found" in proc.stderr
    # An app under /tmp, run from there: every unit hides /tmp (PrivateTmp=).
    proc = pspy("export", "systemd", ZOOBANK, "--out", str(tmp_path / "out"), "--app-root", "/tmp/zoobank")
    assert proc.returncode == 1 and "PrivateTmp=" in proc.stderr and "--app-root" in proc.stderr


# --- run by systemd ------------------------------------------------------------------------------

def _container_init(container, log_path):
    """The container's PID 1 (systemd), once it runs: a descendant of
    systemd-nspawn in another PID and mount namespace than ours (never a helper
    still in ours: commands entered there would run on this host)."""
    ours = [os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "mnt")]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and container.poll() is None:
        todo = [container.pid]
        while todo:
            pid = todo.pop()
            try:
                todo += [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
                theirs = [os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("pid", "mnt")]
                exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                continue
            if exe == "systemd" and theirs[0] != ours[0] and theirs[1] != ours[1]:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"the container did not start:\n{open(log_path).read()}")


def _container_cmd(leader, *argv, timeout=60, check=True):
    proc = subprocess.run(["nsenter", "-t", str(leader), "-a", *argv], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in the container failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.root
def test_zoobank_runs_as_its_exported_units_under_systemd():
    from pspy.export.systemd import _interpreter
    if shutil.which("systemd-nspawn") is None:
        pytest.fail("systemd-nspawn is missing: apt-get install systemd-container (scripts/setup.sh does)")
    # Not under /tmp: the units hide it (PrivateTmp=).
    base = f"/opt/pspy-systemd-test-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    app, out = os.path.join(base, "zoobank"), os.path.join(base, "out")
    shutil.copytree(ZOOBANK, app, ignore=shutil.ignore_patterns("__pycache__", "db"))
    subprocess.run(["chmod", "-R", "a+rX", base], check=True)
    export(app, out)
    with open(os.path.join(out, "runtime", "env", "web.env"), "w") as f:
        f.write("ZOOBANK_PORT=8080\nZOOBANK_SECRET_KEY=web-only\n")
    binds = [f"--bind-ro={p}" for p in _interpreter(None).read_paths if not (p == "/usr" or p.startswith("/usr/"))]
    log = open(os.path.join(base, "container.log"), "w")
    container = subprocess.Popen(
        ["systemd-nspawn", "--quiet", "-D", "/", "--volatile=yes", "--private-network", "--register=no",
         "--keep-unit", "-M", f"pspy-sd-{os.getpid()}", *binds, f"--bind={base}", "-b",
         "systemd.unit=basic.target", "systemd.firstboot=off"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    leader = None
    try:
        leader = _container_init(container, log.name)
        deadline = time.monotonic() + 60
        while _container_cmd(leader, "systemctl", "is-system-running", "--wait", check=False).stdout.strip() \
                not in ("running", "degraded"):   # degraded: host units that cannot run in a container
            assert time.monotonic() < deadline, f"the container's systemd did not boot:\n{open(log.name).read()}"
            time.sleep(0.1)
        _container_cmd(leader, "sh", os.path.join(out, "install.sh"))
        _container_cmd(leader, "systemctl", "start", "pspy-zoobank.target")
        workload = _container_cmd(leader, sys.executable, os.path.join(app, "workload.py"), "http://127.0.0.1:8080",
                                  check=False)
        journal = _container_cmd(leader, "journalctl", "--no-pager", "-u", "pspy-zoobank*", check=False).stdout
        assert workload.returncode == 0, f"{workload.stdout}\n{workload.stderr}\n{journal}"
        assert re.search(r"balance of alice\d+: 7\nbalance of bob\d+: 13", workload.stdout), workload.stdout
        assert "HTTP 401" in workload.stdout

        plan = plan_of(out)
        pids = {}
        for name in ("web", "Auth", "Bank"):
            pid = _container_cmd(leader, "systemctl", "show", "-p", "MainPID", "--value",
                                 f"pspy-zoobank-{name}.service").stdout.strip()
            status = _container_cmd(leader, "cat", f"/proc/{pid}/status", f"/proc/{pid}/comm").stdout
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            assert fields["Uid"].split() == [str(plan[name]["uid"])] * 4
            assert fields["NoNewPrivs"].strip() == "1" and int(fields["CapBnd"], 16) == 0
            assert fields["Seccomp"].strip() == "2"
            # pspy's sitecustomize ran (it names the process), so its filter is loaded
            # on top of systemd's: it ends the process (status 126) when it cannot.
            assert status.rstrip().endswith(f"pspy:{name}")
            pids[name] = pid
        sockets = _container_cmd(leader, "stat", "-c", "%U %G %a", "/run/pspy-zoobank/Bank.sock").stdout.split()
        assert sockets == ["root", "pspy-zoobank-bank-callers", "660"]

        # From inside each principal's own mount namespace, with its ids.
        def as_principal(name, code):
            uid, gid = str(plan[name]["uid"]), str(plan[name]["gid"])
            return _container_cmd(leader, "nsenter", "-t", pids[name], "-m", "-S", uid, "-G", gid,
                                  sys.executable, "-c", code).stdout.strip()
        probe = ("import os\ndef attempt(f):\n    try:\n        f()\n        return 'ok'\n"
                 "    except OSError as e:\n        return type(e).__name__\n")
        bank_db = os.path.join(app, "db", "bank", "bank.db")
        assert as_principal("web", probe + f"print(attempt(lambda: open({bank_db!r})))") == "PermissionError"
        # InaccessiblePaths=: not even its owner's folder is there to look at.
        assert as_principal("web", f"import os; print(oct(os.stat({os.path.dirname(bank_db)!r}).st_mode))") \
            == "0o40000"
        writes = as_principal("Bank", probe + f"print(attempt(lambda: open({bank_db!r}, 'a')), "
                                              f"attempt(lambda: open({os.path.join(app, 'app.py')!r}, 'a')))")
        assert writes == "ok PermissionError"
        # ProtectSystem=strict and ReadWritePaths=: the app is mounted read-only in
        # Bank's view, its data folder read-write.
        mounts = as_principal("Bank", f"import os; print([bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in "
                                      f"({app!r}, {os.path.dirname(bank_db)!r})])")
        assert mounts == "[True, False]"
    finally:
        if leader is not None:
            subprocess.run(["nsenter", "-t", str(leader), "-a", "systemctl", "poweroff"], capture_output=True)
        try:
            container.wait(timeout=20)
        except subprocess.TimeoutExpired:
            container.kill()
            container.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)



def test_exporting_again_keeps_ids_or_refuses(tmp_path):
    app = write_app(tmp_path / "multi", MULTI)
    out = export(app, tmp_path / "out", "--app-root", "/srv/multi", *IDS)
    first = plan_of(out)
    export(app, out, "--app-root", "/srv/multi")   # the ids of the export already there
    assert {n: (p["uid"], p["gid"]) for n, p in plan_of(out).items()} == \
        {n: (p["uid"], p["gid"]) for n, p in first.items()}
    # A new provider named before the others would take their ids: their data would change hands.
    write_app(app, {"audit.py": "import pspy\n\n@pspy.service(service_provider='Audit')\ndef log(x):\n    return x\n"})
    proc = pspy("export", "systemd", app, "--out", out, "--app-root", "/srv/multi")
    assert proc.returncode == 1 and "would change the ids of" in proc.stderr and "Fetcher" in proc.stderr
    assert plan_of(out) == first
