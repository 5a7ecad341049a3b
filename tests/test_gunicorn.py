"""gunicorn with two worker processes as zoobank's front end, in chroot mode
and in namespace mode: the zoobank workload passes over HTTP, and the
master and every worker it forks (a replacement too) are the principal
`web`, with web's ids and filter, not root and not a provider."""

import json
import os
import signal
import sys
import threading
import time
import urllib.request

import pytest

from conftest import ZOOBANK, free_port, pspy

sys.path.insert(0, ZOOBANK)
import workload  # noqa: E402 - the example's API client

pytestmark = pytest.mark.root

WORKERS = 2


def _status(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


def _children(pid):
    return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def _master(jail):
    """The gunicorn master: web's process (in namespace mode, below its PID 1)."""
    pid = json.load(open(os.path.join(jail, ".pspy", "run", "state.json")))["principals"]["web"]["pid"]
    if "pspy-init" in open(f"/proc/{pid}/cmdline").read():
        pid = _children(pid)[0]
    assert b"gunicorn" in open(f"/proc/{pid}/cmdline", "rb").read()
    return pid


def _workers(master, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        workers = [c for c in _children(master) if b"gunicorn" in open(f"/proc/{c}/cmdline", "rb").read()]
        if len(workers) == WORKERS or time.monotonic() > deadline:
            return workers
        time.sleep(0.05)


def _wait_up(base, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(base + "/", timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def site(request, tmp_path_factory):
    jail = str(tmp_path_factory.mktemp(f"gunicorn-{request.param}") / "jail")
    port = free_port()
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", *flags, "--",
         "python", "-m", "gunicorn", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "app:app",
         env={"ZOOBANK_SECRET_KEY": "front-end-only-secret"}, check=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_up(base)
        plan = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
        yield {"jail": jail, "base": base, "principals": {p["name"]: p for p in plan["principals"]}}
    finally:
        pspy("stop", "--jail", jail)


def test_the_zoobank_workload_passes_with_gunicorn_as_the_front_end(site):
    base, suffix = site["base"], str(time.monotonic_ns())
    alice, bob = f"alice{suffix}", f"bob{suffix}"
    status, a = workload.call(base, "POST", "/api/register", {"username": alice, "password": "alice-pw"})
    assert status == 200 and a["token"]
    assert workload.call(base, "POST", "/api/register", {"username": bob, "password": "bob-pw"})[0] == 200
    status, login = workload.call(base, "POST", "/api/login", {"username": alice, "password": "alice-pw"})
    assert status == 200
    status, body = workload.call(base, "POST", "/api/transfer", {"recipient": bob, "zoobars": 3},
                                 token=login["token"])
    assert status == 200, body
    assert workload.call(base, "GET", f"/api/balance/{alice}")[1]["zoobars"] == 7
    assert workload.call(base, "GET", f"/api/balance/{bob}")[1]["zoobars"] == 13
    status, _ = workload.call(base, "POST", "/api/transfer", {"recipient": bob, "zoobars": 1}, token="forged")
    assert status in (401, 403)
    assert workload.call(base, "GET", f"/api/balance/{bob}")[1]["zoobars"] == 13   # nothing moved


def test_concurrent_requests_over_both_workers_lose_no_transfer(site):
    base, suffix = site["base"], str(time.monotonic_ns())
    names = [f"c{i}-{suffix}" for i in range(4)]
    tokens = {n: workload.call(base, "POST", "/api/register", {"username": n, "password": "pw"})[1]["token"]
              for n in names}
    failures = []

    def send(sender, recipient):
        for _ in range(5):
            status, body = workload.call(base, "POST", "/api/transfer", {"recipient": recipient, "zoobars": 1},
                                         token=tokens[sender])
            if status != 200:
                failures.append(body)

    threads = [threading.Thread(target=send, args=(names[i], names[(i + 1) % 4])) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    # each sent 5 and received 5: every balance is back to 10
    assert [workload.call(base, "GET", f"/api/balance/{n}")[1]["zoobars"] for n in names] == [10] * 4


def test_the_master_and_every_worker_are_the_principal_web(site):
    web, bank = site["principals"]["web"], site["principals"]["Bank"]
    master = _master(site["jail"])
    workers = _workers(master)
    assert len(workers) == WORKERS, workers
    for pid in [master, *workers]:
        status = _status(pid)
        assert status["Uid"] == [str(web["uid"])] * 4, (pid, status["Uid"])
        assert status["Gid"] == [str(web["gid"])] * 4, (pid, status["Gid"])
        assert sorted(map(int, status["Groups"])) == sorted(web.get("extra_gids", [])), status["Groups"]
        assert status["Seccomp"] == ["2"] and status["NoNewPrivs"] == ["1"]   # web's filter, inherited
        assert status["CapEff"] == ["0000000000000000"]
        assert os.readlink(f"/proc/{pid}/root") == os.readlink(f"/proc/{master}/root")   # web's view
    # control: the ids told apart are really different principals'
    assert bank["uid"] != web["uid"] and bank["gid"] != web["gid"]


def test_a_worker_that_dies_is_replaced_by_another_web_worker_and_the_site_serves(site):
    web = site["principals"]["web"]
    master = _master(site["jail"])
    before = _workers(master)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        after = _workers(master)
        if len(after) == WORKERS and before[0] not in after:
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.05)
    replacement = (set(after) - set(before)).pop()
    assert _status(replacement)["Uid"] == [str(web["uid"])] * 4
    assert _master(site["jail"]) == master   # the front end itself was not restarted
    assert workload.call(site["base"], "GET", "/api/balance/nobody-here")[0] in (200, 404)
