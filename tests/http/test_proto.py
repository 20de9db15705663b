"""The published .proto files agree with the RPC registry, and the checker notices when they don't."""

from __future__ import annotations

import datetime as dt
import enum
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest

import fleetd
from fleetd.app import SERVICES
from fleetd.core.resources import proto_dir
from fleetd.http import rpc
from tests.support import protocheck
from tests.support.protocheck import check

ROOT = Path(__file__).resolve().parents[2]


# --- the published files -------------------------------------------------------

def test_published_protos_match_the_registry() -> None:
    assert check(SERVICES, proto_dir()) == []


def test_a_new_service_without_a_proto_is_caught() -> None:
    things = rpc.Service("SpareThingService")

    @things.method(auth="viewer", readonly=True)
    async def ListThings(ctx: rpc.Context, req: rpc.Empty) -> rpc.Empty:
        raise NotImplementedError

    assert check([*SERVICES, things], proto_dir()) == [
        "fleetd.v1.SpareThingService: service in code but in no .proto file; write it in "
        "fleetd/v1/spare_thing.proto"]


def test_command_line_entry_point_reports_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    assert protocheck.main() == 0
    assert capsys.readouterr().out == ""


def test_proto_files_ship_inside_the_package() -> None:
    package = Path(fleetd.__file__).resolve().parent
    assert proto_dir().resolve().is_relative_to(package)
    assert {p.name for p in (proto_dir() / "fleetd" / "v1").glob("*.proto")} >= {"user.proto", "audit.proto"}
    # The wheel ships the whole package folder; nothing may exclude the .proto files from it.
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    wheel = build["targets"]["wheel"]
    assert "src/fleetd" in wheel["packages"]
    excluded = [*build.get("exclude", []), *wheel.get("exclude", [])]
    assert not [e for e in excluded if "proto" in e], excluded


def test_without_grpcio_tools_the_module_says_what_to_install() -> None:
    # The server never imports protocheck; where grpcio-tools is missing, importing it says what to do.
    code = "import sys; sys.modules['grpc_tools'] = None; import tests.support.protocheck"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert run.returncode == 1
    assert "tests.support.protocheck runs protoc from grpcio-tools, a test dependency: pip install -e '.[test]'" \
        in run.stderr


# --- the checker catches each kind of drift ----------------------------------------

@pytest.fixture
def protos(tmp_path: Path) -> Path:
    root = tmp_path / "proto"
    shutil.copytree(proto_dir(), root)
    assert check(SERVICES, root) == []
    return root


def edit(root: Path, name: str, *changes: tuple[str, str]) -> None:
    path = root / "fleetd" / "v1" / name
    text = path.read_text()
    for old, new in changes:
        assert text.count(old) == 1, f"{old!r} is not in {name} exactly once: update this test"
        text = text.replace(old, new)
    path.write_text(text)


_READONLY = " {\n    option idempotency_level = NO_SIDE_EFFECTS;\n  }"

