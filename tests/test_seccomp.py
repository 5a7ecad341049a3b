"""Seccomp: the shipped OCI profiles, policies as bootstrap resolves them,
and filters enforced inside real principals, in both isolation modes.

Every denial below is attempted from inside a principal (a service doing it
when called, or a probe run through pspy exec, which loads the same filter)
next to a control that the same principal may do.
"""

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import OUTCOME, REPO, probe, pspy, seccomp_modes, status_rows, write_app
from pspy import _native, seccomp
from pspy.seccomp import SeccompError

FILTERED = os.path.join(REPO, "tests", "apps", "filtered")
OCI_ACTIONS = set(seccomp.ACTIONS)


# --- the shipped profiles -------------------------------------------------------

@pytest.mark.parametrize("name", seccomp.SHIPPED)
def test_every_shipped_profile_is_oci_json_with_the_fields_other_runtimes_read(name):
    with open(os.path.join(REPO, "seccomp_profiles", f"{name}.json")) as f:
        data = json.load(f)
    assert data["defaultAction"] in OCI_ACTIONS
    assert set(data["architectures"]) >= {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"}
    assert data["syscalls"]
    for entry in data["syscalls"]:
        assert entry["names"] and all(isinstance(n, str) for n in entry["names"])
        assert entry["action"] in OCI_ACTIONS
        for arg in entry.get("args", []):
            assert set(arg) <= {"index", "value", "valueTwo", "op"} and arg["op"].startswith("SCMP_CMP_")
    assert data.get("comment"), "each profile says what it is for"


@pytest.mark.parametrize("name", seccomp.SHIPPED)
@pytest.mark.parametrize("arch, go", [("SCMP_ARCH_X86_64", {"amd64"}), ("SCMP_ARCH_AARCH64", {"arm64"})])
def test_every_name_in_a_shipped_profile_is_a_syscall_of_each_architecture_it_applies_to(name, arch, go):
    data = seccomp.read_profile(seccomp.shipped_path(name))
    lib = _native.lib
    missing = [n for entry in data["syscalls"] if seccomp.profiles._applies(entry, go) for n in entry["names"]
               if lib.seccomp_syscall_resolve_name_arch(getattr(lib, arch), n.encode()) < 0]
    assert missing == []


def test_default_denies_the_dangerous_families_and_strict_forbids_sockets_exec_and_fork():
    default = seccomp.allowed_names(seccomp.effective("default", network=True, front_end=False,
                                                      app_root="/", where="test")["profile"])
    for family in ("mount", "umount2", "pivot_root", "ptrace", "process_vm_readv", "process_vm_writev", "bpf",
                   "kexec_load", "init_module", "finit_module", "delete_module", "keyctl", "add_key",
                   "request_key", "unshare", "setns", "userfaultfd", "perf_event_open", "open_by_handle_at",
                   "reboot", "swapon", "swapoff", "clock_settime", "settimeofday", "adjtimex"):
        assert family not in default, family
    assert {"openat", "read", "write", "futex", "accept4", "connect", "execve"} <= default   # controls
    strict = seccomp.effective("strict", network=False, front_end=False, app_root="/", where="test")["profile"]
    names = seccomp.allowed_names(strict)
    assert not names & {"socket", "connect", "execve", "execveat", "fork", "vfork", "clone3"}
    assert {"accept4", "recvmsg", "sendmsg", "futex", "openat"} <= names   # it still serves its callers
    assert "socketpair(arg0 == AF_UNIX)" in seccomp.allowed(strict)       # asyncio's self-pipe
    assert "clone(arg0 & 0x7e030080 == 0x10000)" in seccomp.allowed(strict)   # threads only, no namespaces
    # No profile lets clone make namespaces, and clone3 (flags out of reach) is ENOSYS everywhere.
    for name in seccomp.SHIPPED:
        profile = seccomp.effective(name, network=True, front_end=False, app_root="/", where="x")["profile"]
        clones = [a for a in seccomp.allowed(profile) if a.startswith("clone")]
        assert clones and all("0x7e0" in a and "0x7e0" in a.split("==")[0] for a in clones), (name, clones)


# --- resolving policies -----------------------------------------------------------

def test_an_unknown_syscall_name_in_a_profile_is_an_error_naming_it(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "frobnicate", "write"], "action": "SCMP_ACT_ALLOW"}]}))
    with pytest.raises(SeccompError) as info:
        seccomp.effective("p.json", network=False, front_end=False, app_root=str(tmp_path), where="bank.py:3")
    assert "frobnicate" in str(info.value) and "unknown syscall" in str(info.value)
    assert "read," not in str(info.value)   # only the bad name


