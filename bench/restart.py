"""How fast a provider that dies is serving again, in one run.

    sudo python bench/restart.py [--kills N] [--json FILE]

zoobank is bootstrapped in chroot and namespace mode, each twice: with
pspy's ready copies, and with a plain systemd-style restart (a fresh
fork+exec of the same provider the moment the old one dies, as
`Restart=always` with `RestartSec=0` would; systemd's default RestartSec
adds 100 ms more). Kills are spaced so that none reads as a crash loop.
Bank's own process is SIGKILLed N times per condition,
the conditions taking turns kill by kill, and the time from the kill to the
first answered call on its socket is recorded (the caller connects at
once and keeps trying, so queueing on the listening socket counts). Goal:
median under 50 ms, p99 under 100 ms with ready copies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOOBANK = os.path.join(REPO, "examples", "zoobank")
sys.path.insert(0, REPO)

from pspy.plan import Plan  # noqa: E402
from pspy.rpc import protocol  # noqa: E402
from pspy.rpc.client import Client  # noqa: E402
from pspy.running import children_of, read_state, stop  # noqa: E402
from pspy.supervisor import STABLE_AFTER  # noqa: E402

GIVE_UP_S = 10.0
START_SUPERVISOR = """
import sys
from pspy.bootstrap import run_detached
from pspy.plan import Plan
sys.exit(run_detached(Plan.load(sys.argv[1]), announce=False, ready_copies=sys.argv[2] == "1"))
"""


class Condition:
    def __init__(self, mode: str, ready_copies: bool):
        self.mode, self.ready_copies = mode, ready_copies
        self.name = f"{mode}, {'pspy ready copy' if ready_copies else 'fork+exec restart'}"
        self.jail = os.path.join(tempfile.mkdtemp(prefix="pspy-bench-restart-"), "jail")
        self.times: list[float] = []
        self.plan: Plan | None = None

    def start(self) -> None:
        flags = ["--namespaces"] if self.mode == "namespaces" else []
        subprocess.run([sys.executable, "-m", "pspy", "bootstrap", ZOOBANK, "--jail", self.jail, "--no-run",
                        *flags], check=True, capture_output=True)
        self.plan = Plan.load(self.jail)
        # The supervisor is started by a command of its own ("pspy" in its
        # command line is how `pspy stop` knows it); the front end runs too,
        # on a port of its own.
        subprocess.run([sys.executable, "-c", START_SUPERVISOR, self.jail, str(int(self.ready_copies))],
                       check=True, capture_output=True, env=dict(os.environ, ZOOBANK_PORT=str(free_port())))

    def bank_process(self) -> int:
        """Bank's own Python process: the supervisor's child in chroot mode,
        the child of its PID 1 in namespace mode."""
        pid = read_state(self.plan)["principals"]["Bank"]["pid"]
        if self.mode == "namespaces":
            kids = children_of(pid)
            if not kids:
                raise RuntimeError("Bank's PID 1 has no child")
            pid = kids[0]
        return pid

    def wait_settled(self) -> None:
        """Until Bank serves and, with ready copies, its next copy is ready."""
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            state = (read_state(self.plan) or {}).get("principals", {}).get("Bank", {})
            if state.get("pid") and (state.get("spare_ready") or not self.ready_copies) and self.answers():
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: Bank did not settle within {GIVE_UP_S:.0f} s")

    def answers(self, timeout: float = 1.0) -> bool:
        client = Client("Bank", self.plan.host_path(self.plan.principal("Bank").socket), timeout=timeout)
        try:
            return client.call(protocol.PING) == "Bank"
        except Exception:  # noqa: BLE001 - not answering yet
            return False
        finally:
            client.close()

    def kill_once(self) -> None:
        self.wait_settled()
        # Kills closer together than this read to the supervisor as a crash
        # loop, which it meets with a growing delay (supervisor.STABLE_AFTER).
        time.sleep(STABLE_AFTER + 0.1)
        victim = self.bank_process()
        t0 = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + GIVE_UP_S
        while not self.answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: Bank did not answer within {GIVE_UP_S:.0f} s of a kill")
        self.times.append(time.perf_counter() - t0)

    def stop(self) -> None:
        if self.plan is not None:
            stop(self.plan)
        # The jail folder holds its ids in pspy's host registry until it is gone.
        shutil.rmtree(os.path.dirname(self.jail), ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/restart.py needs root (it bootstraps zoobank)")
    conditions = [Condition(mode, ready) for mode in ("chroot", "namespaces") for ready in (True, False)]
    try:
        for c in conditions:
            c.start()
        # One kill per condition per round: drift in the machine's load falls on all alike.
        for _ in range(args.kills):
            for c in conditions:
                c.kill_once()
    finally:
        for c in conditions:
            c.stop()
    results = {}
    print(f"SIGKILL of Bank -> first answered call, {args.kills} kills each (ms)")
    print(f"{'condition':<40} {'median':>8} {'p99':>8} {'ratio':>7}")
    for mode in ("chroot", "namespaces"):
        base = next(c for c in conditions if c.mode == mode and not c.ready_copies)
        for c in (x for x in conditions if x.mode == mode):
            median, tail = statistics.median(c.times) * 1000, p99(c.times) * 1000
            ratio = median / (statistics.median(base.times) * 1000)
            results[c.name] = {"median_ms": median, "p99_ms": tail, "ratio_to_fork_exec": ratio,
                               "kills": len(c.times)}
            print(f"{c.name:<40} {median:>8.1f} {tail:>8.1f} {ratio:>6.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kills": args.kills, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
