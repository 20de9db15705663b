"""The shim's JSON reader/writer and base64 (agent/rtos/src/json.c, base64.c) through ctypes.

Real server answers (docs/protocol.md) must read right; anything else (arbitrary bytes, mutated JSON, deep
nesting, huge strings) must give a defined error, never a crash, in bounded time. The same inputs also run
against a build under AddressSanitizer/UBSan in a subprocess.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import random
import subprocess
import sys
import time
from ctypes import POINTER, Structure, byref, c_char_p, c_int, c_int32, c_uint8, c_uint32, c_void_p
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

RTOS_DIR = Path(__file__).resolve().parents[2] / "agent" / "rtos"
HOST = RTOS_DIR / "build" / "host"

OK, E_INVALID, E_SPACE, E_PROTOCOL = 0, -2, -10, -12
ABSENT = 1
MAX_DEPTH = 32
OBJECT, ARRAY, STRING, NUMBER, TRUE, FALSE, NULL = range(1, 8)


class Json(Structure):
    _fields_ = [("s", c_void_p), ("len", c_uint32)]


class Writer(Structure):
    _fields_ = [("buf", c_void_p), ("cap", c_uint32), ("len", c_uint32), ("comma", c_uint8), ("overflow", c_uint8)]


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    J = POINTER(Json)
    W = POINTER(Writer)
    for name, res, args in [
        ("fleet_json_parse", c_int, [c_char_p, c_uint32, J]),
        ("fleet_json_type", c_int, [J]),
        ("fleet_json_get", c_int, [J, c_char_p, J]),
        ("fleet_json_count", c_int32, [J]),
        ("fleet_json_str", c_int, [J, c_char_p, c_char_p, c_uint32]),
        ("fleet_json_u32", c_int, [J, c_char_p, POINTER(c_uint32)]),
        ("fleet_json_bool", c_int, [J, c_char_p, POINTER(c_int)]),
        ("fleet_jw_init", None, [W, c_void_p, c_uint32]),
        ("fleet_jw_open", None, [W, ctypes.c_char]),
        ("fleet_jw_close", None, [W, ctypes.c_char]),
        ("fleet_jw_key", None, [W, c_char_p]),
        ("fleet_jw_strn", None, [W, c_char_p, c_uint32]),
        ("fleet_jw_u32", None, [W, c_uint32]),
        ("fleet_jw_bool", None, [W, c_int]),
        ("fleet_jw_b64", None, [W, c_char_p, c_uint32]),
        ("fleet_jw_finish", c_int32, [W]),
        ("fleet_b64_encode", c_int32, [c_char_p, c_uint32, c_char_p, c_uint32]),
        ("fleet_b64_decode", c_int32, [c_char_p, c_uint32, c_char_p, c_uint32]),
    ]:
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    return lib


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    subprocess.run(["make", "-s", "-C", str(RTOS_DIR), "json-lib"], check=True, capture_output=True, timeout=300)
    return _bind(HOST / "libfleetjson.so")


class Doc:
    """A parsed document; keeps its buffer alive while values point into it."""

    def __init__(self, lib: ctypes.CDLL, text: bytes | str) -> None:
        self.lib = lib
        self.raw = text.encode() if isinstance(text, str) else text
        self.buf = ctypes.create_string_buffer(self.raw, len(self.raw))
        self.root = Json()
        self.rc = lib.fleet_json_parse(self.buf, len(self.raw), byref(self.root))

    def get(self, path: str) -> tuple[int, Json]:
        out = Json()
        return self.lib.fleet_json_get(byref(self.root), path.encode(), byref(out)), out

    def text(self, path: str) -> bytes:
        rc, v = self.get(path)
        assert rc == OK, (path, rc)
        return ctypes.string_at(v.s, v.len)

    def string(self, path: str, cap: int = 4096) -> tuple[int, str | None]:
        out = ctypes.create_string_buffer(cap)
        rc = self.lib.fleet_json_str(byref(self.root), path.encode(), out, cap)
        return rc, out.value.decode(errors="surrogateescape") if rc == OK else None

    def u32(self, path: str) -> tuple[int, int | None]:
        v = c_uint32()
        rc = self.lib.fleet_json_u32(byref(self.root), path.encode(), byref(v))
        return rc, v.value if rc == OK else None

    def boolean(self, path: str) -> tuple[int, bool | None]:
        v = c_int()
        rc = self.lib.fleet_json_bool(byref(self.root), path.encode(), byref(v))
        return rc, bool(v.value) if rc == OK else None

    def count(self, path: str) -> int:
        rc, v = self.get(path)
        assert rc == OK
        return int(self.lib.fleet_json_count(byref(v)))


# --- real server answers (docs/protocol.md) ----------------------------------------------------------------

MANIFEST = ('{"created":"2026-11-24T01:10:48Z","device_types":["linux-aarch64","linux-armv7l"],'
            '"file_name":"webcam-1.1.0.tar.gz","format":"fleetd-manifest-v1","install":{"command":["python3","-m",'
            '"webcam","--port","8080"],"env":{"WEBCAM_DEVICE":"/dev/video0"},"health":{"grace_seconds":20,'
            '"http_url":"http://127.0.0.1:8080/healthz"}},"kind":"app","name":"webcam","sha256":'
            '"ffc85c023bfde702243e83a85fc95dc88e436b9e5a67ad84770a4453d76a85fc","size":245,"version":"1.1.0"}')
SHA = "ffc85c023bfde702243e83a85fc95dc88e436b9e5a67ad84770a4453d76a85fc"
INSTALL_ACTION = {
    "id": "act_1a20b1afa1df06d20e7b324", "kind": "install", "component": "webcam", "state": "queued",
    "rollback": False,
    "artifact": {"name": "webcam", "version": "1.1.0", "kind": "app",
                 "url": f"https://fleet.example.net:8420/v1/blobs/{SHA}", "sha256": SHA, "size": 245,
                 "file_name": "webcam-1.1.0.tar.gz", "manifest": MANIFEST,
                 "signature": "g9F/nBAhbeI7kIRDC/nTClKOThg5cvQP51uU5vzF9PxS1HP1jR+lMrwdcjF9W9d54sLP9ObdbbtkU09g8sjU"
                              "Cg==",
                 "offline_signatures": []},
    "params": {}}
ENROLL = """{
  "device_id": "dev_2e485114c840",
  "status": "active",
  "claim_code": "",
  "poll_interval": 60,
  "signing_public_key": "wWxcL2e2cEkr7ba3e3wTrFjGU14EXs8RiGaM7FrqTCk=",
  "ca_fingerprint": "e4a238d73ace799dce8d85e27119c15a1fbd1f9e2b19db575d1ec6b9ec705ad5"
}"""
CHALLENGE = '{"nonce": "fTQVtZkuXNBUp1OMTbulweTqeFP-T8iN", "expires_in": 60}'
AUTH = """{
  "token": "fdt.eyJkIjoiZGV2XzJlNDg1MTE0Yzg0MCIsImUiOjAsIngiOjE3OTU0ODYyNDd9._-ztCqb-9ytjWxxzjjnlH4osGIiLdcTZ",
  "expires_in": 3600,
  "status": "active"
}"""
ROLLBACKS = [
    {"id": "act_1a20b1afa1d2ad763381177", "kind": "rollback", "component": "sensor", "state": "queued",
     "rollback": True, "artifact": None, "params": {"no_previous_version": True}},
    {"id": "act_1a20b1afa1dd7c5cc81efc1", "kind": "restart", "component": "webcam", "state": "queued",
     "rollback": False, "artifact": None, "params": {}},
]


def test_enroll_challenge_and_authenticate_answers(lib: ctypes.CDLL) -> None:
    d = Doc(lib, ENROLL)
    assert d.rc == OK
    assert d.string("device_id") == (OK, "dev_2e485114c840")
    assert d.string("status") == (OK, "active")
    assert d.string("claim_code") == (OK, "")
    assert d.u32("poll_interval") == (OK, 60)
    rc, key = d.string("signing_public_key")
    assert rc == OK and base64.b64decode(key or "") == base64.b64decode("wWxcL2e2cEkr7ba3e3wTrFjGU14EXs8RiGaM7FrqTCk=")
    assert d.string("missing")[0] == ABSENT

    c = Doc(lib, CHALLENGE)
    assert c.string("nonce") == (OK, "fTQVtZkuXNBUp1OMTbulweTqeFP-T8iN")
    assert c.u32("expires_in") == (OK, 60)
    a = Doc(lib, AUTH)
    assert a.string("token", 256) == (OK, json.loads(AUTH)["token"])
    assert a.u32("expires_in") == (OK, 3600)


def test_checkin_answer_with_an_install_action(lib: ctypes.CDLL) -> None:
    answer = json.dumps({"status": "active", "poll_interval": 60, "actions": [INSTALL_ACTION, *ROLLBACKS]}, indent=2)
    d = Doc(lib, answer)
    assert d.rc == OK
    assert d.count("actions") == 3
    assert d.string("actions[0].id") == (OK, "act_1a20b1afa1df06d20e7b324")
    assert d.string("actions[0].kind") == (OK, "install")
    assert d.boolean("actions[0].rollback") == (OK, False)
    assert d.string("actions[0].artifact.sha256") == (OK, SHA)
    assert d.u32("actions[0].artifact.size") == (OK, 245)
    assert d.string("actions[0].artifact.version") == (OK, "1.1.0")
    assert d.string("actions[0].artifact.url") == (OK, f"https://fleet.example.net:8420/v1/blobs/{SHA}")
    # The manifest is a string holding JSON: unescaped it is byte for byte what was signed.
    assert d.string("actions[0].artifact.manifest") == (OK, MANIFEST)
    assert d.count("actions[0].artifact.offline_signatures") == 0
    assert d.count("actions[0].params") == 0
    # null reads as unset, like an absent field.
    assert d.string("actions[1].artifact.sha256")[0] == ABSENT
    assert d.get("actions[1].artifact")[0] == ABSENT
    assert d.boolean("actions[1].params.no_previous_version") == (OK, True)
    assert d.string("actions[2].kind") == (OK, "restart")
    assert d.get("actions[3]")[0] == ABSENT
    # Wrong types are errors, not guesses.
    assert d.u32("actions[0].kind")[0] == E_PROTOCOL
    assert d.string("actions[0].artifact.size")[0] == E_PROTOCOL
    assert d.boolean("poll_interval")[0] == E_PROTOCOL


def test_camel_case_and_string_integers_and_errors(lib: ctypes.CDLL) -> None:
    d = Doc(lib, '{"actionId": "act_1", "progress": "40", "big": "4294967295", "over": 4294967296, '
                 '"neg": -1, "frac": 1.5, "exp": 1e3, "empty": "", "code": "unauthenticated"}')
    assert d.rc == OK
    assert d.string("actionId") == (OK, "act_1")
    assert d.u32("progress") == (OK, 40)
    assert d.u32("big") == (OK, 4294967295)
    for path in ("over", "neg", "frac", "exp", "empty", "code"):
        assert d.u32(path)[0] == E_PROTOCOL, path


def test_string_unescaping(lib: ctypes.CDLL) -> None:
    d = Doc(lib, r'{"a": "q\"b\\s\/n\nt\tu\u00e9\u20ac\ud83d\ude00", "lone": "\ud800x", "low": "\udc00",'
                 r' "nul": "a\u0000b", "k\u0065y": 7, "raw": "é"}')
    assert d.rc == OK
    assert d.string("a") == (OK, 'q"b\\s/n\nt\tu\u00e9\u20ac\U0001F600')
    assert d.string("lone")[0] == E_PROTOCOL
    assert d.string("low")[0] == E_PROTOCOL
    assert d.string("nul")[0] == E_PROTOCOL
    assert d.u32("key") == (OK, 7)  # an escaped key matches its unescaped name
    assert d.string("raw") == (OK, "é")
    # Bounded output: the exact fit works, one byte less is E_SPACE (cap counts the NUL).
    assert d.string("raw", cap=3) == (OK, "é")
    assert d.string("raw", cap=2)[0] == E_SPACE
    assert d.string("a", cap=1)[0] == E_SPACE


def test_paths(lib: ctypes.CDLL) -> None:
    d = Doc(lib, '[{"a": [10, {"b": true}]}, 5]')
    assert d.rc == OK
    assert d.boolean("[0].a[1].b") == (OK, True)
    assert d.u32("[1]") == (OK, 5)
    assert d.text("[0].a") == b"[10, {\"b\": true}]"
    assert d.get("[0].a[2]")[0] == ABSENT
    assert d.get("a")[0] == ABSENT       # a key on an array
    assert d.get("[1].x")[0] == ABSENT   # a key on a number
    for bad in ("[", "[x]", "[0]..a", "[0].", "[1234567890]"):
        assert d.get(bad)[0] == E_INVALID, bad


@pytest.mark.parametrize("text", [
    "", " ", "{", "}", "[1,]", "[,1]", '{"a":1,}', '{"a" 1}', '{1: 2}', "[1 2]", '"abc', '"a\\x"', '"\\u12"',
    '"tab\there"', "01", "1.", ".5", "-", "1e", "+1", "tru", "nul", "NaN", "Infinity", "[1]]", "{} {}", "[]x",
    '{"a":}', "\x00", "[\"\\\"]",
])
def test_malformed_documents_are_refused(lib: ctypes.CDLL, text: str) -> None:
    assert Doc(lib, text).rc == E_PROTOCOL


def test_nesting_is_bounded(lib: ctypes.CDLL) -> None:
    assert Doc(lib, "[" * MAX_DEPTH + "]" * MAX_DEPTH).rc == OK
    assert Doc(lib, "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)).rc == E_PROTOCOL
    assert Doc(lib, '{"a":' * MAX_DEPTH + "1" + "}" * MAX_DEPTH).rc == OK
    assert Doc(lib, '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)).rc == E_PROTOCOL
    start = time.monotonic()
    assert Doc(lib, "[" * 1_000_000).rc == E_PROTOCOL
    assert Doc(lib, '{"a":[' * 500_000).rc == E_PROTOCOL
    assert time.monotonic() - start < 2


def test_huge_strings_take_bounded_time_and_do_not_overflow(lib: ctypes.CDLL) -> None:
    big = "x" * 4_000_000
    start = time.monotonic()
    d = Doc(lib, json.dumps({"token": big, "n": 1}))
    assert d.rc == OK
    assert d.string("token", cap=256)[0] == E_SPACE
    assert d.u32("n") == (OK, 1)
    assert Doc(lib, '"' + big).rc == E_PROTOCOL  # unterminated
    assert time.monotonic() - start < 2


# --- properties against Python's json ---------------------------------------------------------------------

def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


def _python_loads(raw: bytes) -> Any:
    """Python's verdict on the syntax: bytes as Latin-1, so that non-ASCII bytes are simply string characters
    (the shim checks JSON syntax, not UTF-8). Raises ValueError for what Python refuses."""
    def no_constants(name: str) -> Any:
        raise ValueError(name)
    return json.loads(raw.decode("latin-1"), parse_constant=no_constants)


def _python_accepts(raw: bytes) -> bool:
    try:
        _depth(_python_loads(raw))
        return True
    except (ValueError, RecursionError):
        return False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=30)


def _leaves(v: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(v, dict):
        out = []
        for k, x in v.items():
            if k and all(c not in k for c in ".[\x00") and len(k.encode()) < 40:
                out += _leaves(x, f"{path}.{k}" if path else k)
        return out
    if isinstance(v, list):
        return [leaf for i, x in enumerate(v) for leaf in _leaves(x, f"{path}[{i}]")]
    return [(path, v)]


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from([None, 0, 2]))
def test_reads_what_python_wrote(lib: ctypes.CDLL, value: Any, indent: int | None) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=bool(indent))
    d = Doc(lib, text)
    assert d.rc == OK
    for path, leaf in _leaves(value):
        if isinstance(leaf, str):
            if "\x00" in leaf:
                assert d.string(path)[0] == E_PROTOCOL
            elif not any(0xD800 <= ord(c) <= 0xDFFF for c in leaf):
                assert d.string(path) == (OK, leaf), path
        elif isinstance(leaf, bool):
            assert d.boolean(path) == (OK, leaf)
        elif isinstance(leaf, int) and 0 <= leaf <= 0xFFFFFFFF:
            assert d.u32(path) == (OK, leaf)
        elif leaf is None and path:
            assert d.get(path)[0] == ABSENT


def _mutate(raw: bytes, rnd: random.Random) -> bytes:
    b = bytearray(raw)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(4)
        pos = rnd.randrange(len(b) + 1)
        if op == 0 and b:
            del b[min(pos, len(b) - 1)]
        elif op == 1:
            b.insert(pos, rnd.choice(b'{}[]",:\\0123456789eE.-+ tfnu\x00\xff'))
        elif op == 2 and b:
            b[min(pos, len(b) - 1)] = rnd.randrange(256)
        else:
            b = b[:pos]
    return bytes(b)


@settings(max_examples=500, deadline=None)
@given(json_values, st.randoms(use_true_random=False))
def test_mutated_json_agrees_with_python(lib: ctypes.CDLL, value: Any, rnd: random.Random) -> None:
    raw = _mutate(json.dumps(value).encode(), rnd)
    d = Doc(lib, raw)
    assert d.rc in (OK, E_PROTOCOL)
    python_ok = _python_accepts(raw)
    if d.rc == OK:
        assert python_ok, raw
    elif python_ok:
        assert _depth(_python_loads(raw)) > MAX_DEPTH, raw
    if d.rc == OK:  # every lookup on what was accepted is defined
        for path in ("a", "[0]", "[0].a", "a[1]", ""):
            assert d.get(path)[0] in (OK, ABSENT)
            assert d.string(path, cap=16)[0] in (OK, ABSENT, E_PROTOCOL, E_SPACE)
            assert d.u32(path)[0] in (OK, ABSENT, E_PROTOCOL)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_defined_answer(lib: ctypes.CDLL, raw: bytes) -> None:
    d = Doc(lib, raw)
    assert d.rc in (OK, E_PROTOCOL)
    assert (d.rc == OK) == (_python_accepts(raw) and _depth(_python_loads(raw)) <= MAX_DEPTH)


# --- writer and base64 --------------------------------------------------------------------------------------

def write(lib: ctypes.CDLL, cap: int, ops: list[tuple[str, Any]]) -> tuple[int, bytes]:
    buf = ctypes.create_string_buffer(max(cap, 1))
    w = Writer()
    lib.fleet_jw_init(byref(w), buf, cap)
    for op, arg in ops:
        if op == "open":
            lib.fleet_jw_open(byref(w), arg.encode())
        elif op == "close":
            lib.fleet_jw_close(byref(w), arg.encode())
        elif op == "key":
            lib.fleet_jw_key(byref(w), arg.encode())
        elif op == "str":
            raw = arg.encode()
            lib.fleet_jw_strn(byref(w), raw, len(raw))
        elif op == "u32":
            lib.fleet_jw_u32(byref(w), arg)
        elif op == "bool":
            lib.fleet_jw_bool(byref(w), arg)
        elif op == "b64":
            lib.fleet_jw_b64(byref(w), arg, len(arg))
    n = lib.fleet_jw_finish(byref(w))
    return n, buf.raw[:max(n, 0)]


def request_ops(hw: str, value: str, n: int, flag: bool, key: bytes) -> list[tuple[str, Any]]:
    return [("open", "{"), ("key", "hardware_id"), ("str", hw), ("key", "list"), ("open", "["), ("u32", n),
            ("str", value), ("bool", flag), ("open", "{"), ("close", "}"), ("close", "]"), ("key", "public_key"),
            ("b64", key), ("close", "}")]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40).filter(lambda s: "\x00" not in s), st.text(max_size=40), st.integers(0, 2**32 - 1),
       st.booleans(), st.binary(max_size=64))
def test_writer_output_is_json_python_reads_back(lib: ctypes.CDLL, hw: str, value: str, n: int, flag: bool,
                                                  key: bytes) -> None:
    value = value.replace("\x00", "")
    ops = request_ops(hw, value, n, flag, key)
    size, out = write(lib, 4096, ops)
    assert size == len(out) > 0
    assert json.loads(out) == {"hardware_id": hw, "list": [n, value, flag, {}],
                               "public_key": base64.b64encode(key).decode()}
    # Every buffer too small says so; the smallest that fits works.
    assert write(lib, size + 1, ops) == (size, out)
    for cap in {0, 1, size // 2, size}:
        assert write(lib, cap, ops)[0] == E_SPACE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_base64_round_trip(lib: ctypes.CDLL, data: bytes) -> None:
    enc = ctypes.create_string_buffer(200)
    n = lib.fleet_b64_encode(enc, 200, data, len(data))
    assert enc.raw[:n] == base64.b64encode(data)
    if data:
        assert lib.fleet_b64_encode(enc, n - 1, data, len(data)) == E_SPACE
    for text in (base64.b64encode(data), base64.urlsafe_b64encode(data), base64.b64encode(data).rstrip(b"=")):
        dec = ctypes.create_string_buffer(100)
        assert lib.fleet_b64_decode(dec, 100, text, len(text)) == len(data)
        assert dec.raw[:len(data)] == data
    if data:
        small = ctypes.create_string_buffer(len(data))
        text = base64.b64encode(data)
        assert lib.fleet_b64_decode(small, len(data) - 1, text, len(text)) == E_SPACE


@pytest.mark.parametrize("text", [b"A", b"AB=C", b"A===", b"AB*D", b"ABC=D", b"AB==C", b"AB=", b"AF==", b"====="])
def test_base64_refuses_malformed_input(lib: ctypes.CDLL, text: bytes) -> None:
    out = ctypes.create_string_buffer(16)
    assert lib.fleet_b64_decode(out, 16, text, len(text)) == E_INVALID


# --- the same under AddressSanitizer / UBSan ----------------------------------------------------------------

FUZZ_SCRIPT = r"""
import ctypes, json, random, sys
sys.path.insert(0, sys.argv[2])
import test_json as t
lib = t._bind(t.HOST / "libfleetjson-asan.so")
rnd = random.Random(7)
seeds = [t.ENROLL, t.CHALLENGE, t.AUTH, json.dumps({"status": "active", "actions": [t.INSTALL_ACTION, *t.ROLLBACKS]})]
n = int(sys.argv[1])
for i in range(n):
    if i % 4:
        raw = t._mutate(rnd.choice(seeds).encode(), rnd)
    else:
        raw = bytes(rnd.randrange(256) for _ in range(rnd.randrange(64)))
    d = t.Doc(lib, raw)
    assert d.rc in (t.OK, t.E_PROTOCOL), (raw, d.rc)
    if d.rc == t.OK:
        for path in ("actions[0].artifact.manifest", "actions[1].id", "device_id", "token", "[0]", "a.b"):
            d.string(path, cap=rnd.choice([1, 8, 4096])); d.u32(path); d.get(path)
for text in ("[" * 100000, '{"a":' * 100000, '"' + "\\u" * 1000, '"\\ud800\\u', "\\"):
    assert t.Doc(lib, text).rc == t.E_PROTOCOL
for i in range(300):
    s = "".join(chr(rnd.randrange(1, 0x2FFF)) for _ in range(rnd.randrange(50)))
    out = t.write(lib, rnd.randrange(0, 300), t.request_ops(s, s, i, True, s.encode()[:40]))
    assert out[0] == t.E_SPACE or json.loads(out[1])["hardware_id"] == s
print("fuzzed", n)
"""


def test_reader_and_writer_under_asan(lib: ctypes.CDLL) -> None:
    asan = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(asan):
        pytest.skip("libasan is not installed")
    env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    p = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, "3000", str(Path(__file__).parent)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "fuzzed 3000" in p.stdout
