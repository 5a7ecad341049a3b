"""zoobank privilege-separated, in chroot mode, in namespace mode, and in
rootless namespace mode (bootstrapped by an unprivileged user the tests
create), probed from inside each principal.

The lab's exercises 7 and 9: the front end cannot touch either database,
Bank only its own, Auth only its own; nobody can modify the app's code.
In namespace mode another principal's data is not even there.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import REPO, RUN_AS, ZOOBANK, access_of, free_port, probe, pspy, rootless_copy, seccomp_modes

sys.path.insert(0, ZOOBANK)
import workload  # noqa: E402 - the example's API client, reused rather than rewritten

pytestmark = pytest.mark.root

BANK_FILES = ["db/bank/", "db/bank/bank.db"]
CRED_FILES = ["db/cred/", "db/cred/cred.db"]
CODE_FILES = ["app.py", "auth.py", "bank.py", "db_paths.py"]


def api(port, method, path, body=None, token=None):
    """The example's own API client (examples/zoobank/workload.py)."""
    return workload.call(f"http://127.0.0.1:{port}", method, path, body, token)


def wait_http(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    raise AssertionError(f"zoobank did not answer on port {port}")


@pytest.fixture(scope="module", params=["chroot", "namespaces", "rootless"])
def zoobank(request, tmp_path_factory):
    if request.param == "rootless":
        user = request.getfixturevalue("rootless_user")
        app, jail = rootless_copy(user, ZOOBANK, "zoobank")
        RUN_AS[jail] = user
    else:
        app, jail = ZOOBANK, str(tmp_path_factory.mktemp(f"zoobank-{request.param}") / "jail")
    port = free_port()
    env = {"ZOOBANK_PORT": str(port), "ZOOBANK_SECRET_KEY": "front-end-only-secret"}
    mode_flags = ["--namespaces"] if request.param != "chroot" else []
    pspy("bootstrap", app, "--jail", jail, "--detach", *mode_flags, env=env, check=True)
    wait_http(port)
    # Denied means "permission denied" in chroot mode, "not there" in namespace mode.
    denied = "PermissionError" if request.param == "chroot" else "FileNotFoundError"
    yield {"jail": jail, "app": app, "port": port, "env": env, "mode": request.param, "flags": mode_flags,
           "denied": denied}
    pspy("stop", "--jail", jail)


def _paths(jail, rel_paths):
    # Probe paths are relative to the app root (the principal's working directory).
    return [p.rstrip("/") for p in rel_paths]


def test_register_login_transfer_and_balances_end_to_end(zoobank):
    port = zoobank["port"]
    status, alice = api(port, "POST", "/api/register", {"username": "alice", "password": "a-pw"})
    assert status == 200 and alice["token"]
    status, _ = api(port, "POST", "/api/register", {"username": "bob", "password": "b-pw"})
    assert status == 200
    assert api(port, "GET", "/api/balance/alice") == (200, {"username": "alice", "zoobars": 10})
    status, login = api(port, "POST", "/api/login", {"username": "alice", "password": "a-pw"})
    assert status == 200
    status, body = api(port, "POST", "/api/transfer", {"recipient": "bob", "zoobars": 3}, token=login["token"])
    assert status == 200, body
    assert api(port, "GET", "/api/balance/alice")[1]["zoobars"] == 7
    assert api(port, "GET", "/api/balance/bob")[1]["zoobars"] == 13
    # Refusals come back as clear HTTP errors, not crashes.
    assert api(port, "POST", "/api/transfer", {"recipient": "bob", "zoobars": 100}, token=login["token"])[0] == 400
    assert api(port, "POST", "/api/transfer", {"recipient": "bob", "zoobars": 1}, token="forged")[0] == 401
    assert api(port, "POST", "/api/login", {"username": "alice", "password": "wrong"})[0] == 403
    assert api(port, "GET", "/api/balance/nobody")[0] == 404


def test_providers_run_under_default_and_the_front_end_under_web(zoobank):
    report = json.loads(pspy("analyze", "--jail", zoobank["jail"], "--format", "json", "--include-seccomp",
                             check=True).stdout)
    sources = {p["name"]: p["seccomp"]["source"] for p in report["principals"]}
    assert sources == {"web": "shipped profile 'web'", "Auth": "shipped profile 'default'",
                       "Bank": "shipped profile 'default'"}
    for name in sources:   # the kernel's view: each running principal is filtered
        assert seccomp_modes(zoobank["jail"], name) == {"2"}, name


def test_web_cannot_read_bank_or_cred_files(zoobank):
    seen = access_of(zoobank["jail"], "web", _paths(zoobank["jail"], BANK_FILES + CRED_FILES))
    for path, result in seen.items():
        if path.endswith(".db"):
            assert result["read"] == zoobank["denied"], (path, result)
    # control: web reads its own code
    assert access_of(zoobank["jail"], "web", ["app.py"])["app.py"]["read"] == "ok"


def test_bank_reads_bank_db_but_not_cred_db(zoobank):
    seen = access_of(zoobank["jail"], "Bank", ["db/bank/bank.db", "db/cred/cred.db"])
    assert seen["db/bank/bank.db"] == {"read": "ok", "write": "ok"}
    assert seen["db/cred/cred.db"]["read"] == zoobank["denied"]
    assert seen["db/cred/cred.db"]["write"] == zoobank["denied"]


def test_auth_reads_cred_db_but_not_bank_db(zoobank):
    seen = access_of(zoobank["jail"], "Auth", ["db/cred/cred.db", "db/bank/bank.db"])
    assert seen["db/cred/cred.db"] == {"read": "ok", "write": "ok"}
    assert seen["db/bank/bank.db"]["read"] == zoobank["denied"]
    assert seen["db/bank/bank.db"]["write"] == zoobank["denied"]


@pytest.mark.parametrize("principal", ["web", "Auth", "Bank"])
def test_no_principal_can_modify_app_code(zoobank, principal):
    seen = access_of(zoobank["jail"], principal, CODE_FILES)
    refused = ("PermissionError", "OSError")   # EACCES, or EROFS on namespace mode's read-only /app
    for path in CODE_FILES:
        assert seen[path]["read"] == "ok" and seen[path]["write"] in refused, (principal, path, seen[path])
    created = probe(zoobank["jail"], principal, """
        import json
        try:
            open("new_module.py", "w").close()
            print(json.dumps("ok"))
        except Exception as e:
            print(json.dumps(type(e).__name__))
        """)
    assert created in refused


def test_analyze_json_agrees_with_probes(zoobank):
    jail = zoobank["jail"]
    report = json.loads(pspy("analyze", "--jail", jail, "--format", "json", check=True).stdout)
    files = ["db/bank/bank.db", "db/cred/cred.db"] + CODE_FILES
    by_name = {p["name"]: p for p in report["principals"]}
    assert set(by_name) == {"web", "Auth", "Bank"}
    for name, p in by_name.items():
        assert {"uid", "gid", "groups", "readable", "writable"} <= set(p)
        seen = access_of(jail, name, files)
        for path in files:
            assert (seen[path]["read"] == "ok") == (path in p["readable"]), (name, path, seen[path])
            assert (seen[path]["write"] == "ok") == (path in p["writable"]), (name, path, seen[path])


def test_analyze_lists_exactly_the_namespaces_the_kernel_shows(zoobank):
    # chroot mode: none, on either side
    report = json.loads(pspy("analyze", "--jail", zoobank["jail"], "--format", "json", check=True).stdout)
    kernel_name = {"user": "user", "mount": "mnt", "pid": "pid", "ipc": "ipc", "uts": "uts", "cgroup": "cgroup",
                   "network": "net"}
    for name, pid in _principal_pids(zoobank).items():
        own = {label for label, ns in kernel_name.items()
               if os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")}
        listed = next(p["namespaces"] for p in report["principals"] if p["name"] == name)
        assert sorted(listed) == sorted(own), (name, listed, own)
        if zoobank["mode"] != "chroot":
            assert ("network" in own) == (name != "web")   # the front end keeps the host's network


def test_principals_run_with_their_own_uids(zoobank):
    report = json.loads(pspy("analyze", "--jail", zoobank["jail"], "--format", "json", check=True).stdout)
    uids = {p["name"]: p["uid"] for p in report["principals"]}
    if zoobank["mode"] == "rootless":
        # One uid for all, the user's, and analyze says so plainly.
        assert set(uids.values()) == {RUN_AS[zoobank["jail"]].uid}
        assert report["isolation"]["uid_separation"] is False and report["rootless"] is True
        text = pspy("analyze", "--jail", zoobank["jail"], check=True).stdout
        assert "uid separation is NOT in effect" in text
        # ... and as a finding, its only one: zoobank's configuration is clean.
        assert [(f["id"], f["severity"]) for f in report["findings"]] == [("rootless", "high")]
        assert all(p["ids"]["uid_separation"] is False for p in report["principals"])
        import jsonschema
        jsonschema.validate(report, json.load(open(os.path.join(REPO, "docs", "analyze.schema.json"))))
    else:
        assert len(set(uids.values())) == 3
        assert report["isolation"]["uid_separation"] is True
        assert report["findings"] == []
    for name, uid in uids.items():
        assert probe(zoobank["jail"], name, "import os, json; print(json.dumps(os.getresuid()))") == [uid] * 3
        # and not root in any group either
        assert probe(zoobank["jail"], name, "import os, json; print(json.dumps(0 in os.getgroups()))") is False


def test_live_analyze_finds_no_disagreement_in_any_mode(zoobank):
    # tests/test_analyze.py checks chroot and namespace mode in detail;
    # rootless, --live runs as the user and probes fresh sandboxes.
    proc = pspy("analyze", "--jail", zoobank["jail"], "--live", "--format", "json")
    assert proc.stdout.startswith("{"), proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["disagreements"] == 0, proc.stdout + proc.stderr
    assert result["checks"] > 90
    if zoobank["mode"] == "rootless":
        assert all("fresh sandbox" in r["how"] for r in result["principals"].values())


def _running_pids(jail):
    state = json.load(open(os.path.join(jail, ".pspy", "run", "state.json")))
    return {name: info["pid"] for name, info in state["principals"].items()}


def _principal_pids(zoobank):
    """The principals' own processes: the supervisor's children in chroot mode; in
    namespace mode the processes named pspy:<principal> (the children of their PID 1s)."""
    pids = _running_pids(zoobank["jail"])
    if zoobank["mode"] == "chroot":
        return pids
    # Matched by name and by this jail's uid (another app's principals may share the name).
    plan = json.load(open(os.path.join(zoobank["jail"], ".pspy", "plan.json")))
    uid_of = {p["name"]: p["uid"] for p in plan["principals"]}
    found = {}
    for entry in os.listdir("/proc"):
        try:
            comm = open(f"/proc/{entry}/comm").read().strip()
        except OSError:
            continue
        for name in pids:
            if comm == f"pspy:{name}"[:15] and _uid_of(entry) == uid_of[name]:
                found[name] = int(entry)
    assert set(found) == set(pids), found
    return found


def _app_uids(jail):
    plan = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
    return {p["uid"] for p in plan["principals"]}


def _app_pids(jail):
    uids = _app_uids(jail)
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) in uids]


