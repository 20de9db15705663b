"""The binary protobuf codec: the RPC Structs to and from protobuf's wire format.

Each Struct type gets two converters, built once from its fields and its message's
descriptor, that map the fields straight to and from the generated message class:

    encode: Struct -> keyword arguments (nested messages as dicts) -> Message(**kwargs) -> SerializeToString
    decode: FromString -> Message.ListFields() -> a dict of fields -> msgspec.convert(strict=False) -> Struct

They give exactly what the proto3 JSON mapping gives (json_format.ParseDict of the Struct's
JSON one way, MessageToDict read back into the Struct the other, which the Structs follow:
tests/http/test_proto.py holds them to the published .proto files), without the JSON in
between: tests/http/test_proto_codec.py compares the two for every message type. So:

- proto3 leaves out a field holding its zero value; a missing field takes the Struct's
  default, and a required Struct field without presence in proto gets the zero value
  (what a proto3 reader would read). ``None`` is a field left out; so is a default that an
  ``omit_defaults`` Struct leaves out of its JSON.
- A Timestamp carries a datetime's microseconds; one with nanoseconds is read as its RFC 3339
  text would be. A datetime without a time zone is refused, as the JSON mapping refuses it.
- Numbers inside google.protobuf.Struct and Value are doubles; whole ones up to 2**53
  become ints again, as a JSON client's would.

Unknown fields are ignored, as in JSON. Bad bytes give InvalidArgument; the decoded fields
go through msgspec.convert, so the Struct's constraints are checked as for JSON.

This module imports the protobuf runtime and the generated code (fleetd.protobuf):
import it only when a binary request arrives, so the server's start loads neither.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from msgspec import inspect as mi

from .. import protobuf as generated
from ..core.decoding import decoding
from ..core.errors import InvalidArgument
from . import rpc

try:
    from google.protobuf import descriptor_pool, message_factory  # type: ignore[import-untyped]
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
except ImportError as e:
    raise ImportError("the binary protobuf codec needs the protobuf runtime: pip install 'protobuf>=7.35.1,<8'") from e

S = TypeVar("S", bound=msgspec.Struct)
Conv = Callable[[Any], Any]
STRUCT, VALUE, TIMESTAMP = "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.Timestamp"
_EXACT = 2**53  # every whole number up to this is exact in a double
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SECONDS_MIN, _SECONDS_MAX = -62_135_596_800, 253_402_300_799  # what a Timestamp holds: years 1 to 9999
_COLLECTIONS = (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)


@functools.cache
def _pool() -> Any:
    """The default descriptor pool, with every generated module loaded into it."""
    for module in pkgutil.iter_modules(generated.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"{generated.__name__}.{module.name}")
    return descriptor_pool.Default()


def message_name(t: type) -> str:
    """The full name of the protobuf message a Struct type travels as."""
    return "google.protobuf.Empty" if t is rpc.Empty else f"{rpc.PACKAGE}.{t.__name__}"


@dataclass(frozen=True)
class _Plan:
    message: Any  # the generated message class
    to_kwargs: Conv  # a Struct -> the message's keyword arguments
    to_dict: Conv  # a message -> the dict msgspec.convert makes the Struct from


@functools.cache
def _plan(t: type) -> _Plan:
    name = message_name(t)
    try:
        desc = _pool().FindMessageTypeByName(name)
    except KeyError:
        raise TypeError(f"{t.__module__}.{t.__qualname__} has no message {name} in the published .proto files; "
                        f"add it (tests/http/test_proto.py lists what to write)") from None
    return _Plan(message_factory.GetMessageClass(desc), _encoder(t, name), _decoder(t, name))


def encode(obj: msgspec.Struct) -> bytes:
    """``obj`` in protobuf's binary format."""
    plan = _plan(type(obj))
    return bytes(plan.message(**plan.to_kwargs(obj)).SerializeToString())


def decode(data: bytes, t: type[S]) -> S:
    """A request body in protobuf's binary format as Struct type ``t``; InvalidArgument if it is not one."""
    plan = _plan(t)
    try:
        raw = plan.to_dict(plan.message.FromString(data))
    except DecodeError as e:
        raise InvalidArgument(f"malformed protobuf in the request body: {e}; send a binary "
                              f"{message_name(t)} message") from None
    except ValueError as e:  # e.g. a Timestamp out of range, a NaN in a Value
        raise InvalidArgument(f"invalid {message_name(t)} in the request body: {e}") from None
    with decoding("request", "request body"):
        return msgspec.convert(raw, t, strict=False)


# --- the fields of one Struct type --------------------------------------------------------

def _unwrap(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):  # X | None: None is a field left out
        others = [u for u in t.types if not isinstance(u, mi.NoneType)]
        if len(others) == 1:
            return _unwrap(others[0])
    return t


