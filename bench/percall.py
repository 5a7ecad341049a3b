"""What isolation="per_call" costs a call, against starting an interpreter.

    sudo python bench/percall.py [--calls N]

In one run, from inside the front end of tests/apps/percall (chroot and
namespace mode): the latency of a trivial snippet run by Runner (a fresh
process forked from the zygote, shut in by Landlock and seccomp, per call),
of a plain call to a service of the same provider that does not run the
snippet (also per_call: the floor), and, in the same front end, of a plain
fork+exec of `python -c pass` (what a process-per-call sandbox that starts an
interpreter pays at least). Conditions alternate call by call. Goal: a
per_call call under 5 ms median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(REPO, "tests", "apps", "percall")

PROBE = r"""
import json, statistics, subprocess, sys, time
import runner
N = %d
times = {"per_call run('pass')": [], "per_call whoami()": [], "fork+exec python -c pass": []}
runner.run("pass")
for _ in range(N):
    for name, fn in (("per_call run('pass')", lambda: runner.run("pass")),
                     ("per_call whoami()", runner.whoami),
                     ("fork+exec python -c pass", lambda: subprocess.run([sys.executable, "-S", "-c", "pass"]))):
        start = time.perf_counter()
        fn()
        times[name].append((time.perf_counter() - start) * 1000)
print(json.dumps({k: [statistics.median(v), sorted(v)[int(len(v) * 0.99) - 1]] for k, v in times.items()}))
"""


def pspy(*args):
    return subprocess.run([sys.executable, "-m", "pspy", *args], capture_output=True, text=True, check=True)


def measure(mode: str, calls: int) -> dict:
    jail = os.path.join(tempfile.mkdtemp(prefix="pspy-bench-percall-"), "jail")
    flags = ["--namespaces"] if mode == "namespaces" else []
    pspy("bootstrap", APP, "--jail", jail, "--detach", *flags)
    try:
        out = pspy("exec", "--jail", jail, "web", "--", "python", "-c", PROBE % calls).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        pspy("stop", "--jail", jail)
        # The jail folder holds its ids in pspy's host registry until it is gone.
        shutil.rmtree(os.path.dirname(jail), ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/percall.py bootstraps jails: run it as root", file=sys.stderr)
        return 2
    print(f"{'mode':<11} {'condition':<28} {'median ms':>10} {'p99 ms':>8} {'vs fork+exec':>13}")
    for mode in ("chroot", "namespaces"):
        results = measure(mode, args.calls)
        base = results["fork+exec python -c pass"][0]
        for name, (median, p99) in results.items():
            print(f"{mode:<11} {name:<28} {median:>10.2f} {p99:>8.2f} {median / base:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
