"""fleetd mqtt broker-config: Debian's mosquitto, started with exactly the configuration it prints, lets each
device certificate reach only its own topics, fleetd's service certificate every device's, and refuses
certificates of another CA and expired ones."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.core import pki
from fleetd.mqtt import identity
from tests.mqtt.broker import broker_for, pub, sub, unrecorded_certificate
from tests.support.services import Mosquitto

A, B = "dev_aaaaaaaaaaaa", "dev_bbbbbbbbbbbb"


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("fleet")
    pki.load_or_create(data)
    return data


@pytest.fixture(scope="module")
def broker(fleet_dir: Path) -> Iterator[Mosquitto]:
    with broker_for(fleet_dir) as b:
        yield b


@pytest.fixture(scope="module")
def certs(fleet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    out = tmp_path_factory.mktemp("certs")
    ca = pki.material_in(fleet_dir, write=False)
    made = {d: unrecorded_certificate(ca, d, out) for d in (A, B)}  # no fleetd here: the broker alone
    service = out / "service"
    service.mkdir()
    made["service"] = identity.ensure_service_certificate(service, ca)
    return made


def first_line(proc: subprocess.Popen[str], keep_sending: list[tuple[Path, Path, str, str]], broker: Mosquitto,
               timeout: float = 15) -> str:
    """Publish ``keep_sending`` (cert, key, topic, message) again and again until ``proc`` (a mosquitto_sub with
    ``-C 1``, which has no "subscribed" signal) has printed its one line; that line."""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            for cert, key, topic, message in keep_sending:
                pub(broker, cert, key, topic, message)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
        return out
    finally:
        proc.kill()


def test_the_printed_configuration_names_the_written_files(broker: Mosquitto) -> None:
    text = broker.config_path.read_text()
    files = broker.dir / "fleetd"
    for line in ("require_certificate true", "use_identity_as_username true", "allow_anonymous false",
                 "persistence true", f"cafile {files}/ca.pem", f"crlfile {files}/crl.pem", f"acl_file {files}/acl",
                 f"plugin_opt_config_file {files}/data/dynamic-security.json"):
        assert line in text.splitlines()
    assert re.search(r"^plugin /\S+/mosquitto_dynamic_security\.so$", text, re.M), text
    assert text == (files / "mosquitto.conf").read_text()
    assert "pattern write fleetd/v1/devices/%u/telemetry" in (files / "acl").read_text()


def test_fleetd_hears_a_device_on_its_own_topic_and_never_one_on_another_devices(
        broker: Mosquitto, certs: dict[str, tuple[Path, Path]]) -> None:
    service = sub(broker, *certs["service"], ["fleetd/v1/devices/+/checkin"], "-C", "1")
    # A writes to B's topic first, then to its own: had the broker let the first through, fleetd would hear it first.
    line = first_line(service, [(*certs[A], f"fleetd/v1/devices/{B}/checkin", "forged"),
                                (*certs[A], f"fleetd/v1/devices/{A}/checkin", "mine")], broker)
    assert line == f"fleetd/v1/devices/{A}/checkin mine\n"


def test_a_device_cannot_read_another_devices_actions_nor_wildcards_above_its_own(
        broker: Mosquitto, certs: dict[str, tuple[Path, Path]]) -> None:
    spy = sub(broker, *certs[A], [f"fleetd/v1/devices/{B}/actions", "fleetd/v1/devices/#", "fleetd/#", "#",
                                  "fleetd/v1/devices/+/actions", f"fleetd/v1/devices/{A}/actions"], "-C", "1")
    line = first_line(spy, [(*certs["service"], f"fleetd/v1/devices/{B}/actions", "theirs"),
                            (*certs["service"], f"fleetd/v1/devices/{A}/actions", "ours")], broker)
    assert line == f"fleetd/v1/devices/{A}/actions ours\n"


def test_a_device_cannot_write_to_its_own_actions(broker: Mosquitto, certs: dict[str, tuple[Path, Path]]) -> None:
    """Actions come from fleetd only: a device's certificate may not publish one, even to itself."""
    spy = sub(broker, *certs[A], [f"fleetd/v1/devices/{A}/actions"], "-C", "1")
    line = first_line(spy, [(*certs[A], f"fleetd/v1/devices/{A}/actions", "self-made"),
                            (*certs["service"], f"fleetd/v1/devices/{A}/actions", "from fleetd")], broker)
    assert line == f"fleetd/v1/devices/{A}/actions from fleetd\n"


