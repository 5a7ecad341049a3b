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
import functools
import re
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


# --- bounds on what one frame may decode into -------------------------------------
#
# msgpack turns a byte into an object: one 0x80 byte is an empty dict of 64
# bytes, three bytes an empty set of 216. Unchecked, a 16 MiB frame decodes
# into over 1 GiB (bench/decoder.py). A large frame is therefore measured
# before it is decoded: ``measure`` walks its msgpack without building
# anything and adds up what each value will cost once built (an upper bound:
# CPython's object sizes on a 64-bit build, rounded up to the allocator's
# 16 bytes), extension payloads included; past the frame's bound it stops and
# the frame is refused. Hooks called by msgpack once a container is built
# would come too late: a list still being filled holds its elements
# uncounted, and 63 lists of 262,143 ints, each nested in the one before,
# held 640 MiB before the innermost closed.

MAX_NESTING = 1024   # containers inside one another: msgpack's own stack (StackError past it)
# Upper bounds, in bytes, of what one value costs once decoded; its pointer in
# its container is counted with the container.
_INT = 48            # an int outside CPython's cached small ints (up to 36 bytes, rounded up)
_FLOAT = 32
_ASCII = 64          # a str of ASCII: plus a byte a char
_STR = 80            # any other str: plus 4 bytes a byte of UTF-8 (one 4-byte code point makes every char 4 bytes)
_BYTES = 48
_LIST = 72           # plus 8 an element (the object rounded up, and its array's rounding)
_TUPLE = 48          # plus 8 an element
_DICT = 224          # plus 56 an entry (tables at 2/3 load); while one grows, its old table too (_GROWING)
_SET = 224           # plus 64 an element (the same, 16-byte slots)
_CALL = 1024        # decoding itself: msgpack's unpacker, the call's arguments
_MOST_PER_BYTE = 256   # what one byte can cost at most (an empty map in a list: 232; see frame_cost)
_GROWING = 32        # an entry of the old table of the one dict being filled: at most max_container of them
# Extension values: plus, for the scalar ones, 3 bytes a byte of payload (the
# payload's copy, its text, the value); for a registered object, twice its
# fields' dict (the keyword arguments and its __dict__).
_EXT_VALUE = {EXT_DATETIME: 256, EXT_DATE: 48, EXT_DECIMAL: 112, EXT_UUID: 128, EXT_BIGINT: 64,
              EXT_OBJECT: 256, -1: 64}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one frame may cost its receiver, derived from max_frame by ``limits_for``."""
    max_frame: int
    max_container: int   # elements of one list, or entries of one map
    max_decoded: int     # bytes of objects the whole frame may decode into, its attachments included

    @property
    def measured_above(self) -> int:
        """Bodies up to this many bytes need no measuring: at _MOST_PER_BYTE they
        cannot pass max_decoded, nor hold a container past max_container."""
        return (self.max_decoded - _CALL) // _MOST_PER_BYTE

    def frame_cost(self, length: int) -> int:
        """The most a frame of ``length`` bytes holds while it is decoded: the
        frame, what it decodes into, and the old table of a dict as it grows."""
        return (length + min(self.max_decoded, _CALL + _MOST_PER_BYTE * length)
                + min(self.max_container, length) * _GROWING)


@functools.lru_cache(maxsize=8)
def limits_for(max_frame: int) -> Limits:
    """The bounds for frames of up to ``max_frame`` bytes. The objects one
    frame decodes into may weigh as much as the frame (and 64 KiB, so that a
    frame of one large attachment still passes); one container may hold
    max_frame/128 elements (131,072 at the default 16 MiB): as many as a list
    of nils, or a map of int keys, can hold within the bound on the whole."""
    return Limits(max_frame=max_frame, max_container=max(1024, max_frame // 128),
                  max_decoded=max_frame + 64 * 1024)


class FrameRefused(ProtocolError):
    """A frame past the decoder's bounds: refused before it could cost more."""


_KIND = {"array": "a list", "map": "a map", "str": "a str", "bin": "a bytes value", "ext": "an extension value"}
_UNIT = {"array": "elements", "map": "entries", "str": "bytes", "bin": "bytes", "ext": "bytes"}


