"""Bad input at every provider socket a principal can reach (issue 11).

Hypothesis builds what a hostile principal could write on a provider's
socket: garbage behind a valid length prefix, lengths past the frame limit,
frames cut short and then closed, random bytes, well-formed msgpack of the
wrong shape, wrong argument types and counts, unknown service names, nesting
past the limit, unknown or malformed extension types, registered-class
payloads naming classes that do not exist or name another class, malformed
attachment tables, and good requests followed by one of those on the same
connection. Every case goes on a connection of its own, and what comes back
is checked against what the protocol promises: a malformed frame closes that
connection with no answer, a well-formed request gets exactly one well-formed
answer (the service's value or error, LookupError for a name that does not
exist, a refusal for a caller not allowed), in order.

The integration tests run against the test app `calc` bootstrapped for real
(chroot mode and namespace mode, providers sandboxed), from the uids of its
principals: most frames come from a host process holding the principal's uid
(the kernel records that uid at connect(), so to the provider they are that
principal's), one batch comes from inside the jail through `pspy exec`, one
from root (to a provider, the supervisor: it may ping only). After every
batch a well-behaved client still gets correct answers, no provider was
restarted, no connection thread was left behind, and the provider's resident
memory stays within MEMORY_BOUND of what it was after a warm-up. Each mode's
providers read more than MIN_FRAMES_PER_MODE frames (about 8,000), so a run of
both modes sends well over 10,000; many idle connections at once come last.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import json
import os
import random
import shutil
import signal
import socket
import struct
import tempfile
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pspy.errors import ProtocolError
from pspy.rpc import Client, Endpoint, Server, codec, protocol
from pspy.rpc import server as server_module

from conftest import REPO, provider_pid, pspy

CALC = os.path.join(REPO, "tests", "apps", "calc")
MiB = 1024 * 1024
FLAG_ATTACHMENTS = 1 << 31
MEMORY_BOUND = 16 * MiB      # growth of a provider's VmRSS allowed from after the warm-up to the end
GUARD = 60.0                 # a provider that neither answers nor closes for this long is hung: a failure
MIN_FRAMES_PER_MODE = 7_500   # per mode (about 8,300 are sent): a CI run, both modes, sends over 15,000

# What the provider owes each frame: CLOSE (no answer, the connection closed), ANY (cannot be
# told in advance), or one answer: to a PING, LookupError for an UNKNOWN name, and for a
# SERVICE the service's value or error (a refusal to a caller it does not allow).
CLOSE, ANY, PING, UNKNOWN, SERVICE = "close", "any", "ping", "unknown", "service"


def fuzz_settings(examples: int):
    # No example database: CI runs are independent, and nothing is written into the checkout.
    return settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


# --- the providers of calc, as a fuzzer sees them ---------------------------------

@dataclasses.dataclass(frozen=True)
class ProviderShape:
    name: str
    services: tuple[str, ...]     # called with fuzzed arguments (those that neither sleep nor kill)
    all_names: tuple[str, ...]    # every endpoint: an "unknown" name is none of these
    params: tuple[str, ...]       # parameter names, for keyword arguments that almost fit
    has_point: bool               # the registered dataclass Point decodes here


WORKER = ProviderShape(
    "Worker", ("add", "echo", "move", "fail", "calls_recorded", "async_add", "give_connection"),
    ("add", "echo", "move", "fail", "calls_recorded", "async_add", "give_connection", "slow",
     "die_after_receiving"),
    ("a", "b", "x", "p", "dx", "kind", "seconds"), True)
OTHER = ProviderShape("Other", ("hello", "ping"), ("hello", "ping"), ("name",), False)


@dataclasses.dataclass(frozen=True)
class Frame:
    wire: bytes       # what is written for it (a truncated frame: less than its header announces)
    length: int       # the body length its header announces, flag bit removed
    outcome: str      # CLOSE, ANY (cannot be told in advance), or the answer due: PING, UNKNOWN, SERVICE
    service: str = ""
    cut_short: bool = False   # the sender closes after it: nothing may follow on the connection


def header(length: int, attachments: bool = False) -> bytes:
    return struct.pack(">I", length | (FLAG_ATTACHMENTS if attachments else 0))


def framed(body: bytes, outcome: str, service: str = "", attachments: bool = False) -> Frame:
    return Frame(header(len(body), attachments) + body, len(body), outcome, service)


def seeded_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def raw_ext(code: int, payload: bytes) -> bytes:
    """msgpack bytes of an extension value, any code (msgpack.ExtType refuses negative ones)."""
    fixed = {1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8}
    tag = struct.pack(">b", code)
    if len(payload) in fixed:
        return bytes([fixed[len(payload)]]) + tag + payload
    if len(payload) < 256:
        return b"\xc7" + bytes([len(payload)]) + tag + payload
    if len(payload) < 65536:
        return b"\xc8" + struct.pack(">H", len(payload)) + tag + payload
    return b"\xc9" + struct.pack(">I", len(payload)) + tag + payload


def request_with_raw_args(name: str, raw_args: list[bytes], raw_kwargs: bytes = b"\x80") -> bytes:
    """[name, [args...], kwargs] with arguments given as msgpack bytes, so they may be anything."""
    assert len(raw_args) < 16
    return b"\x93" + msgpack.packb(name) + bytes([0x90 | len(raw_args)]) + b"".join(raw_args) + raw_kwargs


def ext_point(fields) -> bytes:
    return raw_ext(codec.EXT_OBJECT, msgpack.packb(["Point", fields]))


# --- values ------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.text(max_size=12), st.binary(max_size=12))
# Plain msgpack: what any peer can encode without pspy. Small: volume comes from many of them.
drawn_natives = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                             | st.dictionaries(st.text(max_size=4) | st.integers(-3, 3), inner, max_size=3),
                             max_leaves=4)

EDGE_INTS = [0, 1, -1, 127, 128, 255, 256, -32, -33, 2**15, 2**16, 2**31 - 1, 2**31, 2**32, -2**31 - 1,
             2**63 - 1, 2**63, 2**64 - 1, -2**63, -2**63 + 1]
EDGE_FLOATS = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e308, 5e-324, 1.5]
EDGE_TEXT = ["", "a", "\x00", "é", "\u2028", "\U0001f600", "x" * 31, "x" * 32, "y" * 256, "__class__", "{0}", "%s"]


def seeded_native(seed: int):
    """A plain msgpack value grown from a seed: one draw instead of dozens (see natives)."""
    rng = random.Random(seed)

    def value(depth: int):
        kind = rng.randrange(9 if depth < 4 else 6)
        if kind == 0:
            return rng.choice([None, True, False])
        if kind == 1:
            return rng.choice(EDGE_INTS) if rng.random() < 0.5 else rng.randint(-2**63, 2**64 - 1)
        if kind == 2:
            return rng.choice(EDGE_FLOATS) if rng.random() < 0.5 else rng.uniform(-1e9, 1e9)
        if kind == 3:
            return rng.choice(EDGE_TEXT)
        if kind == 4:
            return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0xd800)]))
                           for _ in range(rng.randrange(12)))
        if kind == 5:
            return rng.randbytes(rng.choice([0, 1, 5, 31, 32, 255, 256]))
        if kind in (6, 7):
            return [value(depth + 1) for _ in range(rng.randrange(5))]
        keys = [rng.choice([rng.choice(EDGE_TEXT), rng.randint(-3, 3), None, 1.5, b"k"])
                for _ in range(rng.randrange(4))]
        return {k: value(depth + 1) for k in keys}
    return value(0)


# Hypothesis draws a third of the values itself (its edge cases, its shrinking);
# the rest grow from one drawn seed each, so that a CI run can afford 10,000 frames.
natives = st.one_of(drawn_natives, st.integers(0, 2**64).map(seeded_native),
                    st.integers(0, 2**64).map(seeded_native))
hashable = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.binary(max_size=8),
                     st.dates(), st.uuids(), st.decimals(allow_nan=False))
# What pspy's codec allows, extension types included.
allowed = st.recursive(
    st.one_of(scalars, st.integers(2**64, 2**200) | st.integers(-2**200, -2**63 - 1), st.dates(),
              st.datetimes(), st.decimals(), st.uuids()),
    lambda inner: (st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
                   | st.frozensets(hashable, max_size=3) | st.sets(hashable, max_size=3)
                   | st.dictionaries(hashable, inner, max_size=3)),
    max_leaves=4)


@functools.cache   # a strategy is built once: building one costs more than drawing from it
def argument_bytes(shape: ProviderShape):
    """One argument, as msgpack bytes: a plain value, an allowed pspy value, or (Worker) a Point."""
    choices = [natives.map(lambda v: msgpack.packb(v, use_bin_type=True)), allowed.map(codec.encode)]
    if shape.has_point:
        choices.append(st.tuples(natives, natives).map(lambda xy: ext_point({"x": xy[0], "y": xy[1]})))
    return st.one_of(choices)


@functools.cache
def kwargs_bytes(shape: ProviderShape):
    keys = st.sampled_from(shape.params) | st.text(max_size=6) | st.integers(-2, 2)
    return st.dictionaries(keys, natives, max_size=2).map(lambda d: msgpack.packb(d, use_bin_type=True))


@functools.cache
def good_frame(shape: ProviderShape):
    """A well-formed request: ping, an unknown name, or a real service with fuzzed arguments."""
    ping = st.just(framed(codec.encode([protocol.PING, [], {}]), PING))
    unknown = st.tuples(unknown_names(shape), st.lists(natives, max_size=2)).map(
        lambda t: framed(codec.encode([t[0], t[1], {}]), UNKNOWN))
    return st.one_of(ping, unknown, service_call(shape))


NEAR_NAMES = ["{name} ", " {name}", "{name}\x00", "{provider}.{name}", "{name}{name}", "_{name}", "{name}()",
              "{name}.__call__", "{name}.__globals__", "{name}/"]


@functools.cache
def unknown_names(shape: ProviderShape):
    near = st.tuples(st.sampled_from(shape.all_names), st.sampled_from(NEAR_NAMES)).map(
        lambda t: t[1].format(name=t[0], provider=shape.name))
    return (near | st.text(max_size=40) | st.sampled_from(["__init__", "__class__", "__pspy_ping__ ", "self",
                                                           "__import__", "os.system", "Auth.login", ""])
            ).filter(lambda n: n not in shape.all_names and n != protocol.PING)


@functools.cache
def service_call(shape: ProviderShape):
    return st.tuples(st.sampled_from(shape.services), st.lists(argument_bytes(shape), max_size=3),
                     kwargs_bytes(shape)).map(
        lambda t: framed(request_with_raw_args(t[0], t[1], t[2]), SERVICE, t[0]))


# --- the bad cases, one strategy per kind ------------------------------------------
# Each returns the frames written on one connection (mostly one).

@functools.cache
def garbage(shape, max_frame):
    small = st.binary(max_size=300).map(lambda b: [framed(b, ANY)])
    # Large bodies take the large-frame path: read into a buffer of their own. Up to 512 KiB: the
    # memory malloc keeps per thread arena after larger ones would blur the growth measured.
    large = st.tuples(st.integers(64 * 1024, 512 * 1024), st.integers(0, 2**32)).map(
        lambda t: [framed(seeded_bytes(t[1], t[0]), ANY)])
    raw = st.binary(min_size=1, max_size=400).map(lambda b: [Frame(b, 0, ANY)])
    return st.one_of(small, small, raw, large)


@functools.cache
def oversized(shape, max_frame):
    return st.tuples(st.integers(max_frame + 1, FLAG_ATTACHMENTS - 1), st.booleans(), st.binary(max_size=64)).map(
        lambda t: [Frame(header(t[0], t[1]) + t[2], t[0], CLOSE)])


@functools.cache
def truncated(shape, max_frame):
    """A header announcing more than follows, then the sender closes."""
    def cut(t):
        n, k, seed, flag = t
        return [Frame(header(n, flag) + seeded_bytes(seed, min(k, n - 1)), n, CLOSE, cut_short=True)]
    random_prefix = st.tuples(st.integers(1, max_frame), st.integers(0, 4096) | st.integers(0, 300_000),
                              st.integers(0, 2**32), st.booleans()).map(cut)
    request_prefix = st.tuples(good_frame(shape), st.integers(0, 200)).map(
        lambda t: [Frame(t[0].wire[:4 + min(t[1], t[0].length - 1)], t[0].length, CLOSE, cut_short=True)])
    header_prefix = st.integers(1, 3).map(lambda k: [Frame(header(100)[:k], 100, CLOSE, cut_short=True)])
    return st.one_of(random_prefix, request_prefix, header_prefix)


def is_request(value) -> bool:
    return (type(value) is list and len(value) == 3 and type(value[0]) is str and type(value[1]) is list
            and type(value[2]) is dict)


@functools.cache
def wrong_shape(shape, max_frame):
    name = st.sampled_from(shape.services) | st.text(max_size=8)
    three = st.tuples(name | natives, natives, natives).map(list)
    other_lengths = st.lists(name | natives, max_size=6).filter(lambda v: len(v) != 3)
    as_tuple = st.tuples(name, st.lists(natives, max_size=2), st.just({}))   # decodes to a tuple, not a list
    values = st.one_of(natives, three, three, other_lengths).filter(lambda v: not is_request(v)).map(
        lambda v: msgpack.packb(v, use_bin_type=True))
    bodies = values | as_tuple.map(codec.encode)
    two_values = st.tuples(good_frame(shape), natives).map(   # a request and extra data in one frame
        lambda t: framed(t[0].wire[4:] + msgpack.packb(t[1]), CLOSE))
    return st.one_of(bodies.map(lambda b: [framed(b, CLOSE)]), two_values.map(lambda f: [f]))


@functools.cache
def wrong_arguments(shape, max_frame):
    return service_call(shape).map(lambda f: [f])


@functools.cache
def unknown_service(shape, max_frame):
    return st.tuples(unknown_names(shape), st.lists(argument_bytes(shape), max_size=3), kwargs_bytes(shape)).map(
        lambda t: [framed(request_with_raw_args(t[0], t[1], t[2]), UNKNOWN)])


EXT_CONTAINERS = [codec.EXT_TUPLE, codec.EXT_SET, codec.EXT_FROZENSET]


def nested_ext(codes: list[int], innermost: bytes) -> bytes:
    data = innermost
    for code in codes:
        data = raw_ext(code, data)
    return data


@functools.cache
def too_deep(shape, max_frame):
    target = st.sampled_from(shape.services)
    # msgpack's own stack holds 1024 containers; past it the frame is refused.
    plain_list = st.integers(1025, 5000).map(lambda d: b"\x91" * d + b"\xc0")
    plain_map = st.integers(1025, 3000).map(lambda d: b"\x81\xa1k" * d + b"\xc0")
    # Extension values are unpacked one inside another: past codec.MAX_DEPTH they are refused.
    ext = st.tuples(st.integers(codec.MAX_DEPTH + 2, 300), st.integers(0, 2**32)).map(
        lambda t: nested_ext(random.Random(t[1]).choices(EXT_CONTAINERS, k=t[0]), msgpack.packb([])))
    objects = st.integers(codec.MAX_DEPTH + 2, 200).map(
        lambda d: nested_ext([codec.EXT_OBJECT] * d, msgpack.packb(["Point", {"x": 1, "y": 2}])))
    too_deep_arg = st.one_of(plain_list, plain_map, ext, objects)
    refused = st.tuples(target, too_deep_arg).map(lambda t: [framed(request_with_raw_args(t[0], [t[1]]), CLOSE)])
    as_frame = too_deep_arg.map(lambda b: [framed(b, CLOSE)])
    # Within the limits a request is served (the answer may be an error: too deep to send back).
    within_ext = st.tuples(st.integers(1, codec.MAX_DEPTH + 1), st.integers(0, 2**32)).map(
        lambda t: nested_ext(random.Random(t[1]).choices([codec.EXT_TUPLE, codec.EXT_FROZENSET], k=t[0]),
                             msgpack.packb([])))
    # msgpack counts the request and its argument list too: 1024 containers in all.
    within_plain = st.integers(60, 1023).map(lambda d: b"\x91" * (d - 1) + b"\xc0")
    served = st.tuples(target, within_ext | within_plain).map(
        lambda t: [framed(request_with_raw_args(t[0], [t[1]]), SERVICE, t[0])])
    return st.one_of(refused, refused, as_frame, served)


KNOWN_EXT = {codec.EXT_TUPLE, codec.EXT_SET, codec.EXT_FROZENSET, codec.EXT_DATETIME, codec.EXT_DATE,
             codec.EXT_DECIMAL, codec.EXT_UUID, codec.EXT_BIGINT, codec.EXT_OBJECT, codec.EXT_ATTACHMENT, -1}


@functools.cache
def extension_types(shape, max_frame):
    target = st.sampled_from(shape.services)
    unknown = st.tuples(st.integers(-128, 127).filter(lambda c: c not in KNOWN_EXT), st.binary(max_size=40)).map(
        lambda t: (raw_ext(*t), CLOSE))
    known_random = st.tuples(st.sampled_from(sorted(KNOWN_EXT - {codec.EXT_ATTACHMENT})),
                             st.binary(max_size=40)).map(lambda t: (raw_ext(*t), ANY))
    malformed = st.one_of(
        st.binary(max_size=40).filter(lambda b: len(b) != 16).map(lambda b: raw_ext(codec.EXT_UUID, b)),
        st.integers(-2**63, 2**64 - 1).map(lambda i: raw_ext(codec.EXT_BIGINT, str(i).encode())),   # non-canonical
        st.integers(5001, 20000).map(lambda n: raw_ext(codec.EXT_BIGINT, b"7" * n)),                  # too long
        st.text(alphabet="0123456789abcdefx_ -+.", max_size=30).filter(
            lambda t: not _is_big_int(t)).map(lambda t: raw_ext(codec.EXT_BIGINT, t.encode())),
        st.binary(min_size=1, max_size=4).filter(lambda b: b[:1] == b"\xc1").map(
            lambda b: raw_ext(codec.EXT_TUPLE, b)),
        natives.filter(lambda v: not _is_datetime_payload(v)).map(
            lambda v: raw_ext(codec.EXT_DATETIME, msgpack.packb(v, use_bin_type=True))),
        st.integers(0, 2**32 - 1).map(lambda i: raw_ext(codec.EXT_ATTACHMENT, struct.pack(">I", i))),
        st.binary(max_size=12).filter(lambda b: len(b) not in (4, 8, 12)).map(lambda b: raw_ext(-1, b)),
    ).map(lambda b: (b, CLOSE))
    arg = st.one_of(unknown, known_random, malformed, malformed)

    def build(t):
        name, (raw, outcome), where = t
        if where == "arg":
            return [framed(request_with_raw_args(name, [raw]), outcome if outcome == CLOSE else ANY)]
        if where == "kwarg":
            return [framed(request_with_raw_args(name, [], b"\x81\xa1x" + raw), outcome if outcome == CLOSE else ANY)]
        return [framed(raw, CLOSE if outcome == CLOSE else ANY)]   # the whole frame
    return st.tuples(target, arg, st.sampled_from(["arg", "kwarg", "frame"])).map(build)


def _is_big_int(text: str) -> bool:
    try:
        value = int(text)
    except ValueError:
        return False
    return not (-2**63 <= value <= 2**64 - 1)


def _is_datetime_payload(v) -> bool:
    return type(v) is list and len(v) == 2 and type(v[0]) is str


NOT_REGISTERED = ["OutOfZoobars",       # registered, but an exception: not a dataclass to build
                  "Unregistered", "worker.Point", "Point ", "point", "POINT", "Point\x00", "object", "type",
                  "builtins.dict", "os.system", "subprocess.Popen", "Exception", "ValueError",
                  "pspy.RemoteError", "RemoteError", "Endpoint", "Server", "__main__.Point", "_fields_of"]


@functools.cache
def registered_classes(shape, max_frame):
    """EXT_OBJECT payloads: names that are not a registered dataclass here, or Point with other fields."""
    fields = st.dictionaries(st.text(max_size=4), natives, max_size=3)
    names = st.sampled_from(NOT_REGISTERED) | st.text(max_size=20).filter(lambda n: n != "Point")
    bad_name = st.tuples(names, fields | st.just({"x": 1, "y": 2})).map(lambda t: [t[0], t[1]])
    bad_fields = st.one_of(
        st.dictionaries(st.sampled_from(["x", "y", "z", "X", "__class__", "__dict__"]), natives,
                        max_size=4).filter(lambda d: set(d) != {"x", "y"}),
        st.dictionaries(st.integers(-2, 2) | st.binary(max_size=2), natives, min_size=1, max_size=3),
        natives.filter(lambda v: type(v) is not dict)).map(lambda f: ["Point", f])
    bad_payload = natives.filter(lambda v: not (type(v) is list and len(v) == 2 and v[0] == "Point"))
    payload = st.one_of(bad_name, bad_name, bad_fields, bad_payload).map(
        lambda v: raw_ext(codec.EXT_OBJECT, msgpack.packb(v, use_bin_type=True)))
    target = st.sampled_from(shape.services)
    refused = st.tuples(target, payload).map(lambda t: [framed(request_with_raw_args(t[0], [t[1]]), CLOSE)])
    # Point with its own fields is the registered dataclass: served where it is registered.
    good = st.tuples(target, natives, natives).map(lambda t: [framed(
        request_with_raw_args(t[0], [ext_point({"x": t[1], "y": t[2]})]),
        SERVICE if shape.has_point else ANY, t[0])])
    return st.one_of(refused, refused, refused, good)


@functools.cache
def attachment_frames(shape, max_frame):
    """Frames with the attachments flag: a table of lengths, the body, the attachments."""
    target = st.sampled_from(shape.services)

    def frame(table: bytes, body: bytes, blobs: list[bytes], outcome: str, service: str = "") -> Frame:
        return framed(table + body + b"".join(blobs), outcome, service, attachments=True)

    def table(lengths):
        return struct.pack(f">{len(lengths) + 1}I", len(lengths), *lengths)

    def ref(i: int) -> bytes:
        return raw_ext(codec.EXT_ATTACHMENT, struct.pack(">I", i))

    blobs = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4)
    count_zero = st.binary(max_size=40).map(lambda b: frame(table([]), b, [], CLOSE))
    count_huge = st.integers(1025, 2**32 - 1).map(lambda n: frame(struct.pack(">I", n), b"\x00" * 8, [], CLOSE))
    table_past_end = st.integers(2, 1024).map(lambda n: frame(struct.pack(">I", n), b"\x00" * 4, [], CLOSE))
    too_long = st.tuples(blobs, st.integers(1, 2**20)).map(
        lambda t: frame(table([len(b) for b in t[0][:-1]] + [len(t[0][-1]) + t[1]]), b"", t[0], CLOSE))
    short_table = st.binary(max_size=3).map(lambda b: framed(b, CLOSE, attachments=True))
    missing = st.tuples(target, blobs, st.integers(0, 2**32 - 1)).filter(lambda t: t[2] >= len(t[1])).map(
        lambda t: frame(table([len(b) for b in t[1]]), request_with_raw_args(t[0], [ref(t[2])]), t[1], CLOSE))
    twice = st.tuples(target, blobs).map(
        lambda t: frame(table([len(b) for b in t[1]]), request_with_raw_args(t[0], [ref(0), ref(0)]), t[1], CLOSE))
    bad_ref = st.tuples(target, blobs, st.binary(max_size=8).filter(lambda b: len(b) != 4)).map(
        lambda t: frame(table([len(b) for b in t[1]]),
                        request_with_raw_args(t[0], [raw_ext(codec.EXT_ATTACHMENT, t[2])]), t[1], CLOSE))
    # Well-formed: every attachment referenced once (or some never): served.
    good = st.tuples(target, blobs, st.booleans()).map(lambda t: frame(
        table([len(b) for b in t[1]]),
        request_with_raw_args(t[0], [ref(i) for i in range(len(t[1]) - (1 if t[2] and len(t[1]) > 1 else 0))]),
        t[1], SERVICE, t[0]))
    return st.one_of(count_zero, count_huge, table_past_end, too_long, short_table, missing, twice, bad_ref,
                     good).map(lambda f: [f])


SINGLE_KINDS = [garbage, oversized, truncated, wrong_shape, wrong_arguments, unknown_service, too_deep,
                extension_types, registered_classes, attachment_frames]


@functools.cache
def pipelined(shape, max_frame):
    """Good requests, then a bad frame, then more good requests, all on one connection."""
    bad = st.one_of([kind(shape, max_frame) for kind in SINGLE_KINDS])
    # Bytes written after a frame cut short would be read as the rest of it: nothing follows one.
    return st.tuples(st.lists(good_frame(shape), min_size=1, max_size=4), bad,
                     st.lists(good_frame(shape), max_size=2)).map(
        lambda t: t[0] + t[1] + ([] if t[1][-1].cut_short else t[2]))


# --- sending a case and checking what came back --------------------------------------

def exchange(sock: socket.socket, wire: bytes) -> bytes:
    """Write ``wire``, end our side, and read everything until the provider closes."""
    sock.settimeout(GUARD)
    with sock:
        try:
            sock.sendall(wire)
        except (BrokenPipeError, ConnectionResetError):
            pass    # the provider refused what it had read and closed: expected for bad frames
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:   # it closed with our bytes still unread: a refusal
                break
            except socket.timeout:
                raise AssertionError(f"the provider neither answered nor closed within {GUARD}s "
                                     f"after {len(wire)} bytes: {wire[:80]!r}") from None
            if not chunk:
                break
            received += chunk
    return bytes(received)


def parse_answers(data: bytes) -> list:
    """The provider's frames, decoded loosely (extension values left as they are)."""
    answers, offset = [], 0
    while offset < len(data):
        assert len(data) - offset >= 4, f"a partial header from the provider: {data[offset:]!r}"
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        flagged = bool(length & FLAG_ATTACHMENTS)
        length &= ~FLAG_ATTACHMENTS
        body = data[offset:offset + length]
        assert len(body) == length, "a partial frame from the provider"
        offset += length
        if flagged:
            (count,) = struct.unpack_from(">I", body)
            lengths = struct.unpack_from(f">{count}I", body, 4)
            body = body[4 + 4 * count:len(body) - sum(lengths)]
        answers.append(msgpack.unpackb(body, raw=False, strict_map_key=False,
                                       ext_hook=lambda code, payload: msgpack.ExtType(code, payload)))
    return answers