DRIFT = {
    "field removed": ("user.proto", [("  bool disabled = 5;\n", "")], [
        "User.disabled: field in code (fleetd.accounts.users.User) but not in fleetd/v1/user.proto; "
        "add `bool disabled = <number>;`"]),
    "field added": ("user.proto", [("  bool disabled = 5;\n", "  bool disabled = 5;\n  string email = 7;\n")], [
        "User.email (fleetd/v1/user.proto:66): field in proto but not in code (fleetd.accounts.users.User)"]),
    "method renamed": ("user.proto", [("rpc ListUsers(", "rpc ListAllUsers(")], [
        "fleetd.v1.UserService/ListUsers: method in code but no rpc ListUsers in fleetd/v1/user.proto",
        "fleetd.v1.UserService/ListAllUsers (fleetd/v1/user.proto:30): rpc in proto but no such method in code"]),
    "str as int64": ("user.proto", [("string csrf_token = 2;", "int64 csrf_token = 2;")], [
        "LoginResponse.csrf_token (fleetd/v1/user.proto:99): proto has `int64` but code has `str`; "
        "write `string csrf_token = 2;`"]),
    "int as string": ("audit.proto", [("int64 before_id = 7;", "string before_id = 7;")], [
        "ListAuditRequest.before_id (fleetd/v1/audit.proto:51): proto has `string` but code has `int`; "
        "write `int64 before_id = 7;`"]),
    "bool as string": ("user.proto", [("bool include_revoked = 1;", "string include_revoked = 1;")], [
        "ListKeysRequest.include_revoked (fleetd/v1/user.proto:159): proto has `string` but code has `bool`; "
        "write `bool include_revoked = 1;`"]),
    "datetime as string": ("user.proto", [("  google.protobuf.Timestamp expires_at = 3;",
                                           "  string expires_at = 3;")], [
        "LoginResponse.expires_at (fleetd/v1/user.proto:100): proto has `string` but code has `datetime`; "
        "write `google.protobuf.Timestamp expires_at = 3;`"]),
    "Struct as map": ("audit.proto", [("google.protobuf.Struct details", "map<string, string> details")], [
        "AuditEntry.details (fleetd/v1/audit.proto:36): proto has `map<string, string>` but code has "
        "`dict[str, Any]`; write `google.protobuf.Struct details = 10;`"]),
    "optional dropped": ("user.proto", [("optional string password = 2;", "string password = 2;")], [
        "CreateUserResponse.password (fleetd/v1/user.proto:136): proto has `string` but code has `str | None`; "
        "write `optional string password = 2;`"]),
    "optional added": ("user.proto", [("  bool must_change_password = 4;",
                                       "  optional bool must_change_password = 4;")], [
        "User.must_change_password (fleetd/v1/user.proto:64): proto has `optional bool` but code has `bool`; "
        "write `bool must_change_password = 4;`"]),
    "repeated dropped": ("user.proto", [("repeated User users = 1;", "User users = 1;")], [
        "ListUsersResponse.users (fleetd/v1/user.proto:120): proto has `User` but code has `list[User]`; "
        "write `repeated User users = 1;`"]),
    "wrong message type": ("user.proto", [("User user = 1;\n  string csrf", "ApiKey user = 1;\n  string csrf")], [
        "LoginResponse.user (fleetd/v1/user.proto:98): proto has `ApiKey` but code has `User`; "
        "write `User user = 1;`"]),
    "nested message drifts": ("audit.proto", [("optional string actor_id = 4;", "string actor_id = 4;")], [
        "AuditEntry.actor_id (fleetd/v1/audit.proto:27): proto has `string` but code has `str | None`; "
        "write `optional string actor_id = 4;`"]),
    "NO_SIDE_EFFECTS missing": ("user.proto", [("rpc ListUsers(google.protobuf.Empty) returns (ListUsersResponse)"
                                                + _READONLY,
                                                "rpc ListUsers(google.protobuf.Empty) returns (ListUsersResponse);")], [
        "fleetd.v1.UserService/ListUsers (fleetd/v1/user.proto:30): readonly in code (answers Connect GET) but "
        "the rpc lacks `option idempotency_level = NO_SIDE_EFFECTS;`"]),
    "NO_SIDE_EFFECTS extra": ("user.proto", [("rpc CreateKey(CreateKeyRequest) returns (ApiKey);",
                                              "rpc CreateKey(CreateKeyRequest) returns (ApiKey)" + _READONLY)], [
        "fleetd.v1.UserService/CreateKey (fleetd/v1/user.proto:52): marked NO_SIDE_EFFECTS in proto but not "
        "readonly=True in code"]),
    "request renamed": ("user.proto", [("rpc Login(LoginRequest)", "rpc Login(SignInRequest)"),
                                       ("message LoginRequest {", "message SignInRequest {")], [
        "fleetd.v1.UserService/Login (fleetd/v1/user.proto:16): request message is LoginRequest in code but "
        "SignInRequest in proto"]),
    "wrong response": ("user.proto", [("rpc DeleteUser(DeleteUserRequest) returns (google.protobuf.Empty);",
                                       "rpc DeleteUser(DeleteUserRequest) returns (User);")], [
        "fleetd.v1.UserService/DeleteUser (fleetd/v1/user.proto:44): response message is Empty in code but "
        "User in proto"]),
    "streaming": ("audit.proto", [("returns (ListAuditResponse)", "returns (stream ListAuditResponse)")], [
        "fleetd.v1.AuditService/List (fleetd/v1/audit.proto:16): streaming rpcs are not supported; "
        "fleetd methods are unary"]),
    "comment missing": ("user.proto", [("// Login's credentials.\n", "")], [
        "fleetd/v1/user.proto:90: message LoginRequest has no comment; add a one-line // comment above it"]),
    # protoc's own errors, as it words them.
    "import missing": ("audit.proto", [('import "google/protobuf/struct.proto";\n', "")], [
        'fleetd/v1/audit.proto:35:3: "google.protobuf.Struct" seems to be defined in "google/protobuf/struct.proto", '
        'which is not imported by "fleetd/v1/audit.proto".  To use it here, please add the necessary import.']),
    "unknown type": ("audit.proto", [("repeated AuditEntry entries", "repeated AuditRecord entries")], [
        'fleetd/v1/audit.proto:58:12: "AuditRecord" is not defined.']),
    "import of nothing": ("audit.proto", [("package fleetd.v1;\n",
                                           'package fleetd.v1;\nimport "fleetd/v1/nope.proto";\n')], [
        "fleetd/v1/nope.proto: File not found.",
        'fleetd/v1/audit.proto:9:1: Import "fleetd/v1/nope.proto" was not found or had errors.']),
    "enum as request": ("audit.proto", [("// One page of entries", "// Old.\nenum Old {\n  OLD = 0;\n}\n\n"
                                                                  "// One page of entries"),
                                        ("rpc List(ListAuditRequest)", "rpc List(Old)")], [
        'fleetd/v1/audit.proto:16:12: "Old" is not a message type.']),
    "message left behind": ("audit.proto", [("// One page of entries", "// Old.\nmessage Old {\n  int64 x = 1;\n}\n\n"
                                                                      "// One page of entries")], [
        "fleetd.v1.Old (fleetd/v1/audit.proto:57) is used by no rpc; remove it"]),
    "json_name": ("audit.proto", [("int64 next_before_id = 2;", 'int64 next_before_id = 2 [json_name = "next"];')], [
        "fleetd/v1/audit.proto:60: json_name on ListAuditResponse.next_before_id: the server writes proto field "
        "names, so the JSON name cannot be changed"]),
}