@pytest.mark.parametrize("profile, complaint", [
    ({"syscalls": []}, "missing defaultAction"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "needs a listener"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}, "missing action"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                                        "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}]}, "index"),
])
def test_malformed_profiles_are_refused_with_the_reason(tmp_path, profile, complaint):
    (tmp_path / "p.json").write_text(json.dumps(profile))
    with pytest.raises(SeccompError) as info:
        seccomp.read_profile(str(tmp_path / "p.json"))
    assert complaint in str(info.value) and "p.json" in str(info.value)


def test_inline_policy_is_layered_on_default():
    eff = seccomp.effective({"allow": ["ptrace"], "deny": ["execve"], "default_action": "kill"}, network=False,
                            front_end=False, app_root="/", where="bank.py:7")
    names = seccomp.allowed_names(eff["profile"])
    assert "ptrace" in names and "execve" not in names and "openat" in names
    assert eff["profile"]["defaultAction"] == "SCMP_ACT_KILL_PROCESS"
    assert "inline policy at bank.py:7" in eff["source"]
    assert "allows ptrace, a dangerous syscall" in seccomp.warnings(eff["profile"])
    with pytest.raises(SeccompError, match="unknown key"):
        seccomp.effective({"permit": ["read"]}, network=False, front_end=False, app_root="/", where="x")
    with pytest.raises(SeccompError, match="default_action"):
        seccomp.effective({"default_action": "ignore"}, network=False, front_end=False, app_root="/", where="x")


def test_network_false_keeps_socket_to_unix_even_when_the_profile_allows_every_domain():
    eff = seccomp.effective({"allow": ["socket"]}, network=False, front_end=False, app_root="/", where="x")
    sockets = [a for a in seccomp.allowed(eff["profile"]) if a.startswith("socket(")]
    assert sockets == ["socket(arg0 == AF_UNIX)"]
    assert any("AF_UNIX" in d for d in eff["derived"])
    web = seccomp.effective("web", network=True, front_end=True, app_root="/", where="x")   # control
    assert "socket(arg0 == AF_INET)" in seccomp.allowed(web["profile"])


def test_defaults_the_front_end_web_providers_default_and_none_means_no_filter():
    assert seccomp.effective(None, network=True, front_end=True, app_root="/", where="x")["source"] == \
        "shipped profile 'web'"
    assert seccomp.effective(None, network=False, front_end=False, app_root="/", where="x")["source"] == \
        "shipped profile 'default'"
    assert seccomp.effective("none", network=False, front_end=False, app_root="/", where="x") is None


def test_a_profile_path_must_stay_inside_the_app(tmp_path):
    with pytest.raises(SeccompError, match="inside the app"):
        seccomp.effective("../outside.json", network=False, front_end=False, app_root=str(tmp_path), where="x")


def test_bootstrap_reports_a_bad_profile_at_the_decorator_line_without_a_traceback(tmp_path):
    app = write_app(tmp_path / "app", {
        "svc.py": "import pspy\n\n@pspy.service(service_provider='Svc', seccomp='bad.json')\ndef f():\n    pass\n",
        "bad.json": json.dumps({"defaultAction": "SCMP_ACT_ERRNO",
                                "syscalls": [{"names": ["nosuchcall"], "action": "SCMP_ACT_ALLOW"}]})})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--namespaces", "--no-run")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "nosuchcall" in proc.stderr and "svc.py:3" in proc.stderr


