"""What separation costs a real app over HTTP: zoobank, the microblog, and
the two apps separated by data grants (minitwit on Flask, dpaste_grants on
Django: a Django page's queries through pspy.contrib.django), unseparated
against pspy's chroot and namespace mode, in one run.

    sudo python bench/app.py [--rounds N] [--requests N] [--clients C]
                             [--only zoobank|microblog|minitwit|dpaste_grants] [--quick] [--json FILE]

Each app runs three times side by side on loopback ports, always with the
Flask server its pspy.toml starts (`python app.py`, threaded):
- unseparated: `python app.py` in a temporary copy of the example, its
  databases made by its own setup_db.py, the way its authors run it;
- chroot and namespaces: `pspy bootstrap --detach` of the example, the front
  end `web` calling the providers over RPC.
The request mix is the app's everyday traffic: zoobank three balance reads
(web -> Bank) to one transfer (web -> Auth, web -> Bank); the microblog three
timeline reads to one post (web -> Timeline), each client logged in.

Every round measures every configuration once, in a new order each round,
so drift during the run falls on all alike:
- throughput: C client threads, each on its own keep-alive connection,
  send R requests in all; requests per second;
- latency: one client sends R/2 requests one after another; median and p99.
Ratios are against unseparated in the same run. Goal: separation costs at
most 10% of throughput. Any response that is not a success is counted and
reported; a configuration with failures is not a measurement.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
CONFIGS = ("unseparated", "chroot", "namespaces")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Connection:
    """One client's keep-alive connection; reconnects when the server closes it."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.headers = {"Content-Type": "application/json"}

    def request(self, method: str, path: str, body=None) -> tuple[int, bytes, http.client.HTTPResponse]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                response = self.conn.getresponse()
                payload = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return response.status, payload, response
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body=None):
        status, payload, _ = self.request(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status} {payload[:200]!r}")
        return json.loads(payload)


class Zoobank:
    """Two accounts per client; transfers go back and forth between them, so
    no balance runs out however many requests a client sends."""

    name = "zoobank"
    env_port, env_secret = "ZOOBANK_PORT", "ZOOBANK_SECRET_KEY"

    def __init__(self, conn: Connection, client: int, tag: str):
        self.conn = conn
        self.users = [f"c{client}{side}{tag}" for side in "ab"]
        self.tokens = [conn.json("POST", "/api/register", {"username": u, "password": "pw"})["token"]
                       for u in self.users]
        self.turn = 0

    def step(self, i: int) -> int:
        if i % 4 == 3:
            sender = self.turn
            self.turn ^= 1
            self.conn.headers["Authorization"] = f"Bearer {self.tokens[sender]}"
            status, _, _ = self.conn.request("POST", "/api/transfer",
                                             {"recipient": self.users[1 - sender], "zoobars": 1})
            del self.conn.headers["Authorization"]
            return status
        return self.conn.request("GET", f"/api/balance/{self.users[i % 2]}")[0]


class Microblog:
    """One logged-in user per client: personal timeline reads and posts."""

    name = "microblog"
    env_port, env_secret = "MICROBLOG_PORT", "MICROBLOG_SECRET_KEY"

    def __init__(self, conn: Connection, client: int, tag: str):
        self.conn = conn
        user = f"c{client}{tag}"
        conn.json("POST", "/api/register", {"username": user, "password": "pw"})
        status, payload, response = conn.request("POST", "/api/login", {"username": user, "password": "pw"})
        cookie = response.getheader("Set-Cookie", "")
        if status != 200 or not cookie:
            raise RuntimeError(f"microblog login: HTTP {status} {payload[:200]!r}")
        conn.headers["Cookie"] = cookie.split(";", 1)[0]

    def step(self, i: int) -> int:
        if i % 4 == 3:
            return self.conn.request("POST", "/api/messages", {"text": f"message {i}"})[0]
        return self.conn.request("GET", "/api/timeline")[0]