@dataclasses.dataclass
class Caller:
    """Who sends: the frame limit the provider applies to them and what they may call."""
    name: str
    max_frame: int
    may_call: frozenset[str]


def decoder_refuses(f: Frame, caller: Caller) -> bool:
    """Whether the provider's decoder refuses the frame for what it would decode
    into (codec.FrameRefused): a frame above protocol.SMALL_FRAME, or with
    attachments, is measured against its receiver's bounds first. A kilobyte of
    nested one-element lists, say, is over them at a 4 KiB max_frame."""
    if f.cut_short or f.outcome not in (PING, UNKNOWN, SERVICE):
        return False
    flagged = struct.unpack(">I", f.wire[:4])[0] & FLAG_ATTACHMENTS
    if f.length <= min(protocol.SMALL_FRAME, caller.max_frame) and not flagged:
        return False
    body = memoryview(f.wire[4:4 + f.length])
    try:
        body, attachments = protocol._split_attachments(body) if flagged else (body, None)
        codec.decode(body, attachments, limits=codec.limits_for(caller.max_frame))
    except codec.FrameRefused:
        return True
    except ProtocolError:
        return False
    return False


def expected_answers(frames: list[Frame], caller: Caller) -> tuple[list[Frame], bool]:
    """The frames that must be answered, in order, and whether nothing else may be."""
    due = []
    for f in frames:
        if f.length > caller.max_frame or f.outcome == CLOSE or decoder_refuses(f, caller):
            return due, True
        if f.outcome == ANY:
            return due, False
        due.append(f)
    return due, True


