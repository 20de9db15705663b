"""Settings come from defaults, a TOML file, FLEETD_* and flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetd.cli import app
from fleetd.core import dsn as dsns
from fleetd.core.config import Settings, load_settings
from fleetd.core.errors import InvalidArgument


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text('port = 1000\nhost = "127.0.0.1"\nmdns = false\n')
    s = load_settings({"port": None}, cfg, environ={})
    assert (s.port, s.host, s.mdns) == (1000, "127.0.0.1", False)
    s = load_settings({}, cfg, environ={"FLEETD_PORT": "2000", "FLEETD_TLS": "false"})
    assert (s.port, s.tls) == (2000, False)
    s = load_settings({"port": 3000}, cfg, environ={"FLEETD_PORT": "2000"})
    assert s.port == 3000


def test_config_file_in_data_dir_is_read(tmp_path: Path) -> None:
    (tmp_path / "fleetd.toml").write_text("max_upload_bytes = 5000\n")
    s = load_settings({"data_dir": str(tmp_path)}, environ={})
    assert s.max_upload_bytes == 5000


@pytest.mark.parametrize("content, fragment", [
    ("port = 70000\n", "port"),
    ("prot = 1\n", "unknown settings"),
    ("port = \n", "config file"),
    ('log_level = "loud"\n', "log_level"),
    ('download_offload = "sendfile"\n', "download_offload must be"),
    ('download_offload_location = "_fleetd_blobs"\n', "download_offload_location must be"),
    ('download_offload_location = "/../etc"\n', "download_offload_location must be"),
    ('download_offload_location = "/a b"\n', "download_offload_location must be"),
])
def test_bad_settings_are_explained(tmp_path: Path, content: str, fragment: str) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text(content)
    with pytest.raises(InvalidArgument, match=fragment):
        load_settings({}, cfg, environ={})


def test_env_value_of_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="port"):
        load_settings({"data_dir": str(tmp_path)}, environ={"FLEETD_PORT": "eighty"})


def test_trusted_proxies_from_env_file_and_flags(tmp_path: Path) -> None:
    s = load_settings({}, environ={"FLEETD_TRUSTED_PROXIES": " 10.1.2.3/8 , ::1,"})
    assert s.trusted_proxies == ["10.0.0.0/8", "::1"]
    cfg = tmp_path / "f.toml"
    cfg.write_text('trusted_proxies = ["192.168.1.10"]\n')
    assert load_settings({}, cfg, environ={}).trusted_proxies == ["192.168.1.10"]
    assert load_settings({"trusted_proxies": ["127.0.0.1"]}, cfg, environ={}).trusted_proxies == ["127.0.0.1"]
    assert load_settings({}, environ={}).trusted_proxies == []
    with pytest.raises(InvalidArgument, match=r"'proxy\.example' is not an IP address or a CIDR"):
        load_settings({}, environ={"FLEETD_TRUSTED_PROXIES": "proxy.example"})


def test_webhook_allowed_networks_from_env_file_and_flags(tmp_path: Path) -> None:
    s = load_settings({}, environ={"FLEETD_WEBHOOK_ALLOWED_NETWORKS": " 127.0.0.1/32 , 10.1.2.3/8,"})
    assert s.webhook_allowed_networks == ["127.0.0.1/32", "10.0.0.0/8"]
    cfg = tmp_path / "f.toml"
    cfg.write_text('webhook_allowed_networks = ["::1"]\n')
    assert load_settings({}, cfg, environ={}).webhook_allowed_networks == ["::1/128"]
    flags = {"webhook_allowed_networks": ["192.168.1.10/32"]}
    assert load_settings(flags, cfg, environ={}).webhook_allowed_networks == ["192.168.1.10/32"]
    assert load_settings({}, environ={}).webhook_allowed_networks == []


def test_the_webhook_allowed_network_flag_is_repeatable(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path), "--webhook-allowed-network", "127.0.0.1/32",
                                 "--webhook-allowed-network", "localhost"])
    assert r.exit_code == 1 and "'localhost' is not an IP network" in r.output


def test_download_offload_from_env() -> None:
    s = load_settings({}, environ={"FLEETD_DOWNLOAD_OFFLOAD": "x-accel",
                                   "FLEETD_DOWNLOAD_OFFLOAD_LOCATION": "/internal/blobs/"})
    assert (s.download_offload, s.download_offload_location) == ("x-accel", "/internal/blobs")
    assert load_settings({}, environ={}).download_offload == ""


def test_every_setting_is_documented() -> None:
    """docs/operations.md's settings table names every setting, so none is a secret knob."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    missing = [name for name in Settings.__struct_fields__ if f"`{name}`" not in doc]
    assert not missing, f"settings missing from docs/operations.md: {missing}"


def test_the_database_comes_from_env_file_and_flags(tmp_path: Path) -> None:
    url = "postgresql://fleetd@db.example.net:5432/fleetd?sslmode=verify-full"
    assert load_settings({}, environ={}).database == ""
    assert load_settings({}, environ={"FLEETD_DATABASE": url}).database == url
    cfg = tmp_path / "f.toml"
    cfg.write_text('database = "postgres://fleetd@db/fleetd"\n')
    assert load_settings({}, cfg, environ={}).database == "postgres://fleetd@db/fleetd"
    assert load_settings({"database": url}, cfg, environ={}).database == url


@pytest.mark.parametrize("value", ["/var/lib/fleetd/fleetd.db", "sqlite:///x.db", "host=db user=fleetd password=pw",
                                   "mysql://u:pw@h/db"])
def test_a_database_that_is_not_a_postgresql_url_is_refused_without_its_password(value: str) -> None:
    with pytest.raises(InvalidArgument, match="postgresql://USER:PASSWORD@HOST") as e:
        load_settings({"database": value}, environ={})
    assert "pw" not in str(e.value)


@pytest.mark.parametrize("dsn, shown, secret", [
    ("postgresql://fleetd:s3cr%40t@db:5432/fleetd", "postgresql://fleetd:***@db:5432/fleetd", "s3cr@t"),
    ("postgres://fleetd:pw:with:colons@[::1]/db?sslmode=require", "postgres://fleetd:***@[::1]/db?sslmode=require",
     "pw:with:colons"),
    ("postgresql://fleetd@db/fleetd?sslmode=verify-full&password=pw",
     "postgresql://fleetd@db/fleetd?sslmode=verify-full&password=***", "pw"),
    ("postgresql://db/fleetd", "postgresql://db/fleetd", None),
    ("host=db password='p w' user=x", "host=db password=*** user=x", "p w"),
])
def test_a_dsn_is_shown_without_its_password(dsn: str, shown: str, secret: str | None) -> None:
    assert dsns.redact(dsn) == shown
    if dsns.is_dsn(dsn):
        assert shown in repr(Settings(database=dsn)) and (secret is None or secret not in repr(Settings(database=dsn)))
    if secret is not None:
        # A driver's message that quotes the DSN or its password (decoded or not) loses the password.
        said = dsns.scrub(f"bad dsn {dsn}: unexpected spaces found in \"{secret}\"", dsn)
        assert secret not in said and "***" in said
