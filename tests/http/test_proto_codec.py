"""The binary protobuf codec (fleetd.http.proto_codec) and the generated code it uses."""

from __future__ import annotations

import datetime as dt
import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from google.protobuf.descriptor import FieldDescriptor  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import inspect as mi

from fleetd.accounts.users import User
from fleetd.app import SERVICES
from fleetd.artifacts import catalog
from fleetd.core.decoding import decoding
from fleetd.core.errors import InvalidArgument
from fleetd.core.names import ENV_NAME
from fleetd.core.resources import proto_dir
from fleetd.devices.actions import DeviceAction
from fleetd.devices.device_api import ChallengeRequest, CheckInResponse
from fleetd.http import proto_codec, rpc
from fleetd.telemetry.api import ListMetricsRequest, ListMetricsResponse, QueryRequest
from tests.support import protogen

ROOT = Path(__file__).resolve().parents[2]


# --- the generated code ---------------------------------------------------------------

def test_generated_code_is_current() -> None:
    stale = protogen.stale()
    assert stale == [], (f"src/fleetd/protobuf is older than the .proto files ({', '.join(stale)}): "
                         f"run `{protogen.COMMAND}` (or `make proto`) and commit the result")


def test_a_changed_proto_file_makes_the_code_stale(tmp_path: Path) -> None:
    source = tmp_path / "proto"
    shutil.copytree(proto_dir(), source)
    user = source / "fleetd" / "v1" / "user.proto"
    user.write_text(user.read_text().replace("  bool disabled = 5;\n", "  bool disabled = 5;\n  string email = 7;\n"))
    (source / "fleetd" / "v1" / "audit.proto").unlink()
    assert protogen.stale(source=source) == ["audit_pb2.py", "user_pb2.py"]


def test_the_server_start_and_json_calls_load_no_protobuf(tmp_path: Path) -> None:
    """Only a binary request brings the protobuf runtime in (the footprint targets hold): not the start,
    not JSON calls through the routes, the device lane or Connect GET, not the errors they get."""
    code = f"""
import sys
from litestar.testing import TestClient
from fleetd.accounts import users
from fleetd.accounts.audit import SYSTEM
from fleetd.app import asgi_app
from fleetd.core.config import load_settings
from fleetd.fleet import Fleet
def loaded():
    prefixes = ("google.protobuf", "fleetd.protobuf", "fleetd.http.proto_codec")
    return sorted(m for m in sys.modules if m.startswith(prefixes))
fleet = Fleet(load_settings({{"data_dir": {str(tmp_path / "data")!r}, "mdns": False}}, None), first_admin=True)
app = asgi_app(fleet)
print(loaded())
key = fleet.store.write_sync(lambda c: users.create_api_key(c, SYSTEM, "k", "admin")).key
h = {{"Authorization": "Bearer " + key, "Content-Type": "application/json"}}
with TestClient(app=app) as client:
    def post(path, body, **headers):
        return client.post("/fleetd.v1." + path, content=body, headers={{**h, **headers}}).status_code
    statuses = [
        post("UserService/ListUsers", b"{{}}"),
        post("EnrollmentService/CreateToken", b'{{"description": "x"}}'),
        client.get("/fleetd.v1.UserService/ListUsers", params={{"message": "{{}}"}}, headers=h).status_code,
        post("DeviceAdminService/GetDevice", b'{{"id": "dev_no"}}'),
        post("DeviceService/CheckIn", b"{{}}", Authorization="Bearer x"),
        post("UserService/ListUsers", b"{{}}", **{{"Content-Type": "text/plain"}}),
    ]
print(statuses)
print(loaded())
fleet.close()
import fleetd.http.proto_codec
print("google.protobuf" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:4] == ["[]", "[200, 200, 200, 404, 401, 415]", "[]", "True"], p.stdout


# --- round trips of every message of every method ---------------------------------------

def _message_types() -> dict[str, type]:
    found: dict[str, type] = {}
    for service in SERVICES:
        for method in service.methods.values():
            for t in (method.request_type, method.response_type):
                found.setdefault(proto_codec.message_name(t), t)
    return found


MESSAGES = _message_types()
_INT_RANGES = {
    **dict.fromkeys((FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32),
                    (-(2**31), 2**31 - 1)),
    **dict.fromkeys((FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64),
                    (-(2**63), 2**63 - 1)),
    **dict.fromkeys((FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64), (0, 2**64 - 1)),
}
# What google.protobuf.Struct and Value carry: JSON, numbers as doubles.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def _strategy(t: mi.Type, fd: Any) -> st.SearchStrategy[Any]:
    """Values of Python type ``t`` (within its constraints) that proto field ``fd`` can carry."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        [inner] = [u for u in t.types if not isinstance(u, mi.NoneType)]
        return st.none() | _strategy(inner, fd)
    if isinstance(t, mi.ListType):
        return st.lists(_strategy(t.item_type, fd), min_size=t.min_length or 0, max_size=max(t.min_length or 0, 3))
    if isinstance(t, mi.DictType):
        if fd.message_type.full_name == "google.protobuf.Struct":
            return st.dictionaries(st.text(max_size=8), _JSON, max_size=3)
        key, value = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        return st.dictionaries(_strategy(t.key_type, key), _strategy(t.value_type, value),
                               min_size=t.min_length or 0, max_size=max(t.min_length or 0, 3))
    if isinstance(t, mi.AnyType):
        return _JSON
    if isinstance(t, mi.StructType):
        return _struct_strategy(t.cls, fd.message_type.full_name)
    if isinstance(t, mi.StrType):
        if t.pattern:
            text = st.from_regex(t.pattern, fullmatch=True)
        else:
            text = st.text(min_size=t.min_length or 0, max_size=max(t.min_length or 0, 12))
        return text.filter(lambda s: len(s) >= (t.min_length or 0) and len(s) <= (t.max_length or len(s)))
    if isinstance(t, mi.IntType):
        low, high = _INT_RANGES[fd.type]
        low = max([low, *(b for b in (t.ge, None if t.gt is None else t.gt + 1) if b is not None)])
        high = min([high, *(b for b in (t.le, None if t.lt is None else t.lt - 1) if b is not None)])
        return st.integers(low, high)
    if isinstance(t, mi.FloatType):
        return st.floats(min_value=t.ge if t.gt is None else t.gt, max_value=t.le if t.lt is None else t.lt,
                         exclude_min=t.gt is not None, exclude_max=t.lt is not None,
                         allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.DateTimeType):
        return st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                            timezones=st.just(dt.UTC))
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    raise TypeError(f"no strategy for {t!r}; add one")


