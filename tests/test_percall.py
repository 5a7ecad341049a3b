"""isolation="per_call" and call_timeout, tried from inside the principals
in chroot and namespace mode (tests/apps/percall).

Runner runs every call in a fresh process under the strict profile with
limits and a 2 s call_timeout; Steady runs calls in its own process with a
1 s call_timeout. Each forbidden attempt is made by a snippet Runner runs,
beside a control that does the allowed thing.
"""

import json
import os
import re

import pytest

from conftest import OUTCOME, REPO, probe, provider_pid, pspy

pytestmark = pytest.mark.root

PERCALL = os.path.join(REPO, "tests", "apps", "percall")

CALL = OUTCOME + "import time, pspy, runner\n"


def run(jail, *snippets):
    """Run each snippet in Runner, one call each, from the front end:
    [outcome, seconds] per snippet."""
    code = CALL + f"""
out = []
for code in {list(snippets)!r}:
    start = time.monotonic()
    out.append([outcome(lambda: runner.run(code)), round(time.monotonic() - start, 3)])
print(json.dumps(out))
"""
    return probe(jail, "web", code)


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def jail(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(f"percall-{request.param}") / "jail")
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", PERCALL, "--jail", path, "--detach", *flags, check=True)
    yield path
    pspy("stop", "--jail", path)


def test_every_call_runs_in_a_fresh_process_and_globals_do_not_carry_over(jail):
    (first, _), (second, _), (third, _) = run(jail, "LEFT.append(1); print(len(LEFT))", "print(len(LEFT))",
                                              "print(os.getpid())")
    assert first == ["ok", ["1\n", None]]
    assert second == ["ok", ["0\n", None]]   # the first call's global is gone
    who = probe(jail, "web", CALL + "print(json.dumps([runner.whoami(), runner.whoami()]))")
    assert who[0][0] != who[1][0] and who[0][1] == who[1][1]   # two processes, one zygote


def test_a_call_has_an_empty_temporary_folder_of_its_own_and_nothing_else_in_tmp(jail):
    results = run(jail,
                  "import tempfile; open(tempfile.gettempdir() + '/left', 'w').write('x'); "
                  "print(os.listdir(tempfile.gettempdir()))",
                  "import tempfile; print(os.listdir(tempfile.gettempdir()))",
                  "open('/tmp/leftover', 'w')",
                  "os.listdir('/tmp')",
                  "import glob; print(glob.glob('/tmp/pspy-calls-*/*'))")
    assert results[0][0] == ["ok", ["['left']\n", None]]      # control: its own folder is writable
    assert results[1][0] == ["ok", ["[]\n", None]]            # the next call's is new and empty
    assert results[2][0][1][1].startswith("PermissionError")  # /tmp outside it: neither written
    assert results[3][0][1][1].startswith("PermissionError")  # ... nor listed
    assert results[4][0] == ["ok", ["[]\n", None]]            # other calls' folders are out of reach


def test_a_call_may_write_its_providers_data_and_read_the_app_but_not_write_the_app(jail):
    results = run(jail, "open('results/r', 'w').write('kept'); print(open('results/r').read())",
                  "print(open('runner.py').read(3))", "open('runner.py', 'a')")
    assert results[0][0] == ["ok", ["kept\n", None]]
    assert results[1][0] == ["ok", ['"""\n', None]]
    assert results[2][0][1][1].startswith("PermissionError")


def test_a_call_process_can_start_no_process_and_open_no_network_socket(jail):
    results = run(jail, "import threading; t = threading.Thread(target=print, args=('t',)); t.start(); t.join()",
                  "os.fork()", "import subprocess; subprocess.run(['true'])",
                  "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
                  "os.setuid(0)")
    assert results[0][0] == ["ok", ["t\n", None]]   # control: threads are allowed (strict)
    for (kind, value), _ in results[1:]:
        assert kind == "ok" and value[1].startswith("PermissionError"), value


def test_a_spinning_call_is_killed_at_its_call_timeout_and_the_next_call_is_served_at_once(jail):
    (spin, spin_time), (after, after_time) = run(jail, "while True: pass", "print('next')")
    assert spin[0] == "ServiceTimeout" and "call_timeout of 2" in spin[1]
    assert 1.9 < spin_time < 10
    assert after == ["ok", ["next\n", None]] and after_time < 1


