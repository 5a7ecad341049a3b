"""RPC round trips: pspy against the raw-socket floor, Pyro5, RPyC and
multiprocessing.connection, measured in one run on this machine.

    python bench/rpc.py [--quick] [--json FILE]

Every system runs its server in a separate process and is called over a Unix
socket. The floor is two processes exchanging length-prefixed frames over an
AF_UNIX socketpair with no codec: the least any RPC over that socket can
cost. Ratios are against the floor measured in the same run. Pyro5 and RPyC
come from the `bench` extra (`pip install -e '.[bench]'`); a system that is
not installed is reported as missing, not skipped silently.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time

HEADER = struct.Struct(">I")
PAYLOADS = {
    "small add(1, 2)": None,
    "echo 4 KiB": b"x" * 4096,
    "echo 1 MiB": b"x" * (1 << 20),
}
CALLS = {"small add(1, 2)": 5000, "echo 4 KiB": 3000, "echo 1 MiB": 300}
CONCURRENT_CLIENTS = 4
CONCURRENT_SECONDS = 4.0   # split over two interleaved rounds
ROUNDS = 5


def add(a, b):
    return a + b


def echo(data):
    return data


# --- the floor: length-prefixed frames, no codec ---------------------------------

def _recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:])
        if r == 0:
            raise EOFError
        got += r
    return buf


def _floor_send(sock, payload):
    if len(payload) < 65536:
        sock.sendall(HEADER.pack(len(payload)) + payload)
    else:
        sock.sendall(HEADER.pack(len(payload)))
        sock.sendall(payload)


def _floor_recv(sock):
    (n,) = HEADER.unpack(_recv_exact(sock, 4))
    return _recv_exact(sock, n)


def _floor_serve(sock):
    try:
        while True:
            _floor_send(sock, _floor_recv(sock))   # echo the frame: the reply costs what the request did
    except (EOFError, OSError):
        pass


class Floor:
    name = "floor (socketpair, frames, no codec)"

    def start(self, n_clients):
        self.pairs = [socket.socketpair() for _ in range(n_clients)]
        self.proc = multiprocessing.Process(target=self._server, daemon=True)
        self.proc.start()
        for _, server_end in self.pairs:
            server_end.close()

    def _server(self):
        for client_end, _ in self.pairs:
            client_end.close()
        threads = [threading.Thread(target=_floor_serve, args=(s,)) for _, s in self.pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def caller(self, index, payload_name):
        sock = self.pairs[index][0]
        # the small call's frame is the size of pspy's encoded add(1, 2) request
        data = b"\x93\xa3add\x92\x01\x02\x80" if payload_name.startswith("small") else PAYLOADS[payload_name]
        return lambda: _floor_recv(sock) if _floor_send(sock, data) is None else None

    def stop(self):
        for client_end, _ in self.pairs:
            client_end.close()
        self.proc.join(5)

    def server_pids(self):
        return [self.proc.pid]


# --- pspy ---------------------------------------------------------------------------

class Pspy:
    name = "pspy"

    def start(self, n_clients):
        from pspy.rpc.server import SUPERVISOR, Endpoint, Server
        self.dir = tempfile.mkdtemp(prefix="pspy-bench-", dir="/tmp")
        self.path = os.path.join(self.dir, "rpc.sock")
        callers = frozenset({"bench", SUPERVISOR})
        endpoints = {"add": Endpoint("add", add, callers), "echo": Endpoint("echo", echo, callers)}
        ready = multiprocessing.Event()

        def serve():
            server = Server("Bench", endpoints, lambda uid: "bench")
            server.bind(self.path)
            ready.set()
            server.serve_forever()

        self.proc = multiprocessing.Process(target=serve, daemon=True)
        self.proc.start()
        ready.wait(10)

    def caller(self, index, payload_name):
        from pspy.rpc.client import Client
        client = Client("Bench", self.path)
        if payload_name.startswith("small"):
            return lambda: client.call("add", (1, 2))
        data = PAYLOADS[payload_name]
        return lambda: client.call("echo", (data,))

    def stop(self):
        self.proc.kill()
        self.proc.join(5)

    def server_pids(self):
        return [self.proc.pid]


# --- Pyro5 --------------------------------------------------------------------------

class Pyro:
    def __init__(self, serializer):
        self.serializer = serializer
        self.name = f"Pyro5 ({serializer})"

    def start(self, n_clients):
        self.dir = tempfile.mkdtemp(prefix="pyro-bench-", dir="/tmp")
        self.path = os.path.join(self.dir, "pyro.sock")
        ready = multiprocessing.Event()
        serializer = self.serializer

        def serve():
            import Pyro5.api
            from Pyro5 import config
            config.SERIALIZER = serializer
            config.SERVERTYPE = "thread"

            @Pyro5.api.expose
            class Service:
                def add(self, a, b):
                    return a + b

                def echo(self, data):
                    return data

            daemon = Pyro5.api.Daemon(unixsocket=self.path)
            daemon.register(Service(), "svc")
            ready.set()
            daemon.requestLoop()

        self.proc = multiprocessing.Process(target=serve, daemon=True)
        self.proc.start()
        ready.wait(10)

    def caller(self, index, payload_name):
        import Pyro5.api
        from Pyro5 import config
        config.SERIALIZER = self.serializer
        proxy = Pyro5.api.Proxy(f"PYRO:svc@./u:{self.path}")
        proxy._pyroSerializer = self.serializer   # per proxy: config.SERIALIZER is process-wide
        proxy._pyroBind()
        if payload_name.startswith("small"):
            return lambda: proxy.add(1, 2)
        data = PAYLOADS[payload_name]
        return lambda: proxy.echo(data)

    def stop(self):
        self.proc.kill()
        self.proc.join(5)

    def server_pids(self):
        return [self.proc.pid]


# --- RPyC ---------------------------------------------------------------------------

class RPyC:
    name = "RPyC"

    def start(self, n_clients):
        self.dir = tempfile.mkdtemp(prefix="rpyc-bench-", dir="/tmp")
        self.path = os.path.join(self.dir, "rpyc.sock")
        ready = multiprocessing.Event()

        def serve():
            import rpyc
            from rpyc.utils.server import ThreadedServer

            class Service(rpyc.Service):
                def exposed_add(self, a, b):
                    return a + b

                def exposed_echo(self, data):
                    return data

            server = ThreadedServer(Service, socket_path=self.path)
            ready.set()
            server.start()

        self.proc = multiprocessing.Process(target=serve, daemon=True)
        self.proc.start()
        ready.wait(10)
        for _ in range(200):   # the server listens only once start() runs
            with socket.socket(socket.AF_UNIX) as probe:
                if probe.connect_ex(self.path) == 0:
                    break
            time.sleep(0.05)

    def caller(self, index, payload_name):
        import rpyc
        conn = rpyc.utils.factory.unix_connect(self.path)
        root = conn.root
        if payload_name.startswith("small"):
            return lambda: root.add(1, 2)
        data = PAYLOADS[payload_name]
        return lambda: root.echo(data)

    def stop(self):
        self.proc.kill()
        self.proc.join(5)

    def server_pids(self):
        return [self.proc.pid]


# --- multiprocessing.connection ----------------------------------------------------

class MPConnection:
    name = "multiprocessing.connection"

    def start(self, n_clients):
        self.dir = tempfile.mkdtemp(prefix="mpc-bench-", dir="/tmp")
        self.path = os.path.join(self.dir, "mpc.sock")
        ready = multiprocessing.Event()

        def serve():
            from multiprocessing.connection import Listener
            listener = Listener(self.path, family="AF_UNIX")
            ready.set()
            functions = {"add": add, "echo": echo}

            def handle(conn):
                try:
                    while True:
                        name, args = conn.recv()
                        conn.send(functions[name](*args))
                except (EOFError, OSError):
                    pass

            while True:
                conn = listener.accept()
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

        self.proc = multiprocessing.Process(target=serve, daemon=True)
        self.proc.start()
        ready.wait(10)

    def caller(self, index, payload_name):
        from multiprocessing.connection import Client
        conn = Client(self.path, family="AF_UNIX")
        if payload_name.startswith("small"):
            return lambda: (conn.send(("add", (1, 2))), conn.recv())[1]
        data = PAYLOADS[payload_name]
        return lambda: (conn.send(("echo", (data,))), conn.recv())[1]

    def stop(self):
        self.proc.kill()
        self.proc.join(5)

    def server_pids(self):
        return [self.proc.pid]


class Direct:
    name = "direct in-process call"

    def start(self, n_clients):
        pass

    def caller(self, index, payload_name):
        if payload_name.startswith("small"):
            return lambda: add(1, 2)
        data = PAYLOADS[payload_name]
        return lambda: echo(data)

    def stop(self):
        pass

    def server_pids(self):
        return []


# --- measuring ------------------------------------------------------------------------

def latencies(call, n):
    """n timed calls after a short warm-up, in nanoseconds."""
    for _ in range(min(50, n)):   # warm up: connections, caches, lazy imports
        call()
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        call()
        out.append(clock() - t0)
    return out


def _concurrent_worker(system, index, payload_name, start_at, seconds, queue, cpus):
    os.sched_setaffinity(0, cpus)
    call = system.caller(index, payload_name)
    for _ in range(100):
        call()
    while time.time() < start_at:
        time.sleep(0.001)
    count, end = 0, start_at + seconds
    while time.time() < end:
        call()
        count += 1
    queue.put(count)


def calls_per_second(system, payload_name, clients, seconds, cpus):
    queue = multiprocessing.Queue()
    start_at = time.time() + 1.0
    workers = [multiprocessing.Process(target=_concurrent_worker,
                                       args=(system, i, payload_name, start_at, seconds, queue, cpus))
               for i in range(clients)]
    for w in workers:
        w.start()
    total = sum(queue.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(10)
    return total / seconds


def systems():
    out = [Direct(), Floor(), Pspy()]
    try:
        import Pyro5  # noqa: F401
        out += [Pyro("serpent"), Pyro("msgpack")]
    except ImportError:
        print("Pyro5 is not installed (pip install -e '.[bench]'): not measured", file=sys.stderr)
    try:
        import rpyc  # noqa: F401
        out.append(RPyC())
    except ImportError:
        print("RPyC is not installed (pip install -e '.[bench]'): not measured", file=sys.stderr)
    out.append(MPConnection())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls (smoke test)")
    parser.add_argument("--pin", choices=("same", "split", "none"), default="same",
                        help="latency runs: servers and client on the same core (default), on "
                             "different cores, or left to the scheduler")
    parser.add_argument("--only", metavar="NAMES", default="",
                        help="comma-separated name prefixes of systems to run besides the baselines")
    args = parser.parse_args(argv)
    multiprocessing.set_start_method("fork")
    scale = 0.1 if args.quick else 1.0
    seconds = 0.5 if args.quick else CONCURRENT_SECONDS

    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    chosen = [s for s in systems()
              if not wanted or isinstance(s, (Floor, Direct)) or any(s.name.lower().startswith(w) for w in wanted)]
    cpus = sorted(os.sched_getaffinity(0))
    # Latency depends a lot on whether client and server share a core (a
    # cross-core wake-up costs tens of microseconds in a VM), which the
    # scheduler decides differently run to run; pin every server and the
    # client to the same core so all systems are measured alike.
    if args.pin == "same" or len(cpus) == 1:
        server_cpu = client_cpu = {cpus[0]}
    elif args.pin == "split":
        server_cpu, client_cpu = {cpus[-1]}, {cpus[0]}
    else:
        server_cpu = client_cpu = set(cpus)
    os.sched_setaffinity(0, server_cpu)
    for system in chosen:
        system.start(CONCURRENT_CLIENTS)
    os.sched_setaffinity(0, client_cpu)
    results = {system.name: {} for system in chosen}
    try:
        callers = {(system.name, p): system.caller(0, p) for system in chosen for p in PAYLOADS}
        # Rounds interleave the systems, so a slow moment of the machine falls on all of them.
        for payload_name in PAYLOADS:
            samples = {system.name: [] for system in chosen}
            n = max(20, int(CALLS[payload_name] * scale)) // ROUNDS
            for _ in range(ROUNDS):
                for system in chosen:
                    samples[system.name] += latencies(callers[(system.name, payload_name)], n)
            for name, values in samples.items():
                values.sort()
                results[name][payload_name] = {
                    "median_us": round(statistics.median(values) / 1000, 2),
                    "p99_us": round(values[int(len(values) * 0.99) - 1] / 1000, 2)}
        # Throughput: servers and clients free to use every core, as in real use.
        for system in chosen:
            for pid in system.server_pids():
                os.sched_setaffinity(pid, set(cpus))
        concurrent = {system.name: [] for system in chosen if not isinstance(system, Direct)}
        for _ in range(2):
            for system in chosen:
                if not isinstance(system, Direct):
                    concurrent[system.name].append(
                        calls_per_second(system, "small add(1, 2)", CONCURRENT_CLIENTS, seconds / 2, set(cpus)))
        for name, values in concurrent.items():
            results[name]["concurrent"] = {"clients": CONCURRENT_CLIENTS, "payload": "small add(1, 2)",
                                           "calls_per_s": round(statistics.mean(values))}
    finally:
        for system in chosen:
            system.stop()

    floor = results[Floor.name]
    for entry in results.values():
        for payload_name in PAYLOADS:
            entry[payload_name]["ratio_to_floor"] = round(
                entry[payload_name]["median_us"] / floor[payload_name]["median_us"], 2)
        if "concurrent" in entry:
            entry["concurrent"]["ratio_to_floor"] = round(
                entry["concurrent"]["calls_per_s"] / floor["concurrent"]["calls_per_s"], 2)

    print(f"RPC round trips, one run, {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
          "median / p99 in microseconds, ratio = median / floor median;\n"
          f"latency with servers on CPUs {sorted(server_cpu)} and the client on CPUs {sorted(client_cpu)}, "
          f"{ROUNDS} interleaved rounds; throughput unpinned, {CONCURRENT_CLIENTS} client processes")
    header = f"{'system':<38}" + "".join(f"{p:>30}" for p in PAYLOADS) + f"{'4 clients calls/s (x floor)':>32}"
    print(header)
    print("-" * len(header))
    for name, entry in results.items():
        row = f"{name:<38}"
        for payload_name in PAYLOADS:
            e = entry[payload_name]
            row += f"{e['median_us']:>10.1f} /{e['p99_us']:>9.1f} ({e['ratio_to_floor']:>5.2f}x)"
        c = entry.get("concurrent")
        row += f"{c['calls_per_s']:>20,.0f} ({c['ratio_to_floor']:.2f}x)" if c else f"{'-':>32}"
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