_NAMES = st.lists(st.text(min_size=1, max_size=8), max_size=3)
# Fields whose Struct checks more than its types say (InstallSpec.__post_init__): values it takes.
_OVERRIDES: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (catalog.InstallSpec, "restart"): st.sampled_from(catalog.RESTART_POLICIES),
    (catalog.InstallSpec, "command"): _NAMES,
    (catalog.InstallSpec, "env"): st.dictionaries(st.from_regex(ENV_NAME.pattern, fullmatch=True),
                                          st.text(max_size=8).filter(lambda v: "\0" not in v), max_size=3),
    (catalog.HealthCheck, "grace_seconds"): st.integers(0, 3600),
    (catalog.HealthCheck, "http_url"): st.none() | st.sampled_from(["http://", "https://"]).map(lambda s: s + "h/z"),
    (catalog.HealthCheck, "command"): _NAMES,
}


def _default(f: mi.Field) -> Any:
    return f.default if f.default is not msgspec.NODEFAULT else f.default_factory()


@functools.cache
def _struct_strategy(cls: type, name: str) -> st.SearchStrategy[Any]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    desc = proto_codec._pool().FindMessageTypeByName(name)
    fields = {}
    for f in info.fields:
        fd = desc.fields_by_name[f.encode_name]
        s = _OVERRIDES[cls, f.name] if (cls, f.name) in _OVERRIDES else _strategy(f.type, fd)
        if not f.required and not fd.has_presence and not fd.is_repeated and _default(f) != fd.default_value:
            # proto3 cannot send this field's zero value (it is left out, and read as the Struct's default).
            s = s.filter(lambda v, zero=fd.default_value: v != zero)
        fields[f.name] = s
    return st.builds(cls, **fields)


@pytest.mark.parametrize("name", sorted(MESSAGES))
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_round_trip(name: str, data: st.DataObject) -> None:
    t = MESSAGES[name]
    obj = data.draw(_struct_strategy(t, name))
    assert proto_codec.decode(proto_codec.encode(obj), t) == obj


# --- by hand ------------------------------------------------------------------------------

def test_int64_beyond_doubles_travels_as_an_integer() -> None:
    obj = ListMetricsResponse(metrics=["a", "b"], total=2**53 + 1)
    data = proto_codec.encode(obj)
    message = proto_codec._plan(ListMetricsResponse).message.FromString(data)
    assert message.total == 2**53 + 1
    assert proto_codec.decode(data, ListMetricsResponse) == obj