# --- inside real principals ---------------------------------------------------------

@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def jail(request, tmp_path_factory):
    # Only root-marked tests use it: conftest skips them, with the reason, without root.
    path = str(tmp_path_factory.mktemp(f"filtered-{request.param}") / "jail")
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", FILTERED, "--jail", path, "--detach", *flags, check=True)
    yield path
    pspy("stop", "--jail", path)


CALL = OUTCOME + "import pspy, guard\n"


def call(jail, expr):
    return probe(jail, "web", CALL + f"print(json.dumps(outcome(lambda: {expr})))")


@pytest.mark.root
def test_a_denied_call_fails_with_eperm_an_allowed_one_works_and_the_service_keeps_serving(jail):
    assert call(jail, "guard.attempt('write own data')") == ["ok", "ok"]   # control
    assert call(jail, "guard.attempt('unix socket')") == ["ok", "ok"]      # control
    assert call(jail, "guard.attempt('mount')") == ["ok", "EPERM"]
    assert call(jail, "guard.attempt('unshare')") == ["ok", "EPERM"]
    assert call(jail, "guard.attempt('inet socket')") == ["ok", "EPERM"]
    assert call(jail, "guard.attempt('python child')") == ["ok", "ok"]     # control: a child runs, filtered
    assert call(jail, "guard.attempt('clone3')") == ["ok", "ENOSYS"]       # flags out of reach: refused
    assert call(jail, "guard.alive()") == ["ok", "yes"]                    # still serving


@pytest.mark.root
def test_clone_cannot_make_the_namespaces_unshare_may_not(jail):
    # Chroot mode: the kernel refuses a user namespace inside a chroot anyway;
    # in namespace mode the filter is what refuses it.
    assert call(jail, "guard.attempt('clone newuser')") == ["ok", "EPERM"]


@pytest.mark.root
def test_the_log_names_each_denied_call_and_the_python_line_that_made_it_once(jail):
    log_path = os.path.join(jail, ".pspy", "logs", "Guard.log")
    line = next(i for i, text in enumerate(open(os.path.join(FILTERED, "guard.py")), 1) if "_libc.mount(" in text)
    for _ in range(3):
        assert call(jail, "guard.attempt('mount')") == ["ok", "EPERM"]
    assert call(jail, "guard.attempt('inet socket')") == ["ok", "EPERM"]
    deadline = time.monotonic() + 5
    while "socket(AF_INET" not in open(log_path).read() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = open(log_path).read()
    mount_lines = [text for text in log.splitlines() if "seccomp denied:" in text and "mount(" in text]
    assert mount_lines and all("seccomp denied: Guard.attempt -> guard.py:" in text
                               and f"-> guard.py:{line} (_mount) -> mount(" in text for text in mount_lines), log
    assert len(mount_lines) == 1   # once per call site, though called three times
    assert "-> socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)" in log


STACK_PROBE = """
import ctypes, json, os, sys, time
sys.path.insert(0, sys.argv[3])
from pspy import _filter, seccomp

source, allow_tkill = sys.argv[1], sys.argv[2] == "1"
profile = seccomp.read_profile(seccomp.shipped_path("default"))
if not allow_tkill:
    for entry in profile["syscalls"]:
        entry["names"] = [n for n in entry["names"] if n != "tkill"]
_filter.force_stack_source = None if source == "natural" else source
libc = ctypes.CDLL(None, use_errno=True)
here = os.path.dirname(os.path.abspath(__file__))
log = open(os.path.join(here, "log.txt"), "w")
tkill = seccomp.allows_outright(profile, "tkill")


def deny_me():
    return libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), ctypes.get_errno()


used = _filter.stack_source(tkill)
_filter.install_program(seccomp.compile_bpf(profile), True, 1, log, here, tkill)
result = deny_me()
deadline = time.monotonic() + 5
while "mount(" not in open(os.path.join(here, "log.txt")).read() and time.monotonic() < deadline:
    time.sleep(0.02)
print(json.dumps({"source": used, "result": result}))
"""


