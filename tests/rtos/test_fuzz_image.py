"""Fuzzing the header/TLV parser: arbitrary bytes and damaged good images through fleet_image_verify (ctypes)
never crash and only return defined codes; damage to the signed part is never accepted. The C program does the
same exhaustively for every byte and every truncation of the good vectors under ASan/UBSan."""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rtos.shimlib import EXPECT, OK, Device, load

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rtos"
SPEC = json.loads((VECTORS / "vectors.json").read_text())
GOOD = [(VECTORS / v["file"]).read_bytes() for v in SPEC["vectors"] if v["expect"] == "ok"]
DEFINED = set(EXPECT.values())
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def dev(shim_build: Path) -> Iterator[Device]:
    size = max(len(g) for g in GOOD) + 4096
    with Device(load(shim_build), sector=1024, align=8, slot_sectors=size // 1024 + 1, buf_len=256,
                device_type=SPEC["device_type"], keys=(bytes.fromhex(SPEC["trusted_public_key"]),)) as d:
        yield d


def _tlv_region(data: bytes) -> bytes:
    return data[64 + struct.unpack_from("<I", data, 12)[0]:]


@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(dev: Device, data: bytes) -> None:
    rc, _ = dev.verify(data, SPEC["min_security_counter"])
    assert rc in DEFINED and rc != OK


header = st.builds(lambda fields, dtype: struct.pack("<IHHIIIHHI32sI", *fields, dtype, 0),
                   st.tuples(st.sampled_from([0x4D494446, 0]), st.sampled_from([1, 2]), st.sampled_from([64, 65]),
                             st.sampled_from([0, 1]), st.integers(0, 3000), st.integers(0, 2**32 - 1),
                             st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 2**32 - 1)),
                   st.binary(min_size=32, max_size=32))


@FUZZ
@given(hdr=header, rest=st.binary(max_size=1500))
def test_plausible_headers_with_random_trailers(dev: Device, hdr: bytes, rest: bytes) -> None:
    rc, _ = dev.verify(hdr + rest, 0)
    assert rc in DEFINED and rc != OK


@FUZZ
@given(which=st.integers(0, len(GOOD) - 1),
       edits=st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=6),
       in_trailer=st.booleans(), cut=st.integers(0, 40))
def test_damaged_good_images(dev: Device, which: int, edits: list[tuple[int, int]], in_trailer: bool,
                             cut: int) -> None:
    good = GOOD[which]
    hashed = len(good) - len(_tlv_region(good))
    data = bytearray(good)
    for pos, value in edits:
        at = hashed + pos % (len(good) - hashed) if in_trailer else pos % len(good)
        data[at] = value
    data = data[:len(data) - cut]
    rc, _ = dev.verify(bytes(data), SPEC["min_security_counter"])
    assert rc in DEFINED
    if rc == OK:
        # Only the unsigned part of the trailer may differ (unknown entries, untrusted signatures).
        assert data[:hashed + 40] == good[:hashed + 2] + data[hashed + 2:hashed + 4] + good[hashed + 4:hashed + 40]


def test_every_byte_and_truncation_under_asan(shim_build: Path) -> None:
    proc = subprocess.run([str(shim_build / "test_core"), "fuzz", str(VECTORS), SPEC["device_type"],
                           str(SPEC["min_security_counter"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split("fuzz: ")[1].split()[0]) > 10000
