"""Services of the test app `calc`, one per behaviour the RPC tests check."""

import asyncio
import dataclasses
import os
import signal
import sqlite3
import time

import pspy

HERE = os.path.dirname(os.path.abspath(__file__))


@pspy.serializable
@dataclasses.dataclass
class Point:
    x: int
    y: int


@pspy.serializable
class OutOfZoobars(Exception):
    pass


class Unregistered(Exception):
    pass


@pspy.service(service_provider="Worker", perms={"data/": 0o700})
def add(a, b):
    return a + b


@pspy.service(service_provider="Worker")
def echo(x):
    return x


@pspy.service(service_provider="Worker")
def move(p, dx):
    return Point(p.x + dx, p.y)


@pspy.service(service_provider="Worker")
def fail(kind):
    if kind == "value":
        raise ValueError("bad value 42")
    if kind == "key":
        raise KeyError("missing-key")
    if kind == "registered":
        raise OutOfZoobars("only 3 left")
    raise Unregistered("secret detail in a custom error")


@pspy.service(service_provider="Worker")
def give_connection():
    return sqlite3.connect(":memory:")


@pspy.service(service_provider="Worker", timeout=0.5)
def slow(seconds):
    time.sleep(seconds)
    return "done"


@pspy.service(service_provider="Worker")
def die_after_receiving():
    """Records the call, then the provider dies before replying."""
    with open(os.path.join(HERE, "data", "calls.log"), "a") as f:
        f.write("called\n")
    os.kill(os.getpid(), signal.SIGKILL)


@pspy.service(service_provider="Worker")
def calls_recorded():
    try:
        with open(os.path.join(HERE, "data", "calls.log")) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


@pspy.service(service_provider="Worker")
async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b