def check_answers(frames: list[Frame], caller: Caller, shape: ProviderShape, received: bytes) -> None:
    answers = parse_answers(received)
    due, exact = expected_answers(frames, caller)
    wire = b"".join(f.wire for f in frames)
    context = f"{caller.name} -> {shape.name}: sent {wire[:120]!r}... ({len(wire)} bytes), got {answers!r:.300}"
    if exact:
        # A frame past the decoder's bounds (protocol: codec.FrameRefused) is
        # answered with the bound it crossed before its connection closes.
        assert len(due) <= len(answers) <= len(due) + 1, context
        for status, payload in answers[len(due):]:
            assert status == protocol.ERROR and payload["type"] == "pspy.SerializationError" \
                and "frame refused" in payload["message"], context
    else:
        assert len(answers) >= len(due), context
    for answer in answers:
        assert type(answer) is list and len(answer) == 2 and answer[0] in (protocol.OK, protocol.ERROR,
                                                                           protocol.DENIED), context
    for f, (status, payload) in zip(due, answers):
        if f.outcome == PING:
            assert [status, payload] == [protocol.OK, shape.name], context
        elif f.outcome == UNKNOWN:
            assert status == protocol.ERROR and payload["type"] == "LookupError", context
        elif f.service in caller.may_call:
            # The service ran (or could not take these arguments): its value or its error.
            assert status in (protocol.OK, protocol.ERROR), context
            if status == protocol.ERROR:
                assert payload["traceback"] is None and isinstance(payload["type"], str), context
        else:
            assert status == protocol.DENIED and f"may not call {shape.name}.{f.service}" in payload, context


