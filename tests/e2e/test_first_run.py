"""What a new user meets first: a busy port, where the server can be reached from, and a CLI run from another
folder that cannot verify the server's certificate."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.cli.serve import reachability
from tests.e2e.server import ServerProcess, fleetd_cmd, free_port, run_cli

pytestmark = pytest.mark.e2e


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_a_busy_port_stops_the_start_before_anything_is_created(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = run_cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--no-mdns", check=False,
                    env={"COLUMNS": "400"},
                    timeout=60)
    err = one_line(p.stderr)
    assert p.returncode != 0 and f"port {port} is in use; pass --port" in err, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "Errno" not in p.stderr
    assert not (tmp_path / "data").exists()  # no data dir, keys or admin for a server that cannot start


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("first-run") / "data").start()
    yield s
    s.stop()


def test_the_banner_says_where_it_is_reachable_from(server: ServerProcess) -> None:
    log = server.log()
    assert f"fleetd listening on https://127.0.0.1:{server.port}" in log
    assert f"web UI and API: https://127.0.0.1:{server.port}/ (this machine only" in log
    assert "The first login asks you to choose a new password" in log


def test_all_interfaces_name_the_lan_addresses_and_how_to_restrict() -> None:
    lines = reachability("https", "0.0.0.0", 8443, ["192.168.1.10", "10.0.0.5"])
    text = "\n".join(lines)
    assert "on this machine: https://127.0.0.1:8443/" in text
    assert "from the network" in text and "https://192.168.1.10:8443/, https://10.0.0.5:8443/" in text
    assert "admin web UI is reachable from the network" in text and "--host 127.0.0.1" in text
    assert "[::1]" not in text
    ipv6 = "\n".join(reachability("https", "::", 8443, ["2001:db8::5"]))
    assert "https://[2001:db8::5]:8443/" in ipv6
    assert "this machine only" in reachability("http", "localhost", 80, [])[0]


def test_the_cli_elsewhere_says_where_the_ca_is_and_ca_fetch_gets_it(server: ServerProcess, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    key = server.create_key("viewer", "first-run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETD_") or k == "FLEETD_BIN"}
    env.update(FLEETD_SERVER=server.url, FLEETD_API_KEY=key, COLUMNS="400")  # no wrapping inside paths

    def cli(*args: str) -> tuple[int, str]:
        p = subprocess.run([*fleetd_cmd(), *args], capture_output=True, text=True, env=env, cwd=elsewhere,
                           timeout=60)
        return p.returncode, one_line(p.stdout + p.stderr)

    code, out = cli("devices", "list")
    assert code == 1, out
    assert f"cannot verify {server.url}'s certificate" in out
    assert f"{elsewhere}/fleetd-data/ca.pem, which does not exist" in out  # where it looked, as a path
    assert "FLEETD_CA" in out and "ca.pem in its data dir" in out and f"fleetd ca fetch --server {server.url}" in out

    # Another fleet's CA: said so, with the file it used.
    other = tmp_path / "other-ca.pem"
    other.write_text(ssl.get_server_certificate(("127.0.0.1", server.port)))  # the server cert, not its CA
    code, out = cli("devices", "list", "--ca", str(other))
    assert code == 1 and f"with the CA in {other}" in out and "another fleet's CA" in out, out

    # fleetd ca fetch: refuses a fingerprint that does not match, saves the CA when it does.
    expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(Path(server.ca).read_text())).hexdigest()
    code, out = cli("ca", "fetch", "--fingerprint", "0" * 64)
    assert code == 1 and f"has fingerprint {expected}" in out and not (elsewhere / "fleetd-ca.pem").exists(), out
    code, out = cli("ca", "fetch", "--fingerprint", expected.upper())
    assert code == 0 and f"CA fingerprint {expected}" in out, out
    assert (elsewhere / "fleetd-ca.pem").read_text() == Path(server.ca).read_text()
    assert f"export FLEETD_CA={elsewhere}/fleetd-ca.pem" in out
    code, out = cli("devices", "list", "--ca", "fleetd-ca.pem")
    assert code == 0, out


def test_ca_fetch_from_nowhere_says_so(tmp_path: Path) -> None:
    p = run_cli("ca", "fetch", "--server", f"https://127.0.0.1:{free_port()}", "--out", str(tmp_path / "ca.pem"),
                check=False)
    assert p.returncode == 1 and "cannot reach" in p.stderr and "Is 'fleetd serve' running" in one_line(p.stderr)
    assert not (tmp_path / "ca.pem").exists()