def _uid_of(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None


def test_provider_environment_holds_only_what_its_configuration_names(zoobank):
    pids = _principal_pids(zoobank)

    def environ(pid):
        raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        return dict(e.decode().split("=", 1) for e in raw if e)

    web_env = environ(pids["web"])
    assert web_env["ZOOBANK_SECRET_KEY"] == "front-end-only-secret"   # control: configured for web
    for provider in ("Auth", "Bank"):
        env = environ(pids[provider])
        assert "ZOOBANK_SECRET_KEY" not in env
        assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE",
                            "PYTHONUNBUFFERED", "PSPY_PRINCIPAL", "PSPY_PLAN", "PSPY_DEBUG", "PSPY_LISTEN_FD",
                            "PSPY_CALLER_FDS", "PSPY_CONTROL_FD", "PYTHONNOUSERSITE", "PSPY_SECCOMP",
                            "PSPY_LANDLOCK", "PSPY_CONFINED", "MALLOC_ARENA_MAX"}, env
    # Nor does any other process of the app (PID 1 of namespace mode included);
    # rootless, the supervisor and its keeper have the user's uid, but they
    # are the user's own processes, outside.
    state = json.load(open(os.path.join(zoobank["jail"], ".pspy", "run", "state.json")))
    for pid in set(_app_pids(zoobank["jail"])) - {state["supervisor"], state["keeper"]}:
        try:
            raw = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if pid != pids["web"]:
            assert b"front-end-only-secret" not in raw, pid


