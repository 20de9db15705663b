"""Keeps the published .proto files true to the RPC registry.

Two parts: a reader for the subset of proto3 fleetd publishes (package, imports,
options, top-level messages with scalar / message / repeated / map / optional
fields, enums, services of unary rpcs), and :func:`check`, which compares what
it read with the live :class:`rpc.Service` registry. protoc is not needed, so the
reader also refuses, within that subset, what protoc would refuse.

Defaults: proto3 writers leave out a field holding its zero value (0, "", false,
empty) and readers take a missing field as that zero value. A Struct field whose
default is something else may therefore be ``optional`` in proto (presence lets a
proto client send the zero value, and see that the field was left out); in an
``omit_defaults`` Struct, which the server writes without its default-valued
fields, it must be, or proto clients would read the zero value for the default.

    python -m fleetd.protocheck        # prints every mismatch; exit status 1 if any
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from msgspec import inspect as mi

from . import rpc

# --- the model of a .proto file ----------------------------------------------


@dataclass
class Field:
    name: str
    type: str  # as written: "string", "User", "google.protobuf.Timestamp"; the value type of a map
    number: int
    label: str  # "", "optional", "repeated" or "map"
    line: int
    key_type: str = ""
    options: dict[str, str] = field(default_factory=dict)

    def decl(self) -> str:
        if self.label == "map":
            return f"map<{self.key_type}, {self.type}>"
        return f"{self.label} {self.type}".strip()


@dataclass
class Message:
    name: str
    file: str
    line: int
    comment: str
    fields: list[Field] = field(default_factory=list)
    full_name: str = ""


@dataclass
class Enum:
    name: str
    file: str
    line: int
    comment: str
    values: dict[str, int] = field(default_factory=dict)
    full_name: str = ""


@dataclass
class Rpc:
    name: str
    request: str
    response: str
    line: int
    comment: str
    streaming: bool = False
    options: dict[str, str] = field(default_factory=dict)

    @property
    def readonly(self) -> bool:
        return self.options.get("idempotency_level") == "NO_SIDE_EFFECTS"


@dataclass
class ServiceDecl:
    name: str
    file: str
    line: int
    comment: str
    rpcs: dict[str, Rpc] = field(default_factory=dict)
    full_name: str = ""


@dataclass
class ProtoFile:
    path: str  # relative to the proto root, "/"-separated: the name other files import it by
    package: str = ""
    imports: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    enums: list[Enum] = field(default_factory=list)
    services: list[ServiceDecl] = field(default_factory=list)


class ProtoSyntaxError(Exception):
    """A .proto file outside the subset this module reads, or not valid proto3."""


# --- the reader ----------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))
  | (?P<ident>\.?[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
  | (?P<symbol>[{}()\[\];=<>,:])
""", re.VERBOSE | re.DOTALL)

SCALARS = frozenset({"double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
                     "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes"})
_INTS = frozenset(t for t in SCALARS if "int" in t or "fixed" in t)
_MAP_KEYS = _INTS | {"bool", "string"}
_NOT_SUPPORTED = {"oneof", "message", "enum", "extend", "extensions", "group", "required"}
_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


@dataclass
class _Tok:
    kind: str
    text: str
    line: int
    comment: str = ""  # the // or /* */ comment right above this token, if any


