"""Keeps the published .proto files true to the RPC registry.

protoc (bundled in grpcio-tools, a test dependency) compiles the files under the
proto folder into a FileDescriptorSet; :func:`check` reads it and compares it
with the live :class:`rpc.Service` registry. protoc refuses what is not valid
proto (syntax, unknown types, missing imports, duplicates, field numbers); this
module adds what protoc allows but fleetd's JSON mapping does not (nested types,
oneofs, streaming), the house rules (comments, snake_case, package folders, no
unused messages), and the comparison with the code. Not imported by the server.

Defaults: proto3 writers leave out a field holding its zero value (0, "", false,
empty) and readers take a missing field as that zero value. A Struct field whose
default is something else may therefore be ``optional`` in proto (presence lets a
proto client send the zero value, and see that the field was left out); in an
``omit_defaults`` Struct, which the server writes without its default-valued
fields, it must be, or proto clients would read the zero value for the default.

    python -m tests.support.protocheck      # prints every mismatch; exit status 1 if any
"""

from __future__ import annotations

import enum
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect as mi

from fleetd.http import rpc

try:
    from google.protobuf import descriptor_pb2 as pb  # type: ignore[import-untyped]
    from grpc_tools import protoc  # type: ignore[import-untyped]
except ImportError as e:  # both come with grpcio-tools
    raise ImportError("tests.support.protocheck runs protoc from grpcio-tools, a test dependency: "
                      "pip install -e '.[test]'") from e

SCALARS = frozenset({"double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
                     "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes"})
_INTS = frozenset(t for t in SCALARS if "int" in t or "fixed" in t)
_SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


# --- protoc's view of the files --------------------------------------------------

