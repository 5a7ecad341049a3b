"""Supervision under faults, in chroot and namespace mode.

zoobank keeps every zoobar while its Bank provider is SIGKILLed again and
again under load, and each error a client sees says truthfully whether its
transfer was applied. Killing the supervisor itself leaves no process of
the app behind, not even ones that left their principal's session, and the
app can be bootstrapped again at once.
"""

import json
import os
import random
import secrets
import signal
import sqlite3
import sys
import threading
import time
import urllib.request

import pytest

from conftest import REPO, ZOOBANK, free_port, provider_pid, pspy
from pspy.plan import Plan
from pspy.running import app_processes

sys.path.insert(0, ZOOBANK)
import workload  # noqa: E402 - the example's API client

pytestmark = pytest.mark.root

MODES = {"chroot": [], "namespaces": ["--namespaces"]}
DETACH = os.path.join(REPO, "tests", "apps", "detach")

USERS = [f"user{i}" for i in range(6)]
START_ZOOBARS = 10            # examples/zoobank/auth.py NEW_USER_ZOOBARS
CLIENTS = 4
TRANSFERS_PER_CLIENT = 60
PACE = 0.15                   # between a client's transfers: the workload outlasts the kills
KILLS = 5
# Kills are separate faults, spaced apart: Bank serves this long between two.
# Killed again and again within a second or so, it would be a crash loop,
# which a supervisor may rightly meet with a growing delay.
KILL_SPACING = 1.5
ANSWER_BOUND = 1.0            # the issue's bound: Bank answers again within 1 s of a kill
WORKLOAD_BOUND = 120.0


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{what}: not within {timeout}s")


def _api(port, method, path, body=None, token=None):
    return workload.call(f"http://127.0.0.1:{port}", method, path, body, token)


def _bank_answers(port):
    """A balance call through the API succeeds: the Bank answered it."""
    try:
        return _api(port, "GET", f"/api/balance/{USERS[0]}")[0] == 200
    except (OSError, ValueError):
        return False


def _answers(port):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
        return True
    except OSError:
        return False