def test_a_timestamp_keeps_its_microseconds() -> None:
    user = User(id="u1", username="ann", role="operator", must_change_password=True, disabled=False,
                created_at=dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC))
    data = proto_codec.encode(user)
    assert proto_codec._plan(User).message.FromString(data).created_at.nanos == 678_901_000
    assert proto_codec.decode(data, User) == user


def test_empty_messages() -> None:
    assert proto_codec.encode(rpc.Empty()) == b""
    assert proto_codec.decode(b"", rpc.Empty) == rpc.Empty()
    # A required field proto3 left out is its zero value, as a proto client means it.
    assert proto_codec.decode(b"", ChallengeRequest) == ChallengeRequest(device_id="")
    assert proto_codec.encode(ChallengeRequest(device_id="")) == b""


def test_zero_values_are_left_out_and_read_back() -> None:
    req = QueryRequest(device="d1", metric="cpu", max_points=0, tags={})
    assert proto_codec.decode(proto_codec.encode(req), QueryRequest) == req


def test_unknown_fields_are_ignored() -> None:
    req = ListMetricsRequest(device="d1", limit=20, offset=40)
    field_111_varint = b"\xf8\x06\x01"
    field_112_bytes = b"\x82\x07\x03abc"
    assert proto_codec.decode(proto_codec.encode(req) + field_111_varint + field_112_bytes, ListMetricsRequest) == req


@pytest.mark.parametrize("data, message", [
    (b"\x0a", "malformed protobuf in the request body"),  # a length that is not there
    (b"\x0a\x05ab", "malformed protobuf in the request body"),  # shorter than its length
    (b"\x0a\x01\xff", "malformed protobuf in the request body"),  # a string that is not UTF-8
    (b"\x18\xff\xff\xff\xff\x0f", "invalid request: Expected `int` >= 0"),  # offset -1 (int32, sign-extended)
])
def test_bad_bytes_are_invalid_argument(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        proto_codec.decode(data, ListMetricsRequest)
    assert message in str(e.value)


def test_a_timestamp_out_of_range_is_invalid_argument() -> None:
    seconds = 2**62  # far past year 9999
    varint = bytearray()
    while True:
        byte, seconds = seconds & 0x7F, seconds >> 7
        varint.append(byte | (0x80 if seconds else 0))
        if not seconds:
            break
    timestamp = b"\x08" + bytes(varint)
    with pytest.raises(InvalidArgument, match=r"invalid fleetd\.v1\.QueryRequest in the request body"):
        proto_codec.decode(b"\x2a" + bytes([len(timestamp)]) + timestamp, QueryRequest)


@pytest.mark.parametrize("name", sorted(n for n, t in MESSAGES.items()
                                        if any(m.request_type is t for s in SERVICES for m in s.methods.values())))
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=64))
def test_random_bytes_decode_or_are_invalid_argument(name: str, data: bytes) -> None:
    t = MESSAGES[name]
    try:
        decoded = proto_codec.decode(data, t)
    except InvalidArgument as e:
        assert str(e).startswith(("malformed protobuf in the request body", "invalid ")), str(e)
    else:
        assert isinstance(decoded, t)


def test_whole_numbers_in_a_json_object_come_back_as_ints() -> None:
    # google.protobuf.Struct holds numbers as doubles; a handler sees what a JSON client would have sent.
    params = {"lines": 200, "ratio": 0.5, "nested": [1, 2.5, {"n": -3}], "big": 2**60}
    action = DeviceAction(id="a1", kind="logs", component="app", state="queued", params=params)
    resp = CheckInResponse(status="active", poll_interval=60, actions=[action], next_checkin=60)
    [back] = proto_codec.decode(proto_codec.encode(resp), CheckInResponse).actions
    assert back.params == {"lines": 200, "ratio": 0.5, "nested": [1, 2.5, {"n": -3}], "big": float(2**60)}
    assert [type(back.params[k]) for k in ("lines", "ratio", "big")] == [int, float, float]
    assert type(back.params["nested"][2]["n"]) is int


# --- the direct path gives what the proto3 JSON mapping gives --------------------------------
# The reference: the Struct's JSON through json_format.ParseDict, and MessageToDict read back into the Struct
# (with what a proto3 reader assumes for missing fields, and the whole numbers of Struct and Value as ints).

_JSON_TYPES = frozenset({proto_codec.STRUCT, proto_codec.VALUE, "google.protobuf.ListValue"})


def _mapped_encode(obj: msgspec.Struct) -> bytes:
    message = proto_codec._plan(type(obj)).message()
    json_format.ParseDict(msgspec.to_builtins(obj), message)
    return bytes(message.SerializeToString())


