"""The shim's core through ctypes on a simulated NOR flash: install, trial, confirm, revert, rejection,
resumable downloads, argument checks and the file-backed flash."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rtos.shimlib import (
    CONFIRMED,
    DOWNLOADING,
    E_HASH,
    E_INVALID,
    E_NO_IMAGE,
    E_SPACE,
    E_STATE,
    IDLE,
    NONE,
    OK,
    PENDING,
    REJECTED,
    REVERTED,
    TRIAL,
    Device,
    SimFlash,
    Update,
    image,
    load,
)

OLD = image("1.0.0", 1)
NEW = image("1.1.0", 2, payload_size=2100)


@pytest.fixture
def lib(shim_build: Path) -> ctypes.CDLL:
    return load(shim_build)


@pytest.fixture
def dev(lib: ctypes.CDLL) -> Iterator[Device]:
    with Device(lib) as d:
        d.program(d.layout.primary_off, OLD)
        rc, r = d.boot()
        assert rc == OK and str(r.header.version) == "1.0.0" and not r.trial
        yield d
        assert d.violations == 0, "the core broke a flash rule"


def test_update_boots_as_trial_and_confirm_makes_it_the_image(dev: Device) -> None:
    assert dev.download(NEW) == OK
    assert dev.status().state == PENDING
    rc, r = dev.boot()
    assert rc == OK and r.trial == 1 and str(r.header.version) == "1.1.0"
    assert dev.primary_holds(NEW)
    assert dev.read(dev.layout.secondary_off, len(OLD)) == OLD  # kept for a revert
    s = dev.status()
    assert (s.state, str(s.running), s.min_security_counter) == (TRIAL, "1.1.0", 1)
    assert dev.confirm() == OK
    s = dev.status()
    assert (s.state, s.result, s.min_security_counter) == (IDLE, CONFIRMED, 2)
    assert dev.confirm() == OK  # idempotent
    rc, r = dev.boot()
    assert rc == OK and r.trial == 0 and str(r.header.version) == "1.1.0"
    assert dev.ack() == OK
    assert dev.status().result == NONE


def test_unconfirmed_trial_is_reverted_at_the_next_reset(dev: Device) -> None:
    assert dev.download(NEW) == OK
    assert dev.boot()[1].trial == 1
    rc, r = dev.boot()  # reset without fleet_confirm
    assert rc == OK and r.trial == 0 and str(r.header.version) == "1.0.0"
    assert dev.primary_holds(OLD)
    s = dev.status()
    assert (s.state, s.result, str(s.running), s.min_security_counter) == (IDLE, REVERTED, "1.0.0", 1)
    assert s.action_id == b"act-1"
    assert dev.confirm() == OK  # nothing to confirm: the old image is the confirmed one
    assert dev.boot()[1].header.version.minor == 0


def test_tampered_download_is_rejected_and_never_boots(dev: Device) -> None:
    bad = bytearray(NEW)
    bad[100] ^= 1
    assert dev.download(bytes(bad)) == E_HASH
    s = dev.status()
    assert (s.state, s.result, s.result_error) == (IDLE, REJECTED, E_HASH)
    rc, r = dev.boot()
    assert rc == OK and r.trial == 0 and dev.primary_holds(OLD)


def test_pending_image_damaged_in_flash_is_rejected_at_boot(dev: Device) -> None:
    assert dev.download(NEW) == OK
    dev.lib.sim_flash_raw_write(dev.flash, dev.layout.secondary_off + 700, b"\x00", 1)
    rc, r = dev.boot()
    assert rc == OK and r.trial == 0 and dev.primary_holds(OLD)
    s = dev.status()
    assert (s.state, s.result, s.result_error) == (IDLE, REJECTED, E_HASH)


def test_download_resumes_from_the_last_sector_boundary(dev: Device) -> None:
    rc, u = dev.begin("act-7", len(NEW))
    assert rc == OK and u.offset == 0
    assert dev.write(u, NEW[:1200]) == OK  # sectors are 512 bytes
    s = dev.status()
    assert (s.state, s.download_size, s.download_offset) == (DOWNLOADING, len(NEW), 1024)
    rc, r = dev.boot()  # a reset in the middle of the download keeps the old image running
    assert rc == OK and r.trial == 0 and dev.primary_holds(OLD)
    rc, u = dev.begin("act-7", len(NEW))
    assert rc == OK and u.offset == 1024
    assert dev.write(u, NEW[1024:]) == OK
    rc, h = dev.finish(u)
    assert rc == OK and h.security_counter == 2
    assert dev.status().state == PENDING
    assert dev.boot()[1].trial == 1


def test_resume_point_never_passes_the_image_end(lib: ctypes.CDLL) -> None:
    img = image("1.1.0", 2, payload_size=301)
    assert len(img) % 512 > 512 - 8  # the padded last write unit crosses a sector boundary

    def until_finish(d: Device) -> Update:
        d.program(d.layout.primary_off, OLD)
        assert d.boot()[0] == OK
        rc, u = d.begin("act-1", len(img))
        assert rc == OK and d.write(u, img) == OK
        return u

    with Device(lib) as d:
        u = until_finish(d)
        before = d.ops
        assert d.finish(u)[0] == OK
        finish_ops = d.ops - before
    with Device(lib) as d:
        u = until_finish(d)
        d.cut_after(finish_ops)  # the power goes while PENDING is being recorded
        assert d.finish(u)[0] != OK
        d.power_on()
        s = d.status()
        assert s.state == DOWNLOADING and s.download_offset <= len(img) and s.download_offset % 512 == 0
        rc, u = d.begin("act-1", len(img))
        assert rc == OK and u.offset == s.download_offset
        assert d.write(u, img[u.offset:]) == OK
        assert d.finish(u)[0] == OK
        assert d.boot()[1].trial == 1


def test_another_action_restarts_the_download(dev: Device) -> None:
    rc, u = dev.begin("act-1", len(NEW))
    assert dev.write(u, NEW[:1500]) == OK
    rc, u = dev.begin("act-2", len(NEW))
    assert rc == OK and u.offset == 0
    assert dev.status().action_id == b"act-2"
    rc, u = dev.begin("act-2", len(NEW) - 1)  # same action, other size: a different download
    assert rc == OK and u.offset == 0


def test_no_new_download_while_a_trial_runs(dev: Device) -> None:
    assert dev.download(NEW) == OK
    dev.boot()
    assert dev.begin("act-2", len(OLD))[0] == E_STATE
    assert dev.abort() == E_STATE
    assert dev.confirm() == OK
    assert dev.begin("act-2", len(OLD))[0] == OK
    assert dev.abort() == OK
    assert dev.status().state == IDLE


def test_bad_arguments_are_refused(dev: Device) -> None:
    assert dev.begin("x" * 40, 100)[0] == E_INVALID
    assert dev.begin("", 100)[0] == E_INVALID
    assert dev.begin("a", dev.layout.slot_size + 1)[0] == E_SPACE
    _, u = dev.begin("a", 100)
    assert dev.write(u, b"\0" * 101) == E_SPACE
    assert dev.write(u, b"\0" * 50) == OK
    assert dev.finish(u)[0] == E_INVALID  # only 50 of 100 bytes
    odd = ctypes.create_string_buffer(13)
    u2 = type(u)()
    assert dev.lib.fleet_update_begin(ctypes.byref(u2), dev.port, dev.cfgp, b"a", 100, odd, 13) == E_INVALID


def test_no_valid_image_is_reported(lib: ctypes.CDLL) -> None:
    with Device(lib) as d:
        assert d.boot()[0] == E_NO_IMAGE
        bad = bytearray(OLD)
        bad[-1] ^= 0xFF  # last signature byte
        d.program(d.layout.primary_off, bytes(bad))
        assert d.boot()[0] == E_NO_IMAGE


def test_swap_only_covers_the_sectors_the_images_use(lib: ctypes.CDLL) -> None:
    with Device(lib, slot_sectors=32) as d:
        d.program(d.layout.primary_off, OLD)
        d.boot()
        assert d.download(NEW) == OK
        before = d.flash.contents.sector_erases
        d.boot()
        sectors = -(-len(NEW) // 512)  # the larger image: 5 sectors
        erases = d.flash.contents.sector_erases - before
        records = 3 * sectors + 1  # the swap's records; four fit in a 512-byte state sector
        assert 3 * sectors <= erases <= 3 * sectors + records // 4 + 1  # not 3 * 32


def test_state_survives_many_sector_switches(dev: Device) -> None:
    # Each round writes several records; the two 512-byte state sectors hold four each.
    for i in range(12):
        img = image(f"2.0.{i}", 5 + i)
        assert dev.download(img, action=f"round-{i}") == OK
        assert dev.boot()[1].trial == 1
        assert dev.confirm() == OK
    s = dev.status()
    assert (str(s.running), s.min_security_counter, s.action_id) == ("2.0.11", 16, b"round-11")


def test_file_backed_flash_persists(lib: ctypes.CDLL, tmp_path: Path) -> None:
    lib.sim_flash_open_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                        ctypes.c_uint32, ctypes.c_uint8]
    lib.sim_flash_open_file.restype = ctypes.c_int
    for fn in ("sim_flash_close",):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    for fn in ("sim_flash_write", "sim_flash_read"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint32]
    lib.sim_flash_erase.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
    path = str(tmp_path / "flash.bin").encode()
    f = SimFlash()
    assert lib.sim_flash_open_file(ctypes.byref(f), path, 4096, 1024, 8, 0xFF) == 0
    assert lib.sim_flash_write(ctypes.byref(f), 1024, b"12345678", 8) == 0
    assert lib.sim_flash_write(ctypes.byref(f), 1024, b"12345678", 8) != 0  # not erased
    assert lib.sim_flash_write(ctypes.byref(f), 1028, b"abcd", 4) != 0  # misaligned
    assert f.violations == 2
    lib.sim_flash_close(ctypes.byref(f))
    data = (tmp_path / "flash.bin").read_bytes()
    assert len(data) == 4096 and data[1024:1032] == b"12345678" and data[:1024] == b"\xff" * 1024
    g = SimFlash()
    assert lib.sim_flash_open_file(ctypes.byref(g), path, 4096, 1024, 8, 0xFF) == 0
    buf = ctypes.create_string_buffer(8)
    assert lib.sim_flash_read(ctypes.byref(g), 1024, buf, 8) == 0 and buf.raw == b"12345678"
    assert lib.sim_flash_erase(ctypes.byref(g), 1024, 1024) == 0
    lib.sim_flash_close(ctypes.byref(g))
    assert (tmp_path / "flash.bin").read_bytes() == b"\xff" * 4096
    assert lib.sim_flash_open_file(ctypes.byref(g), path, 8192, 1024, 8, 0xFF) != 0  # wrong size