def _compile(proto_dir: Path) -> tuple[list[Any], set[str], list[str]]:
    """protoc's FileDescriptorProtos for the files under ``proto_dir`` and those they import,
    the import names of the files under ``proto_dir``, and protoc's errors."""
    ours = {p.relative_to(proto_dir).as_posix() for p in proto_dir.rglob("*.proto")}
    if not ours:
        return [], ours, []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        # A child process: protoc writes its errors to file descriptor 2.
        run = subprocess.run([sys.executable, "-m", protoc.__name__, "-I.", "--include_imports",
                              "--include_source_info", f"--descriptor_set_out={out}", *sorted(ours)],
                             cwd=proto_dir, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            errors = [line for line in run.stderr.splitlines() if line.strip() and ": warning:" not in line]
            return [], ours, errors or [f"protoc failed (exit status {run.returncode}) without saying why"]
        return list(pb.FileDescriptorSet.FromString(out.read_bytes()).file), ours, []


def _type(fd: Any) -> str:
    """A field's type: a scalar as written ("int64") or a full name ("fleetd.v1.User")."""
    if fd.type_name:
        return str(fd.type_name).removeprefix(".")
    return str(pb.FieldDescriptorProto.Type.Name(fd.type)).removeprefix("TYPE_").lower()


@dataclass
class _Field:
    name: str
    number: int
    line: int
    label: str  # "", "optional", "repeated" or "map"
    type: str  # see _type; the value type of a map
    key: str = ""  # a map's key type
    json_name: bool = False  # written with [json_name = ...]


@dataclass
class _Decl:
    """A top-level message, enum or service, and where its file says what."""

    kind: str  # "message", "enum" or "service"
    proto: Any  # its DescriptorProto, EnumDescriptorProto or ServiceDescriptorProto
    file: str
    package: str
    path: tuple[int, ...]  # in the file's SourceCodeInfo
    locations: dict[tuple[int, ...], Any]

    @property
    def name(self) -> str:
        return str(self.proto.name)

    @property
    def full_name(self) -> str:
        return f"{self.package}.{self.name}" if self.package else self.name

    def line(self, *sub: int) -> int:
        """The 1-based line of this declaration, or of a part of it (``sub`` continues the path)."""
        return int(self.locations[(*self.path, *sub)].span[0]) + 1

    def comment(self, *sub: int) -> str:
        """The comment protoc gives a declaration: right above it, or set apart above it by blank lines."""
        loc = self.locations[(*self.path, *sub)]
        return " ".join([loc.leading_comments, *loc.leading_detached_comments]).strip()

    def short(self, full_name: str) -> str:
        """A type name as this file would write it."""
        return full_name.removeprefix(f"{self.package}.") if self.package else full_name

    @cached_property
    def fields(self) -> dict[str, _Field]:
        entries = {f".{self.full_name}.{n.name}": n for n in self.proto.nested_type if n.options.map_entry}
        fields = {}
        for i, fd in enumerate(self.proto.field):
            sub = (pb.DescriptorProto.FIELD_FIELD_NUMBER, i)
            json_name = (*self.path, *sub, pb.FieldDescriptorProto.JSON_NAME_FIELD_NUMBER) in self.locations
            fld = _Field(fd.name, fd.number, self.line(*sub), "", _type(fd), json_name=json_name)
            if fd.type_name in entries:
                key, value = entries[fd.type_name].field
                fld.label, fld.key, fld.type = "map", _type(key), _type(value)
            elif fd.label == pb.FieldDescriptorProto.LABEL_REPEATED:
                fld.label = "repeated"
            elif fd.proto3_optional:
                fld.label = "optional"
            fields[fld.name] = fld
        return fields

    def written(self, fld: _Field) -> str:
        """How the file declares a field's type."""
        if fld.label == "map":
            return f"map<{fld.key}, {self.short(fld.type)}>"
        return f"{fld.label} {self.short(fld.type)}".strip()


def _decls(f: Any) -> list[_Decl]:
    locations = {tuple(loc.path): loc for loc in f.source_code_info.location}
    F = pb.FileDescriptorProto
    return [_Decl(kind, proto, f.name, f.package, (number, i), locations)
            for kind, number, protos in (("message", F.MESSAGE_TYPE_FIELD_NUMBER, f.message_type),
                                         ("enum", F.ENUM_TYPE_FIELD_NUMBER, f.enum_type),
                                         ("service", F.SERVICE_FIELD_NUMBER, f.service))
            for i, proto in enumerate(protos)]


# --- comparing with the registry -----------------------------------------------

class _Unsupported(Exception):
    """A Python type with no proto3 equivalent that keeps msgspec's JSON."""


@dataclass
class _Shape:
    """A Struct field's type seen the way proto3 sees it: a label around a leaf type."""

    label: str  # "", "optional", "repeated" or "map"
    leaf: mi.Type
    key: mi.Type | None = None


def _unwrap(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _is_json_object(t: mi.Type) -> bool:
    return (isinstance(t, mi.DictType) and isinstance(_unwrap(t.key_type), mi.StrType)
            and isinstance(_unwrap(t.value_type), mi.AnyType))


def _shape(t: mi.Type) -> _Shape:
    t = _unwrap(t)
    if isinstance(t, mi.UnionType):
        others = [u for u in t.types if not isinstance(_unwrap(u), mi.NoneType)]
        if len(others) != 1 or len(others) == len(t.types):
            raise _Unsupported(f"`{_py(t)}`: only `X | None` unions have a proto3 equivalent (optional X)")
        inner = _shape(others[0])
        if inner.label:
            raise _Unsupported(f"`{_py(t)}`: a {inner.label} field cannot be None in proto3; "
                               f"default to an empty one instead")
        return _Shape("optional", inner.leaf)
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        inner = _shape(t.item_type)
        if inner.label:
            raise _Unsupported(f"`{_py(t)}`: proto3 has no lists of lists, maps or optional items")
        return _Shape("repeated", inner.leaf)
    if isinstance(t, mi.DictType) and not _is_json_object(t):
        key, inner = _unwrap(t.key_type), _shape(t.value_type)
        if not isinstance(key, (mi.StrType, mi.IntType)) or inner.label:
            raise _Unsupported(f"`{_py(t)}`: a proto3 map needs str or int keys and plain values")
        return _Shape("map", inner.leaf, key)
    return _Shape("", t)


def _canon(t: mi.Type) -> str:
    """The proto type to write for a leaf type."""
    t = _unwrap(t)
    simple = {mi.StrType: "string", mi.UUIDType: "string", mi.IntType: "int64", mi.BoolType: "bool",
              mi.FloatType: "double", mi.BytesType: "bytes", mi.ByteArrayType: "bytes",
              mi.DateTimeType: "google.protobuf.Timestamp", mi.AnyType: "google.protobuf.Value"}
    if type(t) in simple:
        return simple[type(t)]
    if _is_json_object(t):
        return "google.protobuf.Struct"
    if isinstance(t, (mi.StructType, mi.EnumType)):
        return t.cls.__name__
    if isinstance(t, mi.LiteralType) and all(isinstance(v, str) for v in t.values):
        return "string"
    if isinstance(t, mi.LiteralType) and all(isinstance(v, int) for v in t.values):
        return "int64"
    raise _Unsupported(f"`{_py(t)}` has no proto3 equivalent with the same JSON")


def _py(t: mi.Type) -> str:
    """A Python type, written as in the source."""
    t = _unwrap(t)
    if isinstance(t, mi.UnionType):
        return " | ".join(_py(u) for u in t.types)
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType)):
        return f"{type(t).__name__[:-4].lower()}[{_py(t.item_type)}]"
    if isinstance(t, mi.VarTupleType):
        return f"tuple[{_py(t.item_type)}, ...]"
    if isinstance(t, mi.DictType):
        return f"dict[{_py(t.key_type)}, {_py(t.value_type)}]"
    if isinstance(t, (mi.StructType, mi.EnumType)):
        return t.cls.__name__
    if isinstance(t, mi.LiteralType):
        return f"Literal[{', '.join(map(repr, t.values))}]"
    names = {mi.StrType: "str", mi.IntType: "int", mi.BoolType: "bool", mi.FloatType: "float",
             mi.BytesType: "bytes", mi.DateTimeType: "datetime", mi.AnyType: "Any", mi.NoneType: "None"}
    return names.get(type(t), type(t).__name__.removesuffix("Type"))