@pytest.mark.parametrize("source, tkill", [("natural", True), ("natural", False), ("signal", True),
                                           ("none", True)])
def test_a_denial_record_holds_the_python_stack_on_every_cpython_and_never_costs_the_process(
        tmp_path, source, tkill):
    # "natural": what this CPython does (3.11 and 3.12: CPython's own dumper;
    # 3.13, which exports none: faulthandler on a signal the thread sends
    # itself, only where the filter allows tkill); the others are forced.
    (tmp_path / "probe.py").write_text(STACK_PROBE)
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py"), source, "1" if tkill else "0", REPO],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr    # alive: the denial did not kill it
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["result"] == [-1, errno.EPERM]                 # the call failed as EPERM would
    line = next(line for line in (tmp_path / "log.txt").read_text().splitlines() if "seccomp denied" in line)
    expected = {"natural": "dumper" if sys.version_info < (3, 13) else "signal" if tkill else "none"}
    assert out["source"] == expected.get(source, source)
    if out["source"] == "none":
        assert line.startswith("pspy: seccomp denied: mount("), line
    else:
        assert line.startswith("pspy: seccomp denied: probe.py:"), line
        assert ":19 (deny_me) -> mount(" in line, line


@pytest.mark.root
def test_with_default_action_kill_a_denied_call_kills_the_provider(jail):
    assert call(jail, "guard.killer_alive()") == ["ok", "yes"]   # control
    kind, _ = call(jail, "guard.mount_and_die()")
    assert kind == "CallInterrupted"   # the provider died before it could answer
    deadline = time.monotonic() + 20   # and the supervisor starts it again
    while call(jail, "guard.killer_alive()") != ["ok", "yes"]:
        assert time.monotonic() < deadline, "Killer did not come back"
        time.sleep(0.2)
    # pspy status says why it ended; Guard, whose denials are errors, never did.
    rows = status_rows(jail)
    assert rows["Killer"]["last_exit"]["reason"] == "was killed by SIGSYS (its seccomp filter)", rows["Killer"]
    assert rows["Killer"]["restarts"] >= 1 and rows["Killer"]["answers"] is True
    assert rows["Guard"]["last_exit"] is None and rows["Guard"]["restarts"] == 0


@pytest.mark.root
def test_network_false_with_a_profile_allowing_socket_still_cannot_make_an_inet_socket(jail):
    assert call(jail, "guard.make_socket('AF_UNIX')") == ["ok", "ok"]   # control
    assert call(jail, "guard.make_socket('AF_INET')") == ["ok", "EPERM"]
    assert call(jail, "guard.make_socket('AF_INET6')") == ["ok", "EPERM"]


@pytest.mark.root
def test_every_principal_runs_under_its_filter_and_analyze_shows_it(jail):
    report = json.loads(pspy("analyze", "--jail", jail, "--format", "json", "--include-seccomp",
                             check=True).stdout)
    by_name = {p["name"]: p["seccomp"] for p in report["principals"]}
    assert by_name["web"]["source"] == "shipped profile 'web'"
    assert by_name["Guard"]["source"] == "shipped profile 'default'"
    assert by_name["Guard"]["default_action"].startswith("SCMP_ACT_ERRNO")
    assert "openat" in by_name["Guard"]["allowed"] and "mount" not in by_name["Guard"]["allowed"]
    assert by_name["Killer"]["default_action"] == "SCMP_ACT_KILL_PROCESS"
    assert by_name["Open"]["profile"] == "none" and by_name["Open"]["warnings"]
    assert "socket(arg0 == AF_UNIX)" in by_name["Sock"]["allowed"]
    assert any("AF_UNIX" in d for d in by_name["Sock"]["derived"])
    text = pspy("analyze", "--jail", jail, "--include-seccomp", check=True).stdout
    assert "seccomp:   shipped profile 'default'" in text and "WARNING: no seccomp filter" in text
    # The kernel's view of the running principals: filter mode 2 where a filter
    # is planned, 0 where it is not.
    assert seccomp_modes(jail, "Guard") == {"2"}
    assert seccomp_modes(jail, "Sock") == {"2"}
    assert seccomp_modes(jail, "Open") == {"0"}