def _fields(cls: type, name: str) -> list[tuple[mi.Field, Any]]:
    """A Struct type's fields, each with the proto field that carries it."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    desc = _pool().FindMessageTypeByName(name)
    out = []
    for f in info.fields:
        fd = desc.fields_by_name.get(f.encode_name)
        if fd is None:
            raise TypeError(f"{cls.__qualname__}.{f.name} has no field in message {name}; the .proto files and "
                            f"the Structs differ (tests/http/test_proto.py says how)")
        out.append((f, fd))
    return out


def _is_map(fd: Any) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _nested(build: Callable[[type, str], Conv], cls: type, name: str) -> Conv:
    """``build(cls, name)``, looked up on first use: Struct types may refer to themselves."""
    return lambda v: build(cls, name)(v)


# --- encoding: Struct -> keyword arguments of the message class ----------------------------

def _omitted(cls: type[msgspec.Struct], f: mi.Field) -> Callable[[Any], bool] | None:
    """Whether msgspec leaves a value of field ``f`` out of an ``omit_defaults`` Struct's JSON: the default
    itself, or an empty one made by a builtin factory."""
    if not cls.__struct_config__.omit_defaults or f.required:
        return None
    if f.default is not msgspec.NODEFAULT:
        default = f.default
        return lambda v: v is default
    factory = f.default_factory
    if factory in (list, dict, set, bytearray):
        return lambda v: type(v) is factory and not v
    return None


@functools.cache
def _encoder(cls: type[msgspec.Struct], name: str) -> Conv:
    plain: list[tuple[str, str]] = []  # (attribute, proto field): the value as it is, None left out
    converted: list[tuple[str, str, Conv]] = []
    general: list[tuple[str, str, Conv | None, Callable[[Any], bool] | None, Any]] = []
    for f, fd in _fields(cls, name):
        conv, omitted = _to_proto(f.type, fd), _omitted(cls, f)
        null = {"null_value": 0} if fd.message_type is not None and fd.message_type.full_name == VALUE else None
        if omitted is not None or null is not None:
            general.append((f.name, fd.name, conv, omitted, null))
        elif conv is None:
            plain.append((f.name, fd.name))
        else:
            converted.append((f.name, fd.name, conv))

    def to_kwargs(obj: Any) -> dict[str, Any]:
        kwargs = {}
        for attr, key in plain:
            v = getattr(obj, attr)
            if v is not None:
                kwargs[key] = v
        for attr, key, conv in converted:
            v = getattr(obj, attr)
            if v is not None:
                kwargs[key] = conv(v)
        for attr, key, maybe_conv, omitted, null in general:
            v = getattr(obj, attr)
            if omitted is not None and omitted(v):
                continue
            if v is None:
                if null is not None:  # JSON null in a Value
                    kwargs[key] = null
                continue
            kwargs[key] = v if maybe_conv is None else maybe_conv(v)
        return kwargs

    return to_kwargs


def _to_proto(t: mi.Type, fd: Any) -> Conv | None:
    """What the message class takes for a value of Python type ``t`` in field ``fd``; None: the value as it is."""
    t = _unwrap(t)
    message = fd.message_type
    if message is not None and message.full_name == STRUCT:  # dict[str, Any]: the message takes the dict
        return msgspec.to_builtins
    if _is_map(fd):
        assert isinstance(t, mi.DictType)
        value = _item_to_proto(t.value_type, message.fields_by_name["value"])
        return None if value is None else lambda v: {k: value(x) for k, x in v.items()}
    if fd.is_repeated:
        assert isinstance(t, _COLLECTIONS)
        item = _item_to_proto(t.item_type, fd)
        if item is not None:
            return lambda v: [item(x) for x in v]
        return None if isinstance(t, (mi.ListType, mi.VarTupleType)) else list
    return _item_to_proto(t, fd)


def _item_to_proto(t: mi.Type, fd: Any) -> Conv | None:
    t = _unwrap(t)
    message, enum = fd.message_type, fd.enum_type
    if message is not None:
        if message.full_name == TIMESTAMP and isinstance(t, mi.DateTimeType):
            return _timestamp
        if message.full_name == VALUE:
            return lambda v: _value(msgspec.to_builtins(v))
        if isinstance(t, mi.StructType) and not message.full_name.startswith("google.protobuf."):
            return _nested(_encoder, t.cls, message.full_name)
        raise TypeError(f"no converter from {t!r} to {message.full_name} (field {fd.full_name}); add one")
    if isinstance(t, (mi.EnumType, mi.LiteralType)):
        plain: Conv = (lambda v: v.value) if isinstance(t, mi.EnumType) else (lambda v: v)
        if enum is None:
            return plain if isinstance(t, mi.EnumType) else None
        # A proto enum: JSON has the value's name, or a number.
        numbers = {v.name: v.number for v in enum.values}
        return lambda v: _enum_number(numbers, plain(v), enum.full_name)
    if isinstance(t, mi.UUIDType):
        return str
    if isinstance(t, mi.ByteArrayType):
        return bytes
    return None


def _enum_number(numbers: dict[str, int], v: Any, enum: str) -> int:
    if isinstance(v, int):
        return v
    try:
        return numbers[v]
    except KeyError:
        raise ValueError(f"{v!r} is not a value of enum {enum}") from None


def _timestamp(v: dt.datetime) -> dict[str, int]:
    try:
        d = v - _EPOCH
    except TypeError:
        raise ValueError(f"the datetime {v.isoformat()} has no time zone; a Timestamp needs one (fleetd's "
                         f"datetimes are in UTC)") from None
    return {"seconds": d.days * 86_400 + d.seconds, "nanos": d.microseconds * 1000}


def _value(v: Any) -> dict[str, Any]:
    """A google.protobuf.Value's keyword arguments for a JSON value."""
    if v is None:
        return {"null_value": 0}
    if isinstance(v, bool):
        return {"bool_value": v}
    if isinstance(v, int | float):
        return {"number_value": v}
    if isinstance(v, str):
        return {"string_value": v}
    if isinstance(v, dict):
        return {"struct_value": v}
    return {"list_value": v}