def _default(f: mi.Field) -> object:
    return f.default if f.default is not msgspec.NODEFAULT else f.default_factory()


def _nonzero_default(f: mi.Field) -> bool:
    """Whether a field's default is not proto3's zero value for it (messages have presence anyway)."""
    if f.required:
        return False
    value = _default(f)
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, msgspec.Struct):
        return False
    return bool(value) if isinstance(value, (str, bytes, bytearray, int, float, list, dict, set, frozenset, tuple)) \
        else value is not None


def _expected(shape: _Shape) -> str:
    if shape.label == "map":
        return f"map<{_canon(shape.key) if shape.key else 'string'}, {_canon(shape.leaf)}>"
    return f"{shape.label} {_canon(shape.leaf)}".strip()


def _service_file(name: str) -> str:
    """Where a service's .proto lives: UserService → fleetd/v1/user.proto."""
    stem = re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Service") or name).lower()
    return f"{rpc.PACKAGE.replace('.', '/')}/{stem}.proto"


_METHOD = pb.ServiceDescriptorProto.METHOD_FIELD_NUMBER


class _Checker:
    def __init__(self, files: list[Any], ours: set[str], problems: list[str]) -> None:
        self.problems = problems
        self.files = [f for f in files if f.name in ours]
        self.ours = ours
        self.types: dict[str, _Decl] = {}
        self.services: dict[str, _Decl] = {}
        self.compared: set[tuple[type, str]] = set()
        for f in files:
            for d in _decls(f):
                (self.services if d.kind == "service" else self.types)[d.full_name] = d

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    # --- the files on their own

    def lint(self) -> None:
        for f in self.files:
            folder = f.name.rpartition("/")[0]
            if f.syntax != "proto3":
                self.problem(f'{f.name}: syntax is {f.syntax or "proto2"!r}; write syntax = "proto3";')
            if f.package.replace(".", "/") != folder:
                self.problem(f"{f.name}: package is {f.package or '(none)'!r} but the file is in {folder or '.'}/; "
                             f"files of package p.q live in p/q/")
            if f.extension:
                self.problem(f"{f.name}: extensions are not supported; fleetd's JSON has no place for them")
        for d in [*self.types.values(), *self.services.values()]:
            if d.file not in self.ours:
                continue
            self.commented(d)
            if d.kind == "message":
                self.flat(d)
            for i in range(len(d.proto.method) if d.kind == "service" else 0):
                self.commented(d, _METHOD, i)

    def commented(self, d: _Decl, *sub: int) -> None:
        """``sub``, if given, is the path from service ``d`` to one of its rpcs."""
        kind, name = ("rpc", d.proto.method[sub[1]].name) if sub else (d.kind, d.name)
        if not d.comment(*sub):
            self.problem(f"{d.file}:{d.line(*sub)}: {kind} {name} has no comment; add a one-line // comment above it")

    def flat(self, m: _Decl) -> None:
        """A message of plain fields: what a msgspec Struct can be."""
        where = f"{m.file}:{m.line()}: message {m.name}"
        if [n for n in m.proto.nested_type if not n.options.map_entry] or m.proto.enum_type:
            self.problem(f"{where} declares messages or enums inside it; declare them at the top level")
        if any(fd.HasField("oneof_index") and not fd.proto3_optional for fd in m.proto.field):
            self.problem(f"{where} has a oneof; fleetd's Structs have no equivalent")
        if m.proto.extension or m.proto.extension_range:
            self.problem(f"{where} has extensions; fleetd's JSON has no place for them")
        for fld in m.fields.values():
            if not _SNAKE.fullmatch(fld.name):
                self.problem(f"{m.file}:{fld.line}: field {m.name}.{fld.name} must be lower_snake_case")
            if fld.json_name:
                self.problem(f"{m.file}:{fld.line}: json_name on {m.name}.{fld.name}: the server writes "
                             f"proto field names, so the JSON name cannot be changed")

    def unused(self) -> None:
        """Messages and enums no rpc reaches: left behind when the code moved on."""
        seen: set[str] = set()
        todo = [str(name).removeprefix(".") for s in self.services.values() for m in s.proto.method
                for name in (m.input_type, m.output_type)]
        while todo:
            name = todo.pop()
            if name in seen or name not in self.types:
                continue
            seen.add(name)
            d = self.types[name]
            if d.kind == "message" and d.file in self.ours:
                todo.extend(fld.type for fld in d.fields.values())
        for d in self.types.values():
            if d.full_name not in seen and d.file in self.ours:
                self.problem(f"{d.full_name} ({d.file}:{d.line()}) is used by no rpc; remove it")

    # --- against the code

    def service(self, svc: rpc.Service) -> None:
        full, want = f"{rpc.PACKAGE}.{svc.name}", _service_file(svc.name)
        decl = self.services.get(full)
        if decl is None:
            self.problem(f"{full}: service in code but in no .proto file; write it in {want}")
            return
        if decl.file != want:
            self.problem(f"{full} is declared in {decl.file}; one file per service: move it to {want}")
        rpcs = {m.name: (i, m) for i, m in enumerate(decl.proto.method)}
        for name, method in svc.methods.items():
            if name not in rpcs:
                self.problem(f"{full}/{name}: method in code but no rpc {name} in {decl.file}")
            else:
                i, m = rpcs[name]
                self.rpc(method, m, decl, f"{full}/{name} ({decl.file}:{decl.line(_METHOD, i)})")
        for name, (i, _) in rpcs.items():
            if name not in svc.methods:
                self.problem(f"{full}/{name} ({decl.file}:{decl.line(_METHOD, i)}): rpc in proto but no such "
                             f"method in code")

    def rpc(self, method: rpc.Method, m: Any, svc: _Decl, where: str) -> None:
        if m.client_streaming or m.server_streaming:
            self.problem(f"{where}: streaming rpcs are not supported; fleetd methods are unary")
        for side, py_type, proto_name in (("request", method.request_type, m.input_type),
                                          ("response", method.response_type, m.output_type)):
            decl = self.types[str(proto_name).removeprefix(".")]
            if not msgspec.inspect.is_struct_type(py_type):
                self.problem(f"{where}: the {side} type {py_type!r} in code is not a msgspec Struct")
            elif py_type.__name__ != decl.name:
                self.problem(f"{where}: {side} message is {py_type.__name__} in code but "
                             f"{svc.short(decl.full_name)} in proto")
            else:
                self.message(mi.type_info(py_type), decl)
        readonly = m.options.idempotency_level == pb.MethodOptions.NO_SIDE_EFFECTS
        if method.readonly and not readonly:
            self.problem(f"{where}: readonly in code (answers Connect GET) but the rpc lacks "
                         f"`option idempotency_level = NO_SIDE_EFFECTS;`")
        if readonly and not method.readonly:
            self.problem(f"{where}: marked NO_SIDE_EFFECTS in proto but not readonly=True in code")

    def message(self, info: mi.Type, msg: _Decl) -> None:
        assert isinstance(info, mi.StructType)
        cls = f"{info.cls.__module__}.{info.cls.__qualname__}"
        if (info.cls, msg.full_name) in self.compared:
            return
        self.compared.add((info.cls, msg.full_name))
        if msg.file not in self.ours and msg.full_name != "google.protobuf.Empty":
            self.problem(f"{cls} is a Struct but {msg.full_name} is a well-known type; declare a message")
            return
        if info.array_like or info.tag_field:
            self.problem(f"{cls}: array_like and tagged Structs have no proto3 equivalent")
            return
        py = {f.encode_name: f for f in info.fields}
        proto = msg.fields
        for name, pyf in py.items():
            if not _SNAKE.fullmatch(name):
                self.problem(f"{cls}.{pyf.name}: JSON name {name!r} is not lower_snake_case like proto fields")
            fld = proto.get(name)
            try:
                shape = _shape(pyf.type)
                expected = _expected(shape)
            except _Unsupported as e:
                self.problem(f"{cls}.{pyf.name}: {e}")
                continue
            labels = {shape.label}
            if shape.label == "" and self.nonzero_default(pyf, fld):
                if info.cls.__struct_config__.omit_defaults:
                    labels, expected = {"optional"}, f"optional {expected}"
                    if fld is not None and fld.label == "":
                        self.problem(f"{msg.name}.{name} ({msg.file}:{fld.line}): {cls} leaves this field out when it "
                                     f"holds its default {_default(pyf)!r} (omit_defaults) and proto3 readers take a "
                                     f"missing field as zero; write `{expected} {name} = {fld.number};` and say in "
                                     f"its comment what unset means")
                        labels.add("")  # reported; still compare the type
                else:
                    labels.add("optional")  # lets proto clients send the zero value instead of getting the default
            if fld is None:
                self.problem(f"{msg.name}.{name}: field in code ({cls}) but not in {msg.file}; "
                             f"add `{expected} {name} = <number>;`")
            else:
                self.field(pyf.type, fld, msg, expected, labels)
        for name, fld in proto.items():
            if name not in py:
                self.problem(f"{msg.name}.{name} ({msg.file}:{fld.line}): field in proto but not in code ({cls})")

    def nonzero_default(self, pyf: mi.Field, fld: _Field | None) -> bool:
        """Whether ``pyf`` defaults to something a proto3 reader would not assume for the missing ``fld``."""
        if isinstance(_unwrap(pyf.type), mi.StructType) or not _nonzero_default(pyf):
            return False
        decl = self.types.get(fld.type) if fld is not None else None
        if decl is not None and decl.kind == "enum":  # its zero is its first value, named like the Python value
            value = _default(pyf)
            value = value.value if isinstance(value, enum.Enum) else value
            names = {v.name: v.number for v in decl.proto.value}
            return (names.get(value) if isinstance(value, str) else value) != 0
        return True

    def field(self, t: mi.Type, fld: _Field, msg: _Decl, expected: str, labels: set[str]) -> None:
        shape = _shape(t)
        leaf_ok = self.leaf(shape.leaf, fld.type)
        key_ok = shape.key is None or self.leaf(shape.key, fld.key)
        if not (leaf_ok and key_ok and fld.label in labels):
            self.problem(f"{msg.name}.{fld.name} ({msg.file}:{fld.line}): proto has `{msg.written(fld)}` but code has "
                         f"`{_py(t)}`; write `{expected} {fld.name} = {fld.number};`")

    def leaf(self, t: mi.Type, proto_type: str) -> bool:
        """Whether proto type ``proto_type`` (a scalar or a full name) carries Python type ``t`` with the same JSON."""
        t = _unwrap(t)
        scalars = {mi.StrType: {"string"}, mi.UUIDType: {"string"}, mi.IntType: _INTS, mi.BoolType: {"bool"},
                   mi.FloatType: {"double", "float"}, mi.BytesType: {"bytes"}, mi.ByteArrayType: {"bytes"}}
        if type(t) in scalars:
            return proto_type in scalars[type(t)]
        values = (t.values if isinstance(t, mi.LiteralType)
                  else tuple(m.value for m in t.cls) if isinstance(t, mi.EnumType) else None)
        if values is not None and proto_type in SCALARS:
            return proto_type == "string" if all(isinstance(v, str) for v in values) else (
                proto_type in _INTS and all(isinstance(v, int) for v in values))
        decl = self.types.get(proto_type)
        if decl is None:
            return False
        if values is not None and decl.kind == "enum":
            if isinstance(t, mi.EnumType) and decl.name != t.cls.__name__:
                return False
            names, numbers = {v.name for v in decl.proto.value}, {v.number for v in decl.proto.value}
            missing = [v for v in values if v not in (names if isinstance(v, str) else numbers)]
            if missing:
                self.problem(f"enum {decl.full_name} ({decl.file}:{decl.line()}) lacks {missing} "
                             f"that the code sends (enum JSON is the value's name)")
            return True
        if isinstance(t, mi.StructType):
            if decl.kind != "message" or decl.name != t.cls.__name__:
                return False
            self.message(t, decl)
            return True
        wanted = ("google.protobuf.Timestamp" if isinstance(t, mi.DateTimeType)
                  else "google.protobuf.Struct" if _is_json_object(t)
                  else "google.protobuf.Value" if isinstance(t, mi.AnyType) else None)
        return decl.full_name == wanted


def check(services: list[rpc.Service], proto_dir: Path) -> list[str]:
    """Every way the .proto files under ``proto_dir`` differ from ``services``; empty when they agree.

    When protoc refuses the files, that is all it says: nothing else can be read until they compile.
    """
    problems: list[str] = []
    files: list[Any] = []
    ours: set[str] = set()
    if not proto_dir.is_dir():
        problems.append(f"{proto_dir}: no such folder of .proto files")
    else:
        files, ours, errors = _compile(proto_dir)
        if errors:
            return errors
    checker = _Checker(files, ours, problems)
    checker.lint()
    for svc in services:
        checker.service(svc)
    names = {f"{rpc.PACKAGE}.{s.name}" for s in services}
    for full, decl in checker.services.items():
        if full not in names:
            checker.problem(f"{full} ({decl.file}:{decl.line()}): service in proto but not registered in code")
    checker.unused()
    return problems


def main() -> int:
    from fleetd.app import SERVICES
    from fleetd.core.resources import proto_dir

    problems = check(SERVICES, proto_dir())
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