def test_principals_inherit_no_descriptor_but_stdio(zoobank):
    # Beyond stdio (its own log), a principal may hold only sockets and files it
    # opened itself inside the app; nothing of the supervisor's reaches it.
    jail = os.path.realpath(zoobank["jail"])
    app = os.path.join(jail, "app") if zoobank["mode"] == "chroot" else "/app"
    pids = _principal_pids(zoobank)
    for name, pid in pids.items():
        assert _uid_of(pid) not in (None, 0)
        fd_dir = f"/proc/{pid}/fd"
        targets = {fd: os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)}
        # stdin is /dev/null; stdout and stderr the write end of one pipe
        # the supervisor reads (never the log file itself, which the
        # principal could truncate).
        assert targets["0"] == "/dev/null", targets["0"]
        assert targets["1"] == targets["2"] and targets["1"].startswith("pipe:"), (name, targets)
        for fd in ("1", "2"):
            flags = int(open(f"/proc/{pid}/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
            assert flags & os.O_ACCMODE == os.O_WRONLY, (name, fd, oct(flags))
        for fd, target in targets.items():
            if int(fd) <= 2:
                continue
            # A pipe only if the principal holds both ends: its own (the seccomp denial reports).
            own_pipe = target.startswith("pipe:") and list(targets.values()).count(target) == 2
            assert (target.startswith(("socket:", "anon_inode:")) or own_pipe
                    or target.startswith(app + "/")), (name, fd, target)


def test_caller_not_in_callers_is_refused(zoobank):
    # Bank's services name only web as caller; Auth calling them is refused by the kernel-checked uid.
    result = probe(zoobank["jail"], "Auth", """
        import json, bank, pspy
        try:
            bank.balance("alice")
            print(json.dumps("called"))
        except pspy.PermissionDenied as e:
            print(json.dumps("denied"))
        """)
    assert result == "denied"
    # control: web may call it
    assert probe(zoobank["jail"], "web", "import json, bank; print(json.dumps(bank.balance('alice')))") == 7


def test_rebootstrap_keeps_ids_and_provider_data(zoobank):
    jail, env = zoobank["jail"], zoobank["env"]
    before = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
    pspy("stop", "--jail", jail, check=True)
    pspy("bootstrap", zoobank["app"], "--jail", jail, "--detach", *zoobank["flags"], env=env, check=True)
    wait_http(zoobank["port"])
    after = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
    assert {p["name"]: p["uid"] for p in before["principals"]} == {p["name"]: p["uid"] for p in after["principals"]}
    assert before["groups"] == after["groups"]
    assert api(zoobank["port"], "GET", "/api/balance/bob")[1]["zoobars"] == 13


def test_stop_leaves_no_process_of_the_app(zoobank):
    jail = zoobank["jail"]
    pids = _running_pids(jail)
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids.values())   # control: running now
    proc = pspy("stop", "--jail", jail, check=True)
    assert "stopped" in proc.stdout
    for pid in pids.values():
        assert not os.path.exists(f"/proc/{pid}"), pid
    uids = _app_uids(jail)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit()
                 and (_root_of(p) == os.path.realpath(jail) or _uid_of(p) in uids)]
    # A zombie runs nothing: rootless, the exited supervisor has the user's uid
    # until this machine's PID 1 reaps it.
    assert [p for p in leftovers if not _is_zombie(p)] == []
    assert pspy("status", "--jail", jail).returncode == 3


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True   # gone


def _root_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return None