class Minitwit:
    """minitwit on one database shared by data grants: its views' own SQL runs
    in Data (pspy.db) under web's grants. One logged-in user per client: home
    timeline reads and posts."""

    name = "minitwit"
    env_port, env_secret = "MINITWIT_PORT", "MINITWIT_SECRET_KEY"
    up_path = "/public?format=json"

    def __init__(self, conn: Connection, client: int, tag: str):
        self.conn = conn
        conn.headers["Accept"] = "application/json"
        user = f"c{client}{tag}"
        conn.json("POST", "/register", {"username": user, "password": "pw"})
        status, payload, response = conn.request("POST", "/login", {"username": user, "password": "pw"})
        cookie = response.getheader("Set-Cookie", "")
        if status != 200 or not cookie:
            raise RuntimeError(f"minitwit login: HTTP {status} {payload[:200]!r}")
        conn.headers["Cookie"] = cookie.split(";", 1)[0]

    def step(self, i: int) -> int:
        if i % 4 == 3:
            return self.conn.request("POST", "/add_message", {"text": f"message {i}"})[0]
        return self.conn.request("GET", "/?format=json")[0]


class DpasteGrants:
    """A Django paste-bin on one database shared by data grants: the ORM in
    web runs its statements in Data through pspy.contrib.django. Three reads
    of the snippet list (Django's date functions included) to one new snippet:
    a Django page's queries, whole requests."""

    name = "dpaste_grants"
    env_port, env_secret = None, "DPASTE_SECRET_KEY"
    up_path = "/api/snippets"

    @staticmethod
    def argv(port: int) -> list[str]:
        return ["python", "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]

    def __init__(self, conn: Connection, client: int, tag: str):
        self.conn = conn
        self.author = f"c{client}{tag}"

    def step(self, i: int) -> int:
        if i % 4 == 3:
            return self.conn.request("POST", "/api/snippets", {"content": f"snippet {i}", "author": self.author})[0]
        return self.conn.request("GET", "/api/snippets")[0]


APPS = {"zoobank": Zoobank, "microblog": Microblog, "minitwit": Minitwit, "dpaste_grants": DpasteGrants}


def pspy(*args, env=None):
    proc = subprocess.run([sys.executable, "-m", "pspy", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"pspy {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")


def wait_until_up(port: int, path: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} does not answer on port {port}") from None
            time.sleep(0.1)


class Server:
    """One configuration of one app, running until stop()."""

    def __init__(self, app, config: str, workdir: str):
        self.app, self.config = app, config
        self.port = free_port()
        env = {app.env_secret: "bench-secret"}
        if app.env_port:
            env[app.env_port] = str(self.port)
        # An app whose port is in its command line (Django's runserver) is started with it.
        argv = app.argv(self.port) if hasattr(app, "argv") else ["python", "app.py"]
        source = os.path.join(EXAMPLES, app.name)
        self.proc = self.jail = None
        if config == "unseparated":
            copy = os.path.join(workdir, f"{app.name}-plain")
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("db", "__pycache__"))
            subprocess.run([sys.executable, "setup_db.py"], cwd=copy, check=True)
            self.proc = subprocess.Popen([sys.executable, *argv[1:]], cwd=copy, env={**os.environ, **env},
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            self.jail = os.path.join(workdir, f"{app.name}-{config}", "jail")
            flags = ["--namespaces"] if config == "namespaces" else []
            front_end = ["--", *argv] if hasattr(app, "argv") else []
            pspy("bootstrap", source, "--jail", self.jail, "--detach", *flags, *front_end, env=env)
        try:
            up_path = getattr(app, "up_path", "/api/public" if app.name == "microblog" else "/")
            wait_until_up(self.port, up_path, f"{app.name} ({config})")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.jail is not None:
            subprocess.run([sys.executable, "-m", "pspy", "stop", "--jail", self.jail], capture_output=True)


def throughput(server: Server, clients: int, requests: int, tag: str) -> tuple[float, int]:
    """(requests per second, failed requests) with `clients` threads sharing `requests`."""
    sessions = [server.app(Connection(server.port), c, tag) for c in range(clients)]
    share = requests // clients
    failures = [0] * clients
    start = threading.Barrier(clients + 1)

    def run(c: int) -> None:
        start.wait()
        for i in range(share):
            if sessions[c].step(i) >= 300:
                failures[c] += 1

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for s in sessions:
        s.conn.conn.close()
    return share * clients / elapsed, sum(failures)


def latency(server: Server, requests: int, tag: str) -> tuple[list[float], int]:
    """(per-request latencies in ms, failed requests) of one client, one request at a time."""
    session = server.app(Connection(server.port), 99, tag)
    times, failed = [], 0
    for i in range(requests):
        t0 = time.perf_counter()
        status = session.step(i)
        times.append((time.perf_counter() - t0) * 1000)
        failed += status >= 300
    session.conn.conn.close()
    return times, failed


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def measure(app, rounds: int, requests: int, clients: int, rng: random.Random) -> dict:
    workdir = tempfile.mkdtemp(prefix=f"pspy-bench-{app.name}-")
    servers = {}
    try:
        for config in CONFIGS:
            servers[config] = Server(app, config, workdir)
        done = {c: 0 for c in CONFIGS}
        seconds = {c: 0.0 for c in CONFIGS}
        lat = {c: [] for c in CONFIGS}
        failed = {c: 0 for c in CONFIGS}
        for r in range(rounds + 1):   # round 0 warms every configuration up and is not counted
            order = list(CONFIGS)
            rng.shuffle(order)
            for config in order:
                rps, bad = throughput(servers[config], clients, requests, f"r{r}")
                times, bad_latency = latency(servers[config], max(requests // 2, 1), f"r{r}")
                if r:
                    n = requests // clients * clients
                    done[config] += n
                    seconds[config] += n / rps
                    lat[config] += times
                    failed[config] += bad + bad_latency
        results = {}
        for config in CONFIGS:
            results[config] = {"requests_per_s": done[config] / seconds[config],
                               "median_ms": statistics.median(lat[config]),
                               "p99_ms": p99(lat[config]),
                               "failed": failed[config]}
        base = results["unseparated"]
        for entry in results.values():
            entry["throughput_ratio"] = entry["requests_per_s"] / base["requests_per_s"]
            entry["median_ratio"] = entry["median_ms"] / base["median_ms"]
        return results
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="requests per configuration per round")
    parser.add_argument("--clients", type=int, default=4, help="client threads of the throughput phase")
    parser.add_argument("--only", choices=sorted(APPS), action="append", help="measure this app only")
    parser.add_argument("--quick", action="store_true", help="one short round: checks that it works")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--seed", type=int, default=None, help="seed of the round order")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/app.py bootstraps jails: run it as root", file=sys.stderr)
        return 2
    if args.quick:
        args.rounds, args.requests, args.clients = 1, 80, 2
    rng = random.Random(args.seed)
    names = args.only or list(APPS)
    print(f"{args.rounds} rounds of {args.requests} requests ({args.clients} clients) "
          f"and {max(args.requests // 2, 1)} one at a time, per configuration; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'app':<14} {'configuration':<12} {'req/s':>8} {'vs unsep':>9} {'median ms':>10} "
          f"{'vs unsep':>9} {'p99 ms':>7} {'failed':>7}")
    report = {"rounds": args.rounds, "requests": args.requests, "clients": args.clients, "results": {}}
    worst = 0
    for name in names:
        results = measure(APPS[name], args.rounds, args.requests, args.clients, rng)
        report["results"][name] = results
        for config, e in results.items():
            worst += e["failed"]
            print(f"{name:<14} {config:<12} {e['requests_per_s']:>8.0f} {e['throughput_ratio']:>8.2f}x "
                  f"{e['median_ms']:>10.2f} {e['median_ratio']:>8.2f}x {e['p99_ms']:>7.2f} {e['failed']:>7}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if worst:
        print(f"{worst} requests failed: the figures above are not a measurement", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