def _too_many(kind: str, count: int, limits: Limits) -> FrameRefused:
    limit = limits.max_container if kind in ("array", "map") else limits.max_frame
    return FrameRefused(f"frame refused: {_KIND[kind]} of {count} {_UNIT[kind]} is over the limit of "
                        f"{limit} (for a max_frame of {limits.max_frame} bytes)")


def _over(bound: int, limits: Limits) -> FrameRefused:
    return FrameRefused(f"frame refused: it decodes into more than {bound} bytes of objects, the limit "
                        f"for a max_frame of {limits.max_frame} bytes")


_U16, _U32 = struct.Struct(">H"), struct.Struct(">I")
_MSGPACK_LIMIT = re.compile(r"(\d+) exceeds max_(array|map|str|bin|ext)_len\(\d+\)")
_EXT_FIXED = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}


def measure(data, limits: Limits, bound: int | None = None, depth: int = 0, spent: int = 0) -> tuple[int, int]:
    """(bytes of objects ``data`` decodes into at most, elements of its top-level
    container); FrameRefused once ``spent`` and that pass ``bound`` (the
    limits' max_decoded), or past a count limit; ProtocolError if it is cut
    short or malformed (msgpack would build what comes before the fault)."""
    bound = limits.max_decoded if bound is None else bound
    view = memoryview(data).cast("B")   # payloads are sliced from it: no copies
    b = data if type(data) is bytes else view   # indexing bytes is the faster
    end = len(b)
    bound -= spent
    i = 0
    cost = _CALL if depth == 0 else 0
    top = -1                 # elements of the top-level container (-1: not one)
    pending = 1              # values still to read in the innermost open container
    stack: list[int] = []    # the same for the containers around it
    try:
        while True:
            if pending == 0:
                if not stack:
                    if cost > bound:
                        raise _over(bound + spent, limits)
                    return cost, max(top, 0)
                pending = stack.pop()
                continue
            pending -= 1
            t = b[i]
            i += 1
            if t <= 0x7f or 0xc0 <= t <= 0xc3:   # a positive fixint (cached), nil, true, false
                continue
            if t >= 0xe0:                          # a negative fixint
                cost += _INT
                continue
            if t <= 0x9f or t in (0xdc, 0xdd, 0xde, 0xdf):   # a container
                if t <= 0x8f or t >= 0xde:
                    kind = "map"
                    count = t & 0x0f if t <= 0x8f else (_U16.unpack_from(b, i)[0] if t == 0xde
                                                         else _U32.unpack_from(b, i)[0])
                else:
                    kind = "array"
                    count = t & 0x0f if t <= 0x9f else (_U16.unpack_from(b, i)[0] if t == 0xdc
                                                         else _U32.unpack_from(b, i)[0])
                i += 0 if t <= 0x9f else (2 if t in (0xdc, 0xde) else 4)
                if count > limits.max_container:
                    raise _too_many(kind, count, limits)
                if count > end - i:
                    raise ProtocolError(f"malformed message: {kind} of {count} announced, "
                                        f"{end - i} bytes left")
                if len(stack) >= MAX_NESTING:
                    raise ProtocolError(f"malformed message: containers nested deeper than {MAX_NESTING}")
                if top < 0 and not stack:
                    top = count
                cost += _DICT + 56 * count if kind == "map" else _LIST + 8 * count
                stack.append(pending)
                pending = 2 * count if kind == "map" else count
            elif t <= 0xbf or 0xd9 <= t <= 0xdb:   # a str
                if t <= 0xbf:
                    n = t & 0x1f
                else:
                    n = b[i] if t == 0xd9 else (_U16 if t == 0xda else _U32).unpack_from(b, i)[0]
                    i += (1, 2, 4)[t - 0xd9]
                if n > limits.max_frame:
                    raise _too_many("str", n, limits)
                cost += _ASCII + n if bytes(b[i:i + n]).isascii() else _STR + 4 * n
                i += n
            elif t in (0xca, 0xcb):
                cost += _FLOAT
                i += 4 if t == 0xca else 8
            elif 0xcc <= t <= 0xd3:
                cost += _INT
                i += (1, 2, 4, 8)[(t - 0xcc) % 4]
            elif 0xc4 <= t <= 0xc6:                # bin
                n = b[i] if t == 0xc4 else (_U16 if t == 0xc5 else _U32).unpack_from(b, i)[0]
                i += (1, 2, 4)[t - 0xc4]
                if n > limits.max_frame:
                    raise _too_many("bin", n, limits)
                cost += _BYTES + n
                i += n
            elif t in _EXT_FIXED or 0xc7 <= t <= 0xc9:
                if t in _EXT_FIXED:
                    n = _EXT_FIXED[t]
                else:
                    n = b[i] if t == 0xc7 else (_U16 if t == 0xc8 else _U32).unpack_from(b, i)[0]
                    i += (1, 2, 4)[t - 0xc7]
                if n > limits.max_frame:
                    raise _too_many("ext", n, limits)
                code = b[i] - 256 if b[i] >= 128 else b[i]
                payload = view[i + 1:i + 1 + n]
                i += 1 + n
                cost += _ext_cost(code, payload, limits, bound + spent, depth, spent + cost)
            else:
                raise ProtocolError(f"malformed message: byte 0xc1 (never used) at offset {i - 1}")
            if cost > bound:
                raise _over(bound + spent, limits)
    except (IndexError, struct.error):
        raise ProtocolError("malformed message: cut short") from None