def test_certificates_of_another_ca_and_expired_ones_are_refused(
        broker: Mosquitto, fleet_dir: Path, tmp_path: Path, certs: dict[str, tuple[Path, Path]]) -> None:
    stranger = unrecorded_certificate(pki.new_material(), A, tmp_path / "other")
    expired = unrecorded_certificate(pki.material_in(fleet_dir, write=False), A, tmp_path / "expired",
                                     at=time.time() - 3 * 86400, days=1)
    for cert, key in (stranger, expired):
        done = pub(broker, cert, key, f"fleetd/v1/devices/{A}/checkin", "x")
        assert done.returncode != 0, done
    assert pub(broker, *certs[A], f"fleetd/v1/devices/{A}/checkin", "x").returncode == 0
    log = broker.log_path.read_text()
    assert "certificate verify failed" in log or "OpenSSL Error" in log, log[-2000:]


def test_broker_config_says_what_to_do_without_a_fleet_ca_or_with_a_bad_listener(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetd.cli import app

    out = CliRunner().invoke(app, ["mqtt", "broker-config", "--dir", str(tmp_path / "b"), "--data-dir",
                                   str(tmp_path / "empty")], env={"FLEETD_DATABASE": ""})
    assert out.exit_code == 1 and "holds no fleet CA" in out.output and "fleetd serve" in out.output, out.output
    assert not (tmp_path / "b").exists()
    out = CliRunner().invoke(app, ["mqtt", "broker-config", "--listen", "host:port"])
    assert out.exit_code == 2 and "[HOST:]PORT" in out.output, out.output
    out = CliRunner().invoke(app, ["mqtt", "broker-config", "--dir", str(tmp_path / "b"), "--plugin",
                                   str(tmp_path / "none.so")])
    assert out.exit_code == 1 and "dynamic security plugin" in out.output and "--plugin" in out.output, out.output


@pytest.mark.parametrize("url", ["mqtt://broker:1883", "https://broker:8883", "mqtts://", "mqtts://b:99999",
                                 "mqtts://b:8883/path"])
def test_a_broker_url_that_is_not_mqtts_host_port_is_refused(url: str) -> None:
    from fleetd.core.config import Settings
    from fleetd.core.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="mqtt_url must be mqtts://HOST:PORT"):
        Settings(mqtt_url=url)


def test_the_broker_url_defaults_to_port_8883_and_the_service_certificate_goes_with_its_key() -> None:
    from fleetd.core.config import Settings, mqtt_address
    from fleetd.core.errors import InvalidArgument

    assert mqtt_address("mqtts://broker.example.com") == ("broker.example.com", 8883)
    assert mqtt_address("mqtts://[::1]:1883") == ("::1", 1883)
    with pytest.raises(InvalidArgument, match="go together"):
        Settings(mqtt_cert_file="/etc/fleetd/mqtt.pem")


def test_fleetds_service_certificate_is_kept_while_good_and_issued_again_for_another_ca(tmp_path: Path) -> None:
    from cryptography import x509

    ca = pki.new_material()
    cert, key = identity.ensure_service_certificate(tmp_path, ca)
    first = cert.read_bytes()
    parsed = x509.load_pem_x509_certificate(first)
    assert parsed.subject.rfc4514_string() == "CN=fleetd-service"
    parsed.verify_directly_issued_by(ca.ca_cert)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert identity.ensure_service_certificate(tmp_path, ca)[0].read_bytes() == first  # kept
    other = pki.new_material()
    identity.ensure_service_certificate(tmp_path, other)
    x509.load_pem_x509_certificate(cert.read_bytes()).verify_directly_issued_by(other.ca_cert)  # made again
