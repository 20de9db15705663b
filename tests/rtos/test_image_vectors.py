"""The shared RTOS image vectors (tests/vectors/rtos/, written by the Python side) through the C core: each one
gives exactly the listed result, through fleet_image_verify and through the whole download path, and a refused
image never boots."""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.rtos.shimlib import EXPECT, IDLE, OK, PENDING, REJECTED, Device, load

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rtos"
SPEC: dict[str, Any] = json.loads((VECTORS / "vectors.json").read_text())
KEY = bytes.fromhex(SPEC["trusted_public_key"])
MIN = SPEC["min_security_counter"]


def _device(lib: ctypes.CDLL, size: int) -> Device:
    return Device(lib, sector=1024, align=8, slot_sectors=size // 1024 + 2, buf_len=256,
                  device_type=SPEC["device_type"], keys=(KEY,))


@pytest.fixture(scope="module")
def lib(shim_build: Path) -> ctypes.CDLL:
    return load(shim_build)


def test_vector_set_covers_the_required_cases() -> None:
    expects = {v["expect"] for v in SPEC["vectors"]}
    assert expects == set(EXPECT)
    assert (VECTORS / "trusted_key.hex").read_text().strip() == SPEC["trusted_public_key"]


@pytest.mark.parametrize("vector", SPEC["vectors"], ids=[v["name"] for v in SPEC["vectors"]])
def test_vector_through_the_c_core(lib: ctypes.CDLL, vector: dict[str, Any]) -> None:
    data = (VECTORS / vector["file"]).read_bytes()
    want = EXPECT[vector["expect"]]
    with _device(lib, len(data)) as d:
        rc, h = d.verify(data, MIN)
        assert rc == want, f"{vector['name']}: {rc} != {want} ({vector['description']})"
        if want == OK:
            assert str(h.version) == vector["version"]
            assert h.security_counter == vector["security_counter"]
            assert h.payload_size == vector["payload_size"]
            assert h.device_type.decode() == vector.get("image_device_type", SPEC["device_type"])
    with _device(lib, len(data)) as d:  # the whole download path, on a device whose minimum is MIN
        d.set_min_counter(MIN)
        assert d.download(data, action="vec", chunk=333) == want
        s = d.status()
        if want == OK:
            assert s.state == PENDING
        else:
            assert (s.state, s.result, s.result_error) == (IDLE, REJECTED, want)


def test_refused_vectors_never_boot(lib: ctypes.CDLL) -> None:
    good = (VECTORS / "good-basic.fdim").read_bytes()
    for vector in SPEC["vectors"]:
        if vector["expect"] == "ok":
            continue
        data = (VECTORS / vector["file"]).read_bytes()
        with _device(lib, max(len(data), len(good))) as d:
            d.program(d.layout.primary_off, good)
            assert d.boot()[0] == OK
            assert d.status().min_security_counter >= MIN
            # A good download marks the secondary slot pending; then the bad image takes its place in flash
            # (bypassing finish's check): the boot side verifies again and refuses it.
            assert d.download(good, action="vec") == OK
            d.program(d.layout.secondary_off, data)
            rc, r = d.boot()
            assert rc == OK and r.trial == 0 and d.primary_holds(good), vector["name"]
            s = d.status()
            assert (s.state, s.result) == (IDLE, REJECTED), vector["name"]
            # In the slot a truncated image runs into erased flash, which can read as a wrong signature
            # rather than a short trailer; every other vector gives its exact reason.
            if not vector["name"].startswith("truncated"):
                assert s.result_error == EXPECT[vector["expect"]], vector["name"]
            else:
                assert s.result_error in (EXPECT["format"], EXPECT["signature"], EXPECT["hash"]), vector["name"]


def test_vectors_through_the_c_program_under_asan(shim_build: Path) -> None:
    proc = subprocess.run([str(shim_build / "test_core"), "vectors", str(VECTORS), SPEC["device_type"], str(MIN)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"vectors: {len(SPEC['vectors'])} checked" in proc.stdout
