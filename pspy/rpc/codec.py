"""msgpack with an allow-list of types. Never pickle.

Only the types below cross a privilege boundary, and they decode into the
same types, so neither side can make the other run code. Anything else is a
``SerializationError`` at the sender, which names the offending type.
"""

from __future__ import annotations

import datetime
import decimal
import uuid

import msgpack

from ..errors import ProtocolError, SerializationError

MAX_DEPTH = 64

# Extension type codes (stable: they are the wire format).
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_DATETIME = 4
EXT_DATE = 5
EXT_DECIMAL = 6
EXT_UUID = 7
EXT_BIGINT = 8

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
ALLOWED_TYPES = ("None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset, "
                 "datetime, date, Decimal, UUID")


class _Unsupported(Exception):
    def __init__(self, value):
        self.value = value


def _pack_nested(value, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise SerializationError(f"value nested deeper than {MAX_DEPTH} levels")
    return msgpack.packb(value, default=lambda v: _default(v, depth + 1),
                         use_bin_type=True, strict_types=True)


def _default(value, depth: int = 0):
    # strict_types: subclasses (bool aside) come here too, so an IntEnum or a
    # str subclass with a custom __reduce__ never slips through as its base.
    t = type(value)
    if t is tuple:
        return msgpack.ExtType(EXT_TUPLE, _pack_nested(list(value), depth))
    if t is set or t is frozenset:
        code = EXT_SET if t is set else EXT_FROZENSET
        return msgpack.ExtType(code, _pack_nested(list(value), depth))
    if t is datetime.datetime:
        offset = value.utcoffset()
        payload = [value.replace(tzinfo=None).isoformat(),
                   None if offset is None else offset // datetime.timedelta(microseconds=1)]
        return msgpack.ExtType(EXT_DATETIME, _pack_nested(payload, depth))
    if t is datetime.date:
        return msgpack.ExtType(EXT_DATE, value.isoformat().encode())
    if t is decimal.Decimal:
        return msgpack.ExtType(EXT_DECIMAL, str(value).encode())
    if t is uuid.UUID:
        return msgpack.ExtType(EXT_UUID, value.bytes)
    if t is int:   # outside 64 bits
        return msgpack.ExtType(EXT_BIGINT, str(value).encode())
    raise _Unsupported(value)


def encode(value) -> bytes:
    """Encode ``value``; raise SerializationError naming the first unsupported type."""
    try:
        return _pack_nested(value, 0)
    except _Unsupported as e:
        raise SerializationError(
            f"type {type(e.value).__module__}.{type(e.value).__qualname__} cannot cross a privilege "
            f"boundary (allowed: {ALLOWED_TYPES})") from None
    except (OverflowError, ValueError, TypeError) as e:
        raise SerializationError(f"cannot encode value: {e}") from None


def _ext_hook(code: int, data: bytes, depth: int):
    if depth > MAX_DEPTH:
        raise ProtocolError(f"value nested deeper than {MAX_DEPTH} levels")
    if code == EXT_TUPLE:
        return tuple(_unpack(data, depth + 1))
    if code == EXT_SET:
        return set(_unpack(data, depth + 1))
    if code == EXT_FROZENSET:
        return frozenset(_unpack(data, depth + 1))
    if code == EXT_DATETIME:
        text, offset = _unpack(data, depth + 1)
        value = datetime.datetime.fromisoformat(text)
        if offset is not None:
            value = value.replace(tzinfo=datetime.timezone(datetime.timedelta(microseconds=offset)))
        return value
    if code == EXT_DATE:
        return datetime.date.fromisoformat(data.decode())
    if code == EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == EXT_BIGINT:
        text = data.decode()
        if len(text) > 5000:   # int() of a huge decimal string is quadratic
            raise ProtocolError("integer too large")
        value = int(text)
        if _INT64_MIN <= value <= _UINT64_MAX:
            raise ProtocolError("non-canonical big integer")
        return value
    raise ProtocolError(f"unknown extension type {code}")


def _unpack(data: bytes, depth: int):
    # msgpack decodes its own Timestamp extension (-1) without calling
    # ext_hook; timestamp=3 makes it a UTC datetime, an allowed type, instead
    # of a msgpack.Timestamp the receiving code never expects.
    return msgpack.unpackb(data, ext_hook=lambda c, d: _ext_hook(c, d, depth), timestamp=3,
                           raw=False, strict_map_key=False, use_list=True)


def decode(data: bytes):
    """Decode bytes from the other side; any malformation is a ProtocolError."""
    try:
        return _unpack(data, 0)
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeDecodeError, decimal.InvalidOperation,
            msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as e:
        raise ProtocolError(f"malformed message: {e}") from None