def _is_gone(pid):
    """Exited: no such process, or a zombie (it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def _bank_process(jail, not_pid=None):
    """The Bank provider's own Python process (namespace mode: the child of
    pspy-init:Bank), once it is one other than ``not_pid``."""
    def found():
        try:
            pid = provider_pid(jail, "Bank")
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except (OSError, KeyError, TypeError, ValueError):
            return None
        is_provider = b"pspy.provider" in cmdline and b"pspy-init" not in cmdline
        return pid if is_provider and pid != not_pid and not _is_gone(pid) else None
    return _wait(found, 10, "the Bank provider's process")


# --- conservation under faults -----------------------------------------------------

def _client(port, number, tokens, progress, results):
    """A fixed number of transfers between random users, each with a ref of its own."""
    rng = random.Random(number)
    for i in range(TRANSFERS_PER_CLIENT):
        sender, recipient = rng.sample(USERS, 2)
        zoobars = rng.randint(1, 3)
        ref = f"c{number}-{i}-{secrets.token_hex(4)}"
        try:
            status, body = _api(port, "POST", "/api/transfer",
                                {"recipient": recipient, "zoobars": zoobars, "ref": ref}, tokens[sender])
        except Exception as e:  # noqa: BLE001 - a hang or a non-JSON answer: reported below
            status, body = None, repr(e)
        results.append({"ref": ref, "sender": sender, "recipient": recipient, "zoobars": zoobars,
                        "status": status, "body": body})
        progress.append(ref)
        time.sleep(PACE)


def _killer(jail, port, progress, total, kills):
    """SIGKILL Bank KILLS times, spread over the workload (the last one with
    transfers still to come); after each kill, time until a balance call
    through the API succeeds again."""
    for k in range(KILLS):
        _wait(lambda: len(progress) >= (k + 1) * total // (KILLS + 2), WORKLOAD_BOUND, f"kill {k + 1}'s turn")
        pid = _bank_process(jail)
        done_at_kill = len(progress)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: _is_gone(pid), 5, f"Bank (pid {pid}) to die")
        answered_at = _wait(lambda: _bank_answers(port) and time.monotonic(), 30, "Bank to answer again")
        kills.append({"pid": pid, "seconds": answered_at - killed_at, "done_at_kill": done_at_kill,
                      "new_pid": _bank_process(jail, not_pid=pid)})
        time.sleep(KILL_SPACING)


def _ledger(jail):
    """The Bank's database, read as root from the jail's app folder after the app stopped."""
    path = os.path.join(jail, "app", "db", "bank", "bank.db")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        balances = dict(db.execute("SELECT username, zoobars FROM person"))
        transfers = db.execute("SELECT ref, sender, recipient, zoobars FROM transfers").fetchall()
    finally:
        db.close()
    return balances, transfers


@pytest.mark.parametrize("mode", MODES)
def test_zoobars_are_conserved_while_bank_is_killed_under_load(mode, tmp_path):
    jail, port = str(tmp_path / "jail"), free_port()
    pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", *MODES[mode], env={"ZOOBANK_PORT": str(port)},
         check=True)
    results, progress, kills = [], [], []
    try:
        _wait(lambda: _answers(port), 20, "zoobank on its port")
        tokens = {}
        for user in USERS:
            status, body = _api(port, "POST", "/api/register", {"username": user, "password": "pw"})
            assert status == 200, body
            tokens[user] = body["token"]
        total = CLIENTS * TRANSFERS_PER_CLIENT
        clients = [threading.Thread(target=_client, args=(port, n, tokens, progress, results), daemon=True)
                   for n in range(CLIENTS)]
        killer_errors = []

        def killer():
            try:
                _killer(jail, port, progress, total, kills)
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                killer_errors.append(e)
        killing = threading.Thread(target=killer, daemon=True)
        for thread in [*clients, killing]:
            thread.start()
        deadline = time.monotonic() + WORKLOAD_BOUND
        for thread in [*clients, killing]:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in [*clients, killing]), f"the workload passed {WORKLOAD_BOUND}s"
        if killer_errors:
            raise killer_errors[0]
    finally:
        pspy("stop", "--jail", jail)
    print(f"\n{mode}: kill-to-answer seconds: {[round(k['seconds'], 3) for k in kills]}")

    # Every request was answered, and every error says what became of it.
    assert len(results) == total
    unexplained = [r for r in results if r["status"] != 200 and not (
        isinstance(r["body"], dict) and r["body"].get("outcome") in ("not_applied", "unknown"))]
    assert unexplained == []
    ok = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] != 200 and r["body"]["outcome"] == "not_applied"]
    unknown = [r for r in results if r["status"] != 200 and r["body"]["outcome"] == "unknown"]
    # An outage is a 503 (or 504), never a hang; a refusal by the Bank is a 400.
    assert {r["status"] for r in refused} <= {400, 503}
    assert {r["status"] for r in unknown} <= {503, 504}
    assert ok, "no transfer succeeded: the test exercised nothing"

    balances, ledger = _ledger(jail)
    # Conservation: no zoobar made or lost, and the balances are the ledger's sum.
    assert sorted(balances) == USERS
    assert sum(balances.values()) == START_ZOOBARS * len(USERS)
    for user in USERS:
        moved = sum(z for _, s, r, z in ledger if r == user) - sum(z for _, s, r, z in ledger if s == user)
        assert balances[user] == START_ZOOBARS + moved, user
    # Per ref: each success applied exactly once, as sent; each "not applied" absent;
    # only "unknown" ones may be either, and nothing else is in the ledger.
    applied = {}
    for ref, sender, recipient, zoobars in ledger:
        assert ref not in applied, f"transfer {ref} applied twice"
        applied[ref] = (sender, recipient, zoobars)
    for r in ok:
        assert applied.get(r["ref"]) == (r["sender"], r["recipient"], r["zoobars"]), r
    for r in refused:
        assert r["ref"] not in applied, r
    sent = {r["ref"] for r in results}
    assert set(applied) <= sent
    assert set(applied) - {r["ref"] for r in ok} <= {r["ref"] for r in unknown}
    unknown_applied = sum(r["ref"] in applied for r in unknown)
    print(f"{mode}: {len(ok)} ok, {len(refused)} not applied, {len(unknown)} unknown "
          f"({unknown_applied} of them applied)")

    # Bank was killed KILLS times and came back (a new process) within the bound
    # each time; and each kill came while transfers were still running.
    assert len(kills) == KILLS
    assert all(k["new_pid"] != k["pid"] for k in kills)
    slow = [round(k["seconds"], 3) for k in kills if k["seconds"] >= ANSWER_BOUND]
    assert slow == [], f"Bank answered again only after {slow}s (of {[round(k['seconds'], 3) for k in kills]})"
    assert all(k["done_at_kill"] < total for k in kills), kills


@pytest.mark.parametrize("mode", MODES)
def test_a_transfer_cut_off_by_a_kill_is_unknown_and_sending_it_again_applies_it_once(mode, tmp_path):
    # Bank is stopped (SIGSTOP) while the front end holds a pooled connection to
    # it, so the transfer is delivered into that connection and never read; then
    # Bank is SIGKILLed. The front end cannot know it was not applied: "unknown".
    jail, port = str(tmp_path / "jail"), free_port()
    pspy("bootstrap", ZOOBANK, "--jail", jail, "--detach", *MODES[mode], env={"ZOOBANK_PORT": str(port)},
         check=True)
    try:
        _wait(lambda: _answers(port), 20, "zoobank on its port")
        tokens = {}
        for user in USERS[:2]:
            tokens[user] = _api(port, "POST", "/api/register", {"username": user, "password": "pw"})[1]["token"]
        assert _bank_answers(port)          # leaves an idle connection to this Bank in the pool
        pid = _bank_process(jail)
        body = {"recipient": USERS[1], "zoobars": 3, "ref": "cut-off"}
        answer = []
        os.kill(pid, signal.SIGSTOP)
        try:
            sender = threading.Thread(target=lambda: answer.append(
                _api(port, "POST", "/api/transfer", body, tokens[USERS[0]])), daemon=True)
            sender.start()
            sender.join(1.0)
            assert not answer, f"answered while Bank was stopped: {answer}"
        finally:
            os.kill(pid, signal.SIGKILL)
        sender.join(10)
        assert answer == [(503, {"error": answer[0][1]["error"], "outcome": "unknown"})], answer
        # The ledger says which way it went (here: not applied, Bank never read it),
        # so the same transfer sent again is applied once, and a third time refused.
        _wait(lambda: _bank_answers(port), 5, "Bank to answer again")
        assert _api(port, "GET", f"/api/balance/{USERS[0]}")[1]["zoobars"] == START_ZOOBARS
        status, reply = _api(port, "POST", "/api/transfer", body, tokens[USERS[0]])
        assert (status, reply["zoobars"]) == (200, START_ZOOBARS - 3), reply
        status, reply = _api(port, "POST", "/api/transfer", body, tokens[USERS[0]])
        assert (status, reply["outcome"]) == (400, "not_applied") and "already made" in reply["error"], reply
    finally:
        pspy("stop", "--jail", jail)
    balances, ledger = _ledger(jail)
    assert ledger == [("cut-off", USERS[0], USERS[1], 3)]
    assert balances == {USERS[0]: START_ZOOBARS - 3, USERS[1]: START_ZOOBARS + 3}


# --- SIGKILL of the supervisor ----------------------------------------------------

def _state(jail):
    with open(os.path.join(jail, ".pspy", "run", "state.json")) as f:
        return json.load(f)


def _marked(marker):
    """Live processes whose command line carries the marker: the app's detached helpers."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in open(f"/proc/{entry}/cmdline", "rb").read() \
                    and not _is_gone(entry):
                found.append(int(entry))
        except OSError:
            continue
    return found