@pytest.mark.root
def test_export_prints_the_compiled_policy_as_an_oci_profile(jail):
    out = pspy("export", "seccomp", "Guard", "--jail", jail, check=True).stdout
    profile = json.loads(out)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == [seccomp.native_arch()[0]]
    assert all({"names", "action"} <= set(e) for e in profile["syscalls"])
    none = pspy("export", "seccomp", "Open", "--jail", jail)
    assert none.returncode == 1 and "without a seccomp filter" in none.stderr


# --- learning ---------------------------------------------------------------------

def test_a_learning_log_becomes_an_attributed_minimal_profile():
    from pspy import _native
    lib = _native.lib
    arch = getattr(lib, seccomp.native_arch()[0])
    nr = {n: lib.seccomp_syscall_resolve_name_arch(arch, n.encode()) for n in ("openat", "sendmsg")}
    log = "\n".join([
        "--- pspy: starting Bank ---",
        "pspy-learn-service 1 Bank.transfer",
        f"pspy-learn {nr['openat']} 0 {arch}",
        f"pspy-learn {nr['openat']} 1 {arch}",
        f"pspy-learn {nr['sendmsg']} 1 {arch}",
        "pspy-learn garbage",
    ])
    calls = seccomp.learned(log)
    assert calls == {"openat": {"", "Bank.transfer"}, "sendmsg": {"Bank.transfer"}}
    profile = seccomp.learned_profile("Bank", calls, ["python", "workload.py"])
    seccomp.check_profile(profile, "learned")
    comments = {e["names"][0]: e["comment"] for e in profile["syscalls"]}
    assert comments == {"openat": "used by: Bank (outside any service), Bank.transfer",
                        "sendmsg": "used by: Bank.transfer"}
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"