def _tokens(text: str, path: str) -> Iterator[_Tok]:
    pos, line, prev_line, pending = 0, 1, 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            what = "unterminated /* comment" if text.startswith("/*", pos) else f"unexpected character {text[pos]!r}"
            raise ProtoSyntaxError(f"{path}:{line}: {what}")
        kind, value = m.lastgroup or "", m.group()
        if kind == "comment":
            if line != prev_line:  # a comment after a token on its line belongs to that token
                body = value[2:-2] if value.startswith("/*") else value[2:]
                pending.append(" ".join(body.split()))
        elif kind != "ws":
            yield _Tok(kind, value, line, " ".join(p for p in pending if p))
            pending, prev_line = [], line
        line += value.count("\n")
        pos = m.end()
    yield _Tok("eof", "", line)


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.toks = list(_tokens(text, path))
        self.i = 0

    def error(self, msg: str, tok: _Tok | None = None) -> ProtoSyntaxError:
        return ProtoSyntaxError(f"{self.path}:{(tok or self.peek()).line}: {msg}")

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def next(self) -> _Tok:
        tok = self.peek()
        if tok.kind == "eof":
            raise self.error("unexpected end of file")
        self.i += 1
        return tok

    def expect(self, text: str) -> _Tok:
        if self.peek().text != text:
            raise self.error(f"expected {text!r}, got {self.peek().text or 'end of file'!r}")
        return self.next()

    def name(self, dotted: bool = False) -> str:
        tok = self.next()
        if tok.kind != "ident" or (not dotted and "." in tok.text):
            raise self.error(f"expected a {'type ' if dotted else ''}name, got {tok.text!r}", tok)
        return tok.text

    def constant(self) -> str:
        tok = self.next()
        if tok.kind == "string":
            return tok.text[1:-1]
        if tok.kind in ("ident", "number"):
            return tok.text
        raise self.error(f"expected a constant, got {tok.text!r} (aggregate options are not supported)", tok)

    def option_name(self) -> str:
        if self.peek().text != "(":
            return self.name(dotted=True)
        self.next()
        ext = self.name(dotted=True)
        self.expect(")")
        rest = self.next().text if self.peek().text.startswith(".") else ""
        return f"({ext}){rest}"

    def option(self) -> tuple[str, str]:
        self.expect("option")
        key = self.option_name()
        self.expect("=")
        value = self.constant()
        self.expect(";")
        return key, value

    def field_options(self) -> dict[str, str]:
        opts: dict[str, str] = {}
        if self.peek().text != "[":
            return opts
        self.next()
        while True:
            key = self.option_name()
            self.expect("=")
            opts[key] = self.constant()
            if self.next().text == "]":
                return opts
            if self.toks[self.i - 1].text != ",":
                raise self.error("expected ',' or ']' in field options", self.toks[self.i - 1])

    def number(self) -> int:
        tok = self.next()
        try:
            return int(tok.text, 0)
        except ValueError:
            raise self.error(f"expected an integer, got {tok.text!r}", tok) from None

    def skip_statement(self) -> None:
        while self.next().text != ";":
            pass

    def parse(self) -> ProtoFile:
        f = ProtoFile(self.path)
        syntax = self.peek()
        if syntax.text != "syntax":
            raise self.error('the file must start with syntax = "proto3";', syntax)
        self.next()
        self.expect("=")
        if self.constant() != "proto3":
            raise self.error('only syntax = "proto3" is supported', syntax)
        self.expect(";")
        while (tok := self.peek()).kind != "eof":
            if tok.text == "package":
                if f.package:
                    raise self.error("a second package statement", tok)
                self.next()
                f.package = self.name(dotted=True)
                self.expect(";")
            elif tok.text == "import":
                self.next()
                if self.peek().text in ("public", "weak"):
                    self.next()
                if self.peek().kind != "string":
                    raise self.error("expected the imported file's name in quotes")
                f.imports.append(self.constant())
                self.expect(";")
            elif tok.text == "option":
                self.option()
            elif tok.text == "message":
                f.messages.append(self.message())
            elif tok.text == "enum":
                f.enums.append(self.enum())
            elif tok.text == "service":
                f.services.append(self.service())
            elif tok.text == ";":
                self.next()
            else:
                raise self.error(f"expected package, import, option, message, enum or service, got {tok.text!r}")
        decls: list[Message | Enum | ServiceDecl] = [*f.messages, *f.enums, *f.services]
        for decl in decls:
            decl.full_name = f"{f.package}.{decl.name}" if f.package else decl.name
        return f

    def message(self) -> Message:
        start = self.expect("message")
        msg = Message(self.name(), self.path, start.line, start.comment)
        self.expect("{")
        numbers: dict[int, str] = {}
        while (tok := self.peek()).text != "}":
            if tok.text == ";":
                self.next()
            elif tok.text == "option":
                self.option()
            elif tok.text == "reserved":
                self.skip_statement()
            elif tok.text in _NOT_SUPPORTED and self.peek(1).kind == "ident" and self.peek(2).text != "=":
                raise self.error(f"{tok.text!r} inside a message is not supported here: declare messages and "
                                 f"enums at the top level; proto3 has no 'required'")
            else:
                fld = self.field()
                if fld.number in numbers:
                    raise self.error(f"field number {fld.number} used twice in {msg.name} "
                                     f"({numbers[fld.number]} and {fld.name})", tok)
                if any(f.name == fld.name for f in msg.fields):
                    raise self.error(f"field {fld.name} declared twice in {msg.name}", tok)
                numbers[fld.number] = fld.name
                msg.fields.append(fld)
        self.expect("}")
        return msg

    def field(self) -> Field:
        start = self.peek()
        label, key = "", ""
        if start.text in ("optional", "repeated"):
            label = self.next().text
        if self.peek().text == "map" and self.peek(1).text == "<":
            if label:
                raise self.error(f"a map field cannot be {label}")
            self.next()
            self.next()
            label, key = "map", self.name(dotted=True)
            if key not in _MAP_KEYS:
                raise self.error(f"a map key must be an integer type, bool or string, not {key}")
            self.expect(",")
            type_ = self.name(dotted=True)
            self.expect(">")
        else:
            type_ = self.name(dotted=True)
        name = self.name()
        self.expect("=")
        number = self.number()
        if not 1 <= number <= 536_870_911 or 19_000 <= number <= 19_999:
            raise self.error(f"field number {number} of {name} is out of range (1..536870911, not 19000..19999)")
        fld = Field(name, type_, number, label, start.line, key, self.field_options())
        self.expect(";")
        return fld

    def enum(self) -> Enum:
        start = self.expect("enum")
        enum = Enum(self.name(), self.path, start.line, start.comment)
        self.expect("{")
        while (tok := self.peek()).text != "}":
            if tok.text == ";":
                self.next()
            elif tok.text == "option":
                self.option()
            elif tok.text == "reserved":
                self.skip_statement()
            else:
                name = self.name()
                self.expect("=")
                value = self.number()
                if not enum.values and value != 0:
                    raise self.error(f"the first value of enum {enum.name} must be 0", tok)
                if name in enum.values:
                    raise self.error(f"enum value {name} declared twice", tok)
                enum.values[name] = value
                self.field_options()
                self.expect(";")
        self.expect("}")
        if not enum.values:
            raise self.error(f"enum {enum.name} has no values", start)
        return enum

    def service(self) -> ServiceDecl:
        start = self.expect("service")
        svc = ServiceDecl(self.name(), self.path, start.line, start.comment)
        self.expect("{")
        while (tok := self.peek()).text != "}":
            if tok.text == ";":
                self.next()
            elif tok.text == "option":
                self.option()
            elif tok.text == "rpc":
                r = self.rpc()
                if r.name in svc.rpcs:
                    raise self.error(f"rpc {r.name} declared twice in {svc.name}", tok)
                svc.rpcs[r.name] = r
            else:
                raise self.error(f"expected rpc or option in service {svc.name}, got {tok.text!r}")
        self.expect("}")
        return svc

    def rpc(self) -> Rpc:
        start = self.expect("rpc")
        name = self.name()
        types, streaming = [], False
        for i in range(2):
            if i:
                self.expect("returns")
            self.expect("(")
            if self.peek().text == "stream" and self.peek(1).text != ")":
                self.next()
                streaming = True
            types.append(self.name(dotted=True))
            self.expect(")")
        r = Rpc(name, types[0], types[1], start.line, start.comment, streaming)
        if self.peek().text == "{":
            self.next()
            while self.peek().text != "}":
                if self.peek().text == ";":
                    self.next()
                else:
                    key, value = self.option()
                    r.options[key] = value
            self.next()
            if self.peek().text == ";":
                self.next()
        else:
            self.expect(";")
        return r