def _leftovers(jail, uids, marker):
    """What still runs of the app, found without pspy: the helpers by their marker,
    anything under one of the app's uids or rooted in the jail. Zombies run nothing."""
    root = os.path.realpath(jail)
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _is_gone(entry):
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            uid = int(next(line for line in open(f"/proc/{entry}/status") if line.startswith("Uid:")).split()[1])
            rooted = os.readlink(f"/proc/{entry}/root") == root
        except (OSError, StopIteration):
            continue
        if marker.encode() in cmdline or uid in uids or rooted:
            command = cmdline.replace(b"\0", b" ").replace(b"\n", b"; ").decode(errors="replace")
            out[int(entry)] = f"uid {uid}: {command}"
    return out


def _session_of(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[3])   # state, ppid, pgrp, session


def _greeting(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("mode", MODES)
def test_killing_the_supervisor_leaves_no_process_of_the_app_and_bootstrap_works_again(mode, tmp_path):
    # tests/apps/detach: the front end starts a daemon (double fork + setsid)
    # and has its provider Keeper start a helper in a session of its own.
    jail, port, marker = str(tmp_path / "jail"), free_port(), f"pspy-detach-{secrets.token_hex(6)}"
    env = {"DETACH_PORT": str(port), "DETACH_MARKER": marker}
    pspy("bootstrap", DETACH, "--jail", jail, "--detach", *MODES[mode], env=env, check=True)
    try:
        _wait(lambda: _answers(port), 20, "the detach app on its port")
        plan = Plan.load(jail)
        uids = {p.uid for p in plan.principals}
        helpers = _wait(lambda: len(found := _marked(marker)) == 2 and found, 10, "the two detached helpers")
        # Controls: each helper left its principal's session (a process-group
        # kill misses it), and pspy counts it as the app's.
        assert all(_session_of(pid) == pid for pid in helpers)
        assert set(helpers) <= set(app_processes(plan))

        os.kill(_state(jail)["supervisor"], signal.SIGKILL)
        try:
            _wait(lambda: not app_processes(plan) and not _leftovers(jail, uids, marker), 5,
                  "every process of the app to end")
        except AssertionError:
            raise AssertionError(f"after SIGKILL of the supervisor, still running: "
                                 f"{_leftovers(jail, uids, marker)}; pspy counts {app_processes(plan)}") from None

        # Again at once, with no 'pspy stop' between: nothing stale is in the way.
        again = f"pspy-detach-{secrets.token_hex(6)}"
        pspy("bootstrap", DETACH, "--jail", jail, "--detach", *MODES[mode],
             env=dict(env, DETACH_MARKER=again), check=True)
        assert _wait(lambda: _answers(port), 20, "the app bootstrapped again")
        assert _greeting(port) == {"keeper": "hello"}
        assert len(_wait(lambda: len(found := _marked(again)) == 2 and found, 10, "the new helpers")) == 2
    finally:
        pspy("stop", "--jail", jail)
    assert _leftovers(jail, uids, marker) == {}
    assert _leftovers(jail, uids, again) == {}