@pytest.mark.parametrize("case", list(DRIFT))
def test_checker_reports_drift(protos: Path, case: str) -> None:
    name, changes, expected = DRIFT[case]
    edit(protos, name, *changes)
    assert check(SERVICES, protos) == expected


def test_syntax_error_names_file_and_line(protos: Path) -> None:
    edit(protos, "user.proto", ("string old_password = 1;", "string old_password = 1"))
    # protoc points at the token after the missing ';'. Until the files compile, nothing else is compared.
    assert check(SERVICES, protos) == ['fleetd/v1/user.proto:115:3: Expected ";".']


def test_missing_file_is_caught(protos: Path) -> None:
    (protos / "fleetd" / "v1" / "audit.proto").unlink()
    assert check(SERVICES, protos) == [
        "fleetd.v1.AuditService: service in code but in no .proto file; write it in fleetd/v1/audit.proto"]


def test_service_in_the_wrong_file_is_caught(protos: Path) -> None:
    v1 = protos / "fleetd" / "v1"
    (v1 / "audit.proto").rename(v1 / "log.proto")
    assert check(SERVICES, protos) == [
        "fleetd.v1.AuditService is declared in fleetd/v1/log.proto; one file per service: "
        "move it to fleetd/v1/audit.proto"]


def test_service_without_code_is_caught(protos: Path) -> None:
    assert check([s for s in SERVICES if s.name != "AuditService"], protos) == [
        "fleetd.v1.AuditService (fleetd/v1/audit.proto:14): service in proto but not registered in code"]


def test_package_must_match_folder(protos: Path) -> None:
    edit(protos, "audit.proto", ("package fleetd.v1;", "package fleetd.v2;"))
    problems = check(SERVICES, protos)
    assert ("fleetd/v1/audit.proto: package is 'fleetd.v2' but the file is in fleetd/v1/; "
            "files of package p.q live in p/q/") in problems
    assert "fleetd.v1.AuditService: service in code but in no .proto file; write it in fleetd/v1/audit.proto" \
        in problems


