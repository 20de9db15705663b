"""Artifacts in an S3 bucket (SeaweedFS) with a real `fleetd serve`: upload, proxied downloads with Range, pre-signed
redirects followed by httpx, the fleet agent and the simulator's device client (these two only to https or the
server's own scheme), and gc in the bucket (run in-process on the stopped server's data dir: the server's own
first gc pass waits a minute)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet_agent.download import DownloadError, download
from fleetd.artifacts.catalog import ArtifactRef
from fleetd.cli.devclient import DeviceClient, DeviceError, Download
from fleetd.cli.sim_transport import make_http_client
from fleetd.core.config import Settings
from fleetd.fleet import Fleet
from fleetd.store.database import connect
from tests.support.services import Bucket

from .server import ServerProcess

pytestmark = pytest.mark.e2e
MiB = 1 << 20


class AgentSide:
    """What fleet_agent.download uses of its ServerClient, with an API key for a token."""

    def __init__(self, server: ServerProcess, key: str) -> None:
        self.base_url = server.url
        verify: Any = ssl.create_default_context(cafile=server.ca) if server.tls else False
        self.http = httpx.Client(verify=verify, timeout=30)
        self._key = key

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}


def simulated_download(server: ServerProcess, key: str, sha: str, size: int) -> Download:
    """`fleetd simulate`'s device client fetching the blob (an API key stands in for the device's token)."""
    async def run() -> Download:
        ca = Path(server.ca).read_text() if server.tls else None
        async with make_http_client(server.url, ca, 1) as http:
            device = DeviceClient(http, server.url, "sim-1", "sim")
            device._token, device._token_expires = key, time.monotonic() + 3600
            ref = ArtifactRef(name="s3-e2e", version="1.0.0", kind="app", url=f"/v1/blobs/{sha}", sha256=sha,
                              size=size, file_name="app.bin", manifest="{}", signature="")
            return await device.download(ref)
    return asyncio.run(run())


def upload(server: ServerProcess, key: str, data: bytes) -> str:
    r = server.rpc("ArtifactService", "CreateUpload", {"name": "s3-e2e", "version": "1.0.0", "device_types": ["sim"],
                                                       "file_name": "app.bin", "size": len(data)}, key)
    assert r.status_code == 200, r.text
    with server.client(key) as c:
        put = c.put(f"/v1/uploads/{r.json()['upload_id']}", content=data)
    assert put.status_code == 201, put.text
    return hashlib.sha256(data).hexdigest()


def test_artifacts_in_a_bucket(tmp_path: Path, s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"AWS_ACCESS_KEY_ID": s3_bucket.access_key, "AWS_SECRET_ACCESS_KEY": s3_bucket.secret_key,
           "FLEETD_S3_ENDPOINT": s3_bucket.endpoint, "FLEETD_S3_REGION": s3_bucket.region}
    server = ServerProcess(tmp_path / "data", tls=False, env=env,
                           extra_args=["--blob-store", f"s3://{s3_bucket.name}/e2e"]).start()
    try:
        key = server.create_key("admin")
        data = os.urandom(9 * MiB + 7)  # past one part: multipart to uploads/, then copied to blobs/
        sha = upload(server, key, data)
        artifact = {"sha256": sha, "size": len(data), "url": f"/v1/blobs/{sha}"}
        assert s3_bucket.request("GET", f"e2e/blobs/{sha}").content == data
        assert list((server.data_dir / "blobs").iterdir()) == []  # nothing on the local disk

        # Proxied by fleetd (the default), with and without Range; the agent's downloader too.
        with server.client(key) as c:
            assert c.get(f"/v1/blobs/{sha}").content == data
            part = c.get(f"/v1/blobs/{sha}", headers={"Range": "bytes=1000-2000999"})
        assert (part.status_code, part.content) == (206, data[1000:2001000])
        assert download(AgentSide(server, key), artifact, tmp_path / "a", deadline=0).read_bytes() == data

        # Pre-signed redirects: fleetd authorizes, the bucket sends the bytes.
        server.stop()
        server.env["FLEETD_S3_PRESIGNED_DOWNLOADS"] = "true"
        server.start()
        with server.client(key) as c:
            assert c.get(f"/v1/blobs/{sha}").status_code == 307
            assert c.get(f"/v1/blobs/{sha}").headers["location"].startswith(f"{s3_bucket.endpoint}/")
            assert c.get(f"/v1/blobs/{sha}", follow_redirects=True).content == data
            part = c.get(f"/v1/blobs/{sha}", headers={"Range": "bytes=5-104"}, follow_redirects=True)
            assert (part.status_code, part.content) == (206, data[5:105])
            assert c.get(f"/v1/blobs/{sha}", headers={"Authorization": ""}).status_code == 401
        # The agent follows to the server's own scheme (http here), resuming with a Range at the bucket.
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / f"{sha}.part").write_bytes(data[:3 * MiB])
        got = download(AgentSide(server, key), artifact, tmp_path / "b", deadline=0)
        assert got.read_bytes() == data
        # So does the simulator's device client.
        assert simulated_download(server, key, sha, len(data)).sha256 == sha

        # Over https the same redirect to a plain-http bucket is refused by the agent.
        server.stop()
        server.tls = True
        server.start()
        with pytest.raises(DownloadError, match="not https: refused") as e:
            download(AgentSide(server, key), artifact, tmp_path / "c", deadline=0)
        assert not e.value.transient
        with pytest.raises(DeviceError, match="not https: refused"):
            simulated_download(server, key, sha, len(data))

        # gc: once nothing refers to it and it is past the grace period, the object leaves the bucket.
        r = server.rpc("ArtifactService", "DeleteArtifact", {"id": "s3-e2e@1.0.0"}, key)
        assert r.status_code == 200, r.text
    finally:
        server.stop()
    conn = connect(server.data_dir / "fleetd.db")
    with conn:
        conn.execute("UPDATE blobs SET created_at = ?", (time.time() - 7200,))
    conn.close()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])
    fleet = Fleet(Settings(data_dir=str(server.data_dir), tls=False, blob_store=f"s3://{s3_bucket.name}/e2e",
                           s3_endpoint=s3_bucket.endpoint, s3_region=s3_bucket.region))
    try:
        report = asyncio.run(fleet.blobs.gc())
    finally:
        fleet.close()
    assert report.deleted == [sha]
    assert s3_bucket.request("HEAD", f"e2e/blobs/{sha}").status_code == 404
