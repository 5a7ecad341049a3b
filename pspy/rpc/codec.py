"""msgpack with an allow-list of types. Never pickle.

Only the types below cross a privilege boundary, and they decode into the
same types, so neither side can make the other run code. Anything else is a
``SerializationError`` at the sender, which names the offending type.
Dataclasses and exceptions the app registers with ``@pspy.serializable``
cross by name and fields, and decode only into the class registered under
that name on the receiving side (its fields checked).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import struct
import threading
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
EXT_OBJECT = 9     # a registered dataclass: [name, {field: value}]
EXT_ATTACHMENT = 10   # a large bytes value sent after the body, by index (see protocol)

ATTACH_MIN = 64 * 1024   # bytes values from this size travel as attachments: no copy into the body

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
ALLOWED_TYPES = ("None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset, "
                 "datetime, date, Decimal, UUID")


# --- registered classes --------------------------------------------------------

_by_name: dict[str, type] = {}
_name_of: dict[type, str] = {}
_fields_of: dict[type, tuple[str, ...]] = {}
_register_lock = threading.Lock()


def register(cls: type, name: str | None = None) -> type:
    """Allow a dataclass (or an exception class) to cross under ``name``."""
    name = name or cls.__qualname__
    is_exception = isinstance(cls, type) and issubclass(cls, Exception)
    if not is_exception and not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"@pspy.serializable needs a dataclass or an Exception subclass, got {cls!r}")
    with _register_lock:
        other = _by_name.get(name)
        if other is not None and other is not cls and \
                (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"{name!r} is already registered for {other.__module__}.{other.__qualname__}; "
                            f"pass @pspy.serializable(name=...) to tell them apart")
        _by_name[name] = cls
        _name_of[cls] = name
        if not is_exception:
            _fields_of[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.init)
    return cls


def registered_name(cls: type) -> str | None:
    return _name_of.get(cls)


def registered_exception(name: str) -> type[Exception] | None:
    cls = _by_name.get(name)
    return cls if isinstance(cls, type) and issubclass(cls, Exception) else None


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
    fields = _fields_of.get(t)
    if fields is not None:
        payload = [_name_of[t], {f: getattr(value, f) for f in fields}]
        return msgpack.ExtType(EXT_OBJECT, _pack_nested(payload, depth))
    raise _Unsupported(value)


_local = threading.local()
_KEEP_PACKER_BELOW = 4 * 1024 * 1024   # a packer that grew past this is dropped, not kept


def _packer() -> msgpack.Packer:
    # One Packer per thread, reused with its buffer: building one per call
    # and allocating a fresh buffer per message are both measurable on the
    # hot path (large fresh allocations page-fault). Nested extension
    # payloads use their own (see _pack_nested).
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(default=lambda v: _default(v, 1), autoreset=False,
                                                use_bin_type=True, strict_types=True)
    return packer


def _raise_unsupported(e: BaseException):
    if isinstance(e, _Unsupported):
        raise SerializationError(
            f"type {type(e.value).__module__}.{type(e.value).__qualname__} cannot cross a privilege "
            f"boundary (allowed: {ALLOWED_TYPES})") from None
    raise SerializationError(f"cannot encode value: {e}") from None


def pack_into_buffer(value) -> tuple[msgpack.Packer, memoryview]:
    """The message in the thread's packer buffer, to send from without a copy;
    call ``release(packer, view)`` when done."""
    packer = _packer()
    try:
        packer.pack(value)
    except (_Unsupported, OverflowError, ValueError, TypeError) as e:
        packer.reset()
        _raise_unsupported(e)
    return packer, packer.getbuffer()


def release(packer: msgpack.Packer, view: memoryview) -> None:
    size = len(view)
    view.release()
    packer.reset()
    if size > _KEEP_PACKER_BELOW:
        _local.packer = None


def encode(value) -> bytes:
    """Encode ``value``; raise SerializationError naming the first unsupported type."""
    packer, view = pack_into_buffer(value)
    try:
        return bytes(view)
    finally:
        release(packer, view)


def split_large(values: list) -> tuple[list, list]:
    """(values with large bytes replaced by placeholders, those bytes); cheap when none is large."""
    for v in values:
        if type(v) is bytes and len(v) >= ATTACH_MIN:
            break
    else:
        return values, []
    attachments: list = []
    return [attach(v, attachments) for v in values], attachments


def attach(value, attachments: list):
    """A large bytes value becomes a placeholder and joins ``attachments``."""
    if type(value) is bytes and len(value) >= ATTACH_MIN:
        attachments.append(value)
        return msgpack.ExtType(EXT_ATTACHMENT, struct.pack(">I", len(attachments) - 1))
    return value


class _Attachments:
    """The attachments of one frame; each may be taken once (no amplification)."""

    __slots__ = ("views", "taken")

    def __init__(self, views):
        self.views = views
        self.taken = set()

    def take(self, data: bytes) -> bytes:
        if len(data) != 4:
            raise ProtocolError("malformed attachment reference")
        (index,) = struct.unpack(">I", data)
        if index >= len(self.views) or index in self.taken:
            raise ProtocolError(f"attachment {index} is missing or used twice")
        self.taken.add(index)
        return bytes(self.views[index])


def _ext_hook(code: int, data: bytes, depth: int, attachments: "_Attachments | None" = None):
    if depth > MAX_DEPTH:
        raise ProtocolError(f"value nested deeper than {MAX_DEPTH} levels")
    if code == EXT_ATTACHMENT:
        if attachments is None:
            raise ProtocolError("attachment reference in a frame without attachments")
        return attachments.take(data)
    if code == EXT_TUPLE:
        return tuple(_unpack(data, depth + 1, attachments))
    if code == EXT_SET:
        return set(_unpack(data, depth + 1, attachments))
    if code == EXT_FROZENSET:
        return frozenset(_unpack(data, depth + 1, attachments))
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
    if code == EXT_OBJECT:
        name, fields = _unpack(data, depth + 1, attachments)
        cls = _by_name.get(name) if isinstance(name, str) else None
        if cls is None or cls not in _fields_of:
            raise ProtocolError(f"{name!r} is not a registered @pspy.serializable dataclass here")
        if not isinstance(fields, dict) or set(fields) != set(_fields_of[cls]):
            raise ProtocolError(f"fields of {name!r} do not match its dataclass "
                                f"(expected {', '.join(_fields_of[cls])})")
        try:
            return cls(**fields)
        except Exception as e:  # noqa: BLE001 - the class's own validation refused the fields
            raise ProtocolError(f"{name!r} refused its fields: {e}") from None
    if code == EXT_BIGINT:
        text = data.decode()
        if len(text) > 5000:   # int() of a huge decimal string is quadratic
            raise ProtocolError("integer too large")
        value = int(text)
        if _INT64_MIN <= value <= _UINT64_MAX:
            raise ProtocolError("non-canonical big integer")
        return value
    raise ProtocolError(f"unknown extension type {code}")


def _unpack(data: bytes, depth: int, attachments: "_Attachments | None" = None):
    # msgpack decodes its own Timestamp extension (-1) without calling
    # ext_hook; timestamp=3 makes it a UTC datetime, an allowed type, instead
    # of a msgpack.Timestamp the receiving code never expects.
    return msgpack.unpackb(data, ext_hook=lambda c, d: _ext_hook(c, d, depth, attachments), timestamp=3,
                           raw=False, strict_map_key=False, use_list=True)


def _top_hook(code: int, data: bytes):
    return _ext_hook(code, data, 0)


def decode(data: bytes, attachments=None):
    """Decode bytes from the other side; any malformation is a ProtocolError."""
    try:
        if attachments:
            return _unpack(data, 0, _Attachments(attachments))
        return msgpack.unpackb(data, ext_hook=_top_hook, timestamp=3, raw=False,
                               strict_map_key=False, use_list=True)
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeDecodeError, decimal.InvalidOperation,
            msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as e:
        raise ProtocolError(f"malformed message: {e}") from None