@pytest.mark.root
def test_learn_writes_profiles_that_run_the_workload_without_denials_and_allow_less_than_default(tmp_path):
    import shutil
    import sys
    from conftest import ZOOBANK, free_port
    app = str(tmp_path / "zoobank")
    shutil.copytree(ZOOBANK, app, ignore=shutil.ignore_patterns("__pycache__"))
    jail = str(tmp_path / "jail")
    port = free_port()
    env = {"ZOOBANK_PORT": str(port)}
    workload = [sys.executable, os.path.join(app, "workload.py"), f"http://127.0.0.1:{port}"]
    learned = pspy("learn", app, "--jail", jail, "--namespaces", "--", *workload, env=env, timeout=300, check=True)
    assert "transfer with a forged token: HTTP 401" in learned.stdout   # the workload ran against the app
    default = seccomp.allowed_names(seccomp.effective("default", network=True, front_end=False, app_root="/",
                                                      where="test")["profile"])
    profiles = {}
    for name in ("web", "Auth", "Bank"):
        path = os.path.join(app, "seccomp", f"{name}.json")
        profiles[name] = seccomp.read_profile(path)
        names = {n for e in profiles[name]["syscalls"] for n in e["names"]}
        assert 0 < len(names) < len(default), (name, len(names))
    bank = json.dumps(profiles["Bank"])
    assert "Bank.transfer" in bank and "Bank.balance" in bank   # each call attributed to its services
    # Who called what, by the kernel's word: web calls Bank and Auth, and
    # Bank calls Auth to check a token.
    calls = json.load(open(os.path.join(app, "seccomp", "calls.json")))["calls"]
    assert calls["Bank.transfer"] == ["web"] and calls["Auth.Auth.register"] == ["web"], calls
    assert calls["Auth.Auth.check_token"] == ["Bank"], calls
    pspy("bootstrap", app, "--jail", jail, "--namespaces", "--no-run", env=env, check=True)
    findings = json.loads(pspy("analyze", "--jail", jail, "--format", "json", check=True).stdout)["findings"]
    wider = {f["principal"] for f in findings if f["id"] == "wider-than-learned"}
    assert wider == {"web", "Auth", "Bank"}, findings   # each runs under a shipped profile, wider than learned
    # Auth may be called by web and Bank, and both were seen to: no finding about its callers.
    assert not [f for f in findings if f["id"] == "callers-wider-than-used"], findings
    # Bootstrapping with the learned profiles runs the same workload, with no denial.
    with open(os.path.join(app, "pspy.toml"), "a") as f:
        f.write('seccomp = { web = "seccomp/web.json", Auth = "seccomp/Auth.json", Bank = "seccomp/Bank.json" }\n')
    pspy("bootstrap", app, "--jail", jail, "--namespaces", "--detach", env=env, check=True)
    try:
        report = json.loads(pspy("analyze", "--jail", jail, "--format", "json", "--include-seccomp",
                                 check=True).stdout)
        assert {p["name"]: p["seccomp"]["source"] for p in report["principals"]}["Bank"] == \
            "file seccomp/Bank.json of the app"
        # Under the learned profiles, none is wider than learned any more.
        assert not [f for f in report["findings"] if f["id"] == "wider-than-learned"], report["findings"]
        import subprocess
        deadline = time.monotonic() + 20
        while True:
            run = subprocess.run(workload, capture_output=True, text=True)
            if run.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert run.returncode == 0, run.stdout + run.stderr
        for name in ("web", "Auth", "Bank"):
            log = open(os.path.join(jail, ".pspy", "logs", f"{name}.log")).read()
            assert "seccomp denied" not in log, (name, log[-2000:])
    finally:
        pspy("stop", "--jail", jail)


@pytest.mark.root
def test_learn_refuses_a_missing_or_failing_workload_and_writes_nothing(tmp_path):
    import shutil
    app = str(tmp_path / "app")
    shutil.copytree(FILTERED, app, ignore=shutil.ignore_patterns("__pycache__"))
    none = pspy("learn", app, "--jail", str(tmp_path / "jail"), "--namespaces")
    assert none.returncode == 1 and "workload" in none.stderr
    failing = pspy("learn", app, "--jail", str(tmp_path / "jail"), "--namespaces", "--", "false")
    assert failing.returncode == 1 and "exited with status 1" in failing.stderr and "Traceback" not in failing.stderr
    assert not os.path.exists(os.path.join(app, "seccomp"))


# --- what would run a principal without its filter --------------------------------

@pytest.mark.parametrize("front_end", [["python", "-I", "app.py"], ["python", "-S", "app.py"],
                                       ["python3", "-uE", "app.py"]])
def test_front_end_flags_that_skip_the_filter_are_refused(tmp_path, front_end):
    app = write_app(tmp_path / "app", {"svc.py": "import pspy\n@pspy.service(service_provider='S')\ndef f(): pass\n",
                                       "pspy.toml": f"front_end = {json.dumps(front_end)}\n"})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
    assert proc.returncode == 1 and "seccomp filter" in proc.stderr and "Traceback" not in proc.stderr
    ok = write_app(tmp_path / "ok", {"svc.py": "import pspy\n@pspy.service(service_provider='S')\ndef f(): pass\n",
                                     "pspy.toml": 'front_end = ["python", "-u", "app.py"]\n'})
    from pspy.bootstrap import Request, options_for
    assert options_for(Request(app_dir=ok)).front_end == ["python", "-u", "app.py"]   # control