def test_duplicate_declaration_is_caught(protos: Path) -> None:
    (protos / "fleetd" / "v1" / "extra.proto").write_text(
        'syntax = "proto3";\npackage fleetd.v1;\n// Again.\nmessage User {\n  string id = 1;\n}\n')
    problems = check(SERVICES, protos)
    assert 'fleetd/v1/user.proto:59:9: "fleetd.v1.User" is already defined in file "fleetd/v1/extra.proto".' \
        in problems


def test_proto2_is_refused(protos: Path) -> None:
    (protos / "fleetd" / "v1" / "old.proto").write_text(
        'syntax = "proto2";\npackage fleetd.v1;\n// Old.\nmessage Old {\n  required string id = 1;\n}\n')
    assert check(SERVICES, protos) == [
        'fleetd/v1/old.proto: syntax is \'proto2\'; write syntax = "proto3";',
        "fleetd.v1.Old (fleetd/v1/old.proto:4) is used by no rpc; remove it"]


def test_missing_proto_folder(tmp_path: Path) -> None:
    problems = check(SERVICES, tmp_path / "nope")
    assert problems[0] == f"{tmp_path / 'nope'}: no such folder of .proto files"
    assert len(problems) == 1 + len(SERVICES)


# --- every kind of field, on a service of its own ------------------------------------

class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Part(msgspec.Struct, kw_only=True):
    serial: str
    weight: float = 0.0


class Gadget(msgspec.Struct, kw_only=True):
    id: str
    count: int
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    ratio: float = 0.0
    on: bool = False
    blob: bytes = b""
    made_at: dt.datetime
    seen_at: dt.datetime | None = None
    note: str | None = None
    tags: list[str] = []
    parts: list[Part] = []
    main_part: Part | None = None
    labels: dict[str, str] = {}
    by_serial: dict[str, Part] = {}
    counts: dict[int, int] = {}
    extra: dict[str, Any] = {}
    value: Any = None
    color: Color = Color.RED
    size: Literal["s", "m", "l"] = "m"


class GetGadgetRequest(msgspec.Struct, kw_only=True):
    id: str


gadgets = rpc.Service("GadgetService")


@gadgets.method(auth="viewer", readonly=True)
async def GetGadget(ctx: rpc.Context, req: GetGadgetRequest) -> Gadget:
    raise NotImplementedError


@gadgets.method(auth="operator")
async def DeleteGadget(ctx: rpc.Context, req: GetGadgetRequest) -> rpc.Empty:
    raise NotImplementedError


GADGET_PROTO = """\
// A service that uses every kind of field the checker knows.
syntax = "proto3";

package fleetd.v1;

option go_package = "example.com/fleetd/v1;fleetdv1";

import "google/protobuf/empty.proto";
import public "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";

/* Gadgets,
   read and forgotten. */
service GadgetService {
  option deprecated = false;
  // Read one gadget.
  rpc GetGadget(GetGadgetRequest) returns (Gadget) {
    option idempotency_level = NO_SIDE_EFFECTS;
  };
  // Forget one gadget.
  rpc DeleteGadget(.fleetd.v1.GetGadgetRequest) returns (google.protobuf.Empty) {}
}

// Which gadget.
message GetGadgetRequest { string id = 1; }

// A colour.
enum Color {
  red = 0;
  green = 1 [deprecated = true];
}

// A part.
message Part {
  string serial = 1;
  float weight = 2;
}

// A gadget.
message Gadget {
  option deprecated = false;
  reserved 30 to 40, 50;
  reserved "old_name";
  string id = 1;
  int64 count = 2;
  int32 limit = 3 [deprecated = true];
  double ratio = 4;
  bool on = 5;
  bytes blob = 6;
  google.protobuf.Timestamp made_at = 7;
  optional google.protobuf.Timestamp seen_at = 8;
  optional string note = 9;  // a trailing comment is nobody's leading comment
  repeated string tags = 10;
  repeated Part parts = 11;
  optional Part main_part = 12;
  map<string, string> labels = 13;
  map<string, Part> by_serial = 14;
  map<int64, int64> counts = 15;
  google.protobuf.Struct extra = 16;
  google.protobuf.Value value = 17;
  Color color = 18;
  string size = 19;
}
"""