def test_a_call_that_exits_or_is_killed_is_reported_and_the_provider_keeps_serving(jail):
    results = run(jail, "os._exit(3)", "import signal; os.kill(os.getpid(), signal.SIGKILL)",
                  "x = []\nwhile True: x.append(bytearray(1 << 20))", "print('still here')")
    assert results[0][0] == ["CallInterrupted", "Runner.run: the call process exited with status 3 "
                                                "before replying"]
    assert results[1][0][0] == "CallInterrupted" and "SIGKILL" in results[1][0][1]
    # Stopped by RLIMIT_DATA (inherited from the provider) or, when the cgroup
    # that the provider, its ready copy and their zygotes share fills
    # first, by the kernel's OOM killer.
    assert results[2][0] == ["ok", ["", "MemoryError: "]] or (
        results[2][0][0] == "CallInterrupted" and "SIGKILL" in results[2][0][1]), results[2][0]
    assert results[3][0] == ["ok", ["still here\n", None]]


def test_cpu_seconds_bound_each_call_process_and_not_the_provider_that_forwards_them(jail):
    ((kind, value), _), = run(jail, "import resource; print(resource.getrlimit(resource.RLIMIT_CPU))")
    assert kind == "ok" and value == ["(5, 6)\n", None], value   # SIGKILL a second after SIGXCPU
    # The provider has none, so thousands of forwarded calls do not add up to a kill.
    limits = open(f"/proc/{provider_pid(jail, 'Runner')}/limits").read()
    assert re.search(r"Max cpu time +unlimited +unlimited", limits), limits
    assert re.search(r"Max data size +268435456 +268435456", limits), limits   # control: its memory limit


def test_a_call_cannot_signal_its_zygote_or_provider_though_they_share_its_uid(jail):
    # Landlock's signal scope (ABI 6): strict allows kill, the call's domain
    # holds only itself. kill(-1) "succeeds" on no process at all.
    results = run(jail, "print(os.getppid())", "import signal; os.kill(os.getppid(), signal.SIGKILL)",
                  "import signal; os.kill(-1, signal.SIGKILL)", "print(os.getppid())",
                  "os.kill(os.getpid(), 0); print('self')")
    zygote = results[0][0]
    assert zygote[0] == "ok"
    assert results[1][0][0] == "ok" and results[1][0][1][1].startswith("PermissionError"), results[1]
    assert results[3][0] == zygote   # the same zygote still forks the calls
    assert results[4][0] == ["ok", ["self\n", None]]   # control: a call may signal itself


def test_a_call_process_cannot_loosen_its_filter_or_leave_its_folder(jail):
    # Landlock and seccomp are the call's own: a second call of each is
    # refused (landlock_* and seccomp are not in 'strict').
    code = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print(libc.syscall(444, None, 0, 1), ctypes.get_errno())
"""
    ((kind, value), _), = run(jail, code)
    assert kind == "ok" and value == ["-1 1\n", None]   # EPERM from seccomp


def test_call_timeout_in_a_provider_of_one_process_answers_service_timeout_and_restarts_it(jail):
    result = probe(jail, "web", CALL + """
before = runner.steady_start()
start = time.monotonic()
spun = outcome(lambda: runner.spin(5))
spun_for = time.monotonic() - start
start = time.monotonic()
after = outcome(runner.steady_start)
print(json.dumps([before, spun, spun_for, after, time.monotonic() - start, outcome(lambda: runner.spin(0.1))]))
""")
    before, spun, spun_for, after, back_in, control = result
    assert spun[0] == "ServiceTimeout" and "call_timeout of 1" in spun[1]
    assert 0.9 < spun_for < 5
    assert after[0] == "ok" and after[1] != before   # a new start of the provider answered
    assert back_in < 1
    assert control == ["ok", "done"]                  # a call within the timeout still works


def test_analyze_reports_per_call_and_the_stacked_policy(jail):
    report = json.loads(pspy("analyze", "--jail", jail, "--format", "json", check=True).stdout)
    runner_p = next(p for p in report["principals"] if p["name"] == "Runner")
    assert runner_p["isolation"] == "per_call"
    assert runner_p["limits"]["call_timeout"] == 2
    assert "call_timeout by its call zygote" in runner_p["limits_enforced_by"]
    steady = next(p for p in report["principals"] if p["name"] == "Steady")
    assert steady["isolation"] == "process"
    assert steady["limits_enforced_by"] == "call_timeout by its watchdog, which ends and restarts the provider"
    text = pspy("analyze", "--jail", jail, "--include-seccomp", check=True).stdout
    assert "isolation='per_call'" in text