def parse(text: str, path: str) -> ProtoFile:
    """Read one .proto file; ``path`` is its import name, e.g. ``fleetd/v1/user.proto``."""
    return _Parser(text, path).parse()


def load(proto_dir: Path) -> tuple[list[ProtoFile], list[str]]:
    """Every .proto file under ``proto_dir``, and the errors of those that could not be read."""
    files, errors = [], []
    if not proto_dir.is_dir():
        return [], [f"{proto_dir}: no such folder of .proto files"]
    for p in sorted(proto_dir.rglob("*.proto")):
        try:
            files.append(parse(p.read_text(encoding="utf-8"), p.relative_to(proto_dir).as_posix()))
        except (ProtoSyntaxError, UnicodeDecodeError) as e:
            errors.append(str(e))
    return files, errors


# --- comparing with the registry -----------------------------------------------

_WELL_KNOWN = {
    "google.protobuf.Timestamp": "google/protobuf/timestamp.proto",
    "google.protobuf.Duration": "google/protobuf/duration.proto",
    "google.protobuf.Struct": "google/protobuf/struct.proto",
    "google.protobuf.Value": "google/protobuf/struct.proto",
    "google.protobuf.ListValue": "google/protobuf/struct.proto",
    "google.protobuf.Empty": "google/protobuf/empty.proto",
}


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