def frames_read(frames: list[Frame], caller: Caller) -> int:
    """How many of the frames the provider reads: up to the first it refuses (or may)."""
    for i, f in enumerate(frames):
        if f.length > caller.max_frame or f.outcome in (CLOSE, ANY) or decoder_refuses(f, caller):
            return i + 1
    return len(frames)


class Counter:
    """Frames the providers read, and connections they were sent on."""

    def __init__(self):
        self.frames = 0
        self.connections = 0

    def add(self, frames: list[Frame], caller: Caller):
        self.frames += frames_read(frames, caller)
        self.connections += 1


BATCH = 8   # cases drawn per example: hypothesis's own cost per example is then paid once for eight
SENDERS = ThreadPoolExecutor(BATCH, thread_name_prefix="fuzz-sender")


def send_batch(connect, caller: Caller, batch, counter: Counter) -> None:
    """Each case on a connection of its own, the batch's cases side by side, then checked in order.
    ``connect(provider, n)`` gives n connected sockets."""
    socks: list[socket.socket] = []
    for shape in {shape for shape, _ in batch}:
        wanted = [i for i, (s, _) in enumerate(batch) if s is shape]
        socks.extend(zip(wanted, connect(shape.name, len(wanted))))
    by_case = dict(socks)
    received = list(SENDERS.map(lambda i: exchange(by_case[i], b"".join(f.wire for f in batch[i][1])),
                                range(len(batch))))
    for (shape, frames), got in zip(batch, received):
        counter.add(frames, caller)
        check_answers(frames, caller, shape, got)