def _ext_cost(code: int, payload, limits: Limits, bound: int, depth: int, spent: int) -> int:
    """What one extension value costs once built, the copy of its payload msgpack hands over included."""
    if code == EXT_ATTACHMENT:
        # The copy itself is counted by decode(): each attachment is copied once at most.
        return _BYTES
    if code in (EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_DATETIME, EXT_OBJECT):
        if depth >= MAX_DEPTH:
            return 0   # _ext_hook refuses it
        # The payload's copy lives while what it holds is built: counted for good (nested
        # extensions hold one copy a level), an over-count for the rest of the frame.
        n = len(payload)
        inner, count = measure(payload, limits, bound, depth + 1, spent + n)
        inner += n
        if code == EXT_TUPLE:
            return inner + _TUPLE + 8 * count
        if code in (EXT_SET, EXT_FROZENSET):
            return inner + _SET + 64 * count
        if code == EXT_OBJECT:
            return 3 * inner + _EXT_VALUE[code]
        return inner + _EXT_VALUE[code]
    return _EXT_VALUE.get(code, 0) + 3 * len(payload)


def decode(data, attachments=None, limits: Limits | None = None):
    """Decode bytes from the other side; any malformation is a ProtocolError.

    With ``limits`` (see ``limits_for``) the frame is measured first, and one
    past them is a FrameRefused naming the limit, before any object is built.
    Without, the frame must be small enough that its worst case does not
    matter (protocol.SMALL_FRAME).
    """
    try:
        if limits is not None:
            if attachments or len(data) > limits.measured_above:
                # Attachments are copied out of the frame (each once at most): they count too.
                measure(data, limits, spent=sum(map(len, attachments or ())))
            n, count = limits.max_frame, limits.max_container
            return msgpack.unpackb(data, ext_hook=_bounded_hook(_Attachments(attachments) if attachments else None),
                                   timestamp=3, raw=False, strict_map_key=False, use_list=True,
                                   max_array_len=count, max_map_len=count, max_str_len=n, max_bin_len=n,
                                   max_ext_len=n)
        if attachments:
            return _unpack(data, 0, _Attachments(attachments))
        return msgpack.unpackb(data, ext_hook=_top_hook, timestamp=3, raw=False,
                               strict_map_key=False, use_list=True)
    except ProtocolError:
        raise
    except ValueError as e:
        # msgpack's own count limits (the same as measure's) in a frame too small to be measured.
        match = _MSGPACK_LIMIT.fullmatch(str(e)) if limits is not None else None
        if match is not None:
            raise _too_many(match[2], int(match[1]), limits) from None
        raise ProtocolError(f"malformed message: {e}") from None
    except (TypeError, KeyError, IndexError, OverflowError, UnicodeDecodeError, decimal.InvalidOperation,
            msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as e:
        raise ProtocolError(f"malformed message: {e}") from None


def _bounded_hook(attachments: "_Attachments | None"):
    return lambda code, data: _ext_hook(code, data, 0, attachments)