@pytest.fixture
def gadget_dir(tmp_path: Path) -> Path:
    (tmp_path / "fleetd" / "v1").mkdir(parents=True)
    (tmp_path / "fleetd" / "v1" / "gadget.proto").write_text(GADGET_PROTO)
    return tmp_path


def test_every_field_kind_agrees(gadget_dir: Path) -> None:
    assert check([gadgets], gadget_dir) == []


_COLOR = "// A colour.\nenum Color {\n  red = 0;\n  green = 1 [deprecated = true];\n}\n"


@pytest.mark.parametrize("changes", [
    # A str enum is sent as its value, so a string carries it too.
    [("Color color", "string color"), (_COLOR, "")],
    [("double ratio", "float ratio")],
    [("int64 count", "uint32 count")],
    [("int32 limit", "int64 limit")],
    [("map<int64, int64> counts", "map<int32, sint64> counts")],
])
def test_equivalent_types_are_accepted(gadget_dir: Path, changes: list[tuple[str, str]]) -> None:
    edit(gadget_dir, "gadget.proto", *changes)
    assert check([gadgets], gadget_dir) == []


@pytest.mark.parametrize("old, new, code", [
    ("map<string, string> labels", "google.protobuf.Struct labels", "dict[str, str]"),
    ("google.protobuf.Struct extra", "map<string, string> extra", "dict[str, Any]"),
    ("map<int64, int64> counts", "map<string, int64> counts", "dict[int, int]"),
    ("map<string, Part> by_serial", "map<string, string> by_serial", "dict[str, Part]"),
    ("bytes blob", "string blob", "bytes"),
    ("double ratio", "int64 ratio", "float"),
    ("Color color", "int32 color", "Color"),
    ("string size", "int64 size", "Literal['l', 'm', 's']"),
    ("google.protobuf.Value value", "string value", "Any"),
    ("repeated string tags", "repeated bytes tags", "list[str]"),
    ("optional Part main_part", "Part main_part", "Part | None"),
    ("google.protobuf.Timestamp made_at", "google.protobuf.Struct made_at", "datetime"),
])
def test_type_mismatches_are_reported(gadget_dir: Path, old: str, new: str, code: str) -> None:
    edit(gadget_dir, "gadget.proto", (old, new))
    field = old.split()[-1]
    # Other problems may follow (an enum left unused, a missing import); one is about this field.
    [problem] = [p for p in check([gadgets], gadget_dir) if p.startswith(f"Gadget.{field} ")]
    assert problem.startswith(f"Gadget.{field} (fleetd/v1/gadget.proto:")
    assert f"proto has `{new.rsplit(' ', 1)[0]}` but code has `{code}`; write `{old} = " in problem


def test_nested_struct_is_compared(gadget_dir: Path) -> None:
    edit(gadget_dir, "gadget.proto", ("float weight = 2;", "string weight = 2;"))
    assert check([gadgets], gadget_dir) == [
        "Part.weight (fleetd/v1/gadget.proto:36): proto has `string` but code has `float`; "
        "write `double weight = 2;`"]


def test_enum_missing_a_value_is_reported(gadget_dir: Path) -> None:
    edit(gadget_dir, "gadget.proto", ("  green = 1 [deprecated = true];\n", ""))
    assert check([gadgets], gadget_dir) == [
        "enum fleetd.v1.Color (fleetd/v1/gadget.proto:28) lacks ['green'] that the code sends "
        "(enum JSON is the value's name)"]


class Odd(msgspec.Struct, kw_only=True):
    either: int | str = 0
    maybe_list: list[str] | None = None
    nested: list[list[int]] = []


def test_python_types_without_a_proto_equivalent_are_reported(gadget_dir: Path) -> None:
    odd = rpc.Service("GadgetService")

    @odd.method(auth="viewer")
    async def GetGadget(ctx: rpc.Context, req: GetGadgetRequest) -> Odd:
        raise NotImplementedError

    problems = check([odd], gadget_dir)
    assert any("response message is Odd in code but Gadget in proto" in p for p in problems)
    edit(gadget_dir, "gadget.proto", ("returns (Gadget)", "returns (Odd)"),
         ("// A part.", "// Odd.\nmessage Odd {\n  int64 either = 1;\n}\n\n// A part."))
    problems = "\n".join(check([odd], gadget_dir))
    assert "`int | str`: only `X | None` unions have a proto3 equivalent" in problems
    assert "`list[str] | None`: a repeated field cannot be None in proto3" in problems
    assert "`list[list[int]]`: proto3 has no lists of lists" in problems