@functools.cache
def batches(shapes: tuple[ProviderShape, ...], kinds: tuple, max_frame: int):
    case = st.one_of([st.tuples(st.just(shape), kind(shape, max_frame)) for shape in shapes for kind in kinds])
    return st.lists(case, min_size=BATCH, max_size=BATCH)


def fuzz(connect, caller: Caller, shapes, kinds, cases: int, counter: Counter) -> None:
    """Send about ``cases`` generated cases of ``kinds`` to the providers of ``shapes``."""
    @fuzz_settings(max(1, cases // BATCH))
    @given(batches(tuple(shapes), tuple(kinds), caller.max_frame))
    def run(batch):
        send_batch(connect, caller, batch, counter)
    run()


# --- without root: the same cases against a Server in this process ---------------------

def test_decoding_a_hostile_frame_gives_a_value_or_a_protocol_error_never_another_exception():
    @fuzz_settings(2000 // BATCH)
    @given(batches((WORKER, OTHER), tuple(SINGLE_KINDS + [pipelined]), protocol.DEFAULT_MAX_FRAME))
    def run(batch):
        for f in (f for _, frames in batch for f in frames):
            body = f.wire[4:]
            try:
                codec.decode(body)
            except ProtocolError:
                pass
            if f.wire[:1] >= b"\x80" and len(f.wire) >= 8:   # an attachment frame: the table parsed too
                try:
                    decoded_body, attachments = protocol._split_attachments(memoryview(body))
                    codec.decode(decoded_body, attachments)
                except ProtocolError:
                    pass
    run()


@pytest.fixture
def in_process_provider():
    """A Server in this process with calc's Worker signatures; callers: whoever this test runs as."""
    me = server_module.SUPERVISOR if os.getuid() == 0 else "web"

    def fail(kind):
        raise ValueError(f"bad {kind!r}")

    async def async_add(a, b):
        return a + b
    functions = {"add": lambda a, b: a + b, "echo": lambda x: x, "move": lambda p, dx: (p.x + dx, p.y),
                 "fail": fail, "calls_recorded": lambda: 0, "async_add": async_add,
                 "give_connection": lambda: socket.socket, "slow": lambda seconds: None,
                 "die_after_receiving": lambda: None}
    server = Server("Worker", {n: Endpoint(n, f, frozenset({me})) for n, f in functions.items()},
                    lambda uid: "web" if uid == os.getuid() else None)
    folder = tempfile.mkdtemp(prefix="pspy-fuzz-", dir="/tmp")
    path = os.path.join(folder, "rpc.sock")
    server.bind(path)
    died = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: died.append(args)

    def serve():
        try:
            server.serve_forever()
        except OSError:   # the listener was shut down at the end
            pass
    threading.Thread(target=serve, daemon=True).start()

    def connect(_name, n=None):
        socks = []
        for _ in range(1 if n is None else n):
            socks.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            socks[-1].connect(path)
        return socks[0] if n is None else socks
    yield connect, Caller(me, protocol.DEFAULT_MAX_FRAME, frozenset(WORKER.services)), died
    threading.excepthook = previous_hook
    listener = server._listeners[0][0]
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_every_kind_of_bad_frame_gets_what_the_protocol_promises_and_no_connection_thread_dies(
        in_process_provider):
    connect, caller, died = in_process_provider
    counter = Counter()
    # No Point here under that name: a Point payload is refused like any unregistered name.
    shape = dataclasses.replace(WORKER, has_point=False)
    fuzz(connect, caller, [shape], SINGLE_KINDS + [pipelined], 1500, counter)
    assert died == [], f"connection threads died of an exception: {died[:3]}"
    client = Client("Worker", "(in this process)", timeout=30)
    client._connect = lambda *_: protocol.Connection(connect("Worker"))
    assert client.call("add", (2, 3)) == 5
    value = {"t": (1, "a"), "s": frozenset({1}), "d": decimal.Decimal("1.5"), "big": 2**100, "b": b"x" * 100_000}
    assert client.call("echo", (value,)) == value


def test_a_header_alone_does_not_make_the_receiver_allocate_the_frame_it_announces():
    # 4 bytes announcing 16 MiB, a few bytes of body, then the sender goes
    # quiet: the receiver holds no more than what arrived (and its buffer).
    import tracemalloc
    a, b = socket.socketpair()
    with a, b:
        a.sendall(header(protocol.DEFAULT_MAX_FRAME) + b"\x91" * 100)
        a.shutdown(socket.SHUT_WR)
        conn = protocol.Connection(b)
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError, match="in the middle of a frame"):
                conn.recv_message()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 1 * MiB, f"receiving a bare header made {peak} bytes of buffer"


@pytest.mark.parametrize("sizes", [[3 * MiB, MiB, 3 * MiB + 7], [5 * MiB, 200_000, 6 * MiB, 70_000]],
                         ids=["kept-buffer", "one-off-buffers"])
def test_large_frames_arriving_in_pieces_are_received_whole_and_in_order(sizes):
    a, b = socket.socketpair()
    payloads = [seeded_bytes(i, n) for i, n in enumerate(sizes)]

    def send():
        sender = protocol.Connection(a)
        for p in payloads:
            sender.send_message(["echo", [p], {}])
    with a, b:
        thread = threading.Thread(target=send)
        thread.start()
        receiver = protocol.Connection(b)
        got = [receiver.recv_message()[1][0] for _ in payloads]
        thread.join()
    assert got == payloads


# --- as root: a real bootstrapped app, its providers sandboxed -------------------------

class Connector:
    """A process holding a principal's uid and gid that connects to the jail's
    provider sockets and passes each connected socket back. The kernel records
    the connecting process's ids (SO_PEERCRED at connect()), so what this test
    writes on such a socket comes, to the provider, from that principal."""

    def __init__(self, jail: str, uid: int, gid: int):
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:   # pragma: no cover - the child
            status = 1
            try:
                # Nothing of the test's own: its sockets (another connector's channel
                # among them) would otherwise stay open here.
                keep = theirs.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
                # The socket folders are reached from here: the jail's parents may be closed to the uid.
                os.chdir(os.path.join(jail, ".pspy", "sock"))
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                while True:
                    asked = theirs.recv(64).decode()   # "PROVIDER COUNT"
                    if not asked:
                        break
                    provider, count = asked.split()
                    socks = []
                    for _ in range(int(count)):
                        socks.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                        socks[-1].connect(f"{provider}/rpc.sock")
                    socket.send_fds(theirs, [b"s"], [sock.fileno() for sock in socks])
                    for sock in socks:
                        sock.close()
                status = 0
            finally:
                os._exit(status)
        theirs.close()
        self.pid = pid
        self.channel = ours
        self.lock = threading.Lock()

    def connect(self, provider: str, count: int | None = None):
        """A connected socket, or a list of ``count`` of them."""
        assert count is None or 0 < count <= 64
        with self.lock:
            self.channel.sendall(f"{provider} {count or 1}".encode())
            _, fds, _, _ = socket.recv_fds(self.channel, 1, count or 1)
        socks = [socket.socket(fileno=fd) for fd in fds]
        return socks[0] if count is None else socks

    def close(self) -> None:
        self.channel.close()   # the connector ends when its channel does
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                return
            time.sleep(0.01)


def connect_as_root(jail: str):
    folder = os.path.join(jail, ".pspy", "sock")

    def connect(provider: str, count: int | None = None):
        # Through the folder's fd: a tmp_path may pass the 108-byte limit of socket paths.
        fd = os.open(os.path.join(folder, provider), os.O_PATH | os.O_DIRECTORY)
        try:
            socks = []
            for _ in range(count or 1):
                socks.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                socks[-1].connect(f"/proc/self/fd/{fd}/rpc.sock")
            return socks[0] if count is None else socks
        finally:
            os.close(fd)
    return connect


def status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def wait_for(predicate, what: str, timeout: float = GUARD):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"still waiting, after {timeout}s, for {what}"
        time.sleep(0.02)


class App:
    """calc, bootstrapped and running, as the fuzz tests see it."""

    PROVIDERS = (WORKER, OTHER)

    def __init__(self, mode: str, jail: str):
        self.mode = mode
        self.jail = jail
        plan = json.load(open(os.path.join(jail, ".pspy", "plan.json")))
        self.max_frame = plan["max_frame"]
        self.ids = {p["name"]: (p["uid"], p["gid"]) for p in plan["principals"]}
        callable_by = {p["name"]: {s["name"]: set(s["callers"]) for s in p["services"]}
                       for p in plan["principals"] if p["kind"] == "provider"}
        self.may_call = {who: frozenset(s for services in callable_by.values()
                                        for s, callers in services.items() if who in callers)
                         for who in self.ids}
        self.connectors = {who: Connector(jail, *self.ids[who]) for who in ("web", "Worker")}
        self.counter = Counter()
        self.pids = {s.name: provider_pid(jail, s.name) for s in self.PROVIDERS}
        self.threads = {s.name: status_field(self.pids[s.name], "Threads") for s in self.PROVIDERS}
        self.baseline_rss: dict[str, int] = {}
        self.log_offsets: dict[str, int] = {}
        self.warm_at = 0.0

    def caller(self, who: str) -> Caller:
        if who == "root":
            return Caller(server_module.SUPERVISOR, server_module.UNAUTHORISED_MAX_FRAME, frozenset())
        return Caller(who, self.max_frame, self.may_call[who])

    def connect_as(self, who: str):
        return connect_as_root(self.jail) if who == "root" else self.connectors[who].connect

    def fuzz(self, who: str, kinds, cases: int, shapes=PROVIDERS) -> None:
        fuzz(self.connect_as(who), self.caller(who), shapes, kinds, cases, self.counter)

    def rss(self, name: str) -> int:
        return status_field(self.pids[name], "VmRSS") * 1024

    def mark_warm(self) -> None:
        """The point memory is measured from, and what the providers' logs hold before the batches."""
        for s in self.PROVIDERS:
            # Once the warm-up's connection threads have ended: as many as the provider had at the start.
            wait_for(lambda: status_field(self.pids[s.name], "Threads") <= self.threads[s.name],
                     f"{s.name}'s threads to end")
            self.threads[s.name] = status_field(self.pids[s.name], "Threads")
            self.baseline_rss[s.name] = self.rss(s.name)
            self.log_offsets[s.name] = os.path.getsize(self.log(s.name))
        self.warm_at = time.monotonic()

    def log(self, name: str) -> str:
        return os.path.join(self.jail, ".pspy", "logs", f"{name}.log")

    def client(self, who: str, provider: str) -> Client:
        client = Client(provider, f"{self.jail} (through the connector of {who})", timeout=GUARD)
        # Every connection the real client makes comes from the principal's uid.
        client._connect = lambda *_: protocol.Connection(self.connectors[who].connect(provider))
        return client

    def assert_still_serving(self) -> None:
        """A well-behaved client gets correct answers, and nothing was restarted, leaked or grew."""
        worker, other = self.client("web", "Worker"), self.client("web", "Other")
        try:
            assert worker.call("add", (2, 3)) == 5
            value = {"tuple": (1, "a", None), "set": {1, 2}, "frozen": frozenset({"x"}), "big": -2**90,
                     "when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
                     "day": datetime.date(2024, 5, 1), "amount": decimal.Decimal("12.50"),
                     "id": uuid.UUID(int=7), "large": b"z" * 200_000, 3: [1.5, True, b"\x00"]}
            assert worker.call("echo", (value,)) == value
            with pytest.raises(ValueError, match="bad value 42"):
                worker.call("fail", ("value",))
            assert worker.call(protocol.PING) == "Worker"
            assert other.call("hello", ("fuzz",)) == "hello fuzz"
            assert other.call("ping") == "pong"
        finally:
            worker.close()
            other.close()
        for s in self.PROVIDERS:
            assert provider_pid(self.jail, s.name) == self.pids[s.name], f"{s.name} was restarted"
            # Every connection thread ends once its connection does: none is left behind.
            wait_for(lambda: status_field(self.pids[s.name], "Threads") <= self.threads[s.name],
                     f"{s.name}'s connection threads to end (it has "
                     f"{status_field(self.pids[s.name], 'Threads')}, had {self.threads[s.name]})")
            grown = self.rss(s.name) - self.baseline_rss[s.name]
            assert grown < MEMORY_BOUND, (f"{s.name}'s resident memory grew by {grown / MiB:.1f} MiB since the "
                                          f"warm-up (bound {MEMORY_BOUND / MiB:.0f} MiB)")
            with open(self.log(s.name), errors="replace") as f:
                f.seek(self.log_offsets[s.name])
                log = f.read()
            # A connection thread that died of an exception prints this; a service's error does not.
            assert "Exception in thread" not in log and "Fatal Python error" not in log, log[-3000:]

    def close(self) -> None:
        for connector in self.connectors.values():
            connector.close()


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def app(request, tmp_path_factory):
    jail = str(tmp_path_factory.mktemp(f"calc-fuzz-{request.param}") / "jail")
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", CALC, "--jail", jail, "--detach", *flags, check=True)
    app = App(request.param, jail)
    try:
        # Warm-up: every kind of case once over, and a round of many idle
        # connections, so that what is measured after is growth, not the
        # first use of buffers, thread stacks and malloc arenas.
        app.fuzz("web", SINGLE_KINDS + [pipelined], 240)
        app.fuzz("web", [garbage], 160)   # its large frames: the malloc arenas of several threads at their size
        hold_idle_connections(app, 300)
        app.mark_warm()
        yield app
    finally:
        app.close()
        pspy("stop", "--jail", jail)


@pytest.mark.root
def test_garbage_random_bytes_and_impossible_lengths_close_only_their_connection(app):
    app.fuzz("web", [garbage, oversized], 800)
    app.assert_still_serving()


@pytest.mark.root
def test_frames_cut_short_then_closed_are_dropped(app):
    app.fuzz("web", [truncated], 500)
    app.assert_still_serving()


@pytest.mark.root
def test_requests_of_the_wrong_shape_close_the_connection(app):
    app.fuzz("web", [wrong_shape], 500)
    app.assert_still_serving()


@pytest.mark.root
def test_wrong_argument_types_and_counts_get_the_services_error_and_nothing_worse(app):
    app.fuzz("web", [wrong_arguments], 800)
    app.assert_still_serving()


@pytest.mark.root
def test_unknown_service_names_get_lookup_error(app):
    app.fuzz("web", [unknown_service], 400)
    app.assert_still_serving()


@pytest.mark.root
def test_nesting_past_the_limit_is_refused_and_within_it_is_served(app):
    app.fuzz("web", [too_deep], 400)
    app.assert_still_serving()


@pytest.mark.root
def test_unknown_and_malformed_extension_types_are_refused(app):
    app.fuzz("web", [extension_types], 700)
    app.assert_still_serving()


@pytest.mark.root
def test_registered_class_names_that_do_not_exist_or_name_another_class_are_refused(app):
    app.fuzz("web", [registered_classes], 600)
    app.assert_still_serving()


@pytest.mark.root
def test_malformed_attachment_tables_and_references_are_refused(app):
    app.fuzz("web", [attachment_frames], 400)
    app.assert_still_serving()


@pytest.mark.root
def test_a_bad_frame_after_good_requests_ends_the_connection_after_their_answers(app):
    app.fuzz("web", [pipelined], 400)
    app.assert_still_serving()


@pytest.mark.root
def test_a_principal_allowed_less_and_the_supervisors_uid_get_the_same_treatment(app):
    # Worker may call Other.ping only (Other's socket is in its view); root is
    # the supervisor to a provider, held to a 4 KiB frame limit.
    app.fuzz("Worker", SINGLE_KINDS + [pipelined], 240, shapes=(OTHER,))
    app.fuzz("root", SINGLE_KINDS + [pipelined], 240)
    app.assert_still_serving()


# Run inside the jail as a principal: reads [[provider, hex of the bytes]...] on
# stdin, sends each on a connection of its own, prints the hex of what came back,
# then makes calls through the app's own stubs.
INSIDE = textwrap.dedent("""
    import json, socket, sys
    cases = json.load(sys.stdin)
    out = []
    for provider, wire in cases:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(%(guard)r)
        sock.connect(f"/.pspy/sock/{provider}/rpc.sock")
        try:
            sock.sendall(bytes.fromhex(wire))
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        got = b""
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        sock.close()
        out.append(got.hex())
    import other
    if %(web)r:
        import worker
        moved = worker.move(worker.Point(1, 2), 10)
        stubs = [worker.add(2, 3), [moved.x, moved.y], other.hello("in")]
    else:
        stubs = [other.ping()]
    print(json.dumps([out, stubs]))
""")


def cases_for_inside(shapes, max_frame: int, count: int) -> list[tuple[ProviderShape, list[Frame]]]:
    chosen = []

    @fuzz_settings(count // BATCH)
    @given(batches(tuple(shapes), tuple(SINGLE_KINDS + [pipelined]), max_frame))
    def collect(batch):
        # Small ones only: the whole batch goes through the probe's stdin.
        chosen.extend((shape, frames) for shape, frames in batch if sum(len(f.wire) for f in frames) <= 64 * 1024)
    collect()
    return chosen


@pytest.mark.root
@pytest.mark.parametrize("who", ["web", "Worker"])
def test_bad_frames_sent_from_inside_a_principal_get_the_same_treatment(app, who):
    shapes = App.PROVIDERS if who == "web" else (OTHER,)
    caller = app.caller(who)
    cases = cases_for_inside(shapes, caller.max_frame, 240)
    stdin = json.dumps([[shape.name, b"".join(f.wire for f in frames).hex()] for shape, frames in cases])
    proc = pspy("exec", "--jail", app.jail, who, "--", "python", "-c",
                INSIDE % {"guard": GUARD, "web": who == "web"}, input=stdin, timeout=300)
    assert proc.returncode == 0, f"the batch as {who} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    received, stubs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(received) == len(cases)
    for (shape, frames), got in zip(cases, received):
        app.counter.add(frames, caller)
        check_answers(frames, caller, shape, bytes.fromhex(got))
    # The app's own stubs, in the same process, after the batch:
    assert stubs == ([5, [11, 2], "hello in"] if who == "web" else ["pong"])
    app.assert_still_serving()


def hold_idle_connections(app: App, count: int) -> int:
    """Open ``count`` connections to Worker as web (more than the
    MAX_CONNECTIONS_PER_CALLER one caller may hold) that send nothing, or
    half a header; past the cap web is refused with a clear answer, while
    another caller (root, the supervisor's way in) is served at once.
    Returns how many connection threads Worker ran while they were held."""
    # From a quiet provider: the threads of connections just closed may still be ending.
    wait_for(lambda: status_field(app.pids["Worker"], "Threads") <= app.threads["Worker"], "Worker to be idle")
    before = status_field(app.pids["Worker"], "Threads")
    held = []
    for i in range(count):
        sock = app.connectors["web"].connect("Worker")
        if i % 2:
            try:
                sock.sendall(header(10)[:2])   # half a header: the provider waits for the rest
            except OSError:
                pass   # a refused one, closed already
        held.append(sock)
    busy = min(count, server_module.MAX_CONNECTIONS_PER_CALLER)
    wait_for(lambda: status_field(app.pids["Worker"], "Threads") >= before + busy,
             f"Worker to take {busy} connections")
    threads = status_field(app.pids["Worker"], "Threads") - before
    # One more from web is refused, its request unread ...
    with app.connectors["web"].connect("Worker") as late:
        late.settimeout(GUARD)
        conn = protocol.Connection(late)
        try:
            conn.send_message(["add", [20, 22], {}])
        except OSError:
            pass   # refused and closed before the request went out: the answer is still there
        status, message = conn.recv_message()
        assert status == protocol.NOT_SERVED and "the most one caller may" in message, message
    # ... while another caller is served at once.
    with connect_as_root(app.jail)("Worker") as other:
        other.settimeout(GUARD)
        conn = protocol.Connection(other)
        conn.send_message([protocol.PING, [], {}])
        assert conn.recv_message() == [protocol.OK, "Worker"]
    for sock in held:
        sock.close()
    wait_for(lambda: status_field(app.pids["Worker"], "Threads") <= before, "Worker to end their threads")
    app.counter.frames += min(count, busy) // 2 + 1   # the half headers served, the ping
    app.counter.connections += count + 2
    return threads


@pytest.mark.root
def test_more_idle_connections_than_one_caller_may_hold_are_refused_and_others_served(app):
    for _ in range(2):   # a second round: nothing of the first is kept
        # While they are held the provider serves MAX_CONNECTIONS_PER_CALLER of web's and refuses the rest.
        assert hold_idle_connections(app, 300) == server_module.MAX_CONNECTIONS_PER_CALLER
        app.assert_still_serving()


@pytest.mark.root
def test_a_header_alone_does_not_make_the_provider_allocate_the_frame_it_announces(app):
    # 64 connections each announcing a frame of the whole limit and sending
    # 4 bytes of it: the provider holds what it received, not 64 x 16 MiB.
    pid = app.pids["Worker"]
    wait_for(lambda: status_field(pid, "Threads") <= app.threads["Worker"], "Worker to be idle")
    before = status_field(pid, "Threads")
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")   # reset VmHWM, the peak resident size, to the current size
    start = app.rss("Worker")
    held = []
    for _ in range(64):
        sock = app.connectors["web"].connect("Worker")
        sock.sendall(header(app.max_frame) + b"\x91\x91\x91\x91")
        held.append(sock)
    wait_for(lambda: status_field(pid, "Threads") >= before + 64, "Worker to take the 64 connections")
    time.sleep(0.5)   # for each thread to read its header (this can only hide the failure, never fake it)
    for sock in held:
        sock.close()
    wait_for(lambda: status_field(pid, "Threads") <= before, "the 64 connection threads to end")
    peak = status_field(pid, "VmHWM") * 1024
    app.counter.frames += 64
    assert peak - start < 32 * MiB, f"Worker's peak resident size rose {(peak - start) / MiB:.0f} MiB"
    app.assert_still_serving()


@pytest.mark.root
def test_thousands_of_frames_reached_the_providers_and_none_restarted_leaked_or_grew(app):
    """The last of the module's tests: the total of every batch before it (the warm-up included)."""
    app.assert_still_serving()
    grown = {s.name: round((app.rss(s.name) - app.baseline_rss[s.name]) / MiB, 2) for s in app.PROVIDERS}
    print(f"\n{app.mode}: {app.counter.frames} frames on {app.counter.connections} connections; "
          f"{time.monotonic() - app.warm_at:.1f}s after the warm-up; VmRSS growth since then (MiB): {grown}")
    assert app.counter.frames >= MIN_FRAMES_PER_MODE, (
        f"only {app.counter.frames} frames were sent in {app.mode} mode (run the whole file)")
