"""Anti-rollback: an older version with the current counter is a valid rollback, a counter below the minimum is
refused (and never boots), confirming raises the minimum, an unconfirmed trial does not."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rtos.shimlib import E_DOWNGRADE, IDLE, OK, REJECTED, REVERTED, Device, image, load


@pytest.fixture
def dev(shim_build: Path) -> Iterator[Device]:
    with Device(load(shim_build)) as d:
        d.program(0, image("2.0.0", 3))
        assert d.boot()[0] == OK
        assert d.status().min_security_counter == 3  # the running confirmed image sets the minimum
        yield d


def _install(d: Device, img: bytes) -> None:
    assert d.download(img) == OK
    rc, r = d.boot()
    assert rc == OK and r.trial == 1
    assert d.confirm() == OK


def test_older_version_with_the_same_counter_is_a_valid_rollback(dev: Device) -> None:
    older = image("1.9.0", 3)
    _install(dev, older)
    rc, r = dev.boot()
    assert rc == OK and str(r.header.version) == "1.9.0" and dev.status().min_security_counter == 3


def test_counter_below_the_minimum_is_refused_and_never_boots(dev: Device) -> None:
    old_epoch = image("2.1.0", 2)  # newer version, revoked epoch
    assert dev.download(old_epoch) == E_DOWNGRADE
    s = dev.status()
    assert (s.state, s.result, s.result_error) == (IDLE, REJECTED, E_DOWNGRADE)
    rc, r = dev.boot()
    assert rc == OK and str(r.header.version) == "2.0.0"


def test_confirm_raises_the_minimum_and_revokes_older_epochs(dev: Device) -> None:
    _install(dev, image("3.0.0", 7))
    assert dev.status().min_security_counter == 7
    assert dev.download(image("2.5.0", 6)) == E_DOWNGRADE
    assert dev.download(image("2.9.0", 7)) == OK  # same epoch: allowed


def test_unconfirmed_trial_does_not_raise_the_minimum(dev: Device) -> None:
    assert dev.download(image("3.0.0", 9)) == OK
    assert dev.boot()[1].trial == 1
    assert dev.status().min_security_counter == 3
    rc, r = dev.boot()  # not confirmed: reverted
    assert rc == OK and str(r.header.version) == "2.0.0"
    s = dev.status()
    assert (s.result, s.min_security_counter) == (REVERTED, 3)


def test_pending_image_is_checked_against_the_minimum_at_boot(dev: Device) -> None:
    # The boot side does not trust the application side's check: a validly signed image from a revoked epoch
    # found in the secondary slot at reset is refused there too.
    assert dev.download(image("2.2.0", 4)) == OK
    dev.program(dev.layout.secondary_off, image("2.1.0", 2))
    rc, r = dev.boot()
    assert rc == OK and str(r.header.version) == "2.0.0" and r.trial == 0
    s = dev.status()
    assert (s.result, s.result_error) == (REJECTED, E_DOWNGRADE)


def test_min_counter_is_not_lowered_by_booting_an_image(shim_build: Path) -> None:
    lib: ctypes.CDLL = load(shim_build)
    with Device(lib) as d:
        d.program(0, image("1.0.0", 2))
        d.set_min_counter(5)
        assert d.boot()[0] != OK  # the only image is from a revoked epoch
        assert d.status().min_security_counter == 5