# --- defaults other than proto3's zero value ---------------------------------------

class Knob(msgspec.Struct, kw_only=True, omit_defaults=True):
    level: int = 5
    mode: str = "auto"
    note: str = ""
    color: Color = Color.RED


knobs = rpc.Service("KnobService")


@knobs.method(auth="viewer")
async def Turn(ctx: rpc.Context, req: GetGadgetRequest) -> Knob:
    raise NotImplementedError


KNOB_PROTO = """\
syntax = "proto3";
package fleetd.v1;
// Knobs.
service KnobService {
  // Turn one.
  rpc Turn(GetGadgetRequest) returns (Knob);
}
// Which.
message GetGadgetRequest { string id = 1; }
// A colour.
enum Color {
  red = 0;
  green = 1;
}
// A knob.
message Knob {
  // Unset = 5.
  optional int64 level = 1;
  // Unset = auto.
  optional string mode = 2;
  string note = 3;
  Color color = 4;
}
"""


@pytest.fixture
def knob_dir(tmp_path: Path) -> Path:
    (tmp_path / "fleetd" / "v1").mkdir(parents=True)
    (tmp_path / "fleetd" / "v1" / "knob.proto").write_text(KNOB_PROTO)
    return tmp_path


def test_omitted_defaults_need_presence(knob_dir: Path) -> None:
    assert check([knobs], knob_dir) == []
    # The server leaves level out when it is 5; a proto3 reader would take that for 0.
    edit(knob_dir, "knob.proto", ("optional int64 level", "int64 level"), ("optional string mode", "string mode"))
    assert check([knobs], knob_dir) == [
        f"Knob.{name} (fleetd/v1/knob.proto:{line}): tests.http.test_proto.Knob leaves this field out when it holds "
        f"its default {default!r} (omit_defaults) and proto3 readers take a missing field as zero; write "
        f"`optional {type_} {name} = {number};` and say in its comment what unset means"
        for name, line, default, type_, number in (("level", 18, 5, "int64", 1), ("mode", 20, "auto", "string", 2))]


def test_presence_is_still_refused_where_the_default_is_zero(knob_dir: Path) -> None:
    # note defaults to "" and color to the enum's zero value: a missing field already means the default.
    edit(knob_dir, "knob.proto", ("string note", "optional string note"), ("Color color", "optional Color color"))
    assert check([knobs], knob_dir) == [
        "Knob.note (fleetd/v1/knob.proto:21): proto has `optional string` but code has `str`; "
        "write `string note = 3;`",
        "Knob.color (fleetd/v1/knob.proto:22): proto has `optional Color` but code has `Color`; "
        "write `Color color = 4;`"]


def test_a_type_error_is_reported_beside_the_missing_presence(knob_dir: Path) -> None:
    edit(knob_dir, "knob.proto", ("optional int64 level", "string level"))
    problems = check([knobs], knob_dir)
    assert len(problems) == 2
    assert "write `optional int64 level = 1;` and say in its comment" in problems[0]
    assert problems[1] == ("Knob.level (fleetd/v1/knob.proto:18): proto has `string` but code has `int`; "
                           "write `optional int64 level = 1;`")


def test_requests_may_give_presence_to_fields_with_a_default(gadget_dir: Path) -> None:
    # Gadget is not omit_defaults: both spellings agree, and `optional` lets a proto client send limit = 0.
    edit(gadget_dir, "gadget.proto", ("  int32 limit = 3", "  optional int32 limit = 3"))
    assert check([gadgets], gadget_dir) == []




# --- what protoc accepts but fleetd does not, and the house rules -----------------------

