"""codec: only allow-listed types cross, and each comes back as exactly itself."""

import datetime
import decimal
import enum
import math
import sqlite3
import uuid

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pspy.errors import ProtocolError, SerializationError
from pspy.rpc import codec

UTC = datetime.timezone.utc
IST = datetime.timezone(datetime.timedelta(hours=5, minutes=30))


def assert_same(a, b, path="value"):
    """Equal AND of the same type, all the way down (NaN equals NaN, -0.0 is not 0.0)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} came back as {type(b).__name__}"
    if isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b), path
        else:
            assert a == b and math.copysign(1, a) == math.copysign(1, b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, decimal.Decimal):
        assert str(a) == str(b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, datetime.datetime):
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), path
        assert a.utcoffset() == b.utcoffset(), f"{path}: offset {a.utcoffset()} != {b.utcoffset()}"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert len(a) == len(b), path
        for i, ((ka, va), (kb, vb)) in enumerate(zip(a.items(), b.items())):
            assert_same(ka, kb, f"{path}.key{i}")
            assert_same(va, vb, f"{path}[{ka!r}]")
    elif isinstance(a, (set, frozenset)):
        assert a == b, f"{path}: {a!r} != {b!r}"
        # Equal elements of one set are unique, so each has exactly one partner.
        partner = {y: y for y in b}
        for x in a:
            assert_same(x, partner[x], f"{path}{{{x!r}}}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def round_trip(value):
    back = codec.decode(codec.encode(value))
    assert_same(value, back)
    return back


# --- exact round trips ----------------------------------------------------

@pytest.mark.parametrize("value", [
    None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1,
    2**64, -(2**63) - 1, 10**100, -(10**100),
    0.0, -0.0, 1.5, -2.25e-300, float("inf"), float("-inf"),
    "", "zoobar", "ünïcødé ☃", b"", b"\x00\xff", bytes(range(256)),
], ids=repr)
def test_scalars_round_trip_exactly(value):
    round_trip(value)


def test_nan_round_trips_as_nan():
    back = codec.decode(codec.encode(float("nan")))
    assert type(back) is float and math.isnan(back)


def test_bool_stays_bool_and_int_stays_int():
    assert codec.decode(codec.encode([True, 1, False, 0])) == [True, 1, False, 0]
    assert [type(v) for v in codec.decode(codec.encode([True, 1, False, 0]))] == [bool, int, bool, int]


@pytest.mark.parametrize("value", [[], (), {}, set(), frozenset()], ids=repr)
def test_empty_containers_keep_their_type(value):
    round_trip(value)


def test_containers_keep_their_types():
    round_trip([1, "a", b"b"])
    round_trip((1, "a", b"b"))
    round_trip({1, "a", b"b"})
    round_trip(frozenset({1, "a", b"b"}))


def test_dict_keys_of_int_and_tuple_type_survive():
    back = round_trip({1: "one", (2, "two"): [2], "three": 3, b"four": 4, frozenset({5}): 5, None: 0})
    assert back[(2, "two")] == [2]


@pytest.mark.parametrize("value", [
    datetime.datetime(2024, 2, 29, 23, 59, 58, 123456),
    datetime.datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC),
    datetime.datetime(1999, 12, 31, 18, 30, tzinfo=IST),
    datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone(-datetime.timedelta(hours=9, seconds=1))),
    datetime.date(1970, 1, 1),
    datetime.date(9999, 12, 31),
], ids=repr)
def test_dates_and_datetimes_round_trip_with_their_offset(value):
    back = round_trip(value)
    if isinstance(value, datetime.datetime):
        assert (back.tzinfo is None) == (value.tzinfo is None)


def test_aware_datetime_keeps_its_plus_0530_offset():
    back = codec.decode(codec.encode(datetime.datetime(2024, 1, 1, 9, 0, tzinfo=IST)))
    assert back.utcoffset() == datetime.timedelta(hours=5, minutes=30)
    assert back.hour == 9


@pytest.mark.parametrize("text", ["0", "3.14", "-0.00", "1E+400", "Infinity", "-Infinity",
                                  "123456789012345678901234567890.000000001"])
def test_decimals_round_trip_digit_for_digit(text):
    round_trip(decimal.Decimal(text))


def test_decimal_nan_round_trips_as_nan():
    back = codec.decode(codec.encode(decimal.Decimal("NaN")))
    assert type(back) is decimal.Decimal and back.is_nan()


def test_uuid_round_trips():
    round_trip(uuid.UUID("12345678-1234-5678-1234-567812345678"))
    round_trip(uuid.uuid4())


def test_nested_mix_round_trips():
    round_trip({
        "user": ("alice", 10**30, decimal.Decimal("-0.00")),
        (1, (2, (3,))): [frozenset({(1, 2), "x"}), {datetime.date(2020, 1, 1)}],
        "when": [datetime.datetime(2020, 1, 1, tzinfo=IST), datetime.datetime(2020, 1, 1)],
        "ids": {uuid.UUID(int=1): [None, True, 1.5, b"\x00"]},
        "empty": ([], (), {}, set(), frozenset()),
    })


# --- property: any mix of allowed values ----------------------------------

fixed_offsets = st.builds(
    datetime.timezone,
    st.timedeltas(min_value=datetime.timedelta(hours=-23, minutes=-59),
                  max_value=datetime.timedelta(hours=23, minutes=59)))
hashable_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
    st.binary(max_size=20),
    st.datetimes(), st.datetimes(timezones=fixed_offsets), st.dates(),
    st.decimals(allow_nan=False), st.uuids())
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4), max_leaves=8)
values = st.recursive(
    st.one_of(hashables, st.floats()),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.lists(inner, max_size=4).map(tuple)
                   | st.dictionaries(hashables, inner, max_size=4)
                   | st.sets(hashables, max_size=4)
                   | st.frozensets(hashables, max_size=4)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(values)
def test_any_allowed_value_round_trips_exactly(value):
    round_trip(value)


# --- what may not cross ---------------------------------------------------

class Colour(enum.IntEnum):
    RED = 1


class Sneaky(str):
    def __reduce__(self):
        return (print, ("ran code",))


@pytest.mark.parametrize("make, type_name", [
    (lambda: object(), "object"),
    (lambda: (lambda: 1), "function"),
    (lambda: sqlite3.connect(":memory:"), "Connection"),
    (lambda: Colour.RED, "Colour"),
    (lambda: Sneaky("x"), "Sneaky"),
    (lambda: datetime.timedelta(1), "timedelta"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_unsupported_value_is_refused_naming_its_type(make, type_name):
    value = make()
    with pytest.raises(SerializationError) as info:
        codec.encode(value)
    assert type_name in str(info.value)
    with pytest.raises(SerializationError) as info:
        codec.encode({"deep": [(1, {value})]} if type_name != "Connection" else {"deep": [(1, value)]})
    assert type_name in str(info.value)


def test_serialization_error_is_a_type_error():
    with pytest.raises(TypeError):
        codec.encode(object())


def test_string_with_a_lone_surrogate_is_a_serialization_error():
    with pytest.raises(SerializationError):
        codec.encode("\ud800")


# --- what may not be decoded ----------------------------------------------

@pytest.mark.parametrize("data", [
    b"",                       # nothing
    b"\xd4\xfe\x00",           # reserved (negative) extension type -2
    b"\xc1",                   # a byte msgpack never uses
    b"\x92\x01",               # array of 2 with one element
    b"\x01\x02",               # extra data after a value
    b"\xa3ab",                 # truncated string
    b"\xa2\xff\xfe",           # string that is not UTF-8
], ids=repr)
def test_malformed_bytes_are_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        codec.decode(data)


@pytest.mark.parametrize("code, payload", [
    (99, b"x"),
    (0, b""),
    (codec.EXT_UUID, b"short"),
    (codec.EXT_DATE, b"not a date"),
    (codec.EXT_DECIMAL, b"twelve"),
    (codec.EXT_DATETIME, msgpack.packb(["2020-01-01T00:00:00", "+05:30"])),
    (codec.EXT_BIGINT, b"12"),       # fits 64 bits: non-canonical
    (codec.EXT_BIGINT, b"9" * 6000),  # too large to parse cheaply
    (codec.EXT_TUPLE, b"\xc1"),
], ids=repr)
def test_unknown_or_malformed_extension_is_a_protocol_error(code, payload):
    with pytest.raises(ProtocolError):
        codec.decode(msgpack.packb(msgpack.ExtType(code, payload)))


@pytest.mark.parametrize("data", [
    b"\xd6\xff\x00\x00\x00\x01",                 # timestamp 32
    b"\xd7\xff" + b"\x00" * 8,                     # timestamp 64
    b"\xc7\x0c\xff" + b"\x00" * 12,                # timestamp 96
], ids=["ts32", "ts64", "ts96"])
def test_msgpack_timestamp_extension_decodes_only_into_an_allowed_type(data):
    # msgpack decodes its reserved extension -1 (Timestamp) without calling
    # ext_hook; the codec must still never hand a msgpack.Timestamp to a service.
    try:
        value = codec.decode(data)
    except ProtocolError:
        return
    assert type(value) is datetime.datetime and value.utcoffset() == datetime.timedelta(0), type(value)


# --- nesting limits -------------------------------------------------------

def nested_tuples(depth):
    value = ()
    for _ in range(depth):
        value = (value,)
    return value


def test_tuples_nested_within_the_limit_round_trip():
    round_trip(nested_tuples(codec.MAX_DEPTH // 2))


def test_tuples_nested_beyond_the_limit_fail_to_encode_cleanly():
    with pytest.raises(SerializationError):
        codec.encode(nested_tuples(codec.MAX_DEPTH + 1))
    with pytest.raises(SerializationError):
        codec.encode(nested_tuples(10 * codec.MAX_DEPTH))


def test_lists_nested_very_deep_fail_to_encode_cleanly():
    value = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(SerializationError):
        codec.encode(value)


def test_tuples_nested_beyond_the_limit_from_the_wire_are_a_protocol_error():
    # Built with raw msgpack, as a hostile peer would: the sender-side limit is bypassed.
    data = msgpack.packb([])
    for _ in range(codec.MAX_DEPTH + 5):
        data = msgpack.packb(msgpack.ExtType(codec.EXT_TUPLE, data))
    with pytest.raises(ProtocolError):
        codec.decode(data)


# --- bounds on what one frame may decode into (issue 16) -------------------
#
# A hostile frame is built with raw msgpack, as a peer would; codec.decode
# with limits measures it before building anything.

def _array(items: list[bytes]) -> bytes:
    return b"\xdd" + len(items).to_bytes(4, "big") + b"".join(items)


def _map(count: int) -> bytes:
    return b"\xdf" + count.to_bytes(4, "big") + b"".join(b"\xce" + i.to_bytes(4, "big") + b"\xc0"
                                                         for i in range(count))


SMALL = codec.limits_for(64 * 1024)      # 1,024 elements a container, 128 KiB of objects
MEDIUM = codec.limits_for(1024 * 1024)   # 8,192 elements a container


def test_a_list_at_the_element_limit_decodes_and_one_more_is_refused_naming_the_limit():
    n = MEDIUM.max_container
    assert codec.decode(_array([b"\xc0"] * n), limits=MEDIUM) == [None] * n
    with pytest.raises(codec.FrameRefused, match=f"a list of {n + 1} elements is over the limit of {n}"):
        codec.decode(_array([b"\xc0"] * (n + 1)), limits=MEDIUM)


def test_a_map_at_the_entry_limit_decodes_and_one_more_is_refused_naming_the_limit():
    n = MEDIUM.max_container
    assert len(codec.decode(_map(n), limits=MEDIUM)) == n
    with pytest.raises(codec.FrameRefused, match=f"a map of {n + 1} entries is over the limit of {n}"):
        codec.decode(_map(n + 1), limits=MEDIUM)


def test_a_count_announced_past_the_limit_is_refused_before_its_elements_arrive():
    # Four bytes announce 2**32-1 elements: refused by the count, not after building any.
    with pytest.raises(codec.FrameRefused, match="a list of 4294967295 elements"):
        codec.decode(b"\xdd\xff\xff\xff\xff", limits=MEDIUM)
    # (A frame this small is not measured: msgpack finds it cut short. A measured one is refused by its length.)
    with pytest.raises(codec.FrameRefused, match=f"a str of {2**32 - 1} bytes is over the limit of 1048576"):
        codec.measure(b"\xdb\xff\xff\xff\xff", MEDIUM)


def test_objects_up_to_the_frames_bound_decode_and_past_it_are_refused():
    # An empty map costs codec._DICT bytes and its pointer: a list of them fills the bound exactly.
    fits = (SMALL.max_decoded - codec._CALL - codec._LIST) // (8 + codec._DICT)
    assert fits < SMALL.max_container   # so the bound on the total is what is tested
    assert codec.decode(_array([b"\x80"] * fits), limits=SMALL) == [{}] * fits
    with pytest.raises(codec.FrameRefused, match=f"more than {SMALL.max_decoded} bytes of objects"):
        codec.decode(_array([b"\x80"] * (fits + 1)), limits=SMALL)


def test_many_containers_each_under_the_element_limit_are_refused_by_the_total():
    inner = _array([b"\xe0"] * (MEDIUM.max_container - 1))   # -32: a fresh int object each
    with pytest.raises(codec.FrameRefused, match="bytes of objects"):
        codec.decode(_array([inner] * 8), limits=MEDIUM)


def test_lists_nested_while_still_open_are_counted_before_the_innermost_closes():
    # Each level holds its ints while the next is read: measured up front, nothing is built.
    level = b"\xdd" + MEDIUM.max_container.to_bytes(4, "big") + b"\xe0" * (MEDIUM.max_container - 1)
    with pytest.raises(codec.FrameRefused, match="bytes of objects"):
        codec.decode(level * 200 + b"\xc0", limits=MEDIUM)


def test_extension_payloads_count_against_the_bound():
    # Empty sets, three bytes each, cost codec._SET bytes once built.
    empty_set = msgpack.packb(msgpack.ExtType(codec.EXT_SET, msgpack.packb([])))
    with pytest.raises(codec.FrameRefused):
        codec.decode(_array([empty_set] * 1000), limits=SMALL)
    # Each nested tuple's payload is a copy of what it holds: 60 levels of a large one are refused.
    data = msgpack.packb([b"x" * 20_000])
    for _ in range(60):
        data = msgpack.packb(msgpack.ExtType(codec.EXT_TUPLE, data))
    with pytest.raises(codec.FrameRefused):
        codec.decode(data, limits=SMALL)


def test_attachments_count_against_the_bound_once_each():
    body = msgpack.packb(["echo", [msgpack.ExtType(codec.EXT_ATTACHMENT, b"\0\0\0\0")], {}])
    fits = bytes(SMALL.max_decoded - 4096)
    assert codec.decode(body, [memoryview(fits)], limits=SMALL) == ["echo", [fits], {}]
    with pytest.raises(codec.FrameRefused):
        codec.decode(body, [memoryview(fits + bytes(8192))], limits=SMALL)


@settings(max_examples=300, deadline=None)
@given(values)
def test_any_allowed_value_round_trips_exactly_within_the_bounds(value):
    assert_same(value, codec.decode(codec.encode(value), limits=SMALL))


def test_a_realistic_large_value_is_within_the_default_bounds():
    limits = codec.limits_for(16 * 1024 * 1024)
    rows = [{"id": i, "name": f"user{i}", "balance": decimal.Decimal(i) / 100, "seen": datetime.date(2026, 1, 1),
             "tags": ("a", "b")} for i in range(5_000)]
    assert codec.decode(codec.encode(rows), limits=limits) == rows


@pytest.mark.parametrize("item", [b"\xc0", b"\xe0", b"\xcb" + bytes(8), b"\x80", b"\x90", b"\x81\x00\x00",
                                  b"\xa2ab", b"\xa4\xf0\x9f\x98\x80", b"\xc4\x01x",
                                  msgpack.packb(msgpack.ExtType(codec.EXT_SET, msgpack.packb([1, 2]))),
                                  msgpack.packb(msgpack.ExtType(codec.EXT_TUPLE, msgpack.packb([None]))),
                                  msgpack.packb(msgpack.ExtType(codec.EXT_DECIMAL, b"1.5")),
                                  msgpack.packb(msgpack.ExtType(codec.EXT_UUID, bytes(16))),
                                  msgpack.packb(msgpack.ExtType(codec.EXT_DATE, b"2026-12-07")),
                                  codec.encode(datetime.datetime(2026, 12, 7, tzinfo=IST))])
def test_what_a_frame_is_measured_to_cost_is_at_least_what_it_costs(item):
    # The bound is only as good as the measure: the memory really allocated
    # while decoding (tracemalloc's peak) never exceeds it.
    import tracemalloc
    data = _array([item] * 1000)
    estimate, _ = codec.measure(data, MEDIUM)
    tracemalloc.start()
    try:
        value = codec.decode(data, limits=MEDIUM)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(value) == 1000
    assert peak <= estimate, f"{item!r}: decoding allocated {peak} bytes, measured {estimate}"


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), values.map(codec.encode).flatmap(
    lambda data: st.integers(0, len(data)).map(lambda cut: data[:cut]))))
def test_any_bytes_decode_within_the_bounds_to_a_value_or_a_protocol_error(data):
    for attempt in (lambda: codec.measure(data, SMALL), lambda: codec.decode(data, limits=SMALL)):
        try:
            attempt()
        except ProtocolError:
            pass


def test_frames_too_small_to_pass_the_bound_are_not_measured_and_larger_ones_are():
    # A body of measured_above bytes cannot decode past max_decoded even at the worst
    # a byte can cost: measuring it would cost the call and prove nothing.
    worst = codec.limits_for(16 * 1024 * 1024)
    assert codec._CALL + worst.measured_above * codec._MOST_PER_BYTE <= worst.max_decoded
    assert worst.measured_above < worst.max_container
    empty_maps = _array([b"\x80"] * (worst.measured_above - 5))
    assert len(empty_maps) == worst.measured_above
    codec.measure(empty_maps, worst)   # within, as the threshold claims


def test_a_frame_cut_short_is_refused_before_what_precedes_the_cut_is_built():
    # 100,000 fresh ints announced as 100,001: refused by the measure, not after building them.
    limits = codec.limits_for(16 * 1024 * 1024)
    with pytest.raises(ProtocolError, match="malformed message"):
        codec.decode(b"\xdd" + (100_001).to_bytes(4, "big") + b"\xe0" * 100_000, limits=limits)