class _Checker:
    def __init__(self, files: list[ProtoFile], problems: list[str]) -> None:
        self.problems = problems
        self.files = {f.path: f for f in files}
        self.types: dict[str, Message | Enum] = {
            name: Message(name.rsplit(".", 1)[1], path, 0, "", full_name=name) for name, path in _WELL_KNOWN.items()}
        self.services: dict[str, ServiceDecl] = {}
        self.compared: set[tuple[type, str]] = set()
        self.duplicated: set[str] = set()
        for f in files:
            decls: list[Message | Enum | ServiceDecl] = [*f.messages, *f.enums, *f.services]
            for decl in decls:
                first = self.types.get(decl.full_name) or self.services.get(decl.full_name)
                if first:
                    self.duplicated.add(decl.full_name)
                    self.problem(f"{decl.full_name} is declared twice: {first.file}:{first.line} and "
                                 f"{f.path}:{decl.line}")
                elif isinstance(decl, ServiceDecl):
                    self.services[decl.full_name] = decl
                else:
                    self.types[decl.full_name] = decl

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def resolve(self, name: str, f: ProtoFile) -> Message | Enum | None:
        """Protobuf's lookup: the innermost package scope first, then outwards."""
        if name.startswith("."):
            return self.types.get(name[1:])
        scope = f.package.split(".") if f.package else []
        while True:
            found = self.types.get(".".join([*scope, name]))
            if found or not scope:
                return found
            scope.pop()

    def reference(self, name: str, f: ProtoFile, line: int, want_message: bool = False
                  ) -> Message | Enum | None:
        """Resolve a type used in ``f``, reporting unknown types and missing imports."""
        decl = self.resolve(name, f)
        if decl is None:
            self.problem(f"{f.path}:{line}: unknown type {name}; declare it or import the file that does")
            return None
        if want_message and isinstance(decl, Enum):
            self.problem(f"{f.path}:{line}: {name} is an enum; an rpc takes and returns messages")
            return None
        if decl.file != f.path and decl.file not in f.imports and decl.full_name not in self.duplicated:
            self.problem(f'{f.path}:{line}: {name} is declared in {decl.file}; add import "{decl.file}";')
        return decl

    # --- the files on their own

    def lint(self) -> None:
        for f in self.files.values():
            folder = f.path.rpartition("/")[0]
            if f.package.replace(".", "/") != folder:
                self.problem(f"{f.path}: package is {f.package or '(none)'!r} but the file is in {folder or '.'}/; "
                             f"files of package p.q live in p/q/")
            for imp in f.imports:
                if imp not in self.files and imp not in _WELL_KNOWN.values():
                    self.problem(f'{f.path}: import "{imp}" names no file under the proto folder')
            decls: list[tuple[str, Message | Enum | ServiceDecl | Rpc]] = [
                *(("message", m) for m in f.messages), *(("enum", e) for e in f.enums),
                *(("service", s) for s in f.services),
                *(("rpc", r) for s in f.services for r in s.rpcs.values())]
            for kind, decl in decls:
                if not decl.comment:
                    self.problem(f"{f.path}:{decl.line}: {kind} {decl.name} has no comment; "
                                 f"add a one-line // comment above it")
            for m in f.messages:
                for fld in m.fields:
                    if not _SNAKE.match(fld.name):
                        self.problem(f"{f.path}:{fld.line}: field {m.name}.{fld.name} must be lower_snake_case")
                    if "json_name" in fld.options:
                        self.problem(f"{f.path}:{fld.line}: json_name on {m.name}.{fld.name}: the server writes "
                                     f"proto field names, so the JSON name cannot be changed")
                    if fld.type not in SCALARS:
                        self.reference(fld.type, f, fld.line)
            for s in f.services:
                for r in s.rpcs.values():
                    for name in (r.request, r.response):
                        self.reference(name, f, r.line, want_message=True)

    def unused(self) -> None:
        """Messages and enums no rpc reaches: left behind when the code moved on."""
        seen: set[str] = set()
        todo = [(r_type, self.files[s.file]) for s in self.services.values()
                for r in s.rpcs.values() for r_type in (r.request, r.response)]
        while todo:
            name, f = todo.pop()
            decl = self.resolve(name, f)
            if decl is None or decl.full_name in seen:
                continue
            seen.add(decl.full_name)
            if isinstance(decl, Message) and decl.file in self.files:
                todo.extend((fld.type, self.files[decl.file]) for fld in decl.fields if fld.type not in SCALARS)
        for decl in self.types.values():
            if decl.full_name not in seen and decl.file in self.files:
                self.problem(f"{decl.full_name} ({decl.file}:{decl.line}) is used by no rpc; remove it")

    # --- against the code

    def service(self, svc: rpc.Service) -> None:
        full, want = f"{rpc.PACKAGE}.{svc.name}", _service_file(svc.name)
        decl = self.services.get(full)
        if decl is None:
            self.problem(f"{full}: service in code but in no .proto file; write it in {want}")
            return
        if decl.file != want:
            self.problem(f"{full} is declared in {decl.file}; one file per service: move it to {want}")
        for name, method in svc.methods.items():
            r = decl.rpcs.get(name)
            if r is None:
                self.problem(f"{full}/{name}: method in code but no rpc {name} in {decl.file}")
            else:
                self.rpc(method, r, self.files[decl.file], f"{full}/{name} ({decl.file}:{r.line})")
        for name, r in decl.rpcs.items():
            if name not in svc.methods:
                self.problem(f"{full}/{name} ({decl.file}:{r.line}): rpc in proto but no such method in code")

    def rpc(self, method: rpc.Method, r: Rpc, f: ProtoFile, where: str) -> None:
        if r.streaming:
            self.problem(f"{where}: streaming rpcs are not supported; fleetd methods are unary")
        for side, py_type, proto_name in (("request", method.request_type, r.request),
                                          ("response", method.response_type, r.response)):
            decl = self.resolve(proto_name, f)
            if not isinstance(decl, Message):
                continue  # reported by lint()
            if not msgspec.inspect.is_struct_type(py_type):
                self.problem(f"{where}: the {side} type {py_type!r} in code is not a msgspec Struct")
            elif py_type.__name__ != decl.name:
                self.problem(f"{where}: {side} message is {py_type.__name__} in code but {proto_name} in proto")
            else:
                self.message(mi.type_info(py_type), decl)
        if method.readonly and not r.readonly:
            self.problem(f"{where}: readonly in code (answers Connect GET) but the rpc lacks "
                         f"`option idempotency_level = NO_SIDE_EFFECTS;`")
        if r.readonly and not method.readonly:
            self.problem(f"{where}: marked NO_SIDE_EFFECTS in proto but not readonly=True in code")

    def message(self, info: mi.Type, msg: Message) -> None:
        assert isinstance(info, mi.StructType)
        cls = f"{info.cls.__module__}.{info.cls.__qualname__}"
        if (info.cls, msg.full_name) in self.compared or msg.full_name in self.duplicated:
            return  # compared already, or ambiguous until the duplicate is gone
        self.compared.add((info.cls, msg.full_name))
        if msg.file not in self.files and msg.full_name != "google.protobuf.Empty":
            self.problem(f"{cls} is a Struct but {msg.full_name} is a well-known type; declare a message")
            return
        if info.array_like or info.tag_field:
            self.problem(f"{cls}: array_like and tagged Structs have no proto3 equivalent")
            return
        py = {f.encode_name: f for f in info.fields}
        proto = {f.name: f for f in msg.fields}
        for name, pyf in py.items():
            if not _SNAKE.match(name):
                self.problem(f"{cls}.{pyf.name}: JSON name {name!r} is not lower_snake_case like proto fields")
            fld = proto.get(name)
            try:
                shape = _shape(pyf.type)
                expected = _expected(shape)
            except _Unsupported as e:
                self.problem(f"{cls}.{pyf.name}: {e}")
                continue
            labels = {shape.label}
            if shape.label == "" and self.nonzero_default(pyf, fld, msg):
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

    def nonzero_default(self, pyf: mi.Field, fld: Field | None, msg: Message) -> bool:
        """Whether ``pyf`` defaults to something a proto3 reader would not assume for the missing ``fld``."""
        if isinstance(_unwrap(pyf.type), mi.StructType) or not _nonzero_default(pyf):
            return False
        decl = self.resolve(fld.type, self.files[msg.file]) if fld is not None and fld.type not in SCALARS else None
        if isinstance(decl, Enum):  # a proto enum's zero is its first value, named like the Python value
            value = _default(pyf)
            value = value.value if isinstance(value, enum.Enum) else value
            return (decl.values.get(value) if isinstance(value, str) else value) != 0
        return True

    def field(self, t: mi.Type, fld: Field, msg: Message, expected: str, labels: set[str]) -> None:
        shape = _shape(t)
        f = self.files[msg.file]
        leaf_ok = self.leaf(shape.leaf, fld.type, f)
        key_ok = shape.key is None or self.leaf(shape.key, fld.key_type, f)
        if not (leaf_ok and key_ok and fld.label in labels):
            self.problem(f"{msg.name}.{fld.name} ({msg.file}:{fld.line}): proto has `{fld.decl()}` but code has "
                         f"`{_py(t)}`; write `{expected} {fld.name} = {fld.number};`")

    def leaf(self, t: mi.Type, proto_type: str, f: ProtoFile) -> bool:
        """Whether proto type ``proto_type`` (used in ``f``) carries Python type ``t`` with the same JSON."""
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
        if proto_type in SCALARS:
            return False
        decl = self.resolve(proto_type, f)
        if decl is None:
            return True  # reported by lint()
        if values is not None and isinstance(decl, Enum):
            if isinstance(t, mi.EnumType) and decl.name != t.cls.__name__:
                return False
            names, numbers = set(decl.values), set(decl.values.values())
            missing = [v for v in values if v not in (names if isinstance(v, str) else numbers)]
            if missing:
                self.problem(f"enum {decl.full_name} ({decl.file}:{decl.line}) lacks {missing} "
                             f"that the code sends (enum JSON is the value's name)")
            return True
        if isinstance(t, mi.StructType):
            if not isinstance(decl, Message) or decl.name != t.cls.__name__:
                return False
            self.message(t, decl)
            return True
        wanted = ("google.protobuf.Timestamp" if isinstance(t, mi.DateTimeType)
                  else "google.protobuf.Struct" if _is_json_object(t)
                  else "google.protobuf.Value" if isinstance(t, mi.AnyType) else None)
        return wanted is not None and decl.full_name == wanted


def check(services: list[rpc.Service], proto_dir: Path) -> list[str]:
    """Every way the .proto files under ``proto_dir`` differ from ``services``; empty when they agree."""
    files, problems = load(proto_dir)
    checker = _Checker(files, problems)
    checker.lint()
    for svc in services:
        checker.service(svc)
    names = {f"{rpc.PACKAGE}.{s.name}" for s in services}
    for full, decl in checker.services.items():
        if full not in names:
            checker.problem(f"{full} ({decl.file}:{decl.line}): service in proto but not registered in code")
    checker.unused()
    return problems


def main() -> int:
    from .app import SERVICES
    from .resources import proto_dir

    problems = check(SERVICES, proto_dir())
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
