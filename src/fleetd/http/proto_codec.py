"""The binary protobuf codec: the RPC Structs to and from protobuf's wire format.

A message goes through the proto3 JSON mapping, which the Structs already follow
(tests/http/test_proto.py holds them to the published .proto files):

    encode: Struct -> msgspec builtins (fleetd's JSON) -> json_format.ParseDict -> SerializeToString
    decode: FromString -> json_format.MessageToDict -> msgspec.convert(strict=False) -> Struct

Three things differ between what MessageToDict gives and what the JSON codec takes:

- proto3 leaves out a field holding its zero value; a missing field takes the Struct's
  default, and a required Struct field without presence in proto gets the zero value
  (what a proto3 reader would read).
- 64-bit integers come as strings, which msgspec's lax conversion reads.
- Numbers inside google.protobuf.Struct and Value are doubles; whole ones up to 2**53
  become ints again, as a JSON client's would.

Unknown fields are ignored, as in JSON. Bad bytes give InvalidArgument.

This module imports the protobuf runtime and the generated code (fleetd.protobuf):
import it only when a binary request arrives, so the server's start loads neither.
"""

from __future__ import annotations

import functools
import importlib
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
    from google.protobuf import descriptor_pool, json_format, message_factory  # type: ignore[import-untyped]
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
except ImportError as e:
    raise ImportError("the binary protobuf codec needs the protobuf runtime: pip install 'protobuf>=7.35.1,<8'") from e

S = TypeVar("S", bound=msgspec.Struct)
Fix = Callable[[Any], Any]
_JSON_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
_EXACT = 2**53  # every whole number up to this is exact in a double


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
    fix: Fix  # MessageToDict's output made ready for msgspec.convert


@functools.cache
def _plan(t: type) -> _Plan:
    name = message_name(t)
    try:
        desc = _pool().FindMessageTypeByName(name)
    except KeyError:
        raise TypeError(f"{t.__module__}.{t.__qualname__} has no message {name} in the published .proto files; "
                        f"add it (tests/http/test_proto.py lists what to write)") from None
    return _Plan(message_factory.GetMessageClass(desc), _struct_fixer(t, name))


def encode(obj: msgspec.Struct) -> bytes:
    """``obj`` in protobuf's binary format."""
    message = _plan(type(obj)).message()
    json_format.ParseDict(msgspec.to_builtins(obj), message)
    return bytes(message.SerializeToString())


def decode(data: bytes, t: type[S]) -> S:
    """A request body in protobuf's binary format as Struct type ``t``; InvalidArgument if it is not one."""
    plan = _plan(t)
    try:
        raw = json_format.MessageToDict(plan.message.FromString(data), preserving_proto_field_name=True)
    except DecodeError as e:
        raise InvalidArgument(f"malformed protobuf in the request body: {e}; send a binary "
                              f"{message_name(t)} message") from None
    except (json_format.Error, ValueError) as e:  # e.g. a Timestamp out of range, a NaN in a Value
        raise InvalidArgument(f"invalid {message_name(t)} in the request body: {e}") from None
    with decoding("request", "request body"):
        return msgspec.convert(plan.fix(raw), t, strict=False)


# --- from MessageToDict's output to what msgspec.convert takes -------------------------

@functools.cache
def _struct_fixer(t: type, name: str) -> Fix:
    info = mi.type_info(t)
    assert isinstance(info, mi.StructType)
    desc = _pool().FindMessageTypeByName(name)
    zeros: dict[str, Callable[[], Any]] = {}
    subs: dict[str, Fix] = {}
    for f in info.fields:
        fd = desc.fields_by_name.get(f.encode_name)
        if fd is None:
            continue
        if f.required:
            zeros[f.encode_name] = _zero(fd)
        sub = _fixer(f.type, fd)
        if sub is not None:
            subs[f.encode_name] = sub

    def fix(obj: Any) -> Any:
        if not isinstance(obj, dict):
            return obj
        for key, zero in zeros.items():
            if key not in obj:
                obj[key] = zero()
        for key, sub in subs.items():
            if key in obj:
                obj[key] = sub(obj[key])
        return obj

    return fix


def _zero(fd: Any) -> Callable[[], Any]:
    """What a proto3 reader takes a missing field for, as JSON."""
    if fd.is_repeated:
        entry = fd.message_type
        return dict if entry is not None and entry.GetOptions().map_entry else list
    if fd.has_presence:
        return lambda: None
    if fd.enum_type is not None:
        zero_name = fd.enum_type.values_by_number[0].name
        return lambda: zero_name
    value = fd.default_value
    return lambda: value


def _fixer(t: mi.Type, fd: Any) -> Fix | None:
    """The fix for a field of Python type ``t`` carried by proto field ``fd``, if it needs one."""
    while isinstance(t, mi.Metadata):
        t = t.type
    message = fd.message_type
    if message is not None and message.full_name in _JSON_TYPES:
        return _whole_numbers
    if isinstance(t, mi.UnionType):  # X | None
        for u in t.types:
            if not isinstance(u, mi.NoneType):
                return _fixer(u, fd)
        return None
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        item = _fixer(t.item_type, fd)
        return None if item is None else lambda v: [item(x) for x in v] if isinstance(v, list) else v
    if isinstance(t, mi.DictType) and message is not None and message.GetOptions().map_entry:
        value = _fixer(t.value_type, message.fields_by_name["value"])
        return None if value is None else lambda v: {k: value(x) for k, x in v.items()} if isinstance(v, dict) else v
    if isinstance(t, mi.StructType) and message is not None:
        cls, name = t.cls, message.full_name
        return lambda v: _struct_fixer(cls, name)(v)
    return None


def _whole_numbers(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) <= _EXACT:
        return int(v)
    if isinstance(v, dict):
        return {k: _whole_numbers(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_whole_numbers(x) for x in v]
    return v
