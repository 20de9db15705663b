"""The real-service harness itself (tests/support/services): each service starts, does its job, and is isolated
per test; haproxy spreads connections and takes a failed backend out; mosquitto keeps its data over a restart."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest

from fleetd.core import pki
from tests.support.services import Bucket, HAProxy, Mosquitto, PostgresServer, S3Server, ServiceError
from tests.support.services._process import reap_orphans
from tests.support.services.sigv4 import sign

# --- PostgreSQL ----------------------------------------------------------------------------------------------------


def test_postgres_writes_and_reads_over_loopback(postgres_dsn: str) -> None:
    assert postgres_dsn.startswith("postgresql://fleetd@127.0.0.1:")
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE devices (id bigserial PRIMARY KEY, name text NOT NULL, meta jsonb)")
        conn.execute("INSERT INTO devices (name, meta) VALUES (%s, %s), (%s, %s)",
                      ("pi-1", '{"arch": "arm64"}', "pi-2", '{"arch": "armv7"}'))
        conn.commit()
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute("SELECT name, meta->>'arch' FROM devices ORDER BY id").fetchall()
        server_version = conn.info.server_version
    assert rows == [("pi-1", "arm64"), ("pi-2", "armv7")]
    assert server_version >= 130000  # DROP DATABASE ... WITH (FORCE) needs 13


def test_postgres_databases_are_isolated(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    other = postgres_server.create_database()
    try:
        with psycopg.connect(postgres_dsn) as conn:
            conn.execute("CREATE TABLE only_here (x int)")
            conn.commit()
        with psycopg.connect(postgres_server.dsn(other)) as conn, pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM only_here")
    finally:
        postgres_server.drop_database(other)


@pytest.mark.parametrize("run", [1, 2])
def test_postgres_each_test_gets_an_empty_database(postgres_dsn: str, run: int) -> None:
    # Both runs create the same table: the second would fail if the database were shared.
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE marker (run int)")
        conn.execute("INSERT INTO marker VALUES (%s)", (run,))
        conn.commit()


def test_postgres_template_copies_and_drop_ends_open_connections(postgres_server: PostgresServer) -> None:
    template = postgres_server.create_database()
    with psycopg.connect(postgres_server.dsn(template)) as conn:
        conn.execute("CREATE TABLE schema_version (v int)")
        conn.execute("INSERT INTO schema_version VALUES (7)")
        conn.commit()
    copy = postgres_server.create_database(template=template)
    left_open = psycopg.connect(postgres_server.dsn(copy))
    assert left_open.execute("SELECT v FROM schema_version").fetchone() == (7,)
    postgres_server.drop_database(copy)  # a test that leaves a connection open does not block the drop
    postgres_server.drop_database(template)
    with pytest.raises(psycopg.OperationalError):
        left_open.execute("SELECT 1")
    left_open.close()
    with psycopg.connect(postgres_server.dsn()) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert template not in names and copy not in names


# --- S3 (SeaweedFS) ------------------------------------------------------------------------------------------------


def test_s3_put_get_and_ranged_get(s3_bucket: Bucket) -> None:
    key = "artifacts/fw 1.2+rc.bin"  # a space and a plus: both must be encoded the same way in the signature
    body = bytes(range(256)) * 64
    put = s3_bucket.request("PUT", key, body, headers={"content-type": "application/octet-stream"})
    assert put.status_code == 200, put.text
    got = s3_bucket.request("GET", key)
    assert got.status_code == 200 and got.content == body
    part = s3_bucket.request("GET", key, headers={"range": "bytes=256-511"})
    assert part.status_code == 206
    assert part.content == bytes(range(256))
    assert part.headers["content-range"] == f"bytes 256-511/{len(body)}"
    listing = s3_bucket.request("GET", params={"list-type": "2", "prefix": "artifacts/"})
    assert listing.status_code == 200 and "<Key>artifacts/fw 1.2+rc.bin</Key>" in listing.text


@pytest.mark.parametrize("run", [1, 2])
def test_s3_each_test_gets_an_empty_bucket(s3_bucket: Bucket, run: int) -> None:
    listing = s3_bucket.request("GET", params={"list-type": "2"})
    assert listing.status_code == 200 and "<KeyCount>0</KeyCount>" in listing.text, listing.text
    assert s3_bucket.request("PUT", "left-behind", str(run).encode()).status_code == 200


def test_s3_requires_the_configured_keys(s3_bucket: Bucket) -> None:
    assert s3_bucket.request("PUT", "secret", b"x").status_code == 200
    url = s3_bucket.server.url(s3_bucket.name, "secret")
    assert httpx.get(url).status_code == 403  # anonymous
    forged = sign("GET", url, region=s3_bucket.region, access_key=s3_bucket.access_key, secret_key="wrong")
    assert httpx.get(url, headers=forged).status_code == 403
    good = sign("GET", url, region=s3_bucket.region, access_key=s3_bucket.access_key,
                secret_key=s3_bucket.secret_key)
    assert httpx.get(url, headers=good).content == b"x"


def test_s3_server_is_on_loopback_with_its_data_in_its_temp_dir(s3_server: S3Server) -> None:
    assert s3_server.endpoint.startswith("http://127.0.0.1:")
    assert s3_server.proc is not None and s3_server.proc.poll() is None
    assert (s3_server.dir / "data").is_dir()


# --- haproxy -------------------------------------------------------------------------------------------------------


class Backend:
    """A tiny HTTPS server (the fleet CA's server certificate, like fleetd) that answers its own name."""

    def __init__(self, name: str, tls: ssl.SSLContext) -> None:
        self.name = name
        self.healthy = True
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path != "/healthz" or backend.healthy
                body = backend.name.encode() if ok else b"unhealthy"
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def kill(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def keys(tmp_path: Path) -> pki.FleetKeys:
    return pki.load_or_create(tmp_path)


@pytest.fixture
def backends(keys: pki.FleetKeys) -> Iterator[list[Backend]]:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(keys.server_cert_path, keys.server_key_path)
    started = [Backend("a", tls), Backend("b", tls)]
    yield started
    for b in started:
        if b.thread.is_alive():
            b.kill()


def wait_for(lb: HAProxy, want: dict[str, str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (states := lb.states()) != want:
        assert time.monotonic() < deadline, f"haproxy's backends are {states}, not {want}"
        time.sleep(0.05)


def answers(lb: HAProxy, keys: pki.FleetKeys, n: int) -> list[str]:
    # A new client per request: one TCP connection each, so round-robin applies to each request.
    got = []
    for _ in range(n):
        with httpx.Client(verify=ssl.create_default_context(cafile=str(keys.ca_path))) as client:
            got.append(client.get(f"https://{lb.address}/").text)
    return got


def test_haproxy_passes_tls_through_round_robin(backends: list[Backend], keys: pki.FleetKeys) -> None:
    with HAProxy([b.address for b in backends], check_tls=True) as lb:
        wait_for(lb, {b.address: "UP" for b in backends})
        got = answers(lb, keys, 4)
    # The client verified the backends' certificate through haproxy (TLS passthrough), and they alternate.
    assert sorted(got) == ["a", "a", "b", "b"] and got[0] != got[1] and got[:2] == got[2:]


def test_haproxy_takes_out_a_killed_backend(backends: list[Backend], keys: pki.FleetKeys) -> None:
    a, b = backends
    with HAProxy([a.address, b.address], check_tls=True) as lb:
        wait_for(lb, {a.address: "UP", b.address: "UP"})
        b.kill()
        wait_for(lb, {a.address: "UP", b.address: "DOWN"})
        assert answers(lb, keys, 4) == ["a"] * 4


def test_haproxy_checks_healthz_not_just_the_port(backends: list[Backend], keys: pki.FleetKeys) -> None:
    a, b = backends
    with HAProxy([a.address, b.address], check_tls=True) as lb:
        b.healthy = False  # still accepts connections, but /healthz answers 503
        wait_for(lb, {a.address: "UP", b.address: "DOWN"})
        assert answers(lb, keys, 3) == ["a"] * 3
        b.healthy = True
        wait_for(lb, {a.address: "UP", b.address: "UP"})


def test_haproxy_stops_and_cleans_up(backends: list[Backend]) -> None:
    lb = HAProxy([backends[0].address], health_path=None)
    with lb:
        assert lb.proc is not None and lb.proc.poll() is None
        assert "mode tcp" in lb.config_path.read_text()
        port, workdir, proc = lb.port, lb.dir, lb.proc
    assert proc.poll() is not None
    assert not workdir.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_haproxy_refuses_an_empty_backend_list() -> None:
    with pytest.raises(ValueError, match="at least one backend"):
        HAProxy([])


# --- mosquitto -----------------------------------------------------------------------------------------------------


def mqtt(tool: str, broker: Mosquitto, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-h", broker.host, "-p", str(broker.port), "-q", "1", *args],
                          capture_output=True, text=True, timeout=20)


def test_mosquitto_delivers_and_keeps_retained_messages_over_a_restart() -> None:
    with Mosquitto() as broker:
        sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                                "-t", "fleetd/v1/devices/+/actions", "-C", "1", "-W", "10", "-v"],
                               stdout=subprocess.PIPE, text=True)
        try:
            # Publish until the subscriber (which has no "subscribed" signal) has taken one message.
            while sub.poll() is None:
                sent = mqtt("mosquitto_pub", broker, "-t", "fleetd/v1/devices/d1/actions", "-m", "deploy")
                assert sent.returncode == 0, sent.stderr
                time.sleep(0.1)
            assert sub.communicate()[0] == "fleetd/v1/devices/d1/actions deploy\n"
        finally:
            sub.kill()
        assert mqtt("mosquitto_pub", broker, "-t", "fleetd/v1/state", "-m", "kept", "-r").returncode == 0
        port = broker.port
        broker.restart()
        assert broker.port == port
        got = mqtt("mosquitto_sub", broker, "-t", "fleetd/v1/state", "-C", "1", "-W", "5")
        assert got.stdout == "kept\n", got


def test_a_service_that_fails_to_start_says_why_and_leaves_nothing() -> None:
    before = set(Path(tempfile.gettempdir()).glob("fleetd-haproxy-*"))
    with pytest.raises(ServiceError, match=r"haproxy -c \(config check\) failed") as failed, \
            HAProxy(["127.0.0.1:not-a-port"]):
        pass
    assert "not-a-port" in str(failed.value)  # haproxy's own complaint is in the message
    assert set(Path(tempfile.gettempdir()).glob("fleetd-haproxy-*")) == before


def test_a_service_left_by_a_killed_test_process_is_reaped_by_the_next(tmp_path: Path) -> None:
    # A test process that dies by SIGKILL cannot stop its services (they run in their own sessions, so they
    # outlive it): the next start of any service finds the dir whose owner is dead and kills what it names.
    script = ("import sys, time; from tests.support.services import Mosquitto\n"
              "broker = Mosquitto().__enter__(); print(broker.proc.pid, broker.dir, flush=True); time.sleep(60)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).parents[2])
    assert owner.stdout is not None
    pid_text, service_dir = owner.stdout.readline().split()
    pid = int(pid_text)
    owner.kill()
    owner.wait()
    os.kill(pid, 0)  # the broker outlived its test process
    assert reap_orphans() >= 1
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the orphaned broker is still running"
        time.sleep(0.05)
    assert not Path(service_dir).exists()