@pytest.mark.parametrize("name", ["PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "PSPY_PRINCIPAL"])
def test_env_that_could_run_code_before_the_filter_is_refused(tmp_path, name):
    app = write_app(tmp_path / "app", {"svc.py": "import pspy\n@pspy.service(service_provider='S')\ndef f(): pass\n",
                                       "pspy.toml": f'env = {{ web = ["{name}"] }}\n'})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
    assert proc.returncode == 1 and name in proc.stderr and "refused" in proc.stderr


@pytest.mark.root
def test_a_front_end_that_runs_without_its_filter_fails_the_bootstrap(tmp_path):
    # A wrapper the flag check cannot see through: the supervisor asks the kernel.
    app = write_app(tmp_path / "app", {
        "svc.py": "import pspy\n@pspy.service(service_provider='S')\ndef f(): pass\n",
        "pspy.toml": 'front_end = ["/bin/sh", "-c", "exec python3 -I -c \\"import time; time.sleep(30)\\""]\n'})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--namespaces", "--detach")
    try:
        assert proc.returncode == 1 and "without its seccomp filter" in proc.stderr, proc.stderr
    finally:
        pspy("stop", "--jail", str(tmp_path / "jail"))


def test_learned_profiles_leave_out_dangerous_calls_a_log_may_claim(tmp_path, capsys):
    """The record is the principal's own log: a line the app forged must not
    become an allow of mount or ptrace."""
    from pspy import learn
    from pspy import _native
    from pspy.plan import Plan
    lib = _native.lib
    arch = getattr(lib, seccomp.native_arch()[0])
    nr = {n: lib.seccomp_syscall_resolve_name_arch(arch, n.encode()) for n in ("read", "mount", "ptrace")}
    app = tmp_path / "app"
    app.mkdir()
    log_dir = tmp_path / "jail" / ".pspy" / "logs"
    log_dir.mkdir(parents=True)
    (log_dir / "S.log").write_text("".join(f"pspy-learn {n} 0 {arch}\n" for n in nr.values()))

    class FakePlan:
        app_source = str(app)
        jail = str(tmp_path / "jail")
        principals = [type("P", (), {"name": "S", "kind": "provider", "network": False})()]

        def host_path(self, path):
            return Plan.host_path(self, path)
    learn.write_profiles(FakePlan(), {"S": 0}, ["true"], say=print)
    profile = json.loads((app / "seccomp" / "S.json").read_text())
    assert [e["names"] for e in profile["syscalls"]] == [["read"]]
    assert "mount, ptrace" in capsys.readouterr().out


def test_learn_writes_through_no_symlink(tmp_path):
    from pspy import learn
    app = tmp_path / "app"
    (app / "seccomp").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("root's file")
    (app / "seccomp" / ".S.json.tmp").symlink_to(victim)
    (app / "seccomp" / "S.json").symlink_to(victim)
    learn._write_beside_app(str(app), "S.json", b"{}\n", os.stat(app))
    assert victim.read_text() == "root's file"
    assert not (app / "seccomp" / "S.json").is_symlink() and (app / "seccomp" / "S.json").read_text() == "{}\n"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    app2 = tmp_path / "app2"
    app2.mkdir()
    (app2 / "seccomp").symlink_to(outside)
    with pytest.raises(Exception, match="symlink"):
        learn._write_beside_app(str(app2), "S.json", b"{}\n", os.stat(app2))
    assert os.listdir(outside) == []


@pytest.mark.root
def test_pspy_toml_over_the_decorator_is_said_in_analyze(tmp_path):
    app = write_app(tmp_path / "app", {
        "s.py": "import pspy\n@pspy.service(service_provider='S', seccomp='strict')\ndef f(): pass\n",
        "pspy.toml": 'seccomp = { S = "default" }\n'})
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--namespaces", "--no-run", check=True)
    report = json.loads(pspy("analyze", "--jail", jail, "--format", "json", "--include-seccomp", check=True).stdout)
    s = next(p["seccomp"] for p in report["principals"] if p["name"] == "S")
    assert s["source"] == "shipped profile 'default'"
    assert "pspy.toml's seccomp.S is used instead of seccomp='strict' at s.py:2" in s["derived"]