# --- decoding: message -> the fields' values, as msgspec.convert takes them --------------------

def _zero(fd: Any) -> Callable[[], Any]:
    """What a proto3 reader takes a missing field for."""
    if fd.is_repeated:
        return dict if _is_map(fd) else list
    if fd.has_presence:
        return lambda: None
    if fd.enum_type is not None:
        zero_name = fd.enum_type.values_by_number[0].name
        return lambda: zero_name
    value = fd.default_value
    return lambda: value


@functools.cache
def _decoder(cls: type, name: str) -> Conv:
    fields: dict[Any, tuple[str, Conv | None]] = {}
    zeros: list[tuple[str, Callable[[], Any]]] = []
    for f, fd in _fields(cls, name):
        fields[fd] = (f.encode_name, _from_proto(f.type, fd))
        if f.required:
            zeros.append((f.encode_name, _zero(fd)))

    def to_dict(message: Any) -> dict[str, Any]:
        out = {}
        fd = None
        try:
            for fd, v in message.ListFields():  # the fields a proto3 writer sent: not zero, not empty
                known = fields.get(fd)
                if known is not None:
                    key, conv = known
                    out[key] = v if conv is None else conv(v)
        except ValueError as e:
            raise ValueError(f"field {fd.name if fd is not None else '?'}: {e}") from None
        for key, zero in zeros:
            if key not in out:
                out[key] = zero()
        return out

    return to_dict


def _from_proto(t: mi.Type, fd: Any) -> Conv | None:
    """What msgspec.convert takes for field ``fd``'s value as a Python type ``t``; None: the value as it is."""
    t = _unwrap(t)
    message = fd.message_type
    if message is not None and message.full_name == STRUCT:
        return _struct
    if _is_map(fd):
        assert isinstance(t, mi.DictType)
        value = _item_from_proto(t.value_type, message.fields_by_name["value"])
        return dict if value is None else lambda v: {k: value(x) for k, x in v.items()}
    if fd.is_repeated:
        assert isinstance(t, _COLLECTIONS)
        item = _item_from_proto(t.item_type, fd)
        return list if item is None else lambda v: [item(x) for x in v]
    return _item_from_proto(t, fd)


def _item_from_proto(t: mi.Type, fd: Any) -> Conv | None:
    t = _unwrap(t)
    message, enum = fd.message_type, fd.enum_type
    if message is not None:
        if message.full_name == TIMESTAMP and isinstance(t, mi.DateTimeType):
            return _datetime
        if message.full_name == VALUE:
            return _json
        if isinstance(t, mi.StructType) and not message.full_name.startswith("google.protobuf."):
            return _nested(_decoder, t.cls, message.full_name)
        raise TypeError(f"no converter from {message.full_name} to {t!r} (field {fd.full_name}); add one")
    if enum is not None:  # the value's name, as in JSON (a number proto does not name stays a number)
        names = {v.number: v.name for v in enum.values}
        return lambda v: names.get(v, v)
    return None


def _datetime(ts: Any) -> dt.datetime | str:
    seconds, nanos = ts.seconds, ts.nanos
    if _SECONDS_MIN <= seconds <= _SECONDS_MAX and 0 <= nanos < 1_000_000_000 and nanos % 1000 == 0:
        return _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
    # Nanoseconds, or out of range: the RFC 3339 text of the JSON mapping (ValueError when out of range),
    # which msgspec reads as it would from a JSON client.
    return str(ts.ToJsonString())


def _struct(s: Any) -> dict[str, Any]:
    fields = s.fields
    return {k: _json(fields[k]) for k in fields}


def _json(v: Any) -> Any:
    """A google.protobuf.Value as the JSON a client would have sent."""
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        n = v.number_value
        if math.isinf(n) or math.isnan(n):
            raise ValueError(f"{n} in a google.protobuf.Value has no JSON form")
        return int(n) if n.is_integer() and abs(n) <= _EXACT else n
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return _struct(v.struct_value)
    if kind == "list_value":
        return [_json(x) for x in v.list_value.values]
    return None  # null_value, or nothing set (as the JSON mapping has it)