@pytest.mark.parametrize("old, new, problem", [
    ("  Color color = 4;\n", "  Color color = 4;\n  // Inner.\n  message Inner { string x = 1; }\n",
     "fleetd/v1/knob.proto:16: message Knob declares messages or enums inside it; declare them at the top level"),
    ("  Color color = 4;\n", "  Color color = 4;\n  // Inner.\n  enum Inner { INNER = 0; }\n",
     "fleetd/v1/knob.proto:16: message Knob declares messages or enums inside it; declare them at the top level"),
    ("  Color color = 4;\n", "  oneof pick {\n    Color color = 4;\n    string hue = 5;\n  }\n",
     "fleetd/v1/knob.proto:16: message Knob has a oneof; fleetd's Structs have no equivalent"),
    ("// Which.", 'import "google/protobuf/descriptor.proto";\n'
                  "extend google.protobuf.FieldOptions { string unit = 50000; }\n// Which.",
     "fleetd/v1/knob.proto: extensions are not supported; fleetd's JSON has no place for them"),
    ("string note = 3;", "string Note = 3;", "fleetd/v1/knob.proto:21: field Knob.Note must be lower_snake_case"),
    ("// A knob.\n", "", "fleetd/v1/knob.proto:15: message Knob has no comment; add a one-line // comment above it"),
    # A comment on the line of the previous declaration's end is that declaration's, not the next one's.
    ("}\n// A knob.\n", "}  // colours end here\n",
     "fleetd/v1/knob.proto:15: message Knob has no comment; add a one-line // comment above it"),
    ("// A colour.\n", "", "fleetd/v1/knob.proto:10: enum Color has no comment; add a one-line // comment above it"),
    ("// Knobs.\n", "",
     "fleetd/v1/knob.proto:3: service KnobService has no comment; add a one-line // comment above it"),
    ("  // Turn one.\n", "", "fleetd/v1/knob.proto:5: rpc Turn has no comment; add a one-line // comment above it"),
])
def test_house_rules(knob_dir: Path, old: str, new: str, problem: str) -> None:
    edit(knob_dir, "knob.proto", (old, new))
    assert problem in check([knobs], knob_dir)


@pytest.mark.parametrize("old, new", [
    ("}\n// A knob.\n", "}\n\n// A knob.\n\n"),  # set apart by blank lines, it is still the knob's
    ("// A knob.\n", "/* A knob. */\n"),
])
def test_comment_styles_are_accepted(knob_dir: Path, old: str, new: str) -> None:
    edit(knob_dir, "knob.proto", (old, new))
    assert check([knobs], knob_dir) == []


class Timestamp(msgspec.Struct, kw_only=True):
    seconds: int = 0


class Pair(msgspec.Struct, array_like=True):
    a: int
    b: int


class CamelKnob(msgspec.Struct, kw_only=True, rename="camel"):
    knob_level: int = 0


@pytest.mark.parametrize("response, returns, message, problem", [
    (Timestamp, "google.protobuf.Timestamp", "",
     "tests.http.test_proto.Timestamp is a Struct but google.protobuf.Timestamp is a well-known type; "
     "declare a message"),
    (Pair, "Pair", "// Two.\nmessage Pair {\n  int64 a = 1;\n  int64 b = 2;\n}\n",
     "tests.http.test_proto.Pair: array_like and tagged Structs have no proto3 equivalent"),
    (CamelKnob, "CamelKnob", "// Camel.\nmessage CamelKnob {\n  int64 knob_level = 1;\n}\n",
     "tests.http.test_proto.CamelKnob.knob_level: JSON name 'knobLevel' is not lower_snake_case like proto fields"),
])
def test_structs_without_a_proto_equivalent(knob_dir: Path, response: type, returns: str, message: str,
                                            problem: str) -> None:
    svc = rpc.Service("KnobService")

    async def Turn(ctx: rpc.Context, req: GetGadgetRequest) -> Any:
        raise NotImplementedError

    Turn.__annotations__["return"] = response
    svc.method(auth="viewer")(Turn)
    edit(knob_dir, "knob.proto", ("returns (Knob)", f"returns ({returns})"),
         ('package fleetd.v1;\n', 'package fleetd.v1;\nimport "google/protobuf/timestamp.proto";\n'),
         ("// A knob.", f"{message}// A knob."))
    assert problem in check([svc], knob_dir)
