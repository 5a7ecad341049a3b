"""RPC between real sandboxed principals (chroot, namespace and rootless namespace modes): errors, types,
timeouts, at-most-once delivery, caller authorisation and concurrency.

Every call below is made by a principal process inside the jail (through
`pspy exec`), to a provider the supervisor runs in the jail.
"""

import os
import time

import pytest

from conftest import OUTCOME, REPO, bootstrap_rootless, probe, pspy

pytestmark = pytest.mark.root

CALC = os.path.join(REPO, "tests", "apps", "calc")

# Prefix for probes: run `body`, print the outcome as JSON: ["ok", value] or [type, message].
CALL = OUTCOME + "import sys\nimport pspy, worker, other\n"


def call(jail, principal, expr):
    return probe(jail, principal, CALL + f"print(json.dumps(outcome(lambda: {expr}), default=repr))")


@pytest.fixture(scope="module", params=["chroot", "namespaces", "rootless"])
def jail(request, tmp_path_factory):
    if request.param == "rootless":
        # Every principal has the user's uid: callers are told apart by socket.
        path = bootstrap_rootless(request.getfixturevalue("rootless_user"), CALC, "calc")
        yield path
        pspy("stop", "--jail", path)
        return
    path = str(tmp_path_factory.mktemp(f"calc-{request.param}") / "jail")
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", CALC, "--jail", path, "--detach", *flags, check=True)
    yield path
    pspy("stop", "--jail", path)


def test_a_call_returns_its_value(jail):
    assert call(jail, "web", "worker.add(2, 3)") == ["ok", 5]


def test_builtin_exceptions_arrive_as_the_same_type_without_remote_traceback(jail):
    kind, message = call(jail, "web", "worker.fail('value')")
    assert kind == "ValueError" and message == "bad value 42"
    assert "Traceback" not in message and "worker.py" not in message
    assert call(jail, "web", "worker.fail('key')") == ["KeyError", "'missing-key'"]


def test_registered_exception_arrives_as_itself_and_others_as_remote_error(jail):
    assert call(jail, "web", "worker.fail('registered')") == ["OutOfZoobars", "only 3 left"]
    result = probe(jail, "web", CALL + """
try:
    worker.fail('custom')
except pspy.RemoteError as e:
    print(json.dumps([e.remote_type, e.remote_message, e.remote_traceback]))
""")
    assert result == ["worker.Unregistered", "secret detail in a custom error", None]


def logged_since(path, offset, wanted, timeout=10):
    """The text appended to the log at ``path`` after ``offset``, once it holds ``wanted``."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, errors="replace") as f:
            f.seek(offset)
            text = f.read()
        if wanted in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_a_service_exception_lands_in_the_provider_log_with_its_traceback_but_not_at_the_caller(jail):
    log_file = os.path.join(jail, ".pspy", "logs", "Worker.log")
    offset = os.path.getsize(log_file)
    result = probe(jail, "web", CALL + """
try:
    worker.fail('custom')
except pspy.RemoteError as e:
    print(json.dumps([e.remote_type, e.remote_traceback, str(e)]))
""")
    remote_type, remote_traceback, text = result
    assert remote_type == "worker.Unregistered"
    assert remote_traceback is None and "Traceback" not in text   # not debug mode: the caller gets none
    wanted = "service Worker.fail raised worker.Unregistered: secret detail in a custom error"
    log = logged_since(log_file, offset, wanted)
    assert wanted in log, log
    assert " Worker ERROR " in next(line for line in log.splitlines() if wanted in line)
    after = log[log.index(wanted):]
    assert after.splitlines()[1] == "Traceback (most recent call last):"
    assert 'worker.py", line' in after and "in fail" in after
    assert 'raise Unregistered("secret detail in a custom error")' in after


def test_registered_dataclass_round_trips(jail):
    assert probe(jail, "web", CALL + """
p = worker.move(worker.Point(1, 2), 10)
print(json.dumps([type(p).__name__, p.x, p.y]))
""") == ["Point", 11, 2]


def test_argument_that_cannot_cross_names_service_parameter_and_type(jail):
    kind, message = call(jail, "web", "worker.echo(__import__('sqlite3').connect(':memory:'))")
    assert kind == "SerializationError"
    assert "Worker.echo" in message and "'x'" in message and "sqlite3.Connection" in message


def test_return_value_that_cannot_cross_says_so(jail):
    kind, message = call(jail, "web", "worker.give_connection()")
    assert kind == "SerializationError"
    assert "return value" in message and "sqlite3.Connection" in message


def test_per_service_timeout_raises_service_timeout(jail):
    kind, message = call(jail, "web", "worker.slow(3)")
    assert kind == "ServiceTimeout" and "0.5" in message
    assert call(jail, "web", "worker.slow(0)") == ["ok", "done"]   # control: within the timeout


def test_async_service_gives_an_awaitable_stub(jail):
    assert probe(jail, "web", CALL + """
import asyncio, inspect
print(json.dumps([inspect.iscoroutinefunction(worker.async_add), asyncio.run(worker.async_add(4, 5))]))
""") == [True, 9]


def test_caller_not_in_callers_is_refused_and_logged(jail):
    assert call(jail, "web", "other.hello('web')") == ["ok", "hello web"]   # control
    assert call(jail, "Worker", "other.ping()") == ["ok", "pong"]           # control: Worker reaches Other
    kind, message = call(jail, "Worker", "other.hello('worker')")
    assert kind == "PermissionDenied" and "Worker may not call Other.hello" in message
    log = open(os.path.join(jail, ".pspy", "logs", "Other.log")).read()
    assert "denied: Worker (uid" in log and "Other.hello" in log


def test_sixteen_threads_and_four_processes_get_correct_answers(jail):
    result = probe(jail, "web", CALL + """
import os, threading
errors = []
def work(base):
    for i in range(50):
        got = worker.add(base, i)
        if got != base + i:
            errors.append((base, i, got))
threads = [threading.Thread(target=work, args=(t * 1000,)) for t in range(16)]
for t in threads: t.start()
for t in threads: t.join()
worker.add(0, 0)   # the parent's pool now holds connections the children must not share
children = []
for n in range(4):
    pid = os.fork()
    if pid == 0:
        ok = all(worker.add(n * 10**6, i) == n * 10**6 + i for i in range(100))
        os._exit(0 if ok else 1)
    children.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print(json.dumps([errors, codes]))
""")
    assert result == [[], [0, 0, 0, 0]]


def test_a_provider_dying_mid_call_gives_call_interrupted_and_no_resend(jail):
    before = call(jail, "web", "worker.calls_recorded()")[1]
    kind, message = call(jail, "web", "worker.die_after_receiving()")
    assert kind == "CallInterrupted" and "may or may not have run" in message
    # The supervisor restarts Worker; once it answers again, the call is still recorded once.
    deadline = time.monotonic() + 20
    while call(jail, "web", "worker.add(1, 1)") != ["ok", 2]:
        assert time.monotonic() < deadline, "Worker did not come back"
        time.sleep(0.2)
    assert call(jail, "web", "worker.calls_recorded()") == ["ok", before + 1]


@pytest.mark.parametrize("flags", [[], ["--namespaces"]], ids=["chroot", "namespaces"])
def test_a_provider_that_is_down_gives_service_unavailable(tmp_path, flags):
    path = str(tmp_path / "jail")
    pspy("bootstrap", CALC, "--jail", path, "--no-run", *flags, check=True)   # built, nothing running
    kind, message = call(path, "web", "worker.add(1, 2)")
    assert kind == "ServiceUnavailable" and "not sent" in message
