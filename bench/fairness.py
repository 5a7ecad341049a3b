"""Connection fairness: another principal's calls, quiet and while one
principal floods the provider, measured in one run on this machine.

    sudo python bench/fairness.py [--quick] [--json FILE]

A pspy Server runs in its own process, as a provider does. The measured
caller ("web", one uid) makes small add(1, 2) calls through pspy's client,
first with the provider quiet, then while another principal ("flood",
another uid) holds 1,000 idle connections and 20 slowloris ones (each
trickling a byte a second into a frame it never finishes) and opens again,
every connection the provider closes at a deadline (a refused one stays
refused; with --storm, it is opened again at once too: a connect loop).
Printed: median,
p99 and max of the measured calls side by side, ratios = under flood /
quiet, and what the flood got. Needs root: the two callers are told apart
by their uids, as principals are.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import resource
import select
import socket
import statistics
import sys
import tempfile
import time

WEB_UID, FLOOD_UID = 65533, 65534   # two uids no account needs: the server maps them to principals
IDLE, SLOWLORIS = 1000, 20
SECONDS = 12.0   # per column: long enough for the slowloris (5 s) and idle (10 s) deadlines to pass under it
SLOW_FRAME = b"\x00\x00\x04\x00" + b"\x00" * 1024   # a 1 KiB frame, sent a byte a second
PAUSE = 0.0005   # between measured calls: a steady caller, not a tight loop hogging a core


def add(a, b):
    return a + b


def serve(path, ready):
    import logging
    logging.getLogger("pspy.rpc").setLevel(logging.ERROR)   # one line per refusal would flood the table
    from pspy.rpc.server import Endpoint, Server
    callers = frozenset({"web", "flood"})
    server = Server("Bench", {"add": Endpoint("add", add, callers)}, {WEB_UID: "web", FLOOD_UID: "flood"}.get)
    server.bind(path)
    ready.set()
    server.serve_forever()


def become(uid):
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def measure(path, seconds, out):
    """As web: small calls for ``seconds``; their latencies (ns) and failures go to ``out``."""
    from pspy.rpc.client import Client   # before the uid changes: the install may be closed to it
    become(WEB_UID)
    client = Client("Bench", path, timeout=10)
    client.call("add", (1, 2))   # the pool's connection, made before timing
    samples, failures = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter_ns()
        try:
            client.call("add", (1, 2))
        except Exception as e:  # noqa: BLE001 - counted and reported, the run goes on
            failures.append(f"{type(e).__name__}: {e}")
        samples.append(time.perf_counter_ns() - t0)
        time.sleep(PAUSE)
    out.put((samples, failures))


def flood(path, started, stop, out, storm):
    """As flood: hold IDLE idle and SLOWLORIS trickling connections, and
    reopen each one the provider refuses or closes, until ``stop``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * IDLE)), hard))
    become(FLOOD_UID)
    poller = select.poll()
    socks: dict[int, tuple[socket.socket, str]] = {}   # fd -> (socket, "idle" or "slow")
    sent: dict[socket.socket, int] = {}   # slowloris: bytes of SLOW_FRAME sent
    opened = refused = closed = 0

    def open_one(kind):
        nonlocal opened
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        for _ in range(1000):   # a full listening queue fails at once (EAGAIN): wait for room
            try:
                s.connect(path)
                break
            except BlockingIOError:
                time.sleep(0.001)
        else:
            s.close()
            return
        if kind == "slow":
            try:
                s.send(SLOW_FRAME[:1])   # a frame has started
            except OSError:
                s.close()
                return
        socks[s.fileno()] = (s, kind)
        sent[s] = 1
        poller.register(s, select.POLLIN)
        opened += 1

    for _ in range(SLOWLORIS):
        open_one("slow")
    for _ in range(IDLE):
        open_one("idle")
    started.set()
    last_trickle = time.monotonic()
    while not stop.is_set():
        for fd, _ in poller.poll(50):   # a refusal frame, or EOF: either way it is gone; open another
            s, kind = socks.pop(fd)
            poller.unregister(fd)
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            s.close()
            sent.pop(s, None)
            if data:
                refused += 1
                if storm:
                    open_one(kind)
            else:
                closed += 1
                open_one(kind)
        if time.monotonic() - last_trickle >= 1:
            last_trickle = time.monotonic()
            for s, kind in list(socks.values()):
                if kind == "slow" and sent[s] < len(SLOW_FRAME):
                    try:
                        s.send(SLOW_FRAME[sent[s]:sent[s] + 1])
                        sent[s] += 1
                    except OSError:
                        pass
    out.put({"connections opened": opened, "refused (cap)": refused, "closed (deadlines)": closed,
             "open at the end": len(socks)})


