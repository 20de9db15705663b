"""ctypes binding of build/host/libfleetshim.so: the shim's core on a simulated NOR flash, plus the
test harness (agent/rtos/tests/harness.h), and signed images for the tests."""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Sequence
from ctypes import (
    POINTER,
    Structure,
    byref,
    c_char,
    c_char_p,
    c_int,
    c_int16,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetd.artifacts import rtos_image

OK, E_IO, E_INVALID, E_FORMAT, E_HASH, E_SIGNATURE, E_DEVICE_TYPE, E_DOWNGRADE = 0, -1, -2, -3, -4, -5, -6, -7
E_NO_IMAGE, E_STATE, E_SPACE = -8, -9, -10
EXPECT = {"ok": OK, "format": E_FORMAT, "hash": E_HASH, "signature": E_SIGNATURE, "device_type": E_DEVICE_TYPE,
          "downgrade": E_DOWNGRADE}
IDLE, DOWNLOADING, PENDING, TRIAL = 0, 1, 2, 3
NONE, CONFIRMED, REVERTED, REJECTED = 0, 1, 2, 3
GOAL_CONFIRM, GOAL_REVERT = 1, 2

DEVICE_TYPE = "fw-sim"
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fleetd rtos core tests").digest())
TRUSTED_KEY = rtos_image.raw_public_key(SIGNING_KEY)


class Version(Structure):
    _fields_ = [("major", c_uint16), ("minor", c_uint16), ("patch", c_uint32)]

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


class Header(Structure):
    _fields_ = [("magic", c_uint32), ("format_version", c_uint16), ("header_size", c_uint16), ("flags", c_uint32),
                ("payload_size", c_uint32), ("security_counter", c_uint32), ("version", Version),
                ("device_type", c_char * 32)]


class BootResult(Structure):
    _fields_ = [("image_off", c_uint32), ("header", Header), ("trial", c_uint8)]


class Status(Structure):
    _fields_ = [("state", c_uint8), ("result", c_uint8), ("result_error", c_int16),
                ("min_security_counter", c_uint32), ("running", Version), ("action_id", c_char * 40),
                ("download_size", c_uint32), ("download_offset", c_uint32)]


class Update(Structure):
    _fields_ = [("port", c_void_p), ("cfg", c_void_p), ("buf", c_void_p), ("buf_len", c_uint32),
                ("buf_used", c_uint32), ("size", c_uint32), ("offset", c_uint32), ("committed", c_uint32)]


class SimFlash(Structure):
    _fields_ = [("mem", POINTER(c_uint8)), ("size", c_uint32), ("sector_size", c_uint32), ("write_align", c_uint32),
                ("erased_value", c_uint8), ("mapped", c_int), ("ops", c_uint64), ("cut_at", c_uint64),
                ("tear_permille", c_uint32), ("dead", c_int), ("violations", c_uint32), ("sector_erases", c_uint32),
                ("ecc", c_int), ("ntorn", c_uint32), ("torn_off", c_uint32 * 16), ("torn_len", c_uint32 * 16)]


class Layout(Structure):
    _fields_ = [("primary_off", c_uint32), ("secondary_off", c_uint32), ("slot_size", c_uint32),
                ("scratch_off", c_uint32), ("state_off", c_uint32)]


class Config(Structure):
    _fields_ = [("layout", Layout), ("device_type", c_char_p), ("trusted_keys", c_void_p),
                ("trusted_key_count", c_uint32)]


@cache
def load(build_dir: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build_dir / "libfleetshim.so"))
    p, u32 = c_void_p, c_uint32
    sigs: dict[str, tuple[object, list[object]]] = {
        "shim_new": (p, [u32, u32, u32, u32, c_char_p, c_char_p, u32]),
        "shim_free": (None, [p]),
        "shim_port": (p, [p]),
        "shim_cfg": (POINTER(Config), [p]),
        "shim_flash": (POINTER(SimFlash), [p]),
        "shim_buf": (p, [p]),
        "shim_buf_len": (u32, [p]),
        "shim_error": (c_char_p, [p]),
        "shim_set_min_counter": (c_int, [p, u32]),
        "shim_download": (c_int, [p, c_char_p, u32, c_char_p, u32]),
        "shim_drive": (c_int, [p, c_char_p, u32, c_char_p, u32, c_char_p, u32, c_int, POINTER(c_uint64), u32, u32]),
        "sim_flash_cut_after": (None, [p, c_uint64, u32]),
        "sim_flash_power_on": (None, [p]),
        "sim_flash_raw_write": (None, [p, u32, c_char_p, u32]),
        "sim_flash_raw_erase": (None, [p, u32, u32]),
        "fleet_boot": (c_int, [p, p, p, u32, POINTER(BootResult)]),
        "fleet_status_read": (c_int, [p, p, POINTER(Status)]),
        "fleet_status_ack": (c_int, [p, p]),
        "fleet_confirm": (c_int, [p, p]),
        "fleet_update_abort": (c_int, [p, p]),
        "fleet_update_begin": (c_int, [POINTER(Update), p, p, c_char_p, u32, p, u32]),
        "fleet_update_write": (c_int, [POINTER(Update), c_char_p, u32]),
        "fleet_update_finish": (c_int, [POINTER(Update), POINTER(Header)]),
        "fleet_image_verify": (c_int, [p, p, u32, u32, u32, p, u32, POINTER(Header)]),
        "fleet_image_parse_header": (c_int, [c_char_p, POINTER(Header)]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


class Device:
    """A simulated device: primary and secondary slots of slot_sectors sectors, scratch, two state sectors."""

    def __init__(self, lib: ctypes.CDLL, *, sector: int = 512, align: int = 8, slot_sectors: int = 8,
                 buf_len: int = 128, device_type: str = DEVICE_TYPE, keys: tuple[bytes, ...] = (TRUSTED_KEY,),
                 ecc: bool = False):
        self.lib = lib
        self.d = lib.shim_new(sector, align, slot_sectors, buf_len, device_type.encode(), b"".join(keys), len(keys))
        assert self.d, "shim_new refused the geometry"
        self.port = lib.shim_port(self.d)
        self.cfg = lib.shim_cfg(self.d)
        self.cfgp = ctypes.cast(self.cfg, c_void_p)
        self.flash = lib.shim_flash(self.d)
        self.flash.contents.ecc = int(ecc)  # reads of units a cut left torn fail, as on flash with ECC
        self.buf = lib.shim_buf(self.d)
        self.buf_len = buf_len
        self.layout = self.cfg.contents.layout

    def close(self) -> None:
        if self.d:
            self.lib.shim_free(self.d)
            self.d = None

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # flash
    def read(self, off: int, n: int) -> bytes:
        return ctypes.string_at(ctypes.addressof(self.flash.contents.mem.contents) + off, n)

    def program(self, off: int, data: bytes) -> None:
        self.lib.sim_flash_raw_erase(self.flash, off, self.layout.slot_size)
        self.lib.sim_flash_raw_write(self.flash, off, data, len(data))

    def cut_after(self, k: int, tear: int = 500) -> None:
        self.lib.sim_flash_cut_after(self.flash, k, tear)

    def power_on(self) -> None:
        self.lib.sim_flash_power_on(self.flash)

    @property
    def ops(self) -> int:
        return int(self.flash.contents.ops)

    @property
    def violations(self) -> int:
        return int(self.flash.contents.violations)

    # core API
    def boot(self) -> tuple[int, BootResult]:
        r = BootResult()
        return self.lib.fleet_boot(self.port, self.cfgp, self.buf, self.buf_len, byref(r)), r

    def status(self) -> Status:
        s = Status()
        assert self.lib.fleet_status_read(self.port, self.cfgp, byref(s)) == OK
        return s

    def confirm(self) -> int:
        return int(self.lib.fleet_confirm(self.port, self.cfgp))

    def ack(self) -> int:
        return int(self.lib.fleet_status_ack(self.port, self.cfgp))

    def abort(self) -> int:
        return int(self.lib.fleet_update_abort(self.port, self.cfgp))

    def begin(self, action: str, size: int) -> tuple[int, Update]:
        u = Update()
        rc = self.lib.fleet_update_begin(byref(u), self.port, self.cfgp, action.encode(), size, self.buf,
                                         self.buf_len)
        return rc, u

    def write(self, u: Update, data: bytes) -> int:
        return int(self.lib.fleet_update_write(byref(u), data, len(data)))

    def finish(self, u: Update) -> tuple[int, Header]:
        h = Header()
        return self.lib.fleet_update_finish(byref(u), byref(h)), h

    def download(self, img: bytes, action: str = "act-1", chunk: int = 100) -> int:
        return int(self.lib.shim_download(self.d, img, len(img), action.encode(), chunk))

    def set_min_counter(self, n: int) -> None:
        assert self.lib.shim_set_min_counter(self.d, n) == OK

    def verify(self, data: bytes, min_counter: int = 0) -> tuple[int, Header]:
        """Verifies data as downloaded into the secondary slot."""
        self.program(self.layout.secondary_off, data)
        h = Header()
        rc = self.lib.fleet_image_verify(self.port, self.cfgp, self.layout.secondary_off, len(data), min_counter,
                                         self.buf, self.buf_len, byref(h))
        return rc, h

    def drive(self, old: bytes, new: bytes, goal: int, cuts: Sequence[int] = (), tear: int = 500,
              action: str = "act-1", chunk: int = 100) -> None:
        """The harness driver (harness.h): raises AssertionError with what broke."""
        arr = (c_uint64 * max(1, len(cuts)))(*cuts)
        rc = self.lib.shim_drive(self.d, old, len(old), new, len(new), action.encode(), chunk, goal, arr, len(cuts),
                                 tear)
        assert rc == 0, self.lib.shim_error(self.d).decode()

    def primary_holds(self, img: bytes) -> bool:
        return self.read(self.layout.primary_off, len(img)) == img


def image(version: str, counter: int = 1, payload_size: int = 1500, *, device_type: str = DEVICE_TYPE,
          key: Ed25519PrivateKey = SIGNING_KEY) -> bytes:
    """A signed image whose payload is derived from the version (so each version's bytes differ)."""
    seed = hashlib.sha256(version.encode()).digest()
    payload = (seed * (payload_size // 32 + 1))[:payload_size]
    return rtos_image.build_image(payload, version=version, security_counter=counter, device_type=device_type,
                                  signers=[key])