def _mapped_decode(data: bytes, t: type) -> Any:
    name = proto_codec.message_name(t)
    try:
        raw = json_format.MessageToDict(proto_codec._plan(t).message.FromString(data),
                                        preserving_proto_field_name=True)
    except DecodeError as e:
        raise InvalidArgument(f"malformed protobuf in the request body: {e}; send a binary {name} message") from None
    except (json_format.Error, ValueError) as e:
        raise InvalidArgument(f"invalid {name} in the request body: {e}") from None
    with decoding("request", "request body"):
        return msgspec.convert(_fixer(mi.type_info(t), name)(raw), t, strict=False)


def _fixer(t: mi.Type, name: str, fd: Any = None) -> Any:
    """MessageToDict's output for a value of type ``t`` (carried by proto field ``fd``) made ready for convert."""
    while isinstance(t, mi.Metadata):
        t = t.type
    message = fd.message_type if fd is not None else proto_codec._pool().FindMessageTypeByName(name)
    if message is not None and message.full_name in _JSON_TYPES:
        return _whole_numbers
    if isinstance(t, mi.UnionType):
        [t] = [u for u in t.types if not isinstance(u, mi.NoneType)]
        return _fixer(t, name, fd)
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        item = _fixer(t.item_type, name, fd)
        return lambda v: [item(x) for x in v]
    if isinstance(t, mi.DictType) and message is not None and message.GetOptions().map_entry:
        value = _fixer(t.value_type, name, message.fields_by_name["value"])
        return lambda v: {k: value(x) for k, x in v.items()}
    if isinstance(t, mi.StructType) and message is not None:
        subs = {f.encode_name: (_fixer(f.type, name, message.fields_by_name[f.encode_name]),
                                proto_codec._zero(message.fields_by_name[f.encode_name]) if f.required else None)
                for f in t.fields}

        def fix(v: dict[str, Any]) -> dict[str, Any]:
            for key, (sub, zero) in subs.items():
                if key in v:
                    v[key] = sub(v[key])
                elif zero is not None:
                    v[key] = zero()
            return v

        return fix
    return lambda v: v


def _whole_numbers(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) <= 2**53:
        return int(v)
    if isinstance(v, dict):
        return {k: _whole_numbers(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_whole_numbers(x) for x in v]
    return v


@pytest.mark.parametrize("name", sorted(MESSAGES))
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_direct_path_gives_the_json_mappings_bytes_and_structs(name: str, data: st.DataObject) -> None:
    t = MESSAGES[name]
    obj = data.draw(_struct_strategy(t, name))
    mapped = _mapped_encode(obj)
    assert proto_codec.encode(obj) == mapped
    _assert_same(proto_codec.decode(mapped, t), _mapped_decode(mapped, t))


def _assert_same(got: Any, expected: Any) -> None:
    """Equal, and with the same JSON: 1 and 1.0 are equal in Python, not to a handler that checks types."""
    assert got == expected
    assert msgspec.json.encode(got) == msgspec.json.encode(expected)


def _outcome(decode: Any, data: bytes, t: type) -> Any:
    """The Struct, or the InvalidArgument's message (the protobuf runtime's reason left out for an invalid value,
    which each route words its own way)."""
    try:
        return decode(data, t)
    except InvalidArgument as e:
        message = str(e)
        invalid = f"invalid {proto_codec.message_name(t)} in the request body: "
        return invalid if message.startswith(invalid) else message


@pytest.mark.parametrize("name", sorted(MESSAGES))
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=64))
def test_random_bytes_decode_as_through_the_json_mapping(name: str, data: bytes) -> None:
    t = MESSAGES[name]
    _assert_same(_outcome(proto_codec.decode, data, t), _outcome(_mapped_decode, data, t))


def test_nanoseconds_and_edge_timestamps_decode_as_through_the_json_mapping() -> None:
    Query = proto_codec._plan(QueryRequest).message
    for seconds, nanos in [(0, 500), (0, 1500), (1_700_000_000, 999_999_500), (-62_135_596_800, 0),
                           (253_402_300_799, 999_999_000), (253_402_300_799, 999_999_999), (-1, 999_999_999),
                           (253_402_300_800, 0), (0, -1), (0, 1_000_000_000)]:
        data = Query(device="d", metric="m", start=Timestamp(seconds=seconds, nanos=nanos)).SerializeToString()
        _assert_same(_outcome(proto_codec.decode, data, QueryRequest), _outcome(_mapped_decode, data, QueryRequest))