def run(path, seconds, flooding, storm=False):
    ctx = multiprocessing.get_context("fork")
    out, flood_out = ctx.Queue(), ctx.Queue()
    started, stop = ctx.Event(), ctx.Event()
    flooder = None
    if flooding:
        flooder = ctx.Process(target=flood, args=(path, started, stop, flood_out, storm), daemon=True)
        flooder.start()
        started.wait(60)
        time.sleep(1)   # the provider has taken, refused and started timing them
    caller = ctx.Process(target=measure, args=(path, seconds, out), daemon=True)
    caller.start()
    while True:
        try:
            samples, failures = out.get(timeout=1)
            break
        except queue.Empty:
            if not caller.is_alive():
                raise SystemExit(f"the measured caller died (exit status {caller.exitcode})") from None
    caller.join()
    stats = None
    if flooder is not None:
        stop.set()
        stats = flood_out.get(timeout=60)
        flooder.join(10)
    samples.sort()
    return {"median_us": statistics.median(samples) / 1000,
            "p99_us": samples[int(len(samples) * 0.99) - 1] / 1000,
            "max_us": samples[-1] / 1000, "calls": len(samples), "failed": len(failures),
            "first_failure": failures[0] if failures else None, "flood": stats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per column instead of 12 (smoke test)")
    parser.add_argument("--storm", action="store_true",
                        help="the flooding principal also reopens every refused connection at once")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/fairness.py needs root: its two callers are told apart by uid, as principals are",
              file=sys.stderr)
        return 2
    seconds = 2.0 if args.quick else SECONDS
    folder = tempfile.mkdtemp(prefix="pspy-fairness-", dir="/tmp")
    os.chmod(folder, 0o755)   # both callers' uids reach the socket
    path = os.path.join(folder, "rpc.sock")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    server = ctx.Process(target=serve, args=(path, ready), daemon=True)
    server.start()
    ready.wait(10)
    try:
        quiet = run(path, seconds, flooding=False)
        flooded = run(path, seconds, flooding=True, storm=args.storm)
    finally:
        server.kill()
        server.join(5)
        try:
            os.unlink(path)
            os.rmdir(folder)
        except OSError:
            pass

    from pspy.rpc.server import FRAME_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS_PER_CALLER
    print(f"Another principal's small add(1, 2) calls through pspy's client, {seconds:g} s per column "
          f"({quiet['calls']} and {flooded['calls']} calls), one run, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]};\nflood: one principal holds {IDLE} idle + "
          f"{SLOWLORIS} slowloris connections, reopens each one closed"
          f"{' or refused (--storm)' if args.storm else ''} "
          f"(cap {MAX_CONNECTIONS_PER_CALLER} per caller, idle deadline {IDLE_TIMEOUT:g}s, "
          f"frame deadline {FRAME_TIMEOUT:g}s); microseconds, ratio = under flood / quiet")
    header = f"{'':<14}{'quiet':>12}{'under flood':>14}{'ratio':>9}"
    print(header)
    print("-" * len(header))
    for key, label in (("median_us", "median"), ("p99_us", "p99"), ("max_us", "max")):
        print(f"{label:<14}{quiet[key]:>12.1f}{flooded[key]:>14.1f}{flooded[key] / quiet[key]:>8.2f}x")
    print(f"{'failed calls':<14}{quiet['failed']:>12}{flooded['failed']:>14}")
    if flooded["first_failure"] or quiet["first_failure"]:
        print("first failure:", flooded["first_failure"] or quiet["first_failure"])
    print("flood:", ", ".join(f"{k} {v}" for k, v in flooded["flood"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quiet": quiet, "flooded": flooded}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
