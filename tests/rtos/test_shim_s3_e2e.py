"""fleet-shim-sim against a `fleetd serve` whose artifacts are in an S3 bucket (SeaweedFS) with pre-signed downloads
on: GET /v1/blobs/<sha> answers 307 to the bucket, and the POSIX port's transport follows it (without the token,
keeping the Range), only to https or to the server's own scheme (docs/rtos.md, "The transport and redirects")."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.server import ServerProcess, run_cli
from tests.rtos.test_shim_e2e import RUN_TIMEOUT, Device, FaultProxy, Fleet, kill_mid_download, resumed_offset
from tests.support.services import Bucket

pytestmark = pytest.mark.e2e


def test_the_shim_follows_a_presigned_redirect_to_the_bucket(tmp_path: Path, s3_bucket: Bucket,
                                                             sim_binary: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": s3_bucket.access_key, "AWS_SECRET_ACCESS_KEY": s3_bucket.secret_key,
           "FLEETD_S3_ENDPOINT": s3_bucket.endpoint, "FLEETD_S3_REGION": s3_bucket.region,
           "FLEETD_S3_PRESIGNED_DOWNLOADS": "true"}
    server = ServerProcess(tmp_path / "data", tls=False, env=env,
                           extra_args=["--blob-store", f"s3://{s3_bucket.name}/shim"]).start()
    try:
        admin_key = server.create_key("admin", "shim-s3")
        cli_env = {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin_key}
        token = json.loads(run_cli("tokens", "create", "--json", env=cli_env).stdout)["token"]
        key = serialization.load_pem_private_key((tmp_path / "data" / "signing.key").read_bytes(), None)
        assert isinstance(key, Ed25519PrivateKey)
        fleet = Fleet(server, cli_env, admin_key, token, key, tmp_path)
        fleet.image("v1.fdim", b"firmware 1.0.0 " * 64, "1.0.0")
        (tmp_path / "v2.bin").write_bytes(os.urandom(300_000))
        pushed = fleet.cli("artifacts", "push", str(tmp_path / "v2.bin"), "--name", "firmware", "--version", "2.0.0",
                           "--device-type", "fw-sim", "--kind", "firmware", "--format", "rtos-image",
                           "--security-counter", "1", "--json")
        with server.client(admin_key) as c:
            blob = c.get(f"/v1/blobs/{json.loads(pushed.stdout)['sha256']}")
        assert blob.status_code == 307 and blob.headers["location"].startswith(f"{s3_bucket.endpoint}/")

        # Killed mid-download (the bytes come from the bucket), then resumed with a Range through the redirect.
        dev = Device(fleet, "s3")
        device_id = dev.enroll()
        action_id = fleet.deploy(device_id, "2.0.0")
        kill_mid_download(dev, action_id)
        # The first pre-signed URL is refused by the bucket (403, as an expired one is): a transport error, the
        # part in flash is kept, and the next poll asks fleetd for a fresh URL.
        proxy = FaultProxy(server)
        try:
            proxy.faults = {"presign_403": 1}
            dev.args[dev.args.index("--server") + 1] = proxy.url
            out = dev.run()
        finally:
            proxy.close()
        assert "fleet-sim: poll error code=-1 http=403" in out  # FLEET_E_IO, not the core's FLEET_E_HTTP (-11)
        blob_gets = [r for r in proxy.requests if r[1].startswith("/v1/blobs/")]
        assert [r[3] for r in blob_gets[:2]] == [307, 307] and blob_gets[0][2] == blob_gets[1][2]  # same Range
        assert out.count(f"fleet-sim: download action={action_id} offset=") == 2  # resumed twice, never restarted
        assert resumed_offset(out.split("poll error", 1)[1], action_id) >= 65536
        assert f"fleet-sim: verified action={action_id}" in out
        assert "fleet-sim: boot version=2.0.0 trial=1" in out
        assert fleet.action(device_id, action_id)["state"] == "succeeded"
        assert fleet.component(device_id, "2.0.0")["version"] == "2.0.0"

        # Over https, the same redirect to the plain-http bucket is refused: nothing is downloaded.
        server.stop()
        server.tls = True
        server.start()
        fleet.env = {**cli_env, "FLEETD_SERVER": server.url, "FLEETD_CA": server.ca}
        dev = Device(fleet, "s3-https")
        device_id = dev.enroll()
        action_id = fleet.deploy(device_id, "2.0.0")
        p = subprocess.run([*dev.args, "--max-cycles", "1"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert p.returncode == 0, p.stderr
        assert "which is not https: refused" in p.stderr, p.stderr
        assert "poll error" in p.stdout and "verified" not in p.stdout, p.stdout
        assert fleet.action(device_id, action_id)["state"] == "downloading"
    finally:
        server.stop()

